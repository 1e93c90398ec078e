"""vending.mqtt against a real mosquitto: sessions, manual acks, Will, retained status.

Ordering, not time, decides every "did not arrive" assertion: mosquitto handles one
connection's packets in order and resends a resumed session's in-flight messages before new
ones, so when a marker published after X arrives first, X is not coming.

To make the client reconnect without touching the broker we shut its socket down under paho
(`_drop`), which is what a dead 4G link looks like to paho.
"""

from __future__ import annotations

import json
import queue
import socket
from typing import Any, Callable, Iterator

import pytest

from tests.fixtures.broker import Mosquitto, Probe
from vending import messages, signing
from vending.sandbox.broker import free_port
from vending.mqtt import Connected, Disconnected, Inbound, MqttConfigError, MqttLink

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]

KEY = bytes(range(32))
MID = "m1"
HANG = 15.0  # hang guard only


class Clock:
    """A settable clock, so each connection's signed status/Will carries a known ts."""

    def __init__(self, now: int = 1_700_000_000) -> None:
        self.now = now

    def __call__(self) -> float:
        return float(self.now)


class Sink:
    """The `emit` target: what the owner thread would receive. `next(cls)` takes objects of
    one class in arrival order and leaves the others for their own `next`: on a resumed
    session the broker's redeliveries may overtake Connected."""

    def __init__(self) -> None:
        self.q: queue.Queue[object] = queue.Queue()
        self.held: list[object] = []

    def __call__(self, obj: object) -> None:
        self.q.put(obj)

    def next(self, cls: type, timeout: float = HANG) -> Any:
        for i, obj in enumerate(self.held):
            if isinstance(obj, cls):
                return self.held.pop(i)
        while True:
            try:
                obj = self.q.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {cls.__name__} within {timeout}s (hang guard)") from None
            if isinstance(obj, cls):
                return obj
            self.held.append(obj)


def payment(n: int) -> bytes:
    p = {"v": 1, "type": "payment", "machine_id": MID, "ts": 1_700_000_000 + n,
         "order_id": f"o{n}", "amount": 350, "currency": "CNY", "provider": "sandbox",
         "txn_id": f"t{n}"}
    return json.dumps(signing.sign_payload(KEY, p)).encode()


def _drop(link: MqttLink) -> None:
    sock = link._client.socket()
    assert sock is not None, "link has no socket to drop"
    sock.shutdown(socket.SHUT_RDWR)


def _flush(link: MqttLink, cloud: Probe, clock: Clock) -> None:
    """Return once the broker has processed everything the link sent before this call: the
    status published here queues behind it on the same connection (paho's queue is FIFO)."""
    clock.now += 1
    link.publish_status("online")
    wait_online(cloud, clock.now)


def _status(msg: Any) -> dict[str, Any]:
    return json.loads(msg.payload)


@pytest.fixture
def make_link() -> Iterator[Callable[..., tuple[MqttLink, Sink]]]:
    links: list[MqttLink] = []

    def make(broker: Mosquitto, *, start: bool = True, **kw: Any) -> tuple[MqttLink, Sink]:
        sink = Sink()
        args: dict[str, Any] = dict(machine_id=MID, key=KEY, host=broker.host, port=broker.port,
                                    emit=sink, started=1_699_999_000, version="9.9-test",
                                    reconnect_max=1)
        args.update(kw)
        link = MqttLink(**args)
        links.append(link)
        if start:
            link.start()
        return link, sink

    yield make
    for link in links:
        link.stop(timeout=1)


@pytest.fixture
def cloud(mosquitto: Mosquitto, make_probe: Callable[..., Probe]) -> Probe:
    p = make_probe(mosquitto, "cloud")
    p.subscribe(f"vending/{MID}/#")
    return p


def wait_online(cloud: Probe, ts: int) -> dict[str, Any]:
    """Wait for the status the link publishes in on_connect, identified by its ts. It follows
    the SUBSCRIBE on the link's connection, so after it the subscriptions are in place."""
    m = cloud.wait_for(lambda m: m.topic.endswith("/status") and _status(m)["ts"] == ts
                       and _status(m)["state"] == "online")
    return _status(m)


def test_connects_subscribes_and_publishes_signed_retained_online(mosquitto, cloud, make_link,
                                                                  make_probe):
    clock = Clock()
    link, sink = make_link(mosquitto, clock=clock)
    assert sink.next(Connected) == Connected(session_present=False)
    assert link.connected
    wait_online(cloud, clock.now)
    for kind in ("payments", "commands", "acks"):
        cloud.publish(f"vending/{MID}/{kind}", b'{"k":"' + kind.encode() + b'"}')
        got = sink.next(Inbound)
        assert (got.kind, got.payload) == (kind, b'{"k":"' + kind.encode() + b'"}')
        link.ack(got.token)
    # A late subscriber sees the retained status: signed, ours, with version and start time.
    late = make_probe(mosquitto, "late")
    late.subscribe(f"vending/{MID}/status")
    m = late.get()
    st = _status(m)
    assert m.retain and m.qos == 1
    assert signing.verify_payload(KEY, st)
    assert (st["type"], st["machine_id"], st["state"], st["version"], st["started"]) == \
           ("status", MID, "online", "9.9-test", 1_699_999_000)


def test_last_will_is_signed_offline_and_resigned_on_each_connect(mosquitto, cloud, make_link,
                                                                  make_probe):
    clock = Clock(1_700_000_100)
    link, sink = make_link(mosquitto, clock=clock)
    sink.next(Connected)
    wait_online(cloud, 1_700_000_100)
    clock.now = 1_700_000_200  # the second connection must carry this ts in its Will
    _drop(link)
    sink.next(Disconnected)
    sink.next(Connected)
    wait_online(cloud, 1_700_000_200)
    # Abrupt death: the network thread stops and the socket closes without DISCONNECT.
    sock = link._client.socket()
    link._client.loop_stop()
    sock.close()
    m = cloud.wait_for(lambda m: m.topic.endswith("/status") and _status(m)["state"] == "offline")
    will = _status(m)
    assert signing.verify_payload(KEY, will)
    assert (will["machine_id"], will["ts"]) == (MID, 1_700_000_200)
    late = make_probe(mosquitto, "late")
    late.subscribe(f"vending/{MID}/status")
    assert _status(late.get())["state"] == "offline"  # retained


def test_unacked_payment_is_redelivered_after_reconnect_and_stale_ack_is_dropped(
        mosquitto, cloud, make_link):
    clock = Clock()
    link, sink = make_link(mosquitto, clock=clock)
    sink.next(Connected)
    cloud.publish(f"vending/{MID}/payments", payment(1))
    first = sink.next(Inbound)
    assert first.payload == payment(1)
    _flush(link, cloud, clock)  # (catches a library that acks on its own)
    _drop(link)  # not acked: the broker must keep it in flight
    assert sink.next(Connected).session_present
    again = sink.next(Inbound)
    assert again.payload == payment(1) and again.token != first.token
    # The old token belongs to a dead connection: ack() must not PUBACK its packet id.
    link.ack(first.token)
    _flush(link, cloud, clock)  # had a PUBACK gone out, the broker has it now
    _drop(link)
    sink.next(Connected)
    live = sink.next(Inbound)
    assert live.payload == payment(1), "the stale ack must not have acked it"
    link.ack(live.token)
    _flush(link, cloud, clock)
    _drop(link)
    sink.next(Connected)
    cloud.publish(f"vending/{MID}/payments", payment(2))  # marker: sent after the redelivery
    assert sink.next(Inbound).payload == payment(2), "an acked payment came back"


def test_acked_payment_is_not_redelivered(mosquitto, cloud, make_link):
    clock = Clock()
    link, sink = make_link(mosquitto, clock=clock)
    sink.next(Connected)
    cloud.publish(f"vending/{MID}/payments", payment(1))
    link.ack(sink.next(Inbound).token)
    _flush(link, cloud, clock)
    _drop(link)
    sink.next(Connected)
    cloud.publish(f"vending/{MID}/payments", payment(2))  # marker
    assert sink.next(Inbound).payload == payment(2)


@pytest.mark.parametrize("how", ["restart", "kill"])
def test_unacked_payment_survives_broker_restart(mosquitto, make_probe, make_link, how):
    clock = Clock()
    link, sink = make_link(mosquitto, clock=clock)
    sink.next(Connected)
    cloud = make_probe(mosquitto, "cloud")
    cloud.subscribe(f"vending/{MID}/status")
    cloud.publish(f"vending/{MID}/payments", payment(1))
    assert sink.next(Inbound).payload == payment(1)
    _flush(link, cloud, clock)  # a wrong PUBACK would have reached the broker by now
    if how == "restart":
        mosquitto.restart()  # SIGTERM: mosquitto saves its persistence file
    else:
        # A power cut after the broker's periodic save: the session and the in-flight
        # payment come back from disk. (What changed after the last save is lost: see
        # config/mosquitto.conf on why the broker is not the system of record.)
        mosquitto.wait_for_save()
        mosquitto.kill()
        mosquitto.start()
    sink.next(Disconnected)
    assert sink.next(Connected).session_present
    assert sink.next(Inbound).payload == payment(1)


def test_acked_payment_not_redelivered_after_broker_restart(mosquitto, make_probe, make_link):
    clock = Clock()
    link, sink = make_link(mosquitto, clock=clock)
    sink.next(Connected)
    cloud = make_probe(mosquitto, "cloud")
    cloud.publish(f"vending/{MID}/payments", payment(1))
    link.ack(sink.next(Inbound).token)
    cloud.subscribe(f"vending/{MID}/status")
    _flush(link, cloud, clock)
    mosquitto.restart()
    assert sink.next(Connected).session_present
    cloud = make_probe(mosquitto, "cloud2")
    cloud.publish(f"vending/{MID}/payments", payment(2))
    assert sink.next(Inbound).payload == payment(2)


def test_resubscribes_after_broker_restart_without_persistence(make_mosquitto, make_probe,
                                                               make_link):
    broker = make_mosquitto(persistence=False)
    clock = Clock(1_700_000_001)
    link, sink = make_link(broker, clock=clock)
    assert sink.next(Connected).session_present is False
    clock.now = 1_700_000_002
    broker.restart()  # the session and its subscriptions are gone
    sink.next(Disconnected)
    assert sink.next(Connected).session_present is False
    cloud = make_probe(broker, "cloud")
    cloud.subscribe(f"vending/{MID}/status")
    wait_online(cloud, 1_700_000_002)
    cloud.publish(f"vending/{MID}/payments", payment(7))
    assert sink.next(Inbound).payload == payment(7)


def test_latest_status_wins_over_a_stale_one_paho_resends_after_reconnect(
        mosquitto, cloud, make_link, make_probe):
    clock = Clock(1_700_000_000)
    link, sink = make_link(mosquitto, clock=clock)
    sink.next(Connected)
    wait_online(cloud, 1_700_000_000)
    mosquitto.pause()  # no PUBACK: the next status stays pending inside paho
    clock.now = 1_700_000_010
    link.publish_status("online")
    _drop(link)
    sink.next(Disconnected)
    link.publish_status("out_of_service")  # while disconnected: remembered, not sent
    clock.now = 1_700_000_020
    mosquitto.resume()
    sink.next(Connected)
    cloud.wait_for(lambda m: m.topic.endswith("/status")
                   and _status(m)["state"] == "out_of_service" and _status(m)["ts"] == clock.now)
    late = make_probe(mosquitto, "late")
    late.subscribe(f"vending/{MID}/status")
    st = _status(late.get())
    assert (st["state"], st["ts"]) == ("out_of_service", 1_700_000_020), \
        "paho's resend of the stale 'online' overwrote the retained status"


def test_publish_event_and_telemetry_arrive(mosquitto, cloud, make_link):
    clock = Clock()
    link, sink = make_link(mosquitto, clock=clock)
    sink.next(Connected)
    wait_online(cloud, clock.now)
    ev = messages.build_event(KEY, MID, "alert", messages.alert(
        event_id="e1", code="jam", detail="slot 3 jammed", slot=3), 1_700_000_050)
    link.publish_event(ev)
    m = cloud.wait_for(lambda m: m.topic == f"vending/{MID}/events")
    assert (m.qos, m.retain, json.loads(m.payload)) == (1, False, ev)
    tel = messages.build_event(KEY, MID, "telemetry", messages.telemetry(
        temp=41, door="closed", link="up", stock={1: 3}, uptime=5), 1_700_000_060)
    link.publish_telemetry(tel)
    m = cloud.wait_for(lambda m: m.topic == f"vending/{MID}/telemetry")
    assert (m.qos, json.loads(m.payload)) == (0, tel)


def test_messages_queued_while_offline_arrive_in_order_on_reconnect(mosquitto, cloud,
                                                                    make_link, make_probe):
    link, sink = make_link(mosquitto)
    sink.next(Connected)
    link.stop()  # clean: offline status, session kept by the broker
    m = cloud.wait_for(lambda m: m.topic.endswith("/status") and _status(m)["state"] == "offline")
    assert signing.verify_payload(KEY, _status(m))
    for n in (1, 2, 3):
        cloud.publish(f"vending/{MID}/payments", payment(n))
    link2, sink2 = make_link(mosquitto)
    assert sink2.next(Connected).session_present
    got = [sink2.next(Inbound) for _ in range(3)]
    assert [g.payload for g in got] == [payment(1), payment(2), payment(3)]
    for g in got:
        link2.ack(g.token)


def test_start_does_not_block_on_a_dead_broker_and_connects_when_it_appears(make_mosquitto):

    port = free_port()
    sink = Sink()
    link = MqttLink(machine_id=MID, key=KEY, host="127.0.0.1", port=port, emit=sink,
                    started=1, version="t", reconnect_max=1)
    try:
        link.start()  # returns at once although nothing listens
        assert not link.connected
        # Offline: dropped, not raised (the durable outbox resends on Connected).
        link.publish_event(messages.build_event(KEY, MID, "alert", messages.alert(
            event_id="e", code="jam", detail="x"), 1))
        make_mosquitto(port=port)
        assert sink.next(Connected) == Connected(session_present=False)
    finally:
        link.stop(timeout=1)


def test_an_emit_that_raises_does_not_kill_the_link(mosquitto, cloud, make_link):
    failures = [RuntimeError("owner bug")]  # the first delivery of payment 1 only
    sink = Sink()

    def emit(obj: object) -> None:
        if isinstance(obj, Inbound) and obj.payload == payment(1) and failures:
            raise failures.pop()
        sink(obj)

    clock = Clock()
    link, _ = make_link(mosquitto, emit=emit, clock=clock)
    sink.next(Connected)
    cloud.publish(f"vending/{MID}/payments", payment(1))
    cloud.publish(f"vending/{MID}/payments", payment(2))
    assert sink.next(Inbound).payload == payment(2)
    _flush(link, cloud, clock)
    _drop(link)  # neither was acked: both come back, in order
    assert [sink.next(Inbound).payload for _ in range(2)] == [payment(1), payment(2)]


def test_bad_arguments_raise_typed_errors_naming_the_field():
    ok: dict[str, Any] = dict(machine_id=MID, key=KEY, host="127.0.0.1", port=1884,
                              emit=lambda o: None, started=1, version="t")
    for field, bad in [("machine_id", "m/1"), ("machine_id", "#"), ("key", b""),
                       ("port", 0), ("port", "1883"), ("keepalive", 0), ("host", ""),
                       ("tls_cert", "/x.crt")]:
        with pytest.raises(MqttConfigError, match=field):
            MqttLink(**{**ok, field: bad})
    with pytest.raises(MqttConfigError, match="started"):
        MqttLink(**{**ok, "started": "yesterday"})
    with pytest.raises(MqttConfigError, match="TLS files"):
        MqttLink(**ok, tls_ca="/nonexistent/ca.crt")
    link = MqttLink(**ok)
    with pytest.raises(TypeError, match="token"):
        link.ack(("gen", 1))
    with pytest.raises(TypeError, match="publish_event"):
        link.publish_event(b"{}")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="state"):
        link.publish_status("sleeping")


def test_refused_credentials_are_reported_and_good_ones_connect(make_mosquitto, make_link):
    broker = make_mosquitto(users={MID: "right"})
    _, sink = make_link(broker, username=MID, password="wrong")
    assert sink.next(Disconnected).reason.startswith("refused")
    _, sink2 = make_link(broker, username=MID, password="right")
    assert sink2.next(Connected)


def test_missing_mosquitto_skips_locally_but_fails_under_ci(monkeypatch):
    import tests.fixtures.broker as fx
    from vending.sandbox.broker import BrokerUnavailable

    def missing() -> str:
        raise BrokerUnavailable("mosquitto binary not found (test)")

    monkeypatch.setattr(fx, "find_binary", missing)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="not found"):
        fx.require_mosquitto()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        fx.require_mosquitto()
