"""Shared builders for the sans-I/O core tests (tests/test_core_*.py, tests/test_journal.py).

- `make_settings()`: a Settings with a three-slot planogram built from vending.config.Product.
- `FakeJournal`: a tiny in-memory journal that applies `Persist` ops to dicts, refuses what the
  real schema refuses, and supplies the facts for `E.PaymentIn` / `E.CommandIn`.
- `Rig`: one Machine, a clock, the fake journal, the full action log and the last view shown.
  `idle_rig()` brings it to IDLE with the board up; `to_*` drive a sale to each phase.
- `actions_of(type, actions)` and `summary(actions)` for assertions.
"""
from __future__ import annotations

from vending import messages as msg
from vending.config import Product
from vending.core import actions as A
from vending.core import events as E
from vending.core.machine import Machine, Phase, Settings
from vending.core.vends import Vend
from vending.display.view import Screen

T0 = 1_700_000_000.0
MID = "vm-test-1"
CUR = "CNY"
PRICES = {1: 350, 2: 500, 3: 1200}
BOOT = 7

PLANOGRAM = {
    1: Product(1, "cola", "可乐", "Cola", PRICES[1], CUR),
    2: Product(2, "water", "水", "Water", PRICES[2], CUR),
    3: Product(3, "chips", "薯片", "Chips", PRICES[3], CUR),
}

# Noise that says nothing about a transition: views are checked separately, status/telemetry
# and logs are not the subject of these tests.
NOISE = (A.Show, A.Log, A.PublishStatus, A.PublishTelemetry)


def make_settings(**overrides) -> Settings:
    base = dict(machine_id=MID, currency=CUR, planogram=dict(PLANOGRAM), started=T0,
                follow_qr_url="https://example.test/follow")
    base.update(overrides)
    return Settings(**base)


def actions_of(kind, actions) -> list:
    """The actions of one type, in order. `kind` may be a tuple of types."""
    return [a for a in actions if isinstance(a, kind)]


def ops_of(kind, actions) -> list:
    """Journal ops of one type found inside the Persists of `actions`, in order."""
    return [op for p in actions_of(A.Persist, actions) for op in p.ops if isinstance(op, kind)]


def published(actions, type_: str | None = None) -> list[dict]:
    return [a.fields for a in actions_of(A.Publish, actions) if type_ is None or a.type == type_]


def vend_results(actions) -> list[dict]:
    return published(actions, "vend_result")


def summary(actions) -> list[str]:
    """Readable key actions: Persist[SavePayment,SaveVend], Publish:vend_result, SendVend, ..."""
    out = []
    for a in actions:
        if isinstance(a, NOISE):
            continue
        if isinstance(a, A.Persist):
            out.append("Persist[" + ",".join(type(op).__name__ for op in a.ops) + "]")
        elif isinstance(a, A.Publish):
            out.append(f"Publish:{a.type}")
        else:
            out.append(type(a).__name__)
    return out


def index_of(actions, pred) -> int:
    for i, a in enumerate(actions):
        if pred(a):
            return i
    raise AssertionError("no such action in " + repr(summary(actions)))


def persist_with(actions, op_type, **attrs) -> int:
    """Index of the first Persist holding an op of `op_type` whose attributes match `attrs`."""
    return index_of(actions, lambda a: isinstance(a, A.Persist) and any(
        isinstance(op, op_type) and all(getattr(op, k) == v for k, v in attrs.items()) for op in a.ops))


def payment(order_id: str, *, txn_id: str = "txn-1", amount: int = PRICES[1], currency: str = CUR,
            payer: str | None = None, provider: str = "sandbox", ts: int = int(T0)) -> msg.Payment:
    fields = msg.payment_fields(order_id=order_id, amount=amount, currency=currency,
                                provider=provider, txn_id=txn_id, payer=payer)
    message = {"v": 1, "type": "payment", "machine_id": MID, "ts": ts, **fields, "sig": "x"}
    return msg.Payment(order_id=order_id, amount=amount, currency=currency, provider=provider,
                       txn_id=txn_id, payer=payer, promo=None, ts=ts, message=message)


def command(cmd_id: str, name: str, args: dict | None = None, *, ts: float, expires: float) -> msg.Command:
    fields = msg.command_fields(cmd_id=cmd_id, name=name, args=args or {}, expires=int(expires))
    message = {"v": 1, "type": "command", "machine_id": MID, "ts": int(ts), **fields, "sig": "x"}
    return msg.Command(cmd_id=cmd_id, name=name, args=args or {}, expires=int(expires),
                       ts=int(ts), message=message)


class JournalViolation(AssertionError):
    """The fake journal refused an op the real schema would refuse (or that makes no sense)."""


class FakeJournal:
    """Applies Persist ops to dicts, with the real journal's uniqueness rules."""

    def __init__(self) -> None:
        self.orders: dict[str, dict] = {}
        self.payments: dict[str, A.SavePayment] = {}
        self.vends: dict[str, dict] = {}          # vend_id -> {"op", "state", "boot", "result"}
        self.events: dict[str, A.SaveEvent] = {}
        self.acked: set[str] = set()
        self.commands: dict[str, tuple] = {}
        self.settings: dict = {}

    def apply(self, ops: tuple) -> None:
        for op in ops:
            getattr(self, "_" + type(op).__name__)(op)

    def _SaveOrder(self, o: A.SaveOrder) -> None:
        self.orders.setdefault(o.order_id, {"op": o, "closed_at": None})

    def _CloseOrder(self, o: A.CloseOrder) -> None:
        row = self.orders.get(o.order_id)
        if row is not None and row["closed_at"] is None:
            row["closed_at"] = o.closed_at

    def _SavePayment(self, p: A.SavePayment) -> None:
        if p.txn_id in self.payments:
            raise JournalViolation(f"txn {p.txn_id} saved twice")
        if p.disposition == "dispense" and any(
                q.order_id == p.order_id and q.disposition == "dispense" for q in self.payments.values()):
            raise JournalViolation(f"second accepted payment for order {p.order_id}")
        self.payments[p.txn_id] = p

    def _SaveVend(self, v: A.SaveVend) -> None:
        if v.vend_id in self.vends or any(r["op"].order_id == v.order_id for r in self.vends.values()):
            raise JournalViolation(f"second vend for order {v.order_id}")
        self.vends[v.vend_id] = {"op": v, "state": "pending", "boot": None, "result": None}

    def _VendSent(self, v: A.VendSent) -> None:
        row = self.vends.get(v.vend_id)
        if row is None or row["state"] not in ("pending", "sent"):
            raise JournalViolation(f"VendSent for vend {v.vend_id} in state {row and row['state']}")
        row.update(state="sent", boot=v.boot)

    def _VendFinished(self, v: A.VendFinished) -> None:
        row = self.vends.get(v.vend_id)
        if row is None or row["state"] == "finished":
            raise JournalViolation(f"VendFinished for vend {v.vend_id} twice or unknown")
        row.update(state="finished", result=v.result)

    def _SaveEvent(self, e: A.SaveEvent) -> None:
        if e.event_id in self.events:
            raise JournalViolation(f"event {e.event_id} saved twice")
        self.events[e.event_id] = e

    def _EventAcked(self, e: A.EventAcked) -> None:
        self.acked.add(e.event_id)

    def _SaveCommand(self, c: A.SaveCommand) -> None:
        self.commands[c.cmd_id] = (c.ok, c.error)

    def _SaveSetting(self, s: A.SaveSetting) -> None:
        self.settings[s.key] = s.value

    # ---- facts for the core ----

    def order_facts(self, order_id: str) -> E.OrderFacts | None:
        row = self.orders.get(order_id)
        if row is None:
            return None
        o = row["op"]
        paid = next((p.txn_id for p in self.payments.values()
                     if p.order_id == order_id and p.disposition == "dispense"), None)
        return E.OrderFacts(o.order_id, o.session_id, o.slot, o.product_id, o.amount, o.currency,
                            row["closed_at"], paid)

    def payer_seen(self, payer: str | None) -> bool:
        if payer is None:
            return True
        return any(p.payer == payer and p.disposition == "dispense" for p in self.payments.values())

    def payment_in(self, pay: msg.Payment, token=None) -> E.PaymentIn:
        return E.PaymentIn(payment=pay, token=token, txn_seen=pay.txn_id in self.payments,
                           order=self.order_facts(pay.order_id), payer_seen=self.payer_seen(pay.payer))

    def command_in(self, cmd: msg.Command, token=None) -> E.CommandIn:
        return E.CommandIn(cmd, token, self.commands.get(cmd.cmd_id))

    def unfinished_vends(self) -> list[Vend]:
        out = []
        for vid, r in self.vends.items():
            if r["state"] == "finished":
                continue
            o = r["op"]
            out.append(Vend(vend_id=vid, order_id=o.order_id, kind=o.kind, slot=o.slot, txn_id=o.txn_id,
                            amount=o.amount, currency=o.currency, payer_new=o.payer_new,
                            created_at=o.created_at, expires=o.expires, state=r["state"], boot=r["boot"]))
        return out

    def event_list(self, type_: str | None = None) -> list[dict]:
        return [e.fields for e in self.events.values() if type_ is None or e.type == type_]


class Rig:
    """One Machine driven with a clock; every Persist is applied to a FakeJournal at once."""

    def __init__(self, settings: Settings | None = None, now: float = T0, **overrides):
        self.s = settings or make_settings(**overrides)
        self.m = Machine(self.s, "t", now)
        self.now = now
        self.journal = FakeJournal()
        self.log: list = []
        self.view = None
        self._tokens = 0

    # ---- driving ----

    def feed(self, ev, dt: float = 0.0) -> list:
        self.now += dt
        out = self.m.handle(ev, self.now)
        for a in out:
            if isinstance(a, A.Persist):
                self.journal.apply(a.ops)
        self.log.extend(out)
        shows = actions_of(A.Show, out)
        if shows:
            self.view = shows[-1].view
        return out

    def at(self, when: float, ev) -> list:
        return self.feed(ev, dt=when - self.now)

    def tick(self, dt: float = 0.0) -> list:
        return self.feed(E.Tick(), dt)

    def token(self) -> str:
        self._tokens += 1
        return f"tok{self._tokens}"

    def pay(self, order_id: str, dt: float = 0.0, token: object = "auto", **kw) -> list:
        """A payment whose journal facts come from what this machine has persisted so far."""
        pay = payment(order_id, **kw)
        return self.feed(self.journal.payment_in(pay, self.token() if token == "auto" else token), dt)

    def cmd(self, cmd_id: str, name: str, args: dict | None = None, *, ts: float | None = None,
            expires: float | None = None, dt: float = 0.0) -> list:
        now = self.now + dt
        c = command(cmd_id, name, args, ts=now if ts is None else ts,
                    expires=now + 600 if expires is None else expires)
        return self.feed(self.journal.command_in(c, self.token()), dt)

    # ---- state ----

    @property
    def phase(self) -> Phase:
        return self.m.phase

    @property
    def screen(self) -> Screen | None:
        return None if self.view is None else self.view.screen

    def last(self, kind):
        found = actions_of(kind, self.log)
        assert found, f"no {kind.__name__} so far"
        return found[-1]


def idle_rig(settings: Settings | None = None, boot: int = BOOT, **overrides) -> Rig:
    """A machine in IDLE with MQTT and the board up, slots read, first telemetry done."""
    r = Rig(settings, **overrides)
    r.feed(E.MqttUp())
    r.feed(E.BoardUp(boot=boot, slots=len(PLANOGRAM)))
    r.feed(E.SlotsSeen(frozenset(), frozenset()))
    r.feed(E.BoardStatus(boot=boot, door_open=False, temp=45))
    r.tick()
    assert r.phase is Phase.IDLE and r.screen is Screen.GRID
    return r


def to_ordering(r: Rig, slot: int = 1) -> A.CreateOrder:
    out = r.feed(E.KeyPressed(slot))
    assert r.phase is Phase.ORDERING, summary(out)
    return actions_of(A.CreateOrder, out)[0]


def order_created(r: Rig, co: A.CreateOrder, order_id: str, *, offline: bool = False,
                  ttl: int = 300, amount: int | None = None) -> E.OrderCreated:
    return E.OrderCreated(co.session_id, order_id, f"https://pay.example.test/{order_id}",
                          co.amount if amount is None else amount, co.currency,
                          int(r.now) + ttl, offline=offline, slot=co.slot)


def to_awaiting(r: Rig, slot: int = 1, order_id: str = "ord-1", *, offline: bool = False,
                ttl: int = 300) -> str:
    co = to_ordering(r, slot)
    r.feed(order_created(r, co, order_id, offline=offline, ttl=ttl))
    assert r.phase is Phase.AWAITING
    return order_id


def to_cancelling(r: Rig, slot: int = 1, order_id: str = "ord-1") -> str:
    to_awaiting(r, slot, order_id)
    r.feed(E.CancelPressed())
    assert r.phase is Phase.CANCELLING
    return order_id


def to_paid_elsewhere(r: Rig, slot: int = 1, order_id: str = "ord-1") -> str:
    to_cancelling(r, slot, order_id)
    r.feed(E.CancelAnswered(order_id, "paid"))
    assert r.phase is Phase.AWAITING and r.m.session.paid_elsewhere
    return order_id


def to_dispensing(r: Rig, slot: int = 1, order_id: str = "ord-1", txn_id: str = "txn-1",
                  **pay_kw) -> str:
    """Paid and the VEND on the wire; returns the vend_id."""
    to_awaiting(r, slot, order_id)
    out = r.pay(order_id, txn_id=txn_id, amount=PRICES[slot], **pay_kw)
    assert r.phase is Phase.DISPENSING, summary(out)
    sends = actions_of(A.SendVend, out)
    assert len(sends) == 1, summary(out)
    return sends[0].vend_id


def to_reporting(r: Rig, result: str = "ok", slot: int = 1, order_id: str = "ord-1",
                 txn_id: str = "txn-1") -> str:
    vid = to_dispensing(r, slot, order_id, txn_id)
    r.feed(E.VendReply(vid, "done", result))
    assert r.phase is Phase.REPORTING
    return vid


def restored_rig(vends: list[Vend], *, settings: Settings | None = None, saved: dict | None = None,
                 **overrides) -> Rig:
    """A freshly started machine with unfinished vends from a journal, board not yet up."""
    r = Rig(settings, **overrides)
    r.m.restore(vends, saved or {})
    for v in vends:
        r.journal.vends[v.vend_id] = {
            "op": A.SaveVend(v.vend_id, v.order_id, v.kind, v.slot, v.txn_id, v.amount, v.currency,
                             v.payer_new, v.created_at, v.expires),
            "state": "pending" if v.state == "pending" else "sent", "boot": v.boot, "result": None}
    r.feed(E.MqttUp())
    return r


def paid_vend(order_id: str = "ord-r", *, state: str = "pending", boot: int | None = None,
              created_at: float = T0, slot: int = 1, txn_id: str = "txn-r") -> Vend:
    return Vend(vend_id=msg.vend_id_for(MID, order_id), order_id=order_id, kind="paid", slot=slot,
                txn_id=txn_id, amount=PRICES[slot], currency=CUR, payer_new=False,
                created_at=created_at, state=state, boot=boot)

