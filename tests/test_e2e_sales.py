"""End to end: the real daemon process, a real mosquitto, the board emulator on a real pty and the
sandbox cloud on loopback. Each test is one story a customer or the cloud could tell."""
from __future__ import annotations

import time

import pytest

from vending import signing
from vending.sandbox.rig import Rig

pytestmark = pytest.mark.broker


def _one_result(rig: Rig, txn_id: str) -> dict:
    result = rig.wait_result(txn_id)
    time.sleep(0.3)  # room for a wrong second event to show up before we count
    assert len(rig.results(txn_id=txn_id)) == 1
    return result


def test_paid_vend_dispenses_once_and_reports_ok(rig):
    view, payment = rig.buy(1)
    assert view["amount"] == 350 and view["currency"] == "CNY"
    result = _one_result(rig, payment["txn_id"])
    assert result["result"] == "ok" and result["dispensed"] is True and result["refund"] is False
    assert result["order_id"] == view["order_id"] and result["slot"] == 1
    assert result["amount"] == 350 and result["txn_id"] == payment["txn_id"]
    assert rig.dispenses(result["vend_id"]) == 1
    assert rig.dispenses() == 1
    rig.wait_screen("thanks")
    rig.wait_screen("grid")


@pytest.mark.parametrize("outcome", ["jam", "no_drop", "empty"])
def test_failed_dispense_is_refunded(rig, outcome):
    rig.emulator.inject(2, outcome)
    view, payment = rig.buy(2)
    result = _one_result(rig, payment["txn_id"])
    assert result["result"] == outcome
    assert result["dispensed"] is False and result["refund"] is True
    assert rig.dispenses() == 0
    assert rig.wait_screen("refund")["refund_reason"] == outcome


def test_redelivery_and_second_payment(rig):
    view, payment = rig.buy(1)
    first = _one_result(rig, payment["txn_id"])
    assert first["result"] == "ok"
    # The same message again: a redelivery, which must change nothing.
    rig.cloud.publish_payment(payment)
    # A second real payment (new txn_id) for the same, already paid order.
    second = rig.cloud.pay(view["order_id"])
    dup = _one_result(rig, second["txn_id"])
    assert dup["result"] == "duplicate" and dup["refund"] is True and dup["dispensed"] is False
    assert len(rig.results(txn_id=payment["txn_id"])) == 1
    assert rig.dispenses() == 1
    payments = rig.journal_rows("payments")
    assert sorted(p["disposition"] for p in payments) == ["dispense", "duplicate"]


@pytest.mark.parametrize("kind,reason", [("bad_sig", "bad_sig"), ("wrong_machine", "wrong_machine"),
                                         ("malformed", "malformed"), ("not_json", "malformed")])
def test_inauthentic_payment_is_rejected_and_never_dispensed(rig, kind, reason):
    view = rig.select(1)
    rig.cloud.forge_payment(view["order_id"], kind)
    rejected = rig.wait(lambda: rig.cloud.events("payment_rejected"), what="payment_rejected")
    assert rejected[0]["reason"] == reason
    if kind != "not_json":
        assert rejected[0]["order_id"] == view["order_id"]
    time.sleep(0.5)
    assert rig.dispenses() == 0
    assert rig.results() == []
    assert rig.screen()["screen"] == "qr"   # the customer can still pay for real


def test_wrong_amount_is_a_mismatch_with_refund(rig):
    view = rig.select(3)
    payment = rig.cloud.pay(view["order_id"], amount=view["amount"] - 1)
    result = _one_result(rig, payment["txn_id"])
    assert result["result"] == "mismatch" and result["refund"] is True
    assert result["amount"] == view["amount"] - 1   # the refund is of what was actually paid
    other = rig.cloud.pay(view["order_id"], currency="USD")
    assert _one_result(rig, other["txn_id"])["result"] == "mismatch"
    assert rig.dispenses() == 0


def test_payment_for_unknown_order_is_late_with_nulls(rig):
    rig.wait_screen("grid")
    payment = rig.cloud.pay("o-never-ours", amount=100, currency="CNY")
    result = _one_result(rig, payment["txn_id"])
    assert result["result"] == "late" and result["refund"] is True
    assert result["slot"] is None and result["vend_id"] is None
    assert rig.dispenses() == 0


def test_late_payment_after_timeout_is_served_while_machine_is_free(make_rig):
    rig = make_rig(session_timeout=2, late_payment_grace=30)
    view = rig.select(1)
    rig.wait_screen("grid", timeout=20)      # the QR expired and the order was cancelled
    assert any(o["state"] == "cancelled" for o in rig.cloud.orders())
    payment = rig.cloud.pay(view["order_id"])
    result = _one_result(rig, payment["txn_id"])
    assert result["result"] == "ok" and result["dispensed"] is True
    assert rig.dispenses() == 1


def test_late_payment_after_grace_is_refunded(make_rig):
    rig = make_rig(session_timeout=2, late_payment_grace=0)
    view = rig.select(1)
    rig.wait_screen("grid", timeout=20)
    time.sleep(1.1)
    payment = rig.cloud.pay(view["order_id"])
    result = _one_result(rig, payment["txn_id"])
    assert result["result"] == "late" and result["refund"] is True and result["slot"] == 1
    assert rig.dispenses() == 0


def test_payment_queued_while_daemon_was_down(make_rig):
    rig = make_rig(late_payment_grace=60)
    view = rig.select(2)
    rig.kill_daemon()
    payment = rig.cloud.pay(view["order_id"])       # the broker queues it for vm-VM-0001
    rig.start_daemon()
    result = _one_result(rig, payment["txn_id"])
    assert result["result"] == "ok" and rig.dispenses() == 1


def test_payment_queued_while_daemon_was_down_too_long_is_late(make_rig):
    rig = make_rig(late_payment_grace=0)
    view = rig.select(2)
    rig.kill_daemon()
    payment = rig.cloud.pay(view["order_id"])
    time.sleep(1.1)
    rig.start_daemon()
    result = _one_result(rig, payment["txn_id"])
    assert result["result"] == "late" and result["refund"] is True
    assert rig.dispenses() == 0


@pytest.mark.parametrize("mode", ["bad_sig", "wrong_amount"])
def test_unverifiable_order_never_shows_a_qr(rig, mode):
    rig.wait_screen("grid")
    rig.cloud.set_api_mode(mode)
    seen = []
    rig.emulator.press_key(1)
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        seen.append(rig.screen().get("screen"))
        time.sleep(0.02)
    assert "qr" not in seen
    assert rig.cloud.orders(), "the daemon did ask for an order"
    alerts = rig.cloud.events("alert")
    assert any(a["code"] == "inauthentic_message" for a in alerts)


def test_orders_api_down_gives_an_offline_qr_that_verifies(make_rig):
    rig = make_rig()
    rig.cloud.set_api_mode("down")
    view = rig.select(4)
    assert view["offline"] is True
    assert signing.verify_offline_qr_url(rig.key, view["qr_url"])
    parsed = signing.parse_offline_qr_url(view["qr_url"])
    assert parsed["amount"] == 500 and parsed["slot"] == 4 and parsed["machine_id"] == "VM-0001"
    # The customer pays on the cloud's offline page; the payment comes back over MQTT.
    state, payment = rig.cloud.open_offline(view["qr_url"].split(rig.cloud.pay_base_url, 1)[1])
    rig.cloud.take_payment(parsed["order_id"], "alipay")
    txn = rig.wait(lambda: rig.cloud.payments(), what="the offline payment")[-1]["txn_id"]
    assert _one_result(rig, txn)["result"] == "ok"
    assert rig.dispenses() == 1


def test_a_slow_orders_api_gets_an_offline_qr_at_once_and_its_order_cancelled(make_rig):
    # A dead 4G link: the API takes the order but its answer comes late.
    rig = make_rig(wait_for_api=0.5, orders_timeout=5.0, orders_retries=0)
    rig.cloud.set_api_mode("slow", requests=1, delay=3.0)
    view = rig.select(2)
    assert view["offline"] is True and signing.verify_offline_qr_url(rig.key, view["qr_url"])
    # The API's order, once its answer arrives, is cancelled: nobody can pay a QR never shown.
    api_order = rig.wait(lambda: next((o for o in rig.cloud.orders() if not o["offline"]), None),
                         what="the API's order")
    rig.wait(lambda: rig.cloud.order(api_order["order_id"])["state"] == "cancelled", 15,
             what="the API's late order cancelled")
    assert rig.screen()["order_id"] == view["order_id"]      # the offline QR stays up
    rig.cloud.open_offline(view["qr_url"].split(rig.cloud.pay_base_url, 1)[1])
    _, payment = rig.cloud.take_payment(view["order_id"], "wechat")
    assert _one_result(rig, payment["txn_id"])["result"] == "ok"
    assert rig.dispenses() == 1


def test_broker_down_during_vend_result_arrives_after_reconnect(make_rig):
    rig = make_rig(vend_seconds=2.0)
    view, payment = rig.buy(1)
    rig.wait_screen("dispensing")
    rig.broker.stop()
    time.sleep(2.5)                               # the vend finishes while MQTT is down
    assert rig.dispenses() == 1
    rig.broker.start()
    result = _one_result(rig, payment["txn_id"])
    assert result["result"] == "ok"
    assert rig.dispenses() == 1


def test_withheld_acks_are_republished_with_the_same_event_id(make_rig):
    rig = make_rig()
    rig.cloud.set_ack_policy("none")
    view, payment = rig.buy(1)
    first = rig.wait_result(payment["txn_id"], acked=False)
    rig.cloud.set_ack_policy("all")
    rig.stop_daemon()                               # a restart republishes what is unacked
    rig.start_daemon()
    rig.wait(lambda: first["event_id"] in rig.cloud.acked_event_ids(), 20, "the ack")
    deliveries = [d["payload"] for d in rig.cloud.deliveries()
                  if d["authentic"] and d["payload"].get("event_id") == first["event_id"]]
    assert len(deliveries) >= 2
    # Re-signed at each publish: the ts never goes backwards (it may repeat within a second).
    assert [d["ts"] for d in deliveries] == sorted(d["ts"] for d in deliveries)
    assert len(rig.results(txn_id=payment["txn_id"])) == 1
    assert rig.dispenses() == 1


@pytest.mark.parametrize("crash_at", ["SavePayment", "VendSent", "SendVend", "VendReply"])
def test_sigkill_at_every_step_of_a_paid_vend_gives_exactly_one_dispense(rig, crash_at):
    rig.restart_daemon(crash_at=crash_at)
    view = rig.select(1)
    payment = rig.cloud.pay(view["order_id"])
    rig.wait_exit()
    rig.start_daemon()
    result = _one_result(rig, payment["txn_id"])
    assert result["dispensed"] is True and result["result"] == "ok"
    assert rig.dispenses() == 1
    assert len(rig.journal_rows("vends")) == 1


def test_sigterm_parks_publishes_offline_and_resumes(rig):
    view, payment = rig.buy(1)
    assert _one_result(rig, payment["txn_id"])["result"] == "ok"
    started = time.monotonic()
    assert rig.stop_daemon() == 0
    took = time.monotonic() - started
    rig.wait(lambda: rig.cloud.status_history() and rig.cloud.status_history()[-1]["state"] == "offline",
             what="status offline")
    print(f"SIGTERM to exit: {took:.2f} s")
    rig.start_daemon()
    rig.wait(lambda: rig.cloud.status_history()[-1]["state"] == "online", what="status online")
    view2, payment2 = rig.buy(2)
    assert _one_result(rig, payment2["txn_id"])["result"] == "ok"
    assert rig.dispenses() == 2
