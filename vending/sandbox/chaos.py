"""Chaos soak: one real machine (vending.sandbox.rig.Rig: mosquitto, the board emulator on a pty,
the sandbox cloud and the daemon as a real process) sold to, one customer after another, while a
seeded RNG breaks things. Then every fault is switched off, the machine is left to settle, and
vending.sandbox.invariants checks the board's ledger, the cloud's books and the journal.

Per sale the RNG picks one customer story and at most one infrastructure fault:
- stories: normal, redelivery (same txn_id again), duplicate (a second txn_id for a paid order),
  forged (bad_sig / wrong_machine / malformed / not_json, then a real payment), stale (a real
  payment with an old ts), mismatch (wrong amount or currency, then the right one), late (pay
  after the QR timed out), cancel_race (cancel and pay together), failure (jam / no_drop /
  timeout / empty injected), plus free vends and walk-aways, which are not sales;
- faults: SIGKILL at a random moment after the payment, a crash point (VENDING_CRASH_AT) armed
  for the sale, a board power cycle mid-vend (product_fell sometimes) or at a random moment, a
  brownout (the board starts the motor on a VEND, its reply is lost and it reboots before the
  host resends), a SIGKILL with a power cycle while the daemon is down, a broker restart, an
  MQTT outage around the payment (payments queue in the cloud's client), the daemon down
  while the customer pays (payments queue in the broker), the orders API down or refusing
  connections (the sale runs on an offline QR, §4), and the service door opened while the QR
  is up or right after the payment.
Serial noise (corrupt and drop rates) stays on during the whole sale phase.

Minimum counts of kills, power cycles and broker restarts, and at least one of every fault, are
guaranteed by forcing those faults near the end of the run if the dice were stingy, so a short
CI soak always covers them.
Nothing here measures time against a threshold: waits are bounded only as hang guards.
"""
from __future__ import annotations

import random
import signal
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vending.messages import vend_id_for
from vending.sandbox.cloud import PAYMENT_FORGERIES
from vending.sandbox.invariants import CheckReport, Evidence, check, format_table, outstanding
from vending.sandbox.rig import Rig, RigOptions

CRASH_POINTS = ("SavePayment", "VendSent", "SendVend", "VendReply", "VendFinished", "SaveEvent",
                "AckMessage", "PaymentIn", "SaveOrder", "CloseOrder", "EventAcked")
STORIES = {"normal": 45, "redelivery": 3, "duplicate": 3, "forged": 2, "stale": 2, "mismatch": 2,
           "late": 2, "cancel_race": 3, "failure": 4, "free_vend": 1, "walkaway": 1}
FAULTS = {"none": 80, "kill": 3, "crash_point": 3, "power_mid_vend": 2, "power_random": 1,
          "brownout": 1, "kill_and_power": 1, "broker_restart": 1.5, "mqtt_outage": 1, "daemon_down_pay": 1,
          "api_down": 1.5, "door": 1.5}
SELECTABLE = ("grid", "thanks", "refund")


@dataclass
class ChaosOptions:
    sales: int = 300
    seed: int = 1
    corrupt_rate: float = 0.02
    drop_rate: float = 0.02
    vend_seconds: float = 0.05
    session_timeout: float = 1.0
    late_payment_grace: float = 3.0
    min_kills: int = 10
    min_power_cycles: int = 5
    min_broker_restarts: int = 3
    min_each_fault: int = 1          # every fault with a weight is injected at least this often
    stories: dict = field(default_factory=lambda: dict(STORIES))
    faults: dict = field(default_factory=lambda: dict(FAULTS))
    settle_timeout: float = 30.0     # hang guard for one sale's vend_result
    quiesce_timeout: float = 120.0   # hang guard for the final settling (republish is 15 s)
    workdir: str | None = None
    progress_every: int = 50


@dataclass
class ChaosResult:
    faults: Counter
    report: CheckReport
    anomalies: Counter
    outstanding: dict
    seconds: float
    workdir: Path
    spent: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return self.report.ok

    def summary(self) -> str:
        lines = [format_table("faults injected and stories played", self.faults),
                 self.report.summary(),
                 f"after quiescing, still outstanding: "
                 f"{ {k: len(v) for k, v in self.outstanding.items()} }",
                 format_table("seconds spent per story / fault", self.spent),
                 f"anomalies (liveness, not money): {sum(self.anomalies.values())}"]
        lines += [f"  {n} x {a}" for a, n in self.anomalies.most_common(15)]
        lines.append(f"run time {self.seconds:.1f} s, workdir {self.workdir}")
        return "\n".join(lines)


class Chaos:
    def __init__(self, options: ChaosOptions | None = None, log: Callable[[str], None] = print):
        self.o = options or ChaosOptions()
        self.rng = random.Random(self.o.seed)
        self.log = log
        self.f: Counter = Counter()
        self.spent: Counter = Counter()       # seconds per story and per fault, for tuning
        self.anomalies: Counter = Counter()   # liveness problems (not money), deduplicated
        self.rig: Rig | None = None
        self.armed: str | None = None
        self._seen_orders: set[str] = set()
        self._pending: str | None = None      # the fault waiting for this sale's first payment
        self._order: str | None = None
        self._events_seen = 0
        self._answered: set[tuple[str, str]] = set()
        self._last_cancel = 0.0
        self._brownout: dict = {}
        self._door_open = False

    # ---- the run ---------------------------------------------------------------------------

    def run(self) -> ChaosResult:
        o = self.o
        workdir = Path(o.workdir or tempfile.mkdtemp(prefix="vending-chaos-"))
        self.rig = Rig(workdir, RigOptions(
            vend_seconds=o.vend_seconds, stock=1_000_000, session_timeout=o.session_timeout,
            late_payment_grace=o.late_payment_grace, slot_failure_limit=100,
            corrupt_rate=o.corrupt_rate, drop_rate=o.drop_rate, seed=o.seed,
            extra_env={"PYTHONFAULTHANDLER": "1"}))      # SIGABRT dumps every thread's stack
        self._trail = open(workdir / "chaos.log", "a", encoding="utf-8")
        started = time.monotonic()
        try:
            self.rig.start()
            self._wait(lambda: self.rig.screen().get("screen") == "grid", 30)
            sales = 0
            while sales < o.sales:
                if self._one(sales):
                    sales += 1
                    self.f["sales"] += 1
                    if o.progress_every and sales % o.progress_every == 0:
                        self.log(f"chaos: {sales}/{o.sales} sales, "
                                 f"{time.monotonic() - started:.0f} s, faults so far "
                                 f"{sum(v for k, v in self.f.items() if k.startswith('fault'))}")
            left = self.quiesce()
            report = check(Evidence.from_rig(self.rig))
            tracebacks = self.rig.daemon_log().count("Traceback")
            if tracebacks:
                self.anomalies[f"Traceback(s) in {self.rig.log_path}"] += tracebacks
            spent = Counter({k: round(v) for k, v in self.spent.items()})
            return ChaosResult(self.f, report, self.anomalies, left,
                               time.monotonic() - started, workdir, spent)
        finally:
            self.rig.stop()
            self._trail.close()

    def _note(self, text: str) -> None:
        """One line per step into <workdir>/chaos.log, to line up with daemon.log afterwards."""
        self._trail.write(f"{time.time():.3f} {text}\n")
        self._trail.flush()

    def _one(self, index: int) -> bool:
        """One customer (or operator) story with at most one fault; True if someone paid."""
        story = _weighted(self.rng, self.o.stories)
        # a free vend is an operator's command, not a sale: nothing for a sale's fault to hit
        fault = "none" if story == "free_vend" else self._choose_fault(index)
        started = time.monotonic()
        self._note(f"sale {index}: story={story} fault={fault}")
        try:
            return self._play(story, fault)
        finally:
            took = time.monotonic() - started
            self._note(f"sale {index}: done in {took:.2f} s")
            self.spent[f"story {story}"] += took
            self.spent[f"fault {fault}"] += took

    def _play(self, story: str, fault: str) -> bool:
        self.f[f"story: {story}"] += 1
        if fault != "none":
            self.f[f"fault: {fault}"] += 1
        self._supervise()
        if story == "free_vend":
            self._free_vend()
            return False
        if fault == "crash_point":
            self.armed = self.rng.choice(CRASH_POINTS)
            self.f[f"crash point armed: {self.armed}"] += 1
            self.rig.restart_daemon(crash_at=self.armed)
        elif fault != "none":
            self._pending = fault
        if fault == "api_down":                   # before the key press: no order from the API
            mode = self.rng.choice(("down", "refuse"))
            self.f[f"orders API {mode}"] += 1
            self.rig.cloud.set_api_mode(mode)
        view = self._select()
        if view is None:
            self._pending = None
            if fault == "api_down":
                self.rig.cloud.set_api_mode("ok")
            return False
        self._order = view["order_id"]
        self._note(f"  QR order_id={view['order_id']} slot={view['slot']}"
                   + (" offline" if view.get("offline") else ""))
        if view.get("offline"):                   # the customer scans: the pay page learns the order
            self.f["offline QRs scanned"] += 1
            problem, _ = self.rig.cloud.open_offline(view["qr_url"].split(self.rig.cloud.pay_base_url, 1)[1])
            if problem != "ok":
                # With one-second sessions the QR can expire before the scan (its expires_at is
                # whole seconds): the page refuses it and nobody can pay, as with a real phone.
                self.f[f"offline QRs refused by the pay page: {problem}"] += 1
                if problem != "expired":      # a QR our own key signed must always verify
                    self.anomalies[f"offline QR refused by the pay page: {problem}"] += 1
                self._note(f"  pay page refused the offline QR: {problem}")
                self._fire("after_pay")
                return False
        txns = getattr(self, f"_story_{story}")(view)
        self._note(f"  paid txns={txns}")
        self._fire("after_pay")               # a story that paid nothing still gets its fault
        for txn in txns:
            if self._wait(lambda: self._answered_for("txn", txn), self.o.settle_timeout) is None:
                self.f["slow: no vend_result within the settle guard"] += 1
        return bool(txns)

    def _choose_fault(self, index: int) -> str:
        o, f = self.o, self.f
        deficits = {name: o.min_each_fault - f[f"fault: {name}"]
                    for name, weight in o.faults.items() if weight and name != "none"}
        deficits.update({
            "kill": o.min_kills - f["kills: SIGKILL at a random moment"]
            - f["kills: crash point fired"] - f["kills: daemon down while paying"],
            "power_mid_vend": o.min_power_cycles - f["power cycles"],
            "broker_restart": o.min_broker_restarts - f["broker restarts"]})
        need = {k: v for k, v in deficits.items() if v > 0}
        if need and o.sales - index <= 3 * sum(need.values()) + 2:
            return self.rng.choice(sorted(need))
        return _weighted(self.rng, o.faults)

    # ---- customers -------------------------------------------------------------------------

    def _select(self) -> dict | None:
        rig = self.rig
        for attempt in range(4):
            if self._wait(self._selectable, 30) is None:
                self._stuck(f"no selectable screen (attempt {attempt})")
                continue
            # a slot the machine offers: an `empty` result marks a slot sold out until the
            # board's SLOTS says otherwise, and its key is then (rightly) ignored
            offered = [p["slot"] for p in rig.screen().get("products", ()) if p.get("available")]
            slot = self.rng.choice(offered or range(1, rig.o.slots + 1))
            rig.emulator.press_key(slot)
            view = self._wait(lambda: (v := rig.screen()).get("screen") == "qr"
                              and v.get("order_id") not in self._seen_orders and v, 6)
            if view:
                self._seen_orders.add(view["order_id"])
                return view
            self.f["retries: key press without a QR"] += 1
            self._note(f"  key {slot} gave no QR; screen={rig.screen().get('screen')!r}")
        self._stuck("no QR after 4 key presses")
        return None

    def _selectable(self) -> bool:
        v = self.rig.screen()
        if (v.get("screen") == "qr" and v.get("order_id") in self._seen_orders
                and time.monotonic() - self._last_cancel > 1.0):
            self.rig.emulator.press_cancel()          # an old session someone walked away from
            self._last_cancel = time.monotonic()
        return v.get("screen") in SELECTABLE

    def _pay(self, order_id: str, **kw: Any) -> str:
        self._fire("before_pay")
        p = self.rig.cloud.pay(order_id, **kw)
        self._fire("after_pay")
        return p["txn_id"]

    def _story_normal(self, v: dict) -> list[str]:
        return [self._pay(v["order_id"])]

    def _story_redelivery(self, v: dict) -> list[str]:
        txn = self._pay(v["order_id"])
        time.sleep(self.rng.uniform(0, 0.3))
        first = next(p for p in self.rig.cloud.payments() if p.get("txn_id") == txn)
        self.rig.cloud.publish_payment(first)
        return [txn]

    def _story_duplicate(self, v: dict) -> list[str]:
        txn = self._pay(v["order_id"])
        time.sleep(self.rng.uniform(0, 0.3))
        return [txn, self.rig.cloud.pay(v["order_id"])["txn_id"]]

    def _story_forged(self, v: dict) -> list[str]:
        kind = self.rng.choice(PAYMENT_FORGERIES)
        self.f[f"forged: {kind}"] += 1
        self.rig.cloud.forge_payment(v["order_id"], kind)
        time.sleep(self.rng.uniform(0, 0.2))
        return [self._pay(v["order_id"])]

    def _story_stale(self, v: dict) -> list[str]:
        return [self._pay(v["order_id"], ts=int(time.time()) - self.rng.randint(400, 7 * 86400))]

    def _story_mismatch(self, v: dict) -> list[str]:
        wrong = self.rng.choice([{"amount": v["amount"] - 1}, {"amount": v["amount"] + 100},
                                 {"currency": "USD"}])
        first = self._pay(v["order_id"], **wrong)
        return [first, self.rig.cloud.pay(v["order_id"], amount=v["amount"],
                                          currency=v["currency"])["txn_id"]]

    def _story_late(self, v: dict) -> list[str]:
        self._wait(lambda: self.rig.screen().get("order_id") != v["order_id"],
                   self.o.session_timeout + 15)
        if self.rng.random() < 0.5:                   # within the grace: may still be served
            time.sleep(self.rng.uniform(0, 0.5))
        else:                                         # after it: refunded as late
            time.sleep(self.o.late_payment_grace + self.rng.uniform(0.2, 0.6))
        return [self._pay(v["order_id"])]

    def _story_cancel_race(self, v: dict) -> list[str]:
        if self.rng.random() < 0.5:
            self.rig.emulator.press_cancel()
            time.sleep(self.rng.uniform(0, 0.05))
            return [self._pay(v["order_id"])]
        txn = self._pay(v["order_id"])
        time.sleep(self.rng.uniform(0, 0.05))
        self.rig.emulator.press_cancel()
        return [txn]

    def _story_failure(self, v: dict) -> list[str]:
        outcome = self.rng.choice(("jam", "no_drop", "jam", "no_drop", "timeout", "empty"))
        self.f[f"injected: {outcome}"] += 1
        self.rig.emulator.inject(v["slot"], outcome)
        return [self._pay(v["order_id"])]

    def _story_walkaway(self, v: dict) -> list[str]:
        if self.rng.random() < 0.5:
            self.rig.emulator.press_cancel()
        return []

    def _free_vend(self) -> None:
        cloud = self.rig.cloud
        cmd = cloud.send_command("free_vend", {"slot": self.rng.randint(1, self.rig.o.slots),
                                               "reason": "chaos compensation"})
        if self.rng.random() < 0.3:
            cloud.publish_raw("commands", cmd)       # a redelivered command: still one vend
            self.f["free vend: command redelivered"] += 1
        done = self._wait(lambda: self._answered_for("cmd", cmd["cmd_id"]), self.o.settle_timeout)
        if done is None:
            self.f["slow: no command_result within the settle guard"] += 1

    # ---- faults ----------------------------------------------------------------------------

    def _fire(self, stage: str) -> None:
        fault, rig, rng = self._pending, self.rig, self.rng
        if fault is None:
            return
        self._note(f"  fault {fault} at {stage}")
        if stage == "before_pay":
            if fault in ("power_mid_vend", "kill_and_power"):
                self._vend_seconds(0.6)               # long enough to cut the power inside it
            elif fault == "brownout":
                self._arm_brownout()
            elif fault == "mqtt_outage":
                rig.broker.stop()
                self.f["mqtt outages"] += 1
            elif fault == "daemon_down_pay":
                rig.kill_daemon()
                self.f["kills: daemon down while paying"] += 1
            elif fault == "door" and rng.random() < 0.5:
                self._open_door("while the QR is up")
            return
        self._pending = None
        if fault == "kill":
            time.sleep(rng.uniform(0, 0.35))
            rig.kill_daemon()
            self.f["kills: SIGKILL at a random moment"] += 1
            time.sleep(rng.uniform(0, 0.3))
            self._ensure_daemon()
        elif fault == "power_mid_vend":
            vend_id = vend_id_for(rig.o.machine_id, self._order) if self._order else None
            self._wait(lambda: any(e.vend_id == vend_id and e.result is None
                                   for e in rig.emulator.ledger()), 5)
            time.sleep(rng.uniform(0, 0.4))
            self._power_cycle()
            self._vend_seconds(self.o.vend_seconds)
        elif fault == "power_random":
            time.sleep(rng.uniform(0, 0.4))
            self._power_cycle()
        elif fault == "kill_and_power":               # the board reboots while nobody watches
            time.sleep(rng.uniform(0, 0.3))
            rig.kill_daemon()
            self.f["kills: SIGKILL at a random moment"] += 1
            time.sleep(rng.uniform(0, 0.3))
            self._power_cycle()
            self._vend_seconds(self.o.vend_seconds)
            time.sleep(rng.uniform(0, 0.3))
            self._ensure_daemon()
        elif fault == "brownout":
            self._wait(lambda: self._brownout.get("fired"), 5)
            rig.emulator.trace = None
            if self._brownout.get("fired"):
                self.f["power cycles"] += 1
                self.f["power cycles: brownout right after VEND, reply lost"
                       + (" (product fell)" if self._brownout["fell"] else "")] += 1
        elif fault == "broker_restart":
            time.sleep(rng.uniform(0, 0.4))
            rig.broker.restart()
            self.f["broker restarts"] += 1
        elif fault == "mqtt_outage":
            time.sleep(rng.uniform(0.5, 3.0))
            rig.broker.start()
        elif fault == "daemon_down_pay":
            time.sleep(rng.uniform(0, 1.5))
            self._ensure_daemon()
        elif fault == "api_down":
            time.sleep(rng.uniform(0, 0.5))
            rig.cloud.set_api_mode("ok")
        elif fault == "door":
            if not self._door_open:
                time.sleep(rng.uniform(0, 0.3))
                self._open_door("after the payment")
            # shut before the grace runs out (the payment is served) or after it (refunded late)
            time.sleep(rng.uniform(0, self.o.late_payment_grace + 1.0))
            rig.emulator.close_door()
            self._door_open = False

    def _open_door(self, when: str) -> None:
        self.rig.emulator.open_door()
        self._door_open = True
        self.f[f"door opened {when}"] += 1

    def _arm_brownout(self) -> None:
        self._brownout = arm_brownout(self.rig.emulator, product_fell=self.rng.random() < 0.3)

    def _power_cycle(self) -> None:
        fell = self.rng.random() < 0.3
        running = any(e.result is None for e in self.rig.emulator.ledger())
        self.rig.emulator.power_cycle(product_fell=fell)
        self.f["power cycles"] += 1
        if running:
            self.f["power cycles: mid-vend" + (" (product fell)" if fell else "")] += 1

    def _vend_seconds(self, seconds: float) -> None:
        self.rig.emulator.call(lambda b: setattr(b, "vend_duration", seconds))

    # ---- settling ----------------------------------------------------------------------------

    def quiesce(self) -> dict:
        """All faults off, everything up; wait (bounded) until the books settle."""
        rig = self.rig
        self._pending = None
        if self.armed is not None:
            rig.restart_daemon()
            self.armed = None
        em = rig.emulator

        def quiet(board: Any) -> None:
            em.trace = None
            em.corrupt_rate = em.drop_rate = 0.0
            board.vend_duration = self.o.vend_seconds
            board.clear_injections()
        em.call(quiet)
        if not rig.broker.running:
            rig.broker.start()
        if self._door_open:
            em.close_door()
            self._door_open = False
        rig.cloud.set_ack_policy("all")
        rig.cloud.set_api_mode("ok")
        self._supervise()
        deadline = time.monotonic() + self.o.quiesce_timeout
        while True:
            self._supervise()
            left = outstanding(Evidence.from_rig(rig))
            if not any(left.values()) or time.monotonic() > deadline:
                return left
            time.sleep(0.5)

    def _supervise(self) -> None:
        """Restart the daemon if it died: by its armed crash point (expected) or otherwise."""
        rig = self.rig
        if rig.proc is not None and rig.proc.poll() is not None:
            rc = rig.proc.returncode
            rig.proc = None
            if rc == -9 and self.armed is not None:
                self._note(f"  crash point {self.armed} fired")
                self.f["kills: crash point fired"] += 1
                self.f[f"crash point fired: {self.armed}"] += 1
            else:
                self._note(f"  daemon exited by itself rc={rc}")
                tail = rig.daemon_log().strip().splitlines()[-1:] or [""]
                self.anomalies[f"daemon exited by itself rc={rc}: {tail[0][-200:]}"] += 1
            self.armed = None
        if self._pending != "daemon_down_pay":
            self._ensure_daemon()

    def _ensure_daemon(self) -> None:
        if self.rig.proc is None:          # never two daemons on one journal
            self.rig.start_daemon()

    def _wait(self, predicate: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self._supervise()
            value = predicate()
            if value or time.monotonic() > deadline:
                return value or None
            time.sleep(0.02)

    def _stuck(self, what: str) -> None:
        """The machine stopped serving customers: dump the daemon's threads (faulthandler on
        SIGABRT, into daemon.log), note it, and restart it as systemd's watchdog would."""
        rig = self.rig
        self.f["stuck: recovered by restarting the daemon"] += 1
        self.anomalies[f"{what}; screen={rig.screen().get('screen')!r}"] += 1
        self._note(f"  STUCK: {what}; screen={rig.screen()}; dumping the daemon's threads")
        if rig.proc is not None and rig.proc.poll() is None:
            rig.proc.send_signal(signal.SIGABRT)
            try:
                rig.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        rig.restart_daemon()
        self.armed = None

    def _scan_events(self) -> None:
        # The cloud's public events() deep-copies every event ever stored, O(sales) per poll; a
        # long soak reads only the new rows of its table, under the cloud's own lock (read only).
        cloud = self.rig.cloud
        with cloud._lock:
            new = list(cloud._events.values())[self._events_seen:]
        self._events_seen += len(new)
        for e in new:
            if e.get("type") == "vend_result" and e.get("txn_id"):
                self._answered.add(("txn", e["txn_id"]))
            elif e.get("type") == "command_result":
                self._answered.add(("cmd", e.get("cmd_id")))

    def _answered_for(self, kind: str, ident: str) -> bool:
        self._scan_events()
        return (kind, ident) in self._answered


def arm_brownout(em: Any, *, product_fell: bool = False) -> dict:
    """The motor's inrush browns the board out: it accepts the next VEND, starts the motor, its
    reply never leaves, and it reboots. Done on the emulator thread through its trace hook,
    between the board acting on the line and the reply going out. Returns a dict that gets
    "fired" once it happened; the caller sets `em.trace = None` afterwards."""
    st: dict = {"fell": product_fell}

    def hook(direction: str, line: bytes, note: str) -> None:
        if "fired" in st:
            return
        if direction == "<" and note == "" and b" VEND " in line:
            st["saved"], em.drop_rate = em.drop_rate, 1.0      # this VEND's reply is lost
        elif direction == ">" and "saved" in st:
            em.drop_rate = st["saved"]
            em.board.power_cycle(em.clock(), product_fell=product_fell)
            st["fired"] = True
    em.trace = hook
    return st


def _weighted(rng: random.Random, weights: dict) -> str:
    names = sorted(weights)
    return rng.choices(names, [weights[n] for n in names])[0]
