"""End to end, the operator's side: commands, alerts, telemetry, status and what the logs hold."""
from __future__ import annotations

import re
import time

import pytest

from vending.sandbox.rig import Rig

pytestmark = pytest.mark.broker


def _command_result(rig: Rig, cmd_id: str, n: int = 1) -> list[dict]:
    def found():
        rs = [e for e in rig.cloud.events("command_result") if e["cmd_id"] == cmd_id]
        return rs if len(rs) >= n else None
    return rig.wait(found, 15, f"command_result for {cmd_id}")


def test_set_prices_and_promo_change_what_the_customer_pays(rig):
    rig.wait_screen("grid")
    now = int(time.time())
    rig.cloud.send_command("set_prices", {"prices": {"1": 280}}, cmd_id="c-prices")
    assert _command_result(rig, "c-prices")[0]["ok"] is True
    rig.cloud.send_command("set_promo", {"slot": 2, "amount": 100, "start": now - 5, "end": now + 600},
                           cmd_id="c-promo")
    assert _command_result(rig, "c-promo")[0]["ok"] is True
    grid = rig.wait_screen("grid", pred=lambda v: v["products"][1]["promo_price"] == 100)
    assert grid["products"][0]["price"] == 280
    view = rig.select(2)
    assert view["amount"] == 100                   # the 1-yuan campaign
    order = next(o for o in rig.cloud.orders() if o["order_id"] == view["order_id"])
    assert order["amount"] == 100


def test_free_vend_dispenses_once_per_cmd_id_even_when_redelivered(rig):
    rig.wait_screen("grid")
    cmd = rig.cloud.send_command("free_vend", {"slot": 3, "reason": "compensation"}, cmd_id="c-free-1")
    result = _command_result(rig, "c-free-1")[0]
    assert result["ok"] is True and result["error"] is None
    vr = rig.wait(lambda: [e for e in rig.cloud.events("vend_result") if e["order_id"] == "c-free-1"],
                  what="the free vend's vend_result")[0]
    assert vr["amount"] == 0 and vr["txn_id"] is None and vr["dispensed"] is True and vr["refund"] is False
    rig.cloud.publish_raw("commands", cmd)          # the broker delivers it again
    time.sleep(1.0)
    assert rig.dispenses() == 1
    results = [e for e in rig.cloud.deliveries() if e["authentic"]
               and e["payload"].get("type") == "command_result" and e["payload"]["cmd_id"] == "c-free-1"]
    assert all(r["payload"]["ok"] is True for r in results)


def test_stale_and_expired_commands_are_answered_not_executed(rig):
    rig.wait_screen("grid")
    now = int(time.time())
    rig.cloud.send_command("free_vend", {"slot": 1, "reason": "x"}, cmd_id="c-stale", ts=now - 3600,
                           expires=now + 3600)
    rig.cloud.send_command("free_vend", {"slot": 1, "reason": "x"}, cmd_id="c-expired", expires=now - 1)
    stale = _command_result(rig, "c-stale")[0]
    expired = _command_result(rig, "c-expired")[0]
    assert (stale["ok"], stale["error"]) == (False, "stale")
    assert (expired["ok"], expired["error"]) == (False, "expired")
    rig.cloud.send_command("ping", cmd_id="c-ping")
    assert _command_result(rig, "c-ping")[0]["ok"] is True
    assert rig.dispenses() == 0


def test_cancel_session_command_closes_the_qr(rig):
    view = rig.select(1)
    rig.cloud.send_command("cancel_session", cmd_id="c-cancel")
    assert _command_result(rig, "c-cancel")[0]["ok"] is True
    rig.wait_screen("grid")
    rig.wait(lambda: any(o["order_id"] == view["order_id"] and o["state"] == "cancelled"
                         for o in rig.cloud.orders()), what="the order cancelled at the cloud")


def test_door_open_during_a_sale_cancels_it_and_alerts(rig):
    rig.select(1)
    rig.emulator.open_door()
    oos = rig.wait_screen("out_of_service")
    assert oos["reason"] == "door_open"
    alert = rig.wait(lambda: [a for a in rig.cloud.events("alert") if a["code"] == "door_open_during_sale"],
                     what="door alert")[0]
    assert "door" in alert["detail"]
    rig.wait(lambda: rig.cloud.status_history()[-1]["state"] == "out_of_service", what="status oos")
    rig.emulator.close_door()
    rig.wait_screen("grid")
    rig.wait(lambda: rig.cloud.status_history()[-1]["state"] == "online", what="status online")


def test_repeated_jams_disable_the_slot_and_set_prices_brings_it_back(make_rig):
    rig = make_rig(slot_failure_limit=2)
    rig.emulator.inject(4, "jam", persistent=True)
    for _ in range(2):
        view, payment = rig.buy(4)
        assert rig.wait_result(payment["txn_id"])["result"] == "jam"
        rig.wait_screen("grid", timeout=20)
    codes = [a["code"] for a in rig.cloud.events("alert")]
    assert codes.count("jam") == 2 and "slot_disabled" in codes
    grid = rig.wait_screen("grid", pred=lambda v: not v["products"][3]["available"])
    assert grid["products"][3]["reason"] == "disabled"
    rig.emulator.press_key(4)                       # a disabled slot sells nothing
    time.sleep(0.5)
    assert rig.screen()["screen"] == "grid"
    rig.emulator.call(lambda b: b.clear_injections())
    rig.cloud.send_command("set_prices", {"prices": {"4": 500}}, cmd_id="c-reenable")
    rig.wait_screen("grid", pred=lambda v: v["products"][3]["available"])


def test_board_link_down_hides_the_qr_and_comes_back(rig):
    rig.select(1)
    rig.emulator.unplug()
    oos = rig.wait_screen("out_of_service", timeout=20)
    assert oos["reason"] == "board_offline"
    rig.wait(lambda: any(a["code"] == "board_link_down" for a in rig.cloud.events("alert")),
             what="link down alert")
    rig.emulator.replug()
    rig.wait_screen("grid", timeout=20)
    view, payment = rig.buy(2)
    assert rig.wait_result(payment["txn_id"])["result"] == "ok"


def test_telemetry_status_and_logs_hold_no_secrets(make_rig):
    rig = make_rig(telemetry_interval=1)
    rig.wait(lambda: rig.cloud.status_history() and rig.cloud.status_history()[-1]["state"] == "online",
             what="retained online status")
    view, payment = rig.buy(1)
    rig.wait_result(payment["txn_id"])
    tele = rig.wait(lambda: rig.cloud.telemetry(), what="telemetry")[-1]
    assert tele["link"] == "up" and tele["door"] == "closed" and set(tele["stock"]) == {str(s) for s in range(1, 7)}
    log = rig.daemon_log()
    assert "decision=dispense" in log and "vend finished" in log
    assert "logger=vending.wire" not in log  # the serial lines only at DEBUG
    assert rig.key.hex() not in log
    sigs = [p["sig"] for p in rig.cloud.payments()] + [e.get("sig") for e in rig.cloud.events()]
    assert sigs and not any(s and s in log for s in sigs)
    assert not re.search(r"[0-9a-f]{64}", log)


def test_at_debug_the_daemon_logs_the_serial_lines_but_not_idle_polls(make_rig):
    rig = make_rig(log_level="DEBUG")
    view, payment = rig.buy(1)
    vend_id = rig.wait_result(payment["txn_id"])["vend_id"]
    wire = [line for line in rig.daemon_log().splitlines() if "logger=vending.wire" in line]
    assert any(">> " in line and f" VEND id={vend_id} slot=1*" in line for line in wire)
    assert any("<< " in line and " OK state=" in line for line in wire)
    assert any(" HELLO*" in line for line in wire)
    # The key press came in a POLL reply, so that poll is there; the idle ones are not.
    assert any(" POLL " in line for line in wire)
    idle = [line for line in wire if "ev=none" in line and "[" not in line.split("*", 1)[1]]
    assert not idle, f"idle polls are being logged: {idle[:3]}"


@pytest.mark.parametrize("days", [30, -30], ids=["behind", "ahead"])
def test_a_machine_booted_days_off_the_cloud_still_sells_obeys_and_settles(make_rig, days):
    # No battery-backed clock: the machine is 30 days off. Without the correction the API
    # refuses its timestamps, commands are stale, acks are ignored, offline QRs are expired
    # and (ahead) the first QR's expires_at lies in the machine's past.
    rig = make_rig(cloud_clock_offset=days * 86_400)
    view = rig.select(1)
    time.sleep(1.0)                                        # the first QR stays up, uncancelled
    assert (rig.screen().get("screen"), rig.screen().get("order_id")) == ("qr", view["order_id"])
    assert rig.cloud.order(view["order_id"])["state"] == "pending"
    payment = rig.cloud.pay(view["order_id"])
    result = rig.wait_result(payment["txn_id"])          # acked: the ack's ts counted as fresh
    assert result["result"] == "ok" and not view["offline"]
    assert abs(result["ts"] - rig.cloud.clock()) < 60      # events carry the cloud's time
    alert = rig.wait(lambda: [a for a in rig.cloud.events("alert") if a["code"] == "clock_offset"],
                     what="the clock_offset alert")[0]
    assert "allows for it" in alert["detail"]
    # a command stamped by the cloud is executed, not refused as stale
    cmd = rig.cloud.send_command("set_prices", {"prices": {"2": 650}})
    done = _command_result(rig, cmd["cmd_id"])[0]
    assert (done["ok"], done["error"]) == (True, None)
    # an offline QR expires in the cloud's time, so the pay page takes it
    rig.cloud.set_api_mode("down")
    offline = rig.select(2)
    assert offline["offline"] and offline["amount"] == 650
    problem, _ = rig.cloud.open_offline(offline["qr_url"].split(rig.cloud.pay_base_url, 1)[1])
    assert problem == "ok"
    _, paid = rig.cloud.take_payment(offline["order_id"], "alipay")
    assert rig.wait_result(paid["txn_id"])["result"] == "ok"
    assert rig.dispenses() == 2
    # and the daemon took the cloud's acks as fresh: its outbox drains
    rig.wait(lambda: all(r["acked_at"] for r in rig.journal_rows("outbox")), 20,
             what="every event acked in the journal")
