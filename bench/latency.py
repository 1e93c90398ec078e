"""What the customer waits for: payment -> VEND on the wire, and key press -> QR on the screen.

Runs the whole machine on one host with vending.sandbox.rig (mosquitto, the board emulator on a
real pty, the sandbox cloud, the daemon as a real child process) and sells --sales products in
API mode, then --offline-sales with the orders API down (the daemon mints the offline QR).
Every timestamp is time.monotonic() taken in this process: the cloud and the emulator live
here, only the daemon is elsewhere, and it is the thing being timed.

* payment -> VEND: from just before cloud.pay() publishes the signed payment to the moment the
  emulator reads the VEND line off the pty (its trace callback, on the emulator thread).
  Baseline, one sample per sale, taken between sales: a bare paho QoS 1 publish -> receive by a
  second client on the same broker, plus one bare VEND exchange (write a line, read the reply)
  on a second emulator on its own pty.
* key -> QR: from the key press registered on the board (timestamped on the emulator thread)
  to the rename of the PNG display's JSON sidecar showing screen "qr" with a new order (the
  sidecar is renamed after the PNG, so the image is ready then). The rename is seen through
  inotify, not a poll. Also shown: from the POLL reply that carries the key event on the wire,
  which takes the serial poll interval out. Baseline: make_qr + to_png of the same URL in this
  process, plus one bare signed HTTP POST /v1/orders to the sandbox API (503 when it is down).

Ratios are measured / baseline (baseline = per-sale sum of its legs). No thresholds.

    .venv/bin/python bench/latency.py [--sales 200] [--offline-sales N] [--warmup 5]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import secrets
import select
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
import serial  # noqa: E402

from _stats import ms, p50_p99, paired_sum, ratio, times  # noqa: E402
from firmware_bridge import vlp  # noqa: E402
from firmware_bridge.board import Board  # noqa: E402
from firmware_bridge.emulator import Emulator  # noqa: E402
from vending import qr, signing  # noqa: E402
from vending.sandbox.broker import Mosquitto  # noqa: E402
from vending.sandbox.rig import DEFAULT_PLANOGRAM, Rig, RigOptions  # noqa: E402

PNG_SIZE = 480  # PngDisplay's default size_px, which the rig's daemon uses


# ---- observers -------------------------------------------------------------------------------

class SidecarWatcher:
    """Wakes on every rename into the screen directory (inotify IN_MOVED_TO) and reads the
    sidecar then, so the time taken is the moment a reader could first see the new screen.
    Without inotify it polls every `poll` seconds and the error is up to that interval."""

    IN_MOVED_TO, IN_CLOSE_WRITE, IN_NONBLOCK = 0x80, 0x08, 0o4000

    def __init__(self, sidecar: Path, poll: float = 0.0005) -> None:
        self.sidecar, self.poll, self.fd = sidecar, poll, -1
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        try:
            fd = libc.inotify_init1(self.IN_NONBLOCK)
            if fd >= 0 and libc.inotify_add_watch(fd, str(sidecar.parent).encode(),
                                                  self.IN_MOVED_TO | self.IN_CLOSE_WRITE) >= 0:
                self.fd = fd
        except AttributeError:
            pass
        self.method = "inotify" if self.fd >= 0 else f"poll every {poll * 1e3:g} ms"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def view(self) -> dict:
        try:
            return json.loads(self.sidecar.read_bytes())["view"]
        except (FileNotFoundError, ValueError, KeyError):
            return {}

    def wait(self, pred: Callable[[dict], bool], timeout: float = 15.0) -> tuple[float, dict]:
        deadline = time.monotonic() + timeout
        t = time.monotonic()
        while True:
            v = self.view()
            if v and pred(v):
                return t, v
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"screen never matched; last view: {v.get('screen')!r}")
            if self.fd >= 0:
                select.select([self.fd], [], [], min(left, 0.25))
                t = time.monotonic()
                try:
                    os.read(self.fd, 65536)
                except BlockingIOError:
                    pass
            else:
                time.sleep(self.poll)
                t = time.monotonic()


class WireTrace:
    """The emulator's trace callback: (direction, line, note), called on the emulator thread.
    Keeps the time of every VEND request and of every POLL reply carrying a key event."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.vends: list[tuple[float, bytes]] = []
        self.keys: list[float] = []

    def __call__(self, direction: str, line: bytes, note: str) -> None:
        t = time.monotonic()
        if direction == "<" and b" VEND " in line:
            with self._cond:
                self.vends.append((t, line))
                self._cond.notify_all()
        elif direction == ">" and b" kind=key " in line:
            with self._cond:
                self.keys.append(t)

    def first_vend_after(self, t0: float, timeout: float = 15.0) -> float:
        with self._cond:
            found = self._cond.wait_for(lambda: [t for t, _ in self.vends if t >= t0], timeout)
        if not found:
            raise TimeoutError("no VEND reached the board")
        return found[0]

    def first_key_after(self, t0: float) -> float | None:
        with self._cond:
            return next((t for t in self.keys if t >= t0), None)


# ---- baselines -------------------------------------------------------------------------------

class MqttProbe:
    """Two bare paho clients on the rig's broker: publish QoS 1 -> the other one receives.
    The receiver also subscribes to the machine's payments topic, as a bystander: the time a
    payment reaches it splits a sale into its MQTT leg and the daemon's leg."""

    def __init__(self, host: str, port: int, machine_id: str) -> None:
        self.topic = f"bench/latency/{secrets.token_hex(4)}"
        self._got = threading.Event()
        self._t = 0.0
        self._lock = threading.Lock()
        self.payments: dict[str, float] = {}  # txn_id -> when the bystander got it
        self.sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub")
        self.pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub")
        subscribed = threading.Event()
        self.sub.on_connect = lambda c, *a: c.subscribe(
            [(self.topic, 1), (f"vending/{machine_id}/payments", 1)])
        self.sub.on_subscribe = lambda *a: subscribed.set()
        self.sub.on_message = self._on_message
        for c in (self.sub, self.pub):
            c.connect(host, port, keepalive=30)
            c.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("bench MQTT subscriber never subscribed")

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        t = time.monotonic()
        if msg.topic == self.topic:
            self._t = t
            self._got.set()
            return
        try:
            txn = json.loads(msg.payload)["txn_id"]
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            self.payments.setdefault(txn, t)

    def payment_seen(self, txn_id: str, timeout: float = 5.0) -> float:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if txn_id in self.payments:
                    return self.payments[txn_id]
            if time.monotonic() > deadline:
                raise TimeoutError(f"the bystander never saw payment {txn_id}")
            time.sleep(0.001)

    def sample(self) -> float:
        self._got.clear()
        t0 = time.monotonic()
        self.pub.publish(self.topic, b'{"v":1,"type":"probe"}', qos=1)
        if not self._got.wait(10):
            raise TimeoutError("bench MQTT probe lost")
        return self._t - t0

    def close(self) -> None:
        for c in (self.pub, self.sub):
            c.disconnect()
            c.loop_stop()


class VlpProbe:
    """A second emulator on its own pty and a bare pyserial port: one VEND line out, the reply
    read back in chunks up to its "\\n" (the same read HostLink does)."""

    def __init__(self) -> None:
        self.emu = Emulator(Board(stock=10**7, vend_duration=0.0, seed=1), seed=1)
        self.port = serial.Serial(self.emu.start(), 115200, timeout=2.0)
        self.n = 0

    def sample(self) -> float:
        self.n += 1
        line = vlp.encode(self.n % vlp.MAX_SEQ + 1, "VEND", {"id": f"b{self.n}", "slot": self.n % 6 + 1})
        t0 = time.monotonic()
        self.port.write(line)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = self.port.read(max(1, self.port.in_waiting))
            if not chunk:
                raise TimeoutError(f"bare VLP exchange got no reply: {reply!r}")
            reply += chunk
        return time.monotonic() - t0

    def close(self) -> None:
        self.port.close()
        self.emu.stop()


class HttpProbe:
    """One bare signed POST /v1/orders with httpx (the sandbox speaks HTTP/1.0: a new
    connection per request, exactly as for the daemon). 201 when up, 503 when "down"."""

    def __init__(self, base_url: str, machine_id: str, key: bytes) -> None:
        self.http = httpx.Client(base_url=base_url.rstrip("/") + "/", trust_env=False, timeout=5)
        self.mid, self.key, self.n = machine_id, key, 0

    def sample(self) -> tuple[float, int]:
        self.n += 1
        slot, pid, _, _, price = DEFAULT_PLANOGRAM[self.n % len(DEFAULT_PLANOGRAM)]
        body = json.dumps({"machine_id": self.mid, "slot": slot, "product_id": pid,
                           "amount": price, "currency": "CNY", "session_id": f"bench-{self.n}"},
                          separators=(",", ":")).encode()
        t0 = time.monotonic()
        req = self.http.build_request("POST", "v1/orders", content=body)
        ts = str(int(time.time()))
        req.headers.update({"X-Machine-Id": self.mid, "X-Timestamp": ts,
                            "Content-Type": "application/json", "X-Signature": signing.http_signature(
                                self.key, "POST", req.url.raw_path.decode("ascii"), ts, body)})
        status = self.http.send(req).status_code
        return time.monotonic() - t0, status

    def close(self) -> None:
        self.http.close()


def render_sample(url: str) -> float:
    t0 = time.monotonic()
    qr.to_png(qr.make_qr(url), PNG_SIZE)
    return time.monotonic() - t0


# ---- the sales -------------------------------------------------------------------------------

def sell(rig: Rig, wire: WireTrace, screen: SidecarWatcher, n: int, warmup: int, mqttp: MqttProbe,
         vlpp: VlpProbe, httpp: HttpProbe, seen: set[str]) -> dict[str, list[float]]:
    s: dict[str, list[float]] = {k: [] for k in (
        "press_qr", "wire_qr", "pay_vend", "pay_seen", "seen_vend", "mqtt", "vlp", "render", "http")}
    s["http_status"] = []
    assert rig.emulator is not None and rig.cloud is not None
    for i in range(warmup + n):
        slot = i % rig.o.slots + 1
        t_key = rig.emulator.call(lambda b: (b.press_key(slot), time.monotonic())[1])
        t_qr, view = screen.wait(lambda v: v.get("screen") == "qr" and v.get("slot") == slot
                                 and v.get("order_id") not in seen)
        seen.add(view["order_id"])
        t_wire = wire.first_key_after(t_key)
        t_pay = time.monotonic()
        pay = rig.cloud.pay(view["order_id"], amount=view["amount"], currency=view["currency"])
        t_vend = wire.first_vend_after(t_pay)
        # the sale is over once the cloud holds its acked vend_result; the thank-you screen
        # stays up (report_seconds) and the next key press starts the next session over it
        if not rig.cloud.wait_for(lambda: _acked_result(rig, pay["txn_id"]), timeout=15):
            raise TimeoutError(f"no acked vend_result for sale {i}:\n{rig.daemon_log()[-2000:]}")
        screen.wait(lambda v: v.get("screen") in ("thanks", "refund") and v.get("seq", 0) > view["seq"])
        if i < warmup:
            continue
        s["press_qr"].append(t_qr - t_key)
        if t_wire is None:
            raise RuntimeError(f"sale {i}: no POLL reply carried the key event")
        s["wire_qr"].append(t_qr - t_wire)
        s["pay_vend"].append(t_vend - t_pay)
        t_seen = mqttp.payment_seen(pay["txn_id"])
        s["pay_seen"].append(t_seen - t_pay)
        s["seen_vend"].append(t_vend - t_seen)
        # the baselines, one sample each per sale, while the thank-you screen shows
        s["mqtt"].append(mqttp.sample())
        s["vlp"].append(vlpp.sample())
        s["render"].append(render_sample(view["qr_url"]))
        t, status = httpp.sample()
        s["http"].append(t)
        s["http_status"].append(status)
    return s


def _acked_result(rig: Rig, txn_id: str) -> bool:
    assert rig.cloud is not None
    rs = rig.results(txn_id=txn_id)
    return bool(rs) and rs[0]["event_id"] in rig.cloud.acked_event_ids()


def row(name: str, samples: list[float]) -> tuple[float, float]:
    p50, p99 = p50_p99(samples)
    print(f"  {name:42} {ms(p50)} {ms(p99)}")
    return p50, p99


def report(title: str, measured: list[tuple], legs: list[tuple[str, list[float]]]) -> None:
    """`measured`: (name, samples) against the sum of the legs, or (name, samples, leg name)
    against that one leg (the two halves of a path, each against its own floor)."""
    print(f"\n{title}")
    print(f"  {'':42} {'p50':>10} {'p99':>10} {'ratio p50':>9} {'ratio p99':>9}  against")
    base = paired_sum(*(x for _, x in legs))
    for name, xs in legs:
        row(f"baseline: {name}", xs)
    row("baseline: sum of the legs", base)
    by_name = dict(legs)
    for name, xs, *against in measured:
        ref = by_name[against[0]] if against else base
        p50, p99 = p50_p99(xs)
        b50, b99 = p50_p99(ref)
        print(f"  {name:42} {ms(p50)} {ms(p99)} {times(ratio(p50, b50))} {times(ratio(p99, b99))}"
              f"  {against[0] if against else 'the sum'}")


def nodelay(sock: object) -> None:
    """TCP_NODELAY on a paho client's socket (paho 2.2 leaves Nagle on)."""
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sales", type=int, default=200, help="API-mode sales (default 200)")
    parser.add_argument("--offline-sales", type=int, default=None,
                        help="sales with the orders API down (default: --sales)")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured sales per mode (default 5)")
    parser.add_argument("--vend-seconds", type=float, default=0.05,
                        help="emulated motor run per dispense (default 0.05)")
    parser.add_argument("--tcp-nodelay", action="store_true",
                        help="diagnostic: turn Nagle off on the broker (set_tcp_nodelay) and on the "
                             "sandbox cloud's MQTT socket; see bench/README.md")
    args = parser.parse_args(argv)
    offline_n = args.sales if args.offline_sales is None else args.offline_sales
    if args.sales < 1 or offline_n < 0 or args.warmup < 0:
        parser.error("--sales must be >= 1, --offline-sales and --warmup >= 0")

    started = time.monotonic()
    total = 2 * args.warmup + args.sales + offline_n
    workdir = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    broker = Mosquitto(workdir=workdir / "broker")
    if args.tcp_nodelay:  # the config is read at start(); it is a global mosquitto 2 option
        broker.conf_path.write_text(broker.conf_path.read_text() + "set_tcp_nodelay true\n")
    rig = Rig(workdir, RigOptions(vend_seconds=args.vend_seconds, stock=total + 10,
                                  log_level="WARNING"), broker=broker)
    wire = WireTrace()
    probes: list = []
    ok = False
    try:
        rig.start(daemon=False)
        assert rig.emulator is not None and rig.cloud is not None
        rig.emulator.trace = wire  # read by the emulator thread on every line; set before the daemon
        if args.tcp_nodelay:
            nodelay(rig.cloud._mqtt.socket())  # the sandbox cloud's paho client, connected by now
        screen = SidecarWatcher(rig.png_path.with_suffix(".json"))
        probes.append(screen)
        rig.start_daemon()
        rig.wait_screen("grid", timeout=30)
        mqttp = MqttProbe(rig.broker.host, rig.broker.port, rig.o.machine_id)
        probes.append(mqttp)
        vlpp = VlpProbe()
        probes.append(vlpp)
        httpp = HttpProbe(rig.cloud.base_url, rig.o.machine_id, rig.key)
        probes.append(httpp)
        if args.tcp_nodelay:
            for c in (mqttp.pub, mqttp.sub):
                nodelay(c.socket())
        seen: set[str] = set()
        api = sell(rig, wire, screen, args.sales, args.warmup, mqttp, vlpp, httpp, seen)
        off = None
        if offline_n:
            rig.cloud.set_api_mode("down")
            off = sell(rig, wire, screen, offline_n, args.warmup, mqttp, vlpp, httpp, seen)
        vends = rig.emulator.dispense_count()
        results = [e["result"] for e in rig.cloud.events("vend_result")]
        ok = True
    finally:
        for p in reversed(probes):
            p.close()
        rig.stop()
        broker.close()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"bench/latency.py: failed; daemon log and journal kept in {workdir}", file=sys.stderr)
    elapsed = time.monotonic() - started

    print(f"end to end through the sandbox rig: {args.sales} API-mode + {offline_n} offline sales "
          f"(+{args.warmup} unmeasured per mode), vend_seconds={args.vend_seconds}, serial "
          f"poll_interval=0.02 s (rig), sidecar seen by {screen.method}, "
          f"Nagle {'off (--tcp-nodelay)' if args.tcp_nodelay else 'on (defaults)'}")
    print(f"{len(results)} vend_results ({results.count('ok')} ok), {vends} dispenses on the board, "
          f"{elapsed:.1f} s wall")
    mq, vl = "paho QoS1 publish->receive", "bare VLP VEND exchange"
    pay_legs = lambda d: [(mq, d["mqtt"]), (vl, d["vlp"])]  # noqa: E731
    pay_rows = lambda d: [("sale: cloud.pay -> VEND read", d["pay_vend"]),  # noqa: E731
                          ("  cloud.pay -> bystander has it", d["pay_seen"], mq),
                          ("  bystander has it -> VEND read", d["seen_vend"], vl)]
    report(f"payment -> VEND on the wire, API mode ({args.sales} sales)", pay_rows(api), pay_legs(api))
    report(f"key -> QR image ready, API mode ({args.sales} sales; HTTP "
           f"{sorted(set(api['http_status']))})",
           [("sale: key press -> sidecar qr", api["press_qr"]),
            ("sale: KEY on wire -> sidecar qr", api["wire_qr"])],
           [("make_qr + to_png, same URL", api["render"]), ("bare HTTP POST /v1/orders", api["http"])])
    if off is not None:
        report(f"key -> QR image ready, offline mode, API down ({offline_n} sales; HTTP "
               f"{sorted(set(off['http_status']))})",
               [("sale: key press -> sidecar qr", off["press_qr"]),
                ("sale: KEY on wire -> sidecar qr", off["wire_qr"])],
               [("make_qr + to_png, same URL", off["render"]),
                ("bare HTTP POST /v1/orders: 503", off["http"])])
        report(f"payment -> VEND on the wire, offline orders ({offline_n} sales)",
               pay_rows(off), pay_legs(off))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
