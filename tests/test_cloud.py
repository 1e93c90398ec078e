"""The sandbox cloud as its peers see it: pay pages over plain HTTP, and a machine-side MQTT
client on a real mosquitto receiving payments/commands/acks and sending events."""
from __future__ import annotations

import json
import queue
import re
import time

import httpx
import paho.mqtt.client as mqtt
import pytest

from tests.fixtures.cloud import TEST_KEY, TEST_MACHINE_ID
from tests.vectors import VECTORS
from vending import messages
from vending.orders import OrdersClient, offline_order
from vending.sandbox.cloud import SandboxCloud

MID = TEST_MACHINE_ID
HANG_GUARD = 10.0


class Machine:
    """The daemon's side of the broker, reduced to what these tests need."""

    def __init__(self, broker, machine_id: str = MID):
        self.machine_id = machine_id
        self.inbox: dict[str, queue.Queue] = {k: queue.Queue() for k in
                                              ("payments", "commands", "acks")}
        self._subscribed = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"vm-{machine_id}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [(f"vending/{machine_id}/{k}", 1) for k in self.inbox])
        self.client.on_subscribe = lambda *a: self._subscribed.put(True)
        self.client.on_message = lambda c, u, m: self.inbox[m.topic.rsplit("/", 1)[-1]].put(
            m.payload)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self._subscribed.get(timeout=HANG_GUARD)

    def next(self, kind: str) -> bytes:
        return self.inbox[kind].get(timeout=HANG_GUARD)

    def publish(self, kind: str, payload: dict | bytes, qos: int = 1) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(f"vending/{self.machine_id}/{kind}", data, qos=qos).wait_for_publish(
            HANG_GUARD)

    def event(self, event_id: str, ts: int | None = None, key: bytes = TEST_KEY) -> dict:
        return messages.build_event(key, self.machine_id, "alert", {
            "event_id": event_id, "code": "low_stock", "slot": 3, "detail": "two left"},
            int(time.time()) if ts is None else ts)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def machine(mosquitto):
    m = Machine(mosquitto)
    yield m
    m.close()


@pytest.fixture
def orders_client(cloud):
    c = OrdersClient(cloud.base_url, MID, TEST_KEY, sleep=lambda s: None)
    yield c
    c.close()


def state_of(page: httpx.Response) -> str:
    m = re.search(r'id="status" data-state="([a-z_]+)"', page.text)
    assert m, page.text
    return m[1]


# --- online pay page ------------------------------------------------------------------------------

def test_pay_page_publishes_a_payment_that_verifies(cloud, machine, orders_client):
    order = orders_client.create_order(3, "cola-330", 350, "CNY", "s-pay")
    page = httpx.get(order.qr_url)
    assert page.status_code == 200 and state_of(page) == "pending"
    assert "¥3.50" in page.text and 'value="alipay"' in page.text

    paid = httpx.post(order.qr_url, data={"provider": "alipay"})
    assert state_of(paid) == "paid"
    payment = messages.parse_payment(machine.next("payments"), TEST_KEY, MID)
    assert (payment.order_id, payment.amount, payment.currency, payment.provider) == \
        (order.order_id, 350, "CNY", "alipay")
    assert orders_client.get_order(order.order_id) == ("paid", payment.message)

    # a double click, and a reload, take no second payment
    again = httpx.post(order.qr_url, data={"provider": "alipay"})
    assert state_of(again) == "already_paid"
    assert state_of(httpx.get(order.qr_url)) == "already_paid"
    assert len(cloud.payments()) == 1


def test_pay_page_refuses_a_cancelled_order(cloud, orders_client):
    order = orders_client.create_order(3, "cola-330", 350, "CNY", "s-cancel")
    assert orders_client.cancel_order(order.order_id) == "cancelled"
    page = httpx.post(order.qr_url, data={"provider": "wechat"})
    assert page.status_code == 409 and state_of(page) == "cancelled"
    assert cloud.payments() == []


def test_pay_page_refuses_unknown_provider_and_unknown_order(cloud, orders_client):
    order = orders_client.create_order(3, "cola-330", 350, "CNY", "s-prov")
    assert state_of(httpx.post(order.qr_url, data={"provider": "paypal"})) == "bad_provider"
    assert httpx.get(f"{cloud.pay_base_url}/q/o-nope").status_code == 404
    assert cloud.payments() == [] and cloud.order(order.order_id)["state"] == "pending"


# --- offline pay page (§4) ----------------------------------------------------------------------

def _offline(cloud, session_id: str = "s-off", ttl: int = 120, now: int | None = None):
    return offline_order(MID, TEST_KEY, cloud.pay_base_url, 4, 200, "CNY", session_id,
                         int(time.time()) if now is None else now, ttl)


def test_offline_pay_page_takes_payment(cloud, machine):
    order = _offline(cloud)
    assert state_of(httpx.get(order.qr_url)) == "pending"
    assert state_of(httpx.post(order.qr_url, data={"provider": "wechat"})) == "paid"
    payment = messages.parse_payment(machine.next("payments"), TEST_KEY, MID)
    assert (payment.order_id, payment.amount, payment.currency) == (order.order_id, 200, "CNY")
    assert state_of(httpx.post(order.qr_url, data={"provider": "wechat"})) == "already_paid"
    assert len(cloud.payments()) == 1


@pytest.mark.parametrize("tamper", [
    lambda u: u.replace("a=200", "a=2"),                         # cheaper
    lambda u: u.replace("s=4", "s=5"),                           # another slot
    lambda u: u[:-1] + ("A" if u[-1] != "A" else "B"),           # sig itself
    lambda u: u.replace(f"/p/{MID}/", "/p/VM-0002/"),            # another machine
])
def test_offline_pay_page_refuses_a_tampered_url(cloud, tamper):
    url = tamper(_offline(cloud).qr_url)
    assert httpx.get(url).status_code == 403
    page = httpx.post(url, data={"provider": "wechat"})
    assert page.status_code == 403 and state_of(page) == "bad_sig"
    assert cloud.payments() == [] and cloud.orders() == []


def test_offline_pay_page_refuses_an_expired_qr(cloud):
    order = _offline(cloud, now=int(time.time()) - 200, ttl=60)
    page = httpx.post(order.qr_url, data={"provider": "wechat"})
    assert page.status_code == 409 and state_of(page) == "expired"
    assert cloud.payments() == []


def test_offline_order_cancelled_before_the_scan_cannot_be_paid(cloud, orders_client):
    order = _offline(cloud, "s-gone")
    assert orders_client.cancel_order(order.order_id) == "cancelled"
    page = httpx.post(order.qr_url, data={"provider": "wechat"})
    assert state_of(page) == "cancelled" and cloud.payments() == []


# --- MQTT: events, acks, payments, commands ---------------------------------------------

def test_events_are_recorded_once_and_acked_every_delivery(cloud, machine):
    event = machine.event("e-1")
    machine.publish("events", event)
    ack = messages.parse_ack(machine.next("acks"), TEST_KEY, MID)
    assert ack.event_id == "e-1" and messages.is_fresh(ack.ts, time.time())
    machine.publish("events", machine.event("e-1"))  # a republish: new ts, same event_id
    assert messages.parse_ack(machine.next("acks"), TEST_KEY, MID).event_id == "e-1"
    assert cloud.events() == [event] and cloud.events("vend_result") == []
    assert cloud.acked_event_ids() == ["e-1", "e-1"]
    assert len(cloud.deliveries()) == 2


def test_inauthentic_events_are_not_recorded_or_acked(cloud, machine):
    machine.publish("events", machine.event("e-bad", key=bytes(32)))
    machine.publish("events", b"{not json")
    machine.publish("events", machine.event("e-good"))
    assert messages.parse_ack(machine.next("acks"), TEST_KEY, MID).event_id == "e-good"
    assert [e["event_id"] for e in cloud.events()] == ["e-good"]
    assert [r["problem"] for r in cloud.rejected()] == ["bad_sig", "malformed"]
    assert cloud.acked_event_ids() == ["e-good"]


def test_ack_policy_withhold_first_then_none(cloud, machine):
    cloud.set_ack_policy("withhold_first", 1)
    machine.publish("events", machine.event("e-1"))
    machine.publish("events", machine.event("e-1"))  # the republish after no ack
    assert messages.parse_ack(machine.next("acks"), TEST_KEY, MID).event_id == "e-1"
    assert cloud.acked_event_ids() == ["e-1"] and len(cloud.deliveries()) == 2
    cloud.set_ack_policy("none")
    machine.publish("events", machine.event("e-2"))
    assert cloud.wait_for(lambda: len(cloud.events()) == 2, HANG_GUARD)
    cloud.set_ack_policy("all")
    # deliveries are handled in order, so once e-3 is acked e-2 has been fully handled
    machine.publish("events", machine.event("e-3"))
    assert messages.parse_ack(machine.next("acks"), TEST_KEY, MID).event_id == "e-3"
    assert cloud.acked_event_ids() == ["e-1", "e-3"]


def test_status_and_telemetry_are_recorded(cloud, machine):
    now = int(time.time())
    machine.publish("status", messages.build_event(
        TEST_KEY, MID, "status", messages.status(state="online", version="0.1.0", started=now),
        now))
    machine.publish("telemetry", messages.build_event(TEST_KEY, MID, "telemetry", {
        "temp": 45, "door": "closed", "link": "up", "stock": {"3": 2}, "uptime": 5}, now), qos=0)
    assert cloud.wait_for(lambda: cloud.status_history() and cloud.telemetry(), HANG_GUARD)
    assert cloud.status_history()[0]["state"] == "online"
    assert cloud.telemetry()[0]["stock"] == {"3": 2}


def test_control_pay_forces_duplicates_and_redeliveries(cloud, machine, orders_client):
    order = orders_client.create_order(3, "cola-330", 350, "CNY", "s-dup")
    first = cloud.pay(order.order_id)
    second = cloud.pay(order.order_id)                      # a second real payment
    cloud.pay(order.order_id, txn_id=first["txn_id"])       # a redelivery
    mismatch = cloud.pay(order.order_id, amount=1)
    got = [messages.parse_payment(machine.next("payments"), TEST_KEY, MID) for _ in range(4)]
    assert [p.txn_id for p in got] == [first["txn_id"], second["txn_id"], first["txn_id"],
                                       mismatch["txn_id"]]
    assert first["txn_id"] != second["txn_id"] and got[3].amount == 1
    assert orders_client.get_order(order.order_id) == ("paid", first)


@pytest.mark.parametrize("kind", ["bad_sig", "wrong_machine", "malformed", "not_json"])
def test_forged_payments_are_rejected_by_the_machine(cloud, machine, kind):
    raw = cloud.forge_payment("o-x", kind, amount=350, currency="CNY")
    assert machine.next("payments") == raw
    with pytest.raises(messages.Rejected) as info:
        messages.parse_payment(raw, TEST_KEY, MID)
    assert info.value.reason == {"not_json": "malformed"}.get(kind, kind)


def test_commands_are_signed_and_fresh(cloud, machine):
    sent = cloud.send_command("free_vend", {"slot": 3, "reason": "jam refund"}, cmd_id="c-1")
    cmd = messages.parse_command(machine.next("commands"), TEST_KEY, MID)
    assert (cmd.cmd_id, cmd.name, cmd.args) == ("c-1", "free_vend", sent["args"])
    assert cmd.expires == cmd.ts + 300 and messages.is_fresh(cmd.ts, time.time())


def test_two_clouds_in_one_process_do_not_cross(make_cloud, mosquitto):
    other_key = bytes(range(32))
    a = make_cloud(MID, TEST_KEY, mosquitto)
    b = make_cloud("VM-0002", other_key, mosquitto)
    machine_b = Machine(mosquitto, "VM-0002")
    try:
        machine_b.publish("events", machine_b.event("e-b", key=other_key))
        assert messages.parse_ack(machine_b.next("acks"), other_key, "VM-0002").event_id == "e-b"
        assert a.events() == [] and [e["event_id"] for e in b.events()] == ["e-b"]
        assert a.base_url != b.base_url
    finally:
        machine_b.close()


def test_cloud_rejects_bad_construction():
    with pytest.raises(ValueError, match="machine_id"):
        SandboxCloud("bad id", TEST_KEY, mqtt_port=1)
    with pytest.raises(ValueError, match="key"):
        SandboxCloud(MID, b"", mqtt_port=1)


def test_api_modes_are_validated(cloud):
    with pytest.raises(ValueError, match="api mode"):
        cloud.set_api_mode("flaky")
    with pytest.raises(ValueError, match="refuse"):
        cloud.set_api_mode("refuse", requests=1)
    with pytest.raises(ValueError, match="ack policy"):
        cloud.set_ack_policy("some")


def test_offline_pay_page_accepts_the_contract_vector_url(cloud):
    # same machine and key as the vector; only the host differs. The vector's expiry is long
    # past, so a good sig reads "expired" (409) where a bad one would read "bad_sig" (403).
    vec = VECTORS
    url = vec["offline_qr"]["url"].replace("https://pay.example.test", cloud.pay_base_url)
    page = httpx.get(url)
    assert page.status_code == 409 and state_of(page) == "expired"
    assert state_of(httpx.get(url.replace("a=350", "a=351"))) == "bad_sig"
