"""The sale state machine, transition by transition, plus a random-interleaving invariant test.

Part 1 is table-driven: every (phase, event) row of SESSION_TABLE and the global handlers that
move or guard a sale. Each row names a starting situation, the event, the phase after it, the
screen the customer sees after it (the last Show so far) and the key actions, in order.

Part 2 drives ONE Machine with random interleavings of customer, cloud and board events against a
modelled board (boot numbers, vend memory lost on reboot, physical motor starts counted) and
checks the contract's §5 invariants on the action stream.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from tests.core_helpers import (BOOT, CUR, PRICES, A, E, Phase, Rig, Screen,
                                actions_of, command, idle_rig, make_settings, order_created,
                                payment, published, summary, to_awaiting, to_cancelling, to_dispensing,
                                to_ordering, to_paid_elsewhere, to_reporting)
from vending.core.machine import GLOBAL_HANDLERS, SESSION_TABLE

S = make_settings()


# ---- starting situations -----------------------------------------------------------------

def st_idle() -> Rig:
    return idle_rig()


def st_idle_sold_out() -> Rig:
    r = idle_rig()
    r.feed(E.SlotsSeen(frozenset({2}), frozenset()))
    return r


def st_idle_closed_order() -> Rig:
    """IDLE; order ord-1 was cancelled (closed) just now: its customer may still pay."""
    r = idle_rig()
    to_cancelling(r)
    r.feed(E.CancelAnswered("ord-1", "cancelled"))
    assert r.phase is Phase.IDLE
    return r


def st_idle_board_down() -> Rig:
    r = idle_rig()
    r.feed(E.BoardDown("timeout"))
    return r


def st_idle_door_open() -> Rig:
    r = idle_rig()
    r.feed(E.DoorChanged(True))
    return r


def st_ordering() -> Rig:
    r = idle_rig()
    to_ordering(r)
    return r


def st_ordering_minting() -> Rig:
    """The API did not answer within offline_after: an offline order has been asked for."""
    r = st_ordering()
    r.tick(S.offline_after)
    assert r.m.session.minting
    return r


def st_ordering_no_offline() -> Rig:
    r = idle_rig(make_settings(offline_qr=False))
    to_ordering(r)
    return r


def st_awaiting() -> Rig:
    r = idle_rig()
    to_awaiting(r)
    return r


def st_awaiting_offline() -> Rig:
    r = idle_rig()
    to_awaiting(r, offline=True)
    return r


def st_awaiting_short_ttl() -> Rig:
    r = idle_rig()
    to_awaiting(r, ttl=30)
    return r


def st_paid_elsewhere() -> Rig:
    r = idle_rig()
    to_paid_elsewhere(r)
    return r


def st_cancelling() -> Rig:
    r = idle_rig()
    to_cancelling(r)
    return r


def st_dispensing() -> Rig:
    r = idle_rig()
    to_dispensing(r)
    return r


def st_reporting() -> Rig:
    r = idle_rig()
    to_reporting(r, "ok")
    return r


def st_reporting_refund() -> Rig:
    r = idle_rig()
    to_reporting(r, "jam")
    return r


def _stopping(r: Rig) -> Rig:
    r.feed(E.Shutdown())
    return r


def session_id(r: Rig) -> str:
    return r.m.session.session_id


def vend_id(r: Rig) -> str:
    return next(iter(r.m.vends))


@dataclass
class Row:
    id: str
    start: Callable[[], Rig]
    event: Callable[[Rig], object]       # built from the rig (ids, order facts, clock)
    phase: Phase
    screen: Screen
    actions: list[str]
    dt: float = 0.0
    marks: tuple = ()


def ev(e) -> Callable[[Rig], object]:
    return lambda r: e


def pay_ev(order_id: str, txn: str = "txn-9", amount: int = PRICES[1]) -> Callable[[Rig], object]:
    return lambda r: r.journal.payment_in(payment(order_id, txn_id=txn, amount=amount), "tok")


def created(order_id: str, *, other_session=False, amount=None, offline=False):
    def build(r: Rig):
        co = A.CreateOrder(session_id(r) if not other_session else "s-gone", 1, "cola", PRICES[1], CUR)
        return order_created(r, co, order_id, offline=offline, amount=amount)
    return build


def stray(order_id: str, offline: bool = False):
    return lambda r: E.OrderCreated("s-gone", order_id, "https://pay.example.test/x", PRICES[1], CUR,
                                    int(r.now) + 300, offline=offline, slot=1)


ALERT = ["Persist[SaveEvent]", "Publish:alert"]
CANCEL = ["Persist[CloseOrder]", "CancelOrder"]
DISPENSE = ["Persist[SavePayment,SaveVend]", "AckMessage", "Persist[VendSent]", "SendVend"]
REFUND_EVENT = ["Persist[SavePayment,SaveEvent]", "AckMessage", "Publish:vend_result"]
FINISH = ["Persist[VendFinished,SaveEvent]", "Publish:vend_result"]
FAILED = ["RefreshSlots", "Persist[VendFinished,SaveEvent,SaveEvent]", "Publish:vend_result", "Publish:alert"]


ROWS = [
    # ---- SESSION_TABLE -------------------------------------------------------------------------
    Row("idle-key", st_idle, ev(E.KeyPressed(1)), Phase.ORDERING, Screen.ORDERING, ["CreateOrder"]),
    Row("idle-key-sold-out", st_idle_sold_out, ev(E.KeyPressed(2)), Phase.IDLE, Screen.GRID, []),
    Row("idle-key-unknown-slot", st_idle, ev(E.KeyPressed(9)), Phase.IDLE, Screen.GRID, []),
    Row("idle-key-board-down", st_idle_board_down, ev(E.KeyPressed(1)), Phase.IDLE,
        Screen.OUT_OF_SERVICE, []),
    Row("idle-key-door-open", st_idle_door_open, ev(E.KeyPressed(1)), Phase.IDLE,
        Screen.OUT_OF_SERVICE, []),
    Row("reporting-key", st_reporting, ev(E.KeyPressed(2)), Phase.ORDERING, Screen.ORDERING,
        ["CreateOrder"]),
    Row("ordering-order-created", st_ordering, created("ord-1"), Phase.AWAITING, Screen.QR,
        ["Persist[SaveOrder]"]),
    Row("ordering-order-created-offline", st_ordering, created("ord-1", offline=True), Phase.AWAITING,
        Screen.QR, ["Persist[SaveOrder]"]),
    Row("ordering-order-wrong-amount", st_ordering, created("ord-1", amount=1), Phase.IDLE, Screen.GRID, []),
    Row("ordering-stray-order", st_ordering, created("ord-x", other_session=True), Phase.ORDERING,
        Screen.ORDERING, ["Persist[SaveOrder,CloseOrder]", "CancelOrder"]),
    Row("ordering-failed-unreachable", st_ordering,
        lambda r: E.OrderFailed(session_id(r), "unreachable"), Phase.ORDERING, Screen.ORDERING,
        ["MintOfflineOrder"]),
    Row("ordering-failed-refused", st_ordering, lambda r: E.OrderFailed(session_id(r), "refused"),
        Phase.IDLE, Screen.GRID, []),
    Row("ordering-failed-bad-order", st_ordering, lambda r: E.OrderFailed(session_id(r), "bad_order"),
        Phase.IDLE, Screen.GRID, ALERT),
    Row("ordering-failed-other-session", st_ordering, ev(E.OrderFailed("s-gone", "refused")),
        Phase.ORDERING, Screen.ORDERING, []),
    Row("ordering-failed-other-session-forged", st_ordering, ev(E.OrderFailed("s-gone", "bad_order")),
        Phase.ORDERING, Screen.ORDERING, ALERT),
    # the API's forged answer after the offline QR went up: the QR stays, the operator hears of it
    Row("awaiting-offline-late-forged-order", st_awaiting_offline,
        lambda r: E.OrderFailed(session_id(r), "bad_order"), Phase.AWAITING, Screen.QR, ALERT),
    Row("awaiting-late-refused-order", st_awaiting_offline,
        lambda r: E.OrderFailed(session_id(r), "refused"), Phase.AWAITING, Screen.QR, []),
    Row("ordering-cancel", st_ordering, ev(E.CancelPressed()), Phase.IDLE, Screen.GRID, []),
    Row("awaiting-cancel", st_awaiting, ev(E.CancelPressed()), Phase.CANCELLING, Screen.GRID, CANCEL),
    Row("awaiting-offline-cancel", st_awaiting_offline, ev(E.CancelPressed()), Phase.IDLE, Screen.GRID,
        ["Persist[CloseOrder]"]),
    Row("paid-elsewhere-cancel", st_paid_elsewhere, ev(E.CancelPressed()), Phase.CANCELLING, Screen.GRID,
        CANCEL),
    Row("cancelling-answer-cancelled", st_cancelling, ev(E.CancelAnswered("ord-1", "cancelled")),
        Phase.IDLE, Screen.GRID, []),
    Row("cancelling-answer-unreachable", st_cancelling, ev(E.CancelAnswered("ord-1", "unreachable")),
        Phase.IDLE, Screen.GRID, []),
    Row("cancelling-answer-paid", st_cancelling, ev(E.CancelAnswered("ord-1", "paid")),
        Phase.AWAITING, Screen.DISPENSING, ["FetchOrder"]),
    Row("cancelling-answer-other-order-paid", st_cancelling, ev(E.CancelAnswered("ord-old", "paid")),
        Phase.CANCELLING, Screen.GRID, ["FetchOrder"]),
    Row("reporting-cancel", st_reporting, ev(E.CancelPressed()), Phase.IDLE, Screen.GRID, []),
    # a slow cancel answer must not freeze the machine for the next customer
    Row("cancelling-key", st_cancelling, ev(E.KeyPressed(2)), Phase.ORDERING, Screen.ORDERING,
        ["CreateOrder"]),
    # ---- global handlers: customer input outside its phase ----------------------------------
    Row("idle-cancel", st_idle, ev(E.CancelPressed()), Phase.IDLE, Screen.GRID, []),
    Row("awaiting-key", st_awaiting, ev(E.KeyPressed(2)), Phase.AWAITING, Screen.QR, []),
    Row("dispensing-key", st_dispensing, ev(E.KeyPressed(2)), Phase.DISPENSING, Screen.DISPENSING, []),
    Row("dispensing-cancel", st_dispensing, ev(E.CancelPressed()), Phase.DISPENSING, Screen.DISPENSING, []),
    Row("idle-stray-order", st_idle, stray("ord-x"), Phase.IDLE, Screen.GRID,
        ["Persist[SaveOrder,CloseOrder]", "CancelOrder"]),
    Row("idle-stray-offline-order", st_idle, stray("ord-x", offline=True), Phase.IDLE, Screen.GRID,
        ["Persist[SaveOrder,CloseOrder]"]),
    Row("idle-late-cancel-answer-paid", st_idle, ev(E.CancelAnswered("ord-old", "paid")), Phase.IDLE,
        Screen.GRID, ["FetchOrder"]),
    Row("idle-late-cancel-answer-cancelled", st_idle, ev(E.CancelAnswered("ord-old", "cancelled")),
        Phase.IDLE, Screen.GRID, []),
    Row("idle-order-fetched", st_idle, ev(E.OrderFetched("ord-old", "paid")), Phase.IDLE, Screen.GRID, []),
    # ---- board down / up ------------------------------------------------------------------------
    Row("idle-board-down", st_idle, ev(E.BoardDown("timeout")), Phase.IDLE, Screen.OUT_OF_SERVICE, ALERT),
    Row("ordering-board-down", st_ordering, ev(E.BoardDown("timeout")), Phase.IDLE,
        Screen.OUT_OF_SERVICE, ALERT),
    Row("awaiting-board-down", st_awaiting, ev(E.BoardDown("timeout")), Phase.CANCELLING,
        Screen.OUT_OF_SERVICE, CANCEL + ALERT),
    Row("cancelling-board-down", st_cancelling, ev(E.BoardDown("timeout")), Phase.CANCELLING,
        Screen.OUT_OF_SERVICE, ALERT),
    Row("dispensing-board-down", st_dispensing, ev(E.BoardDown("timeout")), Phase.DISPENSING,
        Screen.DISPENSING, ALERT),
    Row("reporting-board-down", st_reporting, ev(E.BoardDown("timeout")), Phase.REPORTING,
        Screen.THANKS, ALERT),
    Row("board-down-again-no-second-alert", st_idle_board_down, ev(E.BoardDown("timeout")), Phase.IDLE,
        Screen.OUT_OF_SERVICE, []),
    Row("board-up-same-boot", st_idle_board_down, ev(E.BoardUp(BOOT, 3)), Phase.IDLE, Screen.GRID,
        ["RefreshSlots"]),
    Row("board-up-new-boot", st_idle_board_down, ev(E.BoardUp(BOOT + 1, 3)), Phase.IDLE, Screen.GRID,
        ALERT + ["RefreshSlots"]),
    Row("dispensing-board-reboot", st_dispensing, ev(E.BoardBoot(BOOT + 1)), Phase.DISPENSING,
        Screen.DISPENSING, ALERT + ["QueryVend"]),
    # ---- door -----------------------------------------------------------------------------------
    Row("idle-door-open", st_idle, ev(E.DoorChanged(True)), Phase.IDLE, Screen.OUT_OF_SERVICE, []),
    Row("ordering-door-open", st_ordering, ev(E.DoorChanged(True)), Phase.IDLE, Screen.OUT_OF_SERVICE,
        ALERT),
    Row("awaiting-door-open", st_awaiting, ev(E.DoorChanged(True)), Phase.CANCELLING,
        Screen.OUT_OF_SERVICE, CANCEL + ALERT),
    Row("dispensing-door-open", st_dispensing, ev(E.DoorChanged(True)), Phase.DISPENSING,
        Screen.DISPENSING, ALERT),
    Row("door-close", st_idle_door_open, ev(E.DoorChanged(False)), Phase.IDLE, Screen.GRID,
        ["RefreshSlots"]),
    Row("status-door-open", st_idle, ev(E.BoardStatus(BOOT, True, 40)), Phase.IDLE,
        Screen.OUT_OF_SERVICE, []),
    # ---- tick deadlines -------------------------------------------------------------------------
    Row("ordering-tick-early", st_ordering, ev(E.Tick()), Phase.ORDERING, Screen.ORDERING, [],
        dt=S.offline_after - 0.1),
    # the API is slow (a dead 4G link): the customer gets an offline QR instead of a wait
    Row("ordering-tick-api-slow", st_ordering, ev(E.Tick()), Phase.ORDERING, Screen.ORDERING,
        ["MintOfflineOrder"], dt=S.offline_after),
    Row("ordering-minting-tick-deadline", st_ordering_minting, ev(E.Tick()), Phase.IDLE, Screen.GRID,
        [], dt=S.ordering_limit),
    Row("ordering-minting-failed-unreachable", st_ordering_minting,
        lambda r: E.OrderFailed(session_id(r), "unreachable"), Phase.ORDERING, Screen.ORDERING, []),
    Row("ordering-tick-deadline-no-offline", st_ordering_no_offline, ev(E.Tick()), Phase.IDLE,
        Screen.GRID, [], dt=S.ordering_limit),
    Row("awaiting-tick-early", st_awaiting, ev(E.Tick()), Phase.AWAITING, Screen.QR, [],
        dt=S.session_timeout - 1),
    Row("awaiting-tick-timeout", st_awaiting, ev(E.Tick()), Phase.CANCELLING, Screen.GRID, CANCEL,
        dt=S.session_timeout),
    Row("awaiting-tick-order-expiry", st_awaiting_short_ttl, ev(E.Tick()), Phase.CANCELLING,
        Screen.GRID, CANCEL, dt=30),
    Row("awaiting-offline-tick-timeout", st_awaiting_offline, ev(E.Tick()), Phase.IDLE, Screen.GRID,
        ["Persist[CloseOrder]"], dt=S.session_timeout),
    Row("paid-elsewhere-tick-fetch", st_paid_elsewhere, ev(E.Tick()), Phase.AWAITING, Screen.DISPENSING,
        ["FetchOrder"], dt=S.reconcile_interval),
    Row("paid-elsewhere-tick-deadline", st_paid_elsewhere, ev(E.Tick()), Phase.IDLE, Screen.GRID, [],
        dt=S.late_payment_grace),
    Row("cancelling-tick-early", st_cancelling, ev(E.Tick()), Phase.CANCELLING, Screen.GRID, [],
        dt=S.cancel_wait - 1),
    Row("cancelling-tick-deadline", st_cancelling, ev(E.Tick()), Phase.IDLE, Screen.GRID, [],
        dt=S.cancel_wait),
    Row("reporting-tick-early", st_reporting, ev(E.Tick()), Phase.REPORTING, Screen.THANKS, [],
        dt=S.report_seconds - 1),
    Row("reporting-tick-deadline", st_reporting, ev(E.Tick()), Phase.IDLE, Screen.GRID, [],
        dt=S.report_seconds),
    Row("reporting-refund-tick-deadline", st_reporting_refund, ev(E.Tick()), Phase.IDLE, Screen.GRID, [],
        dt=S.report_seconds),
    # ---- a payment in each phase ----------------------------------------------------------------
    Row("idle-pay-closed-order-in-grace", st_idle_closed_order, pay_ev("ord-1"), Phase.DISPENSING,
        Screen.DISPENSING, DISPENSE),
    Row("idle-pay-closed-order-after-grace", st_idle_closed_order, pay_ev("ord-1"), Phase.IDLE,
        Screen.GRID, REFUND_EVENT, dt=S.late_payment_grace + 1),
    Row("idle-pay-unknown-order", st_idle, pay_ev("ord-nope"), Phase.IDLE, Screen.GRID, REFUND_EVENT),
    Row("ordering-pay-other-order", st_ordering, pay_ev("ord-nope"), Phase.ORDERING, Screen.ORDERING,
        REFUND_EVENT),
    Row("awaiting-pay", st_awaiting, pay_ev("ord-1"), Phase.DISPENSING, Screen.DISPENSING, DISPENSE),
    Row("awaiting-pay-mismatch", st_awaiting, pay_ev("ord-1", amount=1), Phase.AWAITING, Screen.QR,
        REFUND_EVENT),
    Row("paid-elsewhere-pay", st_paid_elsewhere, pay_ev("ord-1"), Phase.DISPENSING, Screen.DISPENSING,
        DISPENSE),
    Row("cancelling-pay", st_cancelling, pay_ev("ord-1"), Phase.DISPENSING, Screen.DISPENSING, DISPENSE),
    Row("dispensing-pay-duplicate", st_dispensing, pay_ev("ord-1", txn="txn-2"), Phase.DISPENSING,
        Screen.DISPENSING, REFUND_EVENT),
    Row("dispensing-pay-redelivery", st_dispensing, pay_ev("ord-1", txn="txn-1"), Phase.DISPENSING,
        Screen.DISPENSING, ["AckMessage"]),
    Row("reporting-pay-unknown-order", st_reporting, pay_ev("ord-nope"), Phase.REPORTING, Screen.THANKS,
        REFUND_EVENT),
    # ---- vend replies ---------------------------------------------------------------------------
    # `running` starts the VSTAT clock: the next VSTAT only after vstat_interval.
    Row("dispensing-running", st_dispensing, lambda r: E.VendReply(vend_id(r), "running"),
        Phase.DISPENSING, Screen.DISPENSING, []),
    Row("dispensing-done-ok", st_dispensing, lambda r: E.VendReply(vend_id(r), "done", "ok"),
        Phase.REPORTING, Screen.THANKS, FINISH),
    Row("dispensing-done-jam", st_dispensing, lambda r: E.VendReply(vend_id(r), "done", "jam"),
        Phase.REPORTING, Screen.REFUND, FAILED),
    Row("dispensing-done-empty", st_dispensing, lambda r: E.VendReply(vend_id(r), "done", "empty"),
        Phase.REPORTING, Screen.REFUND, FINISH),
    Row("dispensing-unknown-same-boot", st_dispensing,
        lambda r: E.VendReply(vend_id(r), "unknown", boot=BOOT), Phase.DISPENSING, Screen.DISPENSING,
        ["SendVend"]),
    Row("dispensing-unknown-other-boot", st_dispensing,
        lambda r: E.VendReply(vend_id(r), "unknown", boot=BOOT + 1), Phase.REPORTING, Screen.REFUND,
        FINISH),
    Row("dispensing-refused-busy", st_dispensing, lambda r: E.VendRefused(vend_id(r), "busy"),
        Phase.DISPENSING, Screen.DISPENSING, []),
    Row("dispensing-refused-bad-slot", st_dispensing, lambda r: E.VendRefused(vend_id(r), "bad_slot"),
        Phase.REPORTING, Screen.REFUND, FINISH),
    Row("dispensing-vend-lost", st_dispensing, lambda r: E.VendLost(vend_id(r)), Phase.DISPENSING,
        Screen.DISPENSING, ["QueryVend"]),
    Row("idle-reply-unknown-vend", st_idle, ev(E.VendReply("v-nope", "done", "ok")), Phase.IDLE,
        Screen.GRID, []),
    # ---- shutdown -------------------------------------------------------------------------------
    Row("idle-shutdown", st_idle, ev(E.Shutdown()), Phase.IDLE, Screen.OUT_OF_SERVICE, []),
    Row("ordering-shutdown", st_ordering, ev(E.Shutdown()), Phase.IDLE, Screen.OUT_OF_SERVICE, []),
    Row("awaiting-shutdown", st_awaiting, ev(E.Shutdown()), Phase.CANCELLING, Screen.OUT_OF_SERVICE, CANCEL),
    Row("dispensing-shutdown", st_dispensing, ev(E.Shutdown()), Phase.DISPENSING, Screen.DISPENSING, []),
    Row("cancelling-shutdown", st_cancelling, ev(E.Shutdown()), Phase.CANCELLING, Screen.OUT_OF_SERVICE, []),
    Row("reporting-shutdown", st_reporting, ev(E.Shutdown()), Phase.REPORTING, Screen.THANKS, []),
    Row("stopping-pay-closed-order-in-grace-is-late", lambda: _stopping(st_idle_closed_order()),
        pay_ev("ord-1"), Phase.IDLE, Screen.OUT_OF_SERVICE, REFUND_EVENT),
    Row("stopping-pay-live-order-is-kept-not-sent", lambda: _stopping(st_awaiting()), pay_ev("ord-1"),
        Phase.DISPENSING, Screen.DISPENSING, ["Persist[SavePayment,SaveVend]", "AckMessage"]),
]


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id, marks=r.marks) for r in ROWS])
def test_transition(row: Row):
    r = row.start()
    r.now += row.dt
    out = r.feed(row.event(r))
    assert (r.phase, r.screen, summary(out)) == (row.phase, row.screen, row.actions)


def test_table_covers_every_session_row_and_every_global_handler():
    """If the lead adds a row or a handler, this fails until the table above covers it."""
    covered = set()
    for row in ROWS:
        r = row.start()
        covered.add((r.phase, type(row.event(r))))
    missing = [k for k in SESSION_TABLE if k not in covered]
    assert not missing, f"SESSION_TABLE rows not covered: {missing}"
    seen_types = {t for _, t in covered}
    untested = {E.SlotsSeen, E.BoardFault, E.CommandIn, E.CommandRejectedIn, E.AckIn,
                E.MqttUp, E.MqttDown, E.PaymentRejectedIn,
                E.ClockSkew, E.ClockCorrected}   # tested below / in test_core_commands
    missing_g = [t.__name__ for t in GLOBAL_HANDLERS if t not in seen_types | untested]
    assert not missing_g, f"global handlers not covered: {missing_g}"


def test_busy_retry_goes_out_after_retry_interval_with_persist_first():
    r = idle_rig()
    vid = to_dispensing(r)
    r.feed(E.VendRefused(vid, "busy"))
    assert actions_of(A.SendVend, r.tick(S.retry_refused / 2)) == []
    out = r.tick(S.retry_refused)
    assert summary(out)[:2] == ["Persist[VendSent]", "SendVend"]


def test_slots_seen_updates_grid_and_all_empty_is_out_of_service():
    r = idle_rig()
    r.feed(E.SlotsSeen(frozenset({1}), frozenset({2})))
    prods = {p.slot: p for p in r.view.products}
    assert (prods[1].reason, prods[2].reason, prods[3].available) == ("sold_out", "disabled", True)
    r.feed(E.SlotsSeen(frozenset({1, 2, 3}), frozenset()))
    assert (r.screen, r.view.reason) == (Screen.OUT_OF_SERVICE, "no_products")


def test_clock_skew_alerts_once_and_again_only_when_it_moves_a_minute():
    r = idle_rig()
    assert summary(r.feed(E.ClockSkew(2.0))) == []          # every answer reports it; small is fine
    assert summary(r.feed(E.ClockSkew(-60.0))) == []
    assert summary(r.feed(E.ClockSkew(-300.0))) == ALERT
    assert summary(r.feed(E.ClockSkew(-310.0))) == []
    out = r.feed(E.ClockSkew(-400.0))
    assert summary(out) == ALERT
    assert published(out, "alert")[0]["code"] == "clock_offset"


def test_fault_alerts_and_ack_persists_only_fresh_acks():
    r = idle_rig()
    assert summary(r.feed(E.BoardFault("motor"))) == ALERT
    out = r.feed(E.AckIn("e1", int(r.now), "tk"))
    assert summary(out) == ["Persist[EventAcked]", "AckMessage"]
    out = r.feed(E.AckIn("e2", int(r.now) - 301, "tk2"))
    assert summary(out) == ["AckMessage"]


def test_payment_rejected_is_reported_then_acked():
    r = idle_rig()
    out = r.feed(E.PaymentRejectedIn("tk", "ord-1", "bad_sig", "sig"))
    assert summary(out) == ["Persist[SaveEvent]", "AckMessage", "Publish:payment_rejected"]
    assert out[-1].fields["reason"] == "bad_sig"


def test_mqtt_down_in_awaiting_reconciles_by_fetch():
    r = idle_rig()
    to_awaiting(r)
    r.feed(E.MqttDown("lost"))
    assert summary(r.tick(S.reconcile_interval)) == ["FetchOrder"]
    assert summary(r.tick(S.reconcile_interval / 2)) == []


def test_qr_view_carries_the_verified_order():
    r = idle_rig()
    to_awaiting(r, slot=2)
    v = r.view
    assert (v.screen, v.order_id, v.amount, v.currency, v.slot) == (Screen.QR, "ord-1", PRICES[2], CUR, 2)
    assert v.qr_url == "https://pay.example.test/ord-1"


# =============================================================================================
# Part 2: random interleavings against one Machine and a modelled board
# =============================================================================================

VEND_RESULTS = ["ok", "ok", "ok", "jam", "no_drop", "empty", "timeout"]


class BoardModel:
    """The dispensing board as §1 describes it: remembers vend ids (and results) until a reboot;
    a VEND with a known id never starts the motor again. Counts physical motor starts."""

    def __init__(self, boot: int):
        self.boot = boot
        self.online = True
        self.known: dict[str, tuple[str, str | None]] = {}
        self.inflight: list = []            # SendVend / QueryVend waiting for an answer
        self.motor_starts: dict[str, int] = {}
        self.physical: dict[str, str] = {}  # vend_id -> what really happened
        self.door_open = False
        self.empty: set[int] = set()


class Harness:
    def __init__(self, rnd: random.Random, refund_uncertain: bool):
        self.rnd = rnd
        self.r = Rig(make_settings(refund_uncertain=refund_uncertain, slot_failure_limit=99))
        self.board = BoardModel(boot=100)
        self.orders = 0
        self.txns = 0
        self.pending_orders: list[A.CreateOrder] = []
        self.pending_cancels: list[str] = []
        self.order_ids: list[str] = []
        self.txn_log: list[tuple[str, int]] = []   # (order_id, amount) of each txn, by txn id
        self.payments_sent: dict[str, tuple] = {}
        self.unknown_after_reboot: set[str] = set()
        self.refused_last: set[str] = set()        # vends whose latest VEND the board refused
        self.wrongly_uncertain: list[dict] = []
        self.r.feed(E.MqttUp())
        self.feed(E.BoardUp(self.board.boot, 3))

    # ---- plumbing ----

    def feed(self, event, dt: float = 0.0) -> list:
        if isinstance(event, E.VendReply) and event.state == "unknown":
            v = self.r.m.vends.get(event.vend_id)
            # Only a vend that may be on the board can be lost in a reboot; for one the board
            # refused (back to pending) `unknown` says nothing new.
            if v is not None and v.on_board and (event.boot is None or event.boot != v.boot):
                self.unknown_after_reboot.add(event.vend_id)
        out = self.r.feed(event, dt)
        if isinstance(event, E.VendRefused):
            self.refused_last.add(event.vend_id)
        for a in out:
            if isinstance(a, A.Publish) and a.type == "vend_result" and a.fields["result"] == "uncertain" \
                    and a.fields["vend_id"] in self.refused_last:
                self.wrongly_uncertain.append(a.fields)
            if isinstance(a, A.SendVend):
                self.refused_last.discard(a.vend_id)
            if isinstance(a, (A.SendVend, A.QueryVend, A.RefreshSlots)):
                self.board.inflight.append(a)
            elif isinstance(a, A.CreateOrder):
                self.pending_orders.append(a)
            elif isinstance(a, A.CancelOrder):
                self.pending_cancels.append(a.order_id)
        return out

    # ---- steps ----

    def step(self) -> None:
        rnd, b = self.rnd, self.board
        choice = rnd.choice([
            "key", "key", "cancel", "order", "order", "cancel_answer", "pay", "pay", "pay",
            "redeliver", "second_txn", "wrong_amount", "unknown_order", "board", "board", "board",
            "finish", "lose", "down", "up", "reboot", "door", "tick", "tick", "tick", "free",
            "stale_reply", "empty"])
        getattr(self, "do_" + choice)()

    def do_key(self):
        self.feed(E.KeyPressed(self.rnd.randint(1, 3)))

    def do_cancel(self):
        self.feed(E.CancelPressed())

    def do_order(self):
        if not self.pending_orders:
            return
        co = self.pending_orders.pop(0)
        if self.rnd.random() < 0.15:
            self.feed(E.OrderFailed(co.session_id, self.rnd.choice(["unreachable", "refused"])))
            return
        self.orders += 1
        oid = f"ord-{self.orders}"
        self.order_ids.append(oid)
        self.feed(E.OrderCreated(co.session_id, oid, f"https://pay.test/{oid}", co.amount, co.currency,
                                 int(self.r.now) + 300, offline=self.rnd.random() < 0.2, slot=co.slot))

    def do_cancel_answer(self):
        if self.pending_cancels:
            oid = self.pending_cancels.pop(0)
            self.feed(E.CancelAnswered(oid, self.rnd.choice(["cancelled", "paid", "unreachable"])))

    def _pay(self, order_id: str, amount: int, txn: str | None = None):
        if txn is None:
            self.txns += 1
            txn = f"txn-{self.txns}"
        self.payments_sent[txn] = (order_id, amount)
        self.feed(self.r.journal.payment_in(
            payment(order_id, txn_id=txn, amount=amount), self.rnd.choice([None, "tok"])))

    def _order_amount(self, oid: str) -> int:
        row = self.r.journal.orders.get(oid)
        return row["op"].amount if row else PRICES[1]

    def do_pay(self):
        if self.order_ids:
            oid = self.rnd.choice(self.order_ids[-3:])
            self._pay(oid, self._order_amount(oid))

    def do_redeliver(self):
        if self.payments_sent:
            txn = self.rnd.choice(list(self.payments_sent))
            self._pay(*self.payments_sent[txn], txn=txn)

    def do_second_txn(self):
        paid = [p.order_id for p in self.r.journal.payments.values() if p.disposition == "dispense"]
        if paid:
            oid = self.rnd.choice(paid)
            self._pay(oid, self._order_amount(oid))

    def do_wrong_amount(self):
        if self.order_ids:
            oid = self.rnd.choice(self.order_ids)
            self._pay(oid, self._order_amount(oid) + 1)

    def do_unknown_order(self):
        self._pay(f"ord-x{self.rnd.randint(1, 3)}", PRICES[1])

    def do_free(self):
        n = self.rnd.randint(1, 10**6)
        c = command(f"cmd-{n}", "free_vend", {"slot": self.rnd.randint(1, 3), "reason": "gift"},
                    ts=self.r.now, expires=self.r.now + self.rnd.choice([5, 600]))
        self.feed(self.r.journal.command_in(c, "tok"))

    def do_board(self):
        """The board answers the oldest request on the wire, as §1 says it would."""
        b = self.board
        if not b.online or not b.inflight:
            return
        a = b.inflight.pop(0)
        if isinstance(a, A.RefreshSlots):
            self.feed(E.SlotsSeen(frozenset(b.empty), frozenset()))
            self.feed(E.BoardStatus(b.boot, b.door_open, 40))
        elif isinstance(a, A.SendVend):
            if a.vend_id in b.known:
                state, result = b.known[a.vend_id]
                self.feed(E.VendReply(a.vend_id, state, result))
            elif b.door_open:
                self.feed(E.VendRefused(a.vend_id, "door_open"))
            elif self.rnd.random() < 0.15:
                self.feed(E.VendRefused(a.vend_id, self.rnd.choice(["busy", "door_open", "bad_slot"])))
            else:
                b.motor_starts[a.vend_id] = b.motor_starts.get(a.vend_id, 0) + 1
                b.known[a.vend_id] = ("running", None)
                self.feed(E.VendReply(a.vend_id, "running"))
        else:
            # The translator sends STATUS right behind VSTAT and delivers both together.
            state, result = b.known.get(a.vend_id, ("unknown", None))
            self.feed(E.BoardStatus(b.boot, b.door_open, 40))
            self.feed(E.VendReply(a.vend_id, state, result, boot=b.boot))

    def do_finish(self):
        b = self.board
        running = [vid for vid, (s, _) in b.known.items() if s == "running"]
        if not running:
            return
        vid = self.rnd.choice(running)
        result = self.rnd.choice(VEND_RESULTS)
        b.known[vid] = ("done", result)
        b.physical[vid] = result
        if b.online and self.rnd.random() < 0.7:
            self.feed(E.VendReply(vid, "done", result))   # the kind=vend event

    def do_lose(self):
        """A request whose answer is lost on a flaky line: it may or may not have acted."""
        b = self.board
        if not b.inflight:
            return
        a = b.inflight.pop(0)
        if isinstance(a, A.SendVend) and a.vend_id not in b.known and self.rnd.random() < 0.5:
            b.motor_starts[a.vend_id] = b.motor_starts.get(a.vend_id, 0) + 1
            b.known[a.vend_id] = ("running", None)
        if not isinstance(a, A.RefreshSlots):
            self.feed(E.VendLost(a.vend_id))

    def do_down(self):
        if self.board.online:
            self.board.online = False
            self.board.inflight.clear()
            self.feed(E.BoardDown("timeout"))

    def do_up(self):
        if not self.board.online:
            self.board.online = True
            self.feed(E.BoardUp(self.board.boot, 3))

    def do_reboot(self):
        b = self.board
        # A running dispense finishes or not physically; the board forgets everything.
        for vid, (s, _) in list(b.known.items()):
            if s == "running":
                b.physical[vid] = self.rnd.choice(VEND_RESULTS)
        b.known.clear()
        if not b.online or self.rnd.random() < 0.5:
            b.inflight.clear()      # else the lines still queued reach the rebooted board
        b.boot += 1
        if b.online and self.rnd.random() < 0.5:
            self.feed(E.BoardBoot(b.boot))
        else:
            if b.online:
                self.feed(E.BoardDown("reset"))
            b.online = True
            self.feed(E.BoardUp(b.boot, 3))

    def do_door(self):
        self.board.door_open = not self.board.door_open
        if self.board.online:
            self.feed(E.DoorChanged(self.board.door_open))

    def do_empty(self):
        self.board.empty.symmetric_difference_update({self.rnd.randint(1, 3)})

    def do_tick(self):
        self.feed(E.Tick(), dt=self.rnd.choice([0.5, 1, 3, 7, 31, 61]))

    def do_stale_reply(self):
        """An extra VSTAT answer about a vend the machine believes is on the board (a retried
        VSTAT whose first answer also arrived). The link is in order, so only once the board
        has dealt with everything sent before it."""
        on_board = [vid for vid, v in self.r.m.vends.items() if v.on_board]
        if on_board and self.board.online and not self.board.inflight:
            vid = self.rnd.choice(on_board)
            state, result = self.board.known.get(vid, ("unknown", None))
            self.feed(E.VendReply(vid, state, result, boot=self.board.boot))

    # ---- settle: the board comes back for good and answers everything ----

    def settle(self, liveness_check: bool = True) -> None:
        b = self.board
        if not b.online:
            b.online = True
            self.feed(E.BoardUp(b.boot, 3))
        if b.door_open or self.r.m.board.door_open:
            b.door_open = False
            self.feed(E.DoorChanged(False))
        for _ in range(400):
            if not self.r.m.vends and not b.inflight:
                break
            if b.inflight:
                a = b.inflight.pop(0)
                if isinstance(a, A.RefreshSlots):
                    self.feed(E.SlotsSeen(frozenset(b.empty), frozenset()))
                    self.feed(E.BoardStatus(b.boot, b.door_open, 40))
                elif isinstance(a, A.SendVend) and a.vend_id not in b.known:
                    b.motor_starts[a.vend_id] = b.motor_starts.get(a.vend_id, 0) + 1
                    b.known[a.vend_id] = ("done", "ok")
                    b.physical[a.vend_id] = "ok"
                    self.feed(E.VendReply(a.vend_id, "done", "ok"))
                elif isinstance(a, A.SendVend):
                    self.feed(E.VendReply(a.vend_id, *b.known[a.vend_id]))
                else:
                    state, result = b.known.get(a.vend_id, ("unknown", None))
                    if state == "running":
                        b.known[a.vend_id] = ("done", "ok")
                        b.physical[a.vend_id] = "ok"
                        state, result = "done", "ok"
                    self.feed(E.VendReply(a.vend_id, state, result, boot=b.boot))
            else:
                self.feed(E.Tick(), dt=S.vstat_interval)
        assert not self.r.m.vends, f"vends never resolved: {self.r.m.vends}"
        # Liveness: with nothing owed any more, every screen times out back to the grid.
        for _ in range(4):
            self.feed(E.Tick(), dt=200)
        if liveness_check:
            assert self.r.m.phase is Phase.IDLE, f"stuck in {self.r.m.phase} with no vend left"


# BUG (see test_core_payments.test_unknown_for_a_refused_vend_is_not_uncertain): the core calls a
# refused vend `uncertain` when a VSTAT `unknown` crosses the refusal. The random test keeps that
# one check out while the bug is open, and test_random_sweep_never_calls_a_refused_vend_uncertain
# (strict xfail) holds it; set this to False once the core is fixed.
KNOWN_BUG_REFUSED_UNCERTAIN = False
# BUG (see test_core_commands.test_expired_free_vend_after_refusal_does_not_freeze_the_machine):
# the liveness check is kept out of the random test while it is open.
KNOWN_BUG_STUCK_DISPENSING = False


def check_invariants(h: Harness, refund_uncertain: bool, refused_check: bool = True) -> None:
    log, j, b = h.r.log, h.r.journal, h.board
    saved_vends: set[str] = set()
    vend_order: dict[str, str] = {}
    for a in log:
        if isinstance(a, A.Persist):
            for op in a.ops:
                if isinstance(op, A.SaveVend):
                    saved_vends.add(op.vend_id)
                    vend_order[op.vend_id] = op.order_id
        elif isinstance(a, A.SendVend):
            # §5.4 / §5.1: the decision to dispense is on disk before the VEND line.
            assert a.vend_id in saved_vends, f"SendVend {a.vend_id} before its SaveVend"
    # §5.2: one vend_id per order, and at most one motor start per vend_id.
    per_order: dict[str, set] = {}
    for vid, oid in vend_order.items():
        per_order.setdefault(oid, set()).add(vid)
    assert all(len(v) == 1 for v in per_order.values()), per_order
    assert all(n <= 1 for n in b.motor_starts.values()), f"a vend started the motor twice: {b.motor_starts}"
    results = j.event_list("vend_result")
    for f in results:
        assert not (f["dispensed"] and f["refund"]), f
        if f["txn_id"] is None:
            assert f["amount"] == 0 and not f["refund"], f       # a free vend: nothing to refund
        elif f["result"] == "uncertain":
            assert f["refund"] is refund_uncertain
        elif f["txn_id"] is not None:
            assert f["dispensed"] or f["refund"], f
        if f["dispensed"]:
            assert b.physical.get(f["vend_id"]) == "ok", f"reported dispensed, board says {b.physical}"
        if f["vend_id"] and f["result"] in ("jam", "no_drop", "empty", "timeout", "board_offline",
                                            "late", "mismatch", "duplicate"):
            assert b.physical.get(f["vend_id"], "none") != "ok", f"refunded a product that fell: {f}"
    # §5.3: every authentic payment ends in exactly one vend_result.
    by_txn: dict[str, int] = {}
    for f in results:
        if f["txn_id"] is not None:
            by_txn[f["txn_id"]] = by_txn.get(f["txn_id"], 0) + 1
    for txn in j.payments:
        assert by_txn.get(txn) == 1, f"txn {txn} has {by_txn.get(txn, 0)} vend_results"
    assert set(by_txn) <= set(j.payments)
    # `uncertain` means a reboot may have hidden a dispense; a vend whose last VEND the board
    # refused provably never started the motor.
    if refused_check:
        assert not h.wrongly_uncertain, f"uncertain for a refused vend: {h.wrongly_uncertain}"


def run_random(seed: int, steps: int, refund_uncertain: bool,
               refused_check: bool = not KNOWN_BUG_REFUSED_UNCERTAIN,
               liveness_check: bool = not KNOWN_BUG_STUCK_DISPENSING) -> Harness:
    h = Harness(random.Random(seed), refund_uncertain)
    sent_after_unknown: list[str] = []
    for _ in range(steps):
        before = len(h.r.log)
        gone = set(h.unknown_after_reboot)
        h.step()
        for a in h.r.log[before:]:
            if isinstance(a, A.SendVend) and a.vend_id in gone:
                sent_after_unknown.append(a.vend_id)
    before = len(h.r.log)
    gone = set(h.unknown_after_reboot)
    h.settle(liveness_check)
    sent_after_unknown += [a.vend_id for a in h.r.log[before:]
                           if isinstance(a, A.SendVend) and a.vend_id in gone]
    assert not sent_after_unknown, f"SendVend after a reboot made the vend unknown: {sent_after_unknown}"
    check_invariants(h, refund_uncertain, refused_check)
    return h


@hsettings(max_examples=300, deadline=None, database=None,
           suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(10, 120), refund_uncertain=st.booleans())
def test_random_interleavings_keep_the_money_invariants(seed, steps, refund_uncertain):
    run_random(seed, steps, refund_uncertain)


def test_random_interleavings_actually_exercise_the_paths():
    """The random test is only worth something if the runs reach the interesting places."""
    seen = {"dispensed": 0, "uncertain": 0, "duplicate": 0, "mismatch": 0, "late": 0,
            "resend": 0, "reboot_unknown": 0}
    for seed in range(60):
        h = run_random(seed, 150, True)
        for f in h.r.journal.event_list("vend_result"):
            if f["dispensed"]:
                seen["dispensed"] += 1
            if f["result"] in seen:
                seen[f["result"]] += 1
        sends: dict[str, int] = {}
        for a in actions_of(A.SendVend, h.r.log):
            sends[a.vend_id] = sends.get(a.vend_id, 0) + 1
        seen["resend"] += sum(1 for n in sends.values() if n > 1)
        seen["reboot_unknown"] += len(h.unknown_after_reboot)
    assert all(n > 0 for n in seen.values()), seen


def test_random_sweep_never_calls_a_refused_vend_uncertain():
    for seed in range(120):
        run_random(seed, 300, seed % 2 == 0, refused_check=True)


def test_random_sweep_always_returns_to_idle():
    for seed in range(120):
        run_random(seed, 300, seed % 2 == 0, liveness_check=True)


def test_a_slow_api_gets_an_offline_qr_and_its_late_order_is_cancelled():
    r = idle_rig()
    co = to_ordering(r)
    mint = actions_of(A.MintOfflineOrder, r.tick(S.offline_after))[0]
    assert (mint.session_id, mint.slot, mint.amount) == (co.session_id, co.slot, co.amount)
    r.feed(order_created(r, co, "off-1", offline=True))
    assert r.phase is Phase.AWAITING and r.m.session.order_id == "off-1" and r.m.session.offline
    # The API's answer comes after all: the QR on screen stays, the API's order is cancelled.
    out = r.feed(order_created(r, co, "api-1"))
    assert [a.order_id for a in actions_of(A.CancelOrder, out)] == ["api-1"]
    assert r.m.session.order_id == "off-1" and r.view.order_id == "off-1"
    # Paying the QR the customer saw dispenses once.
    assert actions_of(A.SendVend, r.pay("off-1"))


def test_an_api_answer_racing_the_offline_mint_wins_and_the_offline_order_is_dropped():
    r = idle_rig()
    co = to_ordering(r)
    r.tick(S.offline_after)
    r.feed(order_created(r, co, "api-1"))            # the API answered before the mint came back
    out = r.feed(order_created(r, co, "off-1", offline=True))
    assert r.m.session.order_id == "api-1" and not r.m.session.offline
    assert not actions_of(A.CancelOrder, out)        # an offline order has no one to cancel at
    assert r.journal.orders["off-1"]["closed_at"] is not None


def test_a_new_customer_during_a_slow_cancel_is_served_and_a_racing_payment_refunded():
    r = idle_rig()
    to_cancelling(r, order_id="ord-1")
    co = actions_of(A.CreateOrder, r.feed(E.KeyPressed(2)))[0]
    assert r.phase is Phase.ORDERING and co.slot == 2
    # The first customer had paid after all: the cloud answers the old cancel "paid".
    assert [a.order_id for a in actions_of(A.FetchOrder, r.feed(E.CancelAnswered("ord-1", "paid")))
            ] == ["ord-1"]
    r.feed(order_created(r, co, "ord-2"))
    assert r.phase is Phase.AWAITING and r.m.session.order_id == "ord-2"
    # The machine is busy with the new customer, so the old payment is refunded, never kept.
    out = r.pay("ord-1", txn_id="txn-old")
    assert not actions_of(A.SendVend, out)
    [result] = published(out, "vend_result")
    assert (result["result"], result["refund"], result["txn_id"]) == ("late", True, "txn-old")
    assert r.m.session.order_id == "ord-2"
