"""Cloud commands in the core (contract §2 `command`): each cmd_id takes effect at most once."""
from __future__ import annotations

import pytest

from tests.core_helpers import (BOOT, CUR, MID, PRICES, A, E, Phase, Screen, actions_of, command,
                                idle_rig, index_of, make_settings, ops_of, persist_with, published,
                                summary, to_awaiting, to_dispensing, to_ordering, to_reporting,
                                vend_results)
from vending import messages as msg

S = make_settings()


def results(out) -> list[dict]:
    return published(out, "command_result")


def one_result(out) -> dict:
    rs = results(out)
    assert len(rs) == 1, summary(out)
    return rs[0]


def free_vend_ids(out) -> list[str]:
    return [a.vend_id for a in actions_of(A.SendVend, out)]


# ---- each name -------------------------------------------------------------------------------

def test_ping():
    r = idle_rig()
    out = r.cmd("c1", "ping")
    assert one_result(out) == {"event_id": one_result(out)["event_id"], "cmd_id": "c1", "ok": True, "error": None}
    assert summary(out) == ["Persist[SaveCommand,SaveEvent]", "AckMessage", "Publish:command_result"]
    assert ops_of(A.SaveCommand, out)[0].ok is True


def test_set_prices_changes_price_of_next_sale_and_is_saved():
    r = idle_rig()
    out = r.cmd("c1", "set_prices", {"prices": {"2": 777}})
    assert one_result(out)["ok"] is True
    assert A.SaveSetting("prices", {"2": 777}) in ops_of(A.SaveSetting, out)
    assert {p.slot: p.price for p in r.view.products}[2] == 777
    assert to_ordering(r, 2).amount == 777


def test_set_prices_bad_slot_is_refused_and_changes_nothing():
    r = idle_rig()
    f = one_result(r.cmd("c1", "set_prices", {"prices": {"9": 1}}))
    assert f["ok"] is False and f["error"].startswith("bad_args")
    assert to_ordering(r, 1).amount == PRICES[1]


def test_set_promo_applies_within_window_only():
    r = idle_rig()
    start, end = int(r.now) + 10, int(r.now) + 100
    out = r.cmd("c1", "set_promo", {"slot": 1, "amount": 100, "start": start, "end": end})
    assert one_result(out)["ok"] is True and ops_of(A.SaveSetting, out)[0].key == "promos"
    assert to_ordering(r, 1).amount == PRICES[1]
    r.feed(E.CancelPressed())
    r.now = start
    assert to_ordering(r, 1).amount == 100
    r.feed(E.CancelPressed())
    r.now = end
    assert to_ordering(r, 1).amount == PRICES[1]


def test_set_promo_bad_window_is_refused():
    r = idle_rig()
    f = one_result(r.cmd("c1", "set_promo", {"slot": 1, "amount": 1, "start": 10, "end": 10}))
    assert f["ok"] is False and "bad_args" in f["error"]


def test_cancel_session_cancels_the_live_order():
    r = idle_rig()
    to_awaiting(r)
    out = r.cmd("c1", "cancel_session")
    assert [a.order_id for a in actions_of(A.CancelOrder, out)] == ["ord-1"]
    assert ops_of(A.CloseOrder, out)[0].reason == "command"
    assert one_result(out)["ok"] is True and r.phase is Phase.CANCELLING


def test_cancel_session_while_idle_is_ok_and_harmless():
    r = idle_rig()
    out = r.cmd("c1", "cancel_session")
    assert one_result(out)["ok"] is True and actions_of(A.CancelOrder, out) == []


# ---- stale, expired, redelivered ------------------------------------------------------------

@pytest.mark.parametrize("name,args", [("ping", {}), ("set_prices", {"prices": {"1": 1}}),
                                       ("free_vend", {"slot": 1, "reason": "x"}), ("cancel_session", {})])
@pytest.mark.parametrize("skew", [301, -301], ids=["old", "future"])
def test_stale_command_is_not_executed(name, args, skew):
    r = idle_rig()
    to_awaiting(r)
    out = r.cmd("c1", name, args, ts=r.now - skew)
    f = one_result(out)
    assert (f["ok"], f["error"]) == (False, "stale")
    assert actions_of((A.SendVend, A.CancelOrder), out) == [] and ops_of((A.SaveVend, A.SaveSetting), out) == []
    assert r.phase is Phase.AWAITING and r.m.catalog.prices == {}


def test_command_at_the_freshness_edge_is_executed():
    r = idle_rig()
    assert one_result(r.cmd("c1", "ping", ts=r.now - 300))["ok"] is True


@pytest.mark.parametrize("name,args", [("ping", {}), ("set_prices", {"prices": {"1": 1}}),
                                       ("free_vend", {"slot": 1, "reason": "x"})])
def test_expired_command_is_not_executed(name, args):
    r = idle_rig()
    out = r.cmd("c1", name, args, expires=r.now - 1)
    f = one_result(out)
    assert (f["ok"], f["error"]) == (False, "expired")
    assert actions_of(A.SendVend, out) == [] and ops_of((A.SaveVend, A.SaveSetting), out) == []


def test_redelivered_command_reannounces_outcome_without_executing():
    r = idle_rig()
    first = one_result(r.cmd("c1", "set_prices", {"prices": {"1": 900}}))
    r.cmd("c2", "set_prices", {"prices": {"1": 950}})
    out = r.cmd("c1", "set_prices", {"prices": {"1": 900}})
    again = one_result(out)
    assert (again["cmd_id"], again["ok"], again["error"]) == ("c1", first["ok"], first["error"])
    assert ops_of(A.SaveSetting, out) == [] and r.m.catalog.prices[1] == 950
    assert index_of(out, lambda a: isinstance(a, A.Persist)) < index_of(out, lambda a: isinstance(a, A.AckMessage))


def test_redelivered_stale_answer_is_the_same():
    r = idle_rig()
    r.cmd("c1", "ping", ts=r.now - 1000)
    f = one_result(r.cmd("c1", "ping", ts=r.now - 1000))
    assert (f["ok"], f["error"]) == (False, "stale")


def test_prior_outcome_wins_even_if_fresh_now():
    """CommandIn.prior set by the shell: nothing is executed, the old outcome is repeated."""
    r = idle_rig()
    c = command("c9", "free_vend", {"slot": 1, "reason": "x"}, ts=r.now, expires=r.now + 600)
    out = r.feed(E.CommandIn(c, "tk", (False, "expired")))
    f = one_result(out)
    assert (f["ok"], f["error"]) == (False, "expired") and actions_of(A.SendVend, out) == []


def test_redelivered_free_vend_still_running_is_only_acked():
    r = idle_rig()
    r.cmd("c1", "free_vend", {"slot": 1, "reason": "x"})
    out = r.cmd("c1", "free_vend", {"slot": 1, "reason": "x"})
    assert summary(out) == ["AckMessage"]


# ---- free_vend -------------------------------------------------------------------------------

def test_free_vend_when_idle_sends_exactly_one_vend_persisted_first():
    r = idle_rig()
    out = r.cmd("c1", "free_vend", {"slot": 2, "reason": "compensation"})
    sends = actions_of(A.SendVend, out)
    assert len(sends) == 1 and sends[0].slot == 2
    vid = sends[0].vend_id
    decided = persist_with(out, A.SaveVend, vend_id=vid, kind="free", order_id="c1", txn_id=None, amount=0)
    assert decided == persist_with(out, A.SaveCommand, cmd_id="c1", ok=None)
    assert decided < index_of(out, lambda a: isinstance(a, A.AckMessage))
    assert persist_with(out, A.VendSent, vend_id=vid) < out.index(sends[0])
    assert results(out) == [] and r.phase is Phase.DISPENSING and r.screen is Screen.DISPENSING
    assert vid != msg.vend_id_for(MID, "c1")   # never the id a paid order "c1" would get


def test_free_vend_result_reports_vend_result_and_command_result():
    r = idle_rig()
    vid = free_vend_ids(r.cmd("c1", "free_vend", {"slot": 2, "reason": "x"}))[0]
    out = r.feed(E.VendReply(vid, "done", "ok"))
    vr = vend_results(out)
    assert len(vr) == 1
    v = vr[0]
    assert (v["order_id"], v["amount"], v["currency"], v["txn_id"], v["dispensed"], v["refund"], v["slot"]) == (
        "c1", 0, CUR, None, True, False, 2)
    f = one_result(out)
    assert (f["cmd_id"], f["ok"], f["error"]) == ("c1", True, None)
    assert ops_of(A.SaveCommand, out)[0].ok is True
    assert actions_of(A.SendVend, r.cmd("c1", "free_vend", {"slot": 2, "reason": "x"})) == []


def test_free_vend_failure_is_command_failure_without_refund():
    r = idle_rig()
    vid = free_vend_ids(r.cmd("c1", "free_vend", {"slot": 1, "reason": "x"}))[0]
    out = r.feed(E.VendReply(vid, "done", "jam"))
    v = vend_results(out)[0]
    assert (v["result"], v["dispensed"], v["refund"], v["amount"]) == ("jam", False, False, 0)
    assert (one_result(out)["ok"], one_result(out)["error"]) == (False, "jam")


@pytest.mark.parametrize("phase", ["ordering", "awaiting"])
def test_free_vend_waits_while_a_customer_session_is_live(phase):
    r = idle_rig()
    if phase == "ordering":
        to_ordering(r)
    else:
        to_awaiting(r)
    out = r.cmd("c1", "free_vend", {"slot": 2, "reason": "x"})
    assert actions_of(A.SendVend, out) == [] and results(out) == []
    assert actions_of(A.SendVend, r.tick(5)) == []
    out = r.feed(E.CancelPressed())        # ordering -> idle, awaiting -> cancelling
    if phase == "awaiting":
        assert actions_of(A.SendVend, out) == []
        out = r.feed(E.CancelAnswered("ord-1", "cancelled"))
    assert len(actions_of(A.SendVend, out)) == 1




def test_free_vend_waits_for_the_paying_customer_in_front():
    r = idle_rig()
    to_awaiting(r)
    r.cmd("c1", "free_vend", {"slot": 2, "reason": "x"})
    out = r.pay("ord-1")
    sends = actions_of(A.SendVend, out)
    assert [s.slot for s in sends] == [1], "the paid vend goes first"


def test_free_vend_waits_for_a_busy_board():
    r = idle_rig()
    vid = to_dispensing(r)
    out = r.cmd("c1", "free_vend", {"slot": 2, "reason": "x"})
    assert actions_of(A.SendVend, out) == []
    out = r.feed(E.VendReply(vid, "done", "ok"))
    assert [a.slot for a in actions_of(A.SendVend, out)] == [2]


def test_free_vend_expired_at_motor_start_is_not_sent():
    r = idle_rig()
    to_awaiting(r)
    r.cmd("c1", "free_vend", {"slot": 2, "reason": "x"}, expires=r.now + 30)
    # Expired while queued behind the customer: it can no longer take effect in time, so it
    # is answered at once, and the customer's session is untouched.
    out = r.tick(31)                              # session timeout is later, still live
    assert r.phase is Phase.AWAITING
    out += r.feed(E.CancelPressed())
    out += r.feed(E.CancelAnswered("ord-1", "cancelled"))
    assert actions_of(A.SendVend, out) == []
    f = one_result(out)
    assert (f["cmd_id"], f["ok"], f["error"]) == ("c1", False, "expired")
    assert vend_results(out) == []
    assert ops_of(A.VendFinished, out)[0].result == "expired"
    assert r.m.vends == {} and actions_of(A.SendVend, r.tick(10)) == []


def test_free_vend_expiry_edge_is_still_sent():
    r = idle_rig()
    to_awaiting(r)
    r.cmd("c1", "free_vend", {"slot": 2, "reason": "x"}, expires=r.now + 30)
    r.feed(E.CancelPressed(), dt=30)
    out = r.feed(E.CancelAnswered("ord-1", "cancelled"))
    assert len(actions_of(A.SendVend, out)) == 1


def test_free_vend_bad_slot_is_refused():
    r = idle_rig()
    out = r.cmd("c1", "free_vend", {"slot": 9, "reason": "x"})
    f = one_result(out)
    assert f["ok"] is False and f["error"].startswith("bad_args") and actions_of(A.SendVend, out) == []


def test_free_vend_after_reboot_unknown_is_not_resent():
    r = idle_rig()
    vid = free_vend_ids(r.cmd("c1", "free_vend", {"slot": 2, "reason": "x"}))[0]
    r.feed(E.VendReply(vid, "running"))
    out = r.feed(E.VendReply(vid, "unknown", boot=BOOT + 1))
    assert actions_of(A.SendVend, out) == []
    v = vend_results(out)[0]
    assert (v["result"], v["refund"], v["dispensed"]) == ("uncertain", False, False)
    assert one_result(out)["ok"] is False


def test_free_vend_in_reporting_takes_over_the_screen():
    r = idle_rig()
    to_reporting(r)
    out = r.cmd("c1", "free_vend", {"slot": 3, "reason": "x"})
    assert len(actions_of(A.SendVend, out)) == 1 and r.phase is Phase.DISPENSING


def test_free_vend_with_a_64_character_cmd_id():
    """Regression: the vend id used to be derived from 'free-' + cmd_id, which raised for a valid
    cmd_id of 60..64 characters inside Machine.handle."""
    r = idle_rig()
    cmd_id = "c" * 64
    assert msg.is_ident(cmd_id)
    out = r.cmd(cmd_id, "free_vend", {"slot": 1, "reason": "x"})
    assert len(actions_of(A.SendVend, out)) == 1


def test_rejected_command_is_alerted_and_acked():
    r = idle_rig()
    out = r.feed(E.CommandRejectedIn("tk", "bad signature"))
    assert summary(out) == ["Persist[SaveEvent]", "AckMessage", "Publish:alert"]
    assert published(out, "alert")[0]["code"] == "inauthentic_message"




@pytest.mark.parametrize("code", ["busy", "door_open"])
def test_expired_free_vend_after_refusal_does_not_freeze_the_machine(code):
    r = idle_rig()
    out = r.cmd("c1", "free_vend", {"slot": 2, "reason": "x"}, expires=r.now + 5)
    vid = free_vend_ids(out)[0]
    r.feed(E.VendRefused(vid, code))
    out = r.tick(6)
    assert (one_result(out)["ok"], one_result(out)["error"]) == (False, "expired")
    assert actions_of(A.SendVend, out) == []
    r.tick(S.report_seconds + 1)
    assert r.phase is Phase.IDLE
    assert actions_of(A.CreateOrder, r.feed(E.KeyPressed(1)))


# ---- a machine clock that is off the cloud's (vending.clock) -----------------------------------

DAY = 86_400


def test_with_the_clock_corrected_the_clouds_times_are_judged_in_the_clouds_time():
    r = idle_rig()
    cloud_now = r.now + DAY                         # we booted a day behind
    assert one_result(r.cmd("c1", "ping", ts=cloud_now, expires=cloud_now + 600))["error"] == "stale"
    r.feed(E.ClockCorrected(DAY))
    assert one_result(r.cmd("c2", "ping", ts=cloud_now, expires=cloud_now + 600))["ok"] is True
    # expires is the cloud's time too: a command good for another minute is not expired
    assert one_result(r.cmd("c3", "ping", ts=cloud_now, expires=cloud_now + 60))["ok"] is True
    assert one_result(r.cmd("c4", "ping", ts=cloud_now, expires=cloud_now - 1))["error"] == "expired"


def test_a_promo_window_written_in_the_clouds_time_applies_when_the_cloud_says():
    r = idle_rig()
    r.feed(E.ClockCorrected(DAY))
    start = int(r.now) + DAY + 10
    r.cmd("c1", "set_promo", {"slot": 1, "amount": 100, "start": start, "end": start + 100},
          ts=r.now + DAY, expires=r.now + DAY + 600)
    assert to_ordering(r, 1).amount == PRICES[1]
    r.feed(E.CancelPressed())
    r.now += 10
    assert to_ordering(r, 1).amount == 100


def test_the_correction_never_moves_the_machines_own_deadlines():
    r = idle_rig()
    co = to_ordering(r)
    r.feed(E.ClockCorrected(-DAY))                   # we booted a day ahead
    # the order's expires_at is in the cloud's time: a day "in our past", yet five minutes away
    r.feed(E.OrderCreated(co.session_id, "o-1", "https://pay.example.test/o-1", co.amount,
                          co.currency, int(r.now) - DAY + 300, offline=False, slot=co.slot))
    assert r.phase is Phase.AWAITING
    r.tick(60)
    assert r.phase is Phase.AWAITING                 # not cancelled at once
    r.tick(240)
    assert r.phase is not Phase.AWAITING             # its own expiry, judged in our time


def test_acks_carry_the_clouds_time_and_count_once_corrected():
    r = idle_rig()
    assert ops_of(A.EventAcked, r.feed(E.AckIn("e1", int(r.now) + DAY, "t1"))) == []
    r.feed(E.ClockCorrected(DAY))
    assert [o.event_id for o in ops_of(A.EventAcked, r.feed(E.AckIn("e2", int(r.now) + DAY, "t2")))] == ["e2"]
