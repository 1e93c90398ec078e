"""The money rules of the core, one by one (contract §1 vend idempotency, §2 vend_result, §5).

Every test asserts something that would fail if its rule were removed from the core.
"""
from __future__ import annotations

import pytest

from tests.core_helpers import (BOOT, CUR, MID, PRICES, T0, A, E, Phase, Screen, actions_of,
                                idle_rig, index_of, make_settings, ops_of, paid_vend, payment,
                                persist_with, restored_rig, summary, to_awaiting, to_cancelling,
                                to_dispensing, to_ordering, vend_results)
from vending import messages as msg
from vending.core import payments
from vending.core.vends import PENDING, RUNNING, SENT, after_unknown, refund_due

S = make_settings()


def only_result(out) -> dict:
    rs = vend_results(out)
    assert len(rs) == 1, summary(out)
    return rs[0]


# ---- paid -> exactly one dispense, durably decided first --------------------------------------

def test_paid_live_order_dispenses_once_with_persist_before_ack_and_vend():
    r = idle_rig()
    to_awaiting(r)
    out = r.pay("ord-1", txn_id="txn-1", token="tk-1")
    sends = actions_of(A.SendVend, out)
    assert len(sends) == 1 and sends[0].slot == 1
    vid = sends[0].vend_id
    assert vid == msg.vend_id_for(MID, "ord-1")
    decided = persist_with(out, A.SaveVend, vend_id=vid, order_id="ord-1", txn_id="txn-1", kind="paid")
    assert decided == persist_with(out, A.SavePayment, txn_id="txn-1", disposition="dispense")
    ack = index_of(out, lambda a: isinstance(a, A.AckMessage) and a.token == "tk-1")
    sent = persist_with(out, A.VendSent, vend_id=vid, boot=BOOT)
    assert decided < ack and decided < sent < out.index(sends[0])
    assert vend_results(out) == []
    assert (r.phase, r.screen) == (Phase.DISPENSING, Screen.DISPENSING)


def test_payment_from_reconciliation_has_no_ack():
    r = idle_rig()
    to_awaiting(r)
    out = r.pay("ord-1", token=None)
    assert actions_of(A.AckMessage, out) == [] and len(actions_of(A.SendVend, out)) == 1


def test_redelivery_is_only_acked():
    r = idle_rig()
    to_awaiting(r)
    r.pay("ord-1", txn_id="txn-1")
    for phase_event in (None, E.VendReply(next(iter(r.m.vends)), "done", "ok")):
        if phase_event:
            r.feed(phase_event)
        out = r.pay("ord-1", txn_id="txn-1", token="tk-again")
        assert [a for a in out if not isinstance(a, A.Show)] == [A.AckMessage("tk-again")]


def test_redelivery_without_token_does_nothing():
    r = idle_rig()
    to_awaiting(r)
    r.pay("ord-1", txn_id="txn-1")
    assert summary(r.pay("ord-1", txn_id="txn-1", token=None)) == []


def test_second_txn_for_paid_order_is_duplicate_refund_without_vend():
    r = idle_rig()
    vid = to_dispensing(r)
    out = r.pay("ord-1", txn_id="txn-2")
    f = only_result(out)
    assert (f["result"], f["refund"], f["dispensed"], f["txn_id"], f["amount"]) == (
        "duplicate", True, False, "txn-2", PRICES[1])
    assert actions_of(A.SendVend, out) == []
    assert persist_with(out, A.SavePayment, txn_id="txn-2", disposition="duplicate") < \
        index_of(out, lambda a: isinstance(a, A.AckMessage))
    # ... and the same after the first vend finished.
    r.feed(E.VendReply(vid, "done", "ok"))
    f = only_result(r.pay("ord-1", txn_id="txn-3"))
    assert f["result"] == "duplicate" and f["refund"]


@pytest.mark.parametrize("amount,currency", [(PRICES[1] - 1, CUR), (PRICES[1] + 1, CUR), (PRICES[1], "USD")],
                         ids=["less", "more", "currency"])
def test_wrong_amount_or_currency_is_mismatch_refund(amount, currency):
    r = idle_rig()
    to_awaiting(r)
    out = r.pay("ord-1", amount=amount, currency=currency)
    f = only_result(out)
    assert (f["result"], f["refund"], f["amount"], f["currency"]) == ("mismatch", True, amount, currency)
    assert actions_of(A.SendVend, out) == [] and r.phase is Phase.AWAITING


def test_mismatch_is_refunded_even_for_an_already_paid_order():
    r = idle_rig()
    to_dispensing(r)
    assert only_result(r.pay("ord-1", txn_id="txn-2", amount=1))["result"] == "mismatch"


def test_unknown_order_is_late_with_null_slot_and_vend():
    r = idle_rig()
    out = r.pay("ord-never", txn_id="txn-x")
    f = only_result(out)
    assert (f["result"], f["refund"], f["slot"], f["vend_id"], f["order_id"]) == (
        "late", True, None, None, "ord-never")
    assert actions_of(A.SendVend, out) == []
    assert ops_of(A.SavePayment, out)[0].disposition == "late"


# ---- late payments and the grace rule -----------------------------------------------------

def cancelled_idle(r):
    to_cancelling(r)
    r.feed(E.CancelAnswered("ord-1", "cancelled"))
    assert r.phase is Phase.IDLE


def test_payment_after_cancel_within_grace_while_idle_dispenses():
    r = idle_rig()
    cancelled_idle(r)
    out = r.pay("ord-1", dt=S.late_payment_grace)
    assert len(actions_of(A.SendVend, out)) == 1 and vend_results(out) == []
    assert r.phase is Phase.DISPENSING


def test_payment_after_grace_is_late_refund():
    r = idle_rig()
    cancelled_idle(r)
    out = r.pay("ord-1", dt=S.late_payment_grace + 1)
    f = only_result(out)
    assert (f["result"], f["refund"], f["slot"]) == ("late", True, 1)
    assert actions_of(A.SendVend, out) == []


@pytest.mark.parametrize("other", ["ordering", "awaiting"])
def test_payment_within_grace_while_another_customer_is_live_is_late(other):
    r = idle_rig()
    cancelled_idle(r)
    if other == "ordering":
        to_ordering(r, slot=2)
    else:
        to_awaiting(r, slot=2, order_id="ord-2")
    out = r.pay("ord-1", dt=1)
    assert only_result(out)["result"] == "late" and actions_of(A.SendVend, out) == []
    assert r.m.session is not None and r.m.session.slot == 2


def test_payment_within_grace_while_board_offline_or_slot_empty_is_late():
    r = idle_rig()
    cancelled_idle(r)
    r.feed(E.SlotsSeen(frozenset({1}), frozenset()))
    assert only_result(r.pay("ord-1", txn_id="t-a"))["result"] == "late"
    r2 = idle_rig()
    cancelled_idle(r2)
    r2.feed(E.BoardDown("timeout"))
    assert only_result(r2.pay("ord-1", txn_id="t-b"))["result"] == "late"


def test_payments_decide_is_pure_and_ordered():
    order = E.OrderFacts("o", "s", 1, "cola", 350, CUR, closed_at=None, paid_txn="t0")
    p = E.PaymentIn(payment("o", amount=351), None, False, order, True)
    assert payments.decide(p, live_order_id="o", machine_free=True, slot_ok=True, now=0, grace=60) == "mismatch"
    p = E.PaymentIn(payment("o"), None, True, order, True)
    assert payments.decide(p, live_order_id="o", machine_free=True, slot_ok=True, now=0, grace=60) == "redelivery"
    p = E.PaymentIn(payment("o"), None, False, order, True)
    assert payments.decide(p, live_order_id="o", machine_free=True, slot_ok=True, now=0, grace=60) == "duplicate"


# ---- vend results ---------------------------------------------------------------------------

@pytest.mark.parametrize("result", ["jam", "no_drop", "empty", "timeout"])
def test_failed_dispense_refunds(result):
    r = idle_rig()
    vid = to_dispensing(r)
    out = r.feed(E.VendReply(vid, "done", result))
    f = only_result(out)
    assert (f["result"], f["dispensed"], f["refund"], f["txn_id"], f["vend_id"], f["slot"]) == (
        result, False, True, "txn-1", vid, 1)
    assert persist_with(out, A.VendFinished, vend_id=vid, result=result) < \
        index_of(out, lambda a: isinstance(a, A.Publish) and a.type == "vend_result")
    assert (r.phase, r.screen, r.view.refunded, r.view.refund_reason) == (
        Phase.REPORTING, Screen.REFUND, True, result)
    assert actions_of(A.SendVend, out) == []   # §1: no retry after a failed dispense


def test_ok_dispense_is_dispensed_not_refunded():
    r = idle_rig()
    vid = to_dispensing(r)
    f = only_result(r.feed(E.VendReply(vid, "done", "ok")))
    assert (f["result"], f["dispensed"], f["refund"], f["amount"], f["currency"]) == (
        "ok", True, False, PRICES[1], CUR)
    assert r.screen is Screen.THANKS


def test_first_time_payer_sees_follow_prompt_after_ok():
    r = idle_rig()
    vid = to_dispensing(r, payer="alice")
    r.feed(E.VendReply(vid, "done", "ok"))
    assert r.view.follow_qr_url == S.follow_qr_url
    r.tick(S.report_seconds)
    vid = to_dispensing(r, order_id="ord-2", txn_id="txn-2", payer="alice")
    r.feed(E.VendReply(vid, "done", "ok"))
    assert r.view.follow_qr_url is None


def test_running_then_event_done_finishes_once():
    r = idle_rig()
    vid = to_dispensing(r)
    r.feed(E.VendReply(vid, "running"))
    r.feed(E.VendReply(vid, "done", "ok"))
    assert vend_results(r.feed(E.VendReply(vid, "done", "ok"))) == []
    assert len(vend_results(r.log)) == 1


# ---- `unknown` and reboots ----------------------------------------------------------------

@pytest.mark.parametrize("policy", [True, False], ids=["refund_uncertain", "keep_uncertain"])
@pytest.mark.parametrize("boot", [BOOT + 1, None], ids=["rebooted", "boot_unknown"])
def test_unknown_after_reboot_is_uncertain_per_policy(policy, boot):
    r = idle_rig(refund_uncertain=policy)
    vid = to_dispensing(r)
    r.feed(E.VendReply(vid, "running"))
    out = r.feed(E.VendReply(vid, "unknown", boot=boot))
    f = only_result(out)
    assert (f["result"], f["dispensed"], f["refund"]) == ("uncertain", False, policy)
    assert actions_of(A.SendVend, out) == [] and vid not in r.m.vends
    assert (r.screen, r.view.refunded) == (Screen.REFUND, policy)
    # and nothing ever sends it again
    r.feed(E.BoardUp(BOOT + 2, 3))
    r.tick(100)
    assert [a for a in actions_of(A.SendVend, r.log) if a.vend_id == vid] == [actions_of(A.SendVend, r.log)[0]]


@pytest.mark.parametrize("boot", [BOOT + 1, None], ids=["rebooted", "boot_unknown"])
def test_unknown_on_sent_vend_without_confirmed_same_boot_is_never_resent(boot):
    r = idle_rig()
    vid = to_dispensing(r)            # SENT, VEND lost on the way
    r.feed(E.VendLost(vid))
    out = r.feed(E.VendReply(vid, "unknown", boot=boot))
    assert actions_of(A.SendVend, out) == []
    assert only_result(out)["result"] == "uncertain"


def test_unknown_with_same_confirmed_boot_on_sent_vend_resends():
    r = idle_rig()
    vid = to_dispensing(r)
    r.feed(E.VendLost(vid))
    out = r.feed(E.VendReply(vid, "unknown", boot=BOOT))
    assert [a.vend_id for a in actions_of(A.SendVend, out)] == [vid]
    assert vend_results(out) == []
    # the resend is the same vend_id, so the board's idempotency covers it
    out = r.feed(E.VendReply(vid, "done", "ok"))
    assert only_result(out)["dispensed"] is True


def test_unknown_with_same_boot_on_running_vend_is_uncertain():
    r = idle_rig()
    vid = to_dispensing(r)
    r.feed(E.VendReply(vid, "running"))
    out = r.feed(E.VendReply(vid, "unknown", boot=BOOT))
    assert actions_of(A.SendVend, out) == [] and only_result(out)["result"] == "uncertain"


def test_after_unknown_rule_table():
    v = paid_vend(state=SENT, boot=5)
    assert after_unknown(v, 5) == "resend"
    assert after_unknown(v, 6) == "uncertain"
    assert after_unknown(v, None) == "uncertain"
    assert after_unknown(paid_vend(state=RUNNING, boot=5), 5) == "uncertain"
    assert refund_due("paid", "uncertain", False) == (False, False)
    assert refund_due("paid", "uncertain", True) == (False, True)
    assert refund_due("free", "jam", True) == (False, False)


def test_reboot_seen_in_status_requeries_and_resolves_uncertain():
    r = idle_rig()
    vid = to_dispensing(r)
    r.feed(E.VendReply(vid, "running"))
    out = r.feed(E.BoardStatus(BOOT + 1, False, 40))
    assert [a.vend_id for a in actions_of(A.QueryVend, out)] == [vid]
    assert any(a.type == "alert" and a.fields["code"] == "board_rebooted" for a in actions_of(A.Publish, out))
    assert only_result(r.feed(E.VendReply(vid, "unknown", boot=BOOT + 1)))["result"] == "uncertain"




def test_unknown_for_a_refused_vend_is_not_uncertain():
    # On the wire: VEND queued; a STATUS (from RefreshSlots) reports a reboot, so the core asks
    # VSTAT too; the rebooted board refuses the VEND (busy) and answers VSTAT `unknown`.
    r = idle_rig(refund_uncertain=False)
    vid = to_dispensing(r)
    out = r.feed(E.BoardStatus(BOOT + 1, False, 40))
    assert actions_of(A.QueryVend, out)
    r.feed(E.VendRefused(vid, "busy"))
    out = r.feed(E.VendReply(vid, "unknown", boot=BOOT + 1))
    assert [f["result"] for f in vend_results(out)] != ["uncertain"]
    out = r.tick(S.retry_refused)
    assert [a.vend_id for a in actions_of(A.SendVend, out)] == [vid]


# ---- refusals -------------------------------------------------------------------------------

@pytest.mark.parametrize("code", ["busy", "door_open", "fault"])
def test_refused_busy_is_retried_later(code):
    r = idle_rig()
    vid = to_dispensing(r)
    out = r.feed(E.VendRefused(vid, code))
    assert vend_results(out) == [] and actions_of(A.SendVend, out) == []
    out = r.tick(S.retry_refused)
    assert [a.vend_id for a in actions_of(A.SendVend, out)] == [vid]
    assert persist_with(out, A.VendSent, vend_id=vid) < index_of(out, lambda a: isinstance(a, A.SendVend))


def test_refused_bad_slot_refunds():
    r = idle_rig()
    vid = to_dispensing(r)
    f = only_result(r.feed(E.VendRefused(vid, "bad_slot")))
    assert f["refund"] is True and f["dispensed"] is False


# ---- board offline --------------------------------------------------------------------------

def test_pending_paid_vend_with_board_offline_is_refunded_after_grace():
    r = idle_rig()
    to_awaiting(r)
    r.feed(E.BoardDown("timeout"))             # session -> CANCELLING, the customer pays anyway
    out = r.pay("ord-1")
    assert actions_of(A.SendVend, out) == [] and r.phase is Phase.DISPENSING
    assert vend_results(r.tick(S.late_payment_grace)) == []
    out = r.tick(1)
    f = only_result(out)
    assert (f["result"], f["refund"], f["dispensed"]) == ("board_offline", True, False)
    assert (r.phase, r.screen) == (Phase.REPORTING, Screen.REFUND)
    r.feed(E.BoardUp(BOOT, 3))
    assert actions_of(A.SendVend, r.log[-5:]) == []


def test_pending_vend_is_sent_when_board_returns_within_grace():
    r = idle_rig()
    to_awaiting(r)
    r.feed(E.BoardDown("timeout"))
    r.pay("ord-1")
    out = r.feed(E.BoardUp(BOOT, 3), dt=S.late_payment_grace / 2)
    assert len(actions_of(A.SendVend, out)) == 1
    assert vend_results(r.tick(S.late_payment_grace)) == []


def test_sent_vend_is_never_refunded_as_board_offline():
    r = idle_rig()
    vid = to_dispensing(r)
    r.feed(E.BoardDown("timeout"))
    for _ in range(5):
        assert vend_results(r.tick(S.late_payment_grace)) == []
    assert vid in r.m.vends and r.phase is Phase.DISPENSING
    r.feed(E.BoardUp(BOOT, 3))
    assert only_result(r.feed(E.VendReply(vid, "done", "ok")))["dispensed"] is True


# ---- restored vends (Machine.restore) ----------------------------------------------------

def test_restored_pending_vend_is_sent_after_board_up_with_persist_first():
    v = paid_vend(state=PENDING, created_at=T0)
    r = restored_rig([v])
    assert actions_of(A.SendVend, r.tick()) == []      # no board yet
    out = r.feed(E.BoardUp(BOOT, 3), dt=1)
    assert [a.vend_id for a in actions_of(A.SendVend, out)] == [v.vend_id]
    assert persist_with(out, A.VendSent, vend_id=v.vend_id, boot=BOOT) < \
        index_of(out, lambda a: isinstance(a, A.SendVend))
    f = only_result(r.feed(E.VendReply(v.vend_id, "done", "ok")))
    assert f["dispensed"] and f["txn_id"] == "txn-r"
    assert r.phase is Phase.IDLE   # nobody was waiting at the screen




def test_restored_pending_vend_with_board_offline_past_grace_is_board_offline_refund():
    v = paid_vend(state=PENDING, created_at=T0)
    r = restored_rig([v])
    out = r.tick(S.late_payment_grace + 1)
    f = only_result(out)
    assert (f["refund"], f["result"]) == (True, "board_offline")


def test_restored_pending_vend_past_grace_is_refunded_not_sent():
    v = paid_vend(state=PENDING, created_at=T0)
    r = restored_rig([v])
    f = only_result(r.tick(S.late_payment_grace + 1))
    assert f["refund"] is True and f["dispensed"] is False
    assert actions_of(A.SendVend, r.feed(E.BoardUp(BOOT, 3))) == []


def test_restored_sent_vend_same_boot_queries_then_resends_on_unknown():
    v = paid_vend(state=SENT, boot=BOOT)
    r = restored_rig([v])
    out = r.feed(E.BoardUp(BOOT, 3))
    assert [a.vend_id for a in actions_of(A.QueryVend, out)] == [v.vend_id]
    assert actions_of(A.SendVend, out) == []
    out = r.feed(E.VendReply(v.vend_id, "unknown", boot=BOOT))
    assert [a.vend_id for a in actions_of(A.SendVend, out)] == [v.vend_id]


def test_restored_sent_vend_same_boot_done_is_reported():
    v = paid_vend(state=SENT, boot=BOOT)
    r = restored_rig([v])
    r.feed(E.BoardUp(BOOT, 3))
    f = only_result(r.feed(E.VendReply(v.vend_id, "done", "jam")))
    assert (f["result"], f["refund"]) == ("jam", True)


@pytest.mark.parametrize("policy", [True, False])
def test_restored_sent_vend_after_board_reboot_is_uncertain(policy):
    v = paid_vend(state=SENT, boot=BOOT)
    r = restored_rig([v], refund_uncertain=policy)
    out = r.feed(E.BoardUp(BOOT + 1, 3))
    assert actions_of(A.SendVend, out) == [] and actions_of(A.QueryVend, out)
    out = r.feed(E.VendReply(v.vend_id, "unknown", boot=BOOT + 1))
    f = only_result(out)
    assert (f["result"], f["refund"]) == ("uncertain", policy)
    assert actions_of(A.SendVend, out) == []


def test_restored_running_vend_unknown_is_uncertain_even_on_same_boot():
    v = paid_vend(state=RUNNING, boot=BOOT)
    r = restored_rig([v])
    r.feed(E.BoardUp(BOOT, 3))
    out = r.feed(E.VendReply(v.vend_id, "unknown", boot=BOOT))
    assert actions_of(A.SendVend, out) == [] and only_result(out)["result"] == "uncertain"


def test_restored_sent_vend_is_never_refunded_as_board_offline():
    v = paid_vend(state=SENT, boot=BOOT)
    r = restored_rig([v])
    for _ in range(3):
        assert vend_results(r.tick(S.late_payment_grace * 2)) == []


# ---- slot health -----------------------------------------------------------------------------

def fail_slot(r, n, order_base="f", result="jam"):
    outs = []
    for i in range(n):
        vid = to_dispensing(r, order_id=f"{order_base}{i}", txn_id=f"t-{order_base}{i}")
        outs.append(r.feed(E.VendReply(vid, "done", result)))
        r.feed(E.CancelPressed())
    return outs


def slot_alerts(out):
    return [f for f in (a.fields for a in actions_of(A.Publish, out) if a.type == "alert")
            if f["code"] == "slot_disabled"]


@pytest.mark.parametrize("result", ["jam", "no_drop", "timeout"])
def test_slot_auto_disabled_after_consecutive_failures(result):
    r = idle_rig()
    outs = fail_slot(r, S.slot_failure_limit, result=result)
    assert all(not slot_alerts(o) for o in outs[:-1])
    last = outs[-1]
    assert [f["slot"] for f in slot_alerts(last)] == [1]
    assert ops_of(A.SaveSetting, last) == [A.SaveSetting("disabled_slots", [1])]
    prod = {p.slot: p for p in r.view.products}[1]
    assert (prod.available, prod.reason) == (False, "disabled")
    assert actions_of(A.CreateOrder, r.feed(E.KeyPressed(1))) == [] and r.phase is Phase.IDLE


def test_ok_resets_the_failure_count():
    r = idle_rig()
    fail_slot(r, S.slot_failure_limit - 1)
    vid = to_dispensing(r, order_id="good", txn_id="t-good")
    r.feed(E.VendReply(vid, "done", "ok"))
    r.feed(E.CancelPressed())
    outs = fail_slot(r, S.slot_failure_limit - 1, order_base="g")
    assert not any(slot_alerts(o) for o in outs)


def test_set_prices_reenables_disabled_slot():
    r = idle_rig()
    fail_slot(r, S.slot_failure_limit)
    out = r.cmd("c-prices", "set_prices", {"prices": {"1": 300}})
    assert A.SaveSetting("disabled_slots", []) in ops_of(A.SaveSetting, out)
    assert {p.slot: p for p in r.view.products}[1].available
    assert r.feed(E.KeyPressed(1)) and r.phase is Phase.ORDERING


def test_door_cycle_reenables_disabled_slot():
    r = idle_rig()
    fail_slot(r, S.slot_failure_limit)
    r.feed(E.DoorChanged(True))
    out = r.feed(E.DoorChanged(False))
    assert A.SaveSetting("disabled_slots", []) in ops_of(A.SaveSetting, out)
    assert {p.slot: p for p in r.view.products}[1].available


def test_disabled_slots_survive_restore():
    r = restored_rig([], saved={"disabled_slots": [2]})
    r.feed(E.BoardUp(BOOT, 3))
    assert {p.slot: p for p in r.view.products}[2].reason == "disabled"
