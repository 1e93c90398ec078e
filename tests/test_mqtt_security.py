"""The shipped broker config (config/mosquitto.conf + config/mosquitto.acl) against real clients.

The broker runs the shipped files themselves: the ACL file as is, the conf with only its
paths, listener address and (as root) `user` rewritten, each rewrite asserted to have hit.

"Nothing arrived" is shown by ordering, never by waiting: mosquitto handles packets in the
order it receives them, a publisher's PUBACK means its publish was handled, and a marker
published afterwards through an allowed path must then be the first thing to arrive.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.fixtures.broker import Mosquitto, Probe, ProbeError, require_mosquitto
from tests.pki import TestCA
from tests.test_mqtt import KEY, MID, make_link, payment  # noqa: F401 (make_link: fixture)
from vending import messages
from vending.mqtt import Connected, Inbound
from vending.sandbox.broker import free_port

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONF = ROOT / "config" / "mosquitto.conf"
SHIPPED_ACL = ROOT / "config" / "mosquitto.acl"
OTHER = "m2"


def render_shipped_conf(port: int, pki: TestCA, data_dir: Path) -> str:
    text = SHIPPED_CONF.read_text()
    swaps = {
        "listener 8883\n": f"listener {port} 127.0.0.1\n",
        "/etc/mosquitto/ca_certificates/ca.crt": str(pki.ca_path),
        "/etc/mosquitto/certs/server.crt": str(pki.server_cert),
        "/etc/mosquitto/certs/server.key": str(pki.server_key),
        "/etc/mosquitto/mosquitto.acl": str(SHIPPED_ACL),
        "/var/lib/mosquitto/": f"{data_dir}/",
        "log_dest syslog": "log_dest stderr",
    }
    for old, new in swaps.items():
        assert text.count(old) == 1, f"config/mosquitto.conf no longer has {old!r} once"
        text = text.replace(old, new)
    if os.geteuid() == 0:
        text += "user root\n"  # else mosquitto drops to 'mosquitto', who cannot read tmp files
    return text


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    ca = TestCA(tmp_path_factory.mktemp("pki"))
    for user in (MID, OTHER, "cloud"):
        ca.client(user)
    return ca


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """Another CA: its certificates carry the same names but must not be trusted."""
    ca = TestCA(tmp_path_factory.mktemp("pki-other"), name="some-other-ca")
    ca.client(MID)
    return ca


@pytest.fixture
def broker(tmp_path: Path, pki: TestCA):  # type: ignore[no-untyped-def]
    require_mosquitto()
    port = free_port()
    b = Mosquitto(workdir=tmp_path / "mosq", port=port, tls=True, pki=pki,
                  conf_text=render_shipped_conf(port, pki, tmp_path / "mosq" / "data"))
    b.start()
    yield b
    b.close()


@pytest.fixture
def probe(broker: Mosquitto) -> Any:
    made: list[Probe] = []

    def make(client_id: str, user: str, **kw: Any) -> Probe:
        p = Probe(broker, client_id, user=user, **kw)
        made.append(p)
        return p.connect()

    yield make
    for p in made:
        p.close()


def tls_link(make_link: Callable[..., Any], broker: Mosquitto, machine: str = MID) -> Any:
    cert, key = broker.client_cert(machine)
    return make_link(broker, machine_id=machine, tls_ca=str(broker.ca_path),
                     tls_cert=str(cert), tls_key=str(key))


def test_machine_link_works_over_mutual_tls(broker, probe, make_link):
    cloud = probe("cloud-1", "cloud")
    cloud.subscribe(f"vending/{MID}/#")
    link, sink = tls_link(make_link, broker)
    sink.next(Connected)
    st = json.loads(cloud.wait_for(lambda m: m.topic.endswith("/status")).payload)
    assert (st["state"], st["machine_id"]) == ("online", MID)
    cloud.publish(f"vending/{MID}/payments", payment(1))
    got = sink.next(Inbound)
    assert got.payload == payment(1)
    link.ack(got.token)
    ev = messages.build_event(KEY, MID, "alert", messages.alert(
        event_id="e1", code="jam", detail="slot 2 jammed"), 1_700_000_000)
    link.publish_event(ev)
    m = cloud.wait_for(lambda m: m.topic == f"vending/{MID}/events")
    assert json.loads(m.payload) == ev


def test_plain_tcp_is_refused(broker):
    with pytest.raises(ProbeError):
        Probe(broker, "plain", tls=False).connect()


def test_client_trusting_another_ca_refuses_the_broker(broker, stranger):
    cert, key = broker.client_cert(MID)
    with pytest.raises(ProbeError, match="CERTIFICATE_VERIFY_FAILED|certificate verify"):
        Probe(broker, "wrong-ca", ca=stranger.ca_path, cert=cert, key=key).connect()


def test_broker_refuses_a_client_certificate_from_another_ca(broker, stranger):
    cert, key = stranger.client(MID)
    with pytest.raises(ProbeError):
        Probe(broker, "forged", ca=broker.ca_path, cert=cert, key=key).connect()


def test_broker_refuses_a_client_without_certificate(broker):
    with pytest.raises(ProbeError):
        Probe(broker, "anon", ca=broker.ca_path).connect()


def test_another_machine_cannot_write_our_topics(broker, probe, make_link):
    link, sink = tls_link(make_link, broker)
    sink.next(Connected)
    cloud = probe("cloud-1", "cloud")
    cloud.subscribe(f"vending/{MID}/#")
    cloud.wait_for(lambda m: m.topic.endswith("/status"))  # our own online status
    intruder = probe("intruder", OTHER)
    for sub in ("payments", "commands", "acks", "status", "events", "telemetry"):
        intruder.publish(f"vending/{MID}/{sub}", b'{"forged":true}')  # PUBACKed, dropped
    cloud.publish(f"vending/{MID}/payments", payment(9))  # the marker
    first = cloud.get()
    assert (first.topic, first.payload) == (f"vending/{MID}/payments", payment(9))
    assert sink.next(Inbound).payload == payment(9)


def test_another_machine_cannot_read_our_payments(broker, probe):
    spy = probe("spy", OTHER)
    spy.subscribe(f"vending/{MID}/payments", "vending/#")  # granted, but filtered on delivery
    spy.subscribe(f"vending/{OTHER}/payments")
    cloud = probe("cloud-1", "cloud")
    cloud.publish(f"vending/{MID}/payments", payment(1))
    cloud.publish(f"vending/{OTHER}/payments", b"marker")
    first = spy.get()
    assert (first.topic, first.payload) == (f"vending/{OTHER}/payments", b"marker")


def test_machine_cannot_forge_its_own_inbound_topics_but_can_write_its_outbound(broker, probe):
    cloud = probe("cloud-1", "cloud")
    cloud.subscribe(f"vending/{MID}/#")
    me = probe("self-forger", MID)
    for sub in ("payments", "commands", "acks"):
        me.publish(f"vending/{MID}/{sub}", b'{"forged":true}')
    me.publish(f"vending/{MID}/events", b"allowed")  # the control: our writes do work
    first = cloud.get()
    assert (first.topic, first.payload) == (f"vending/{MID}/events", b"allowed")


def test_another_machine_cannot_hijack_our_session_by_client_id(broker, probe, make_link):
    link, sink = tls_link(make_link, broker)
    sink.next(Connected)
    link.stop()  # offline: the broker keeps our session and queues for it
    cloud = probe("cloud-1", "cloud")
    cloud.publish(f"vending/{MID}/payments", payment(1))
    # m2 claims our client id with a persistent session. Without use_username_as_clientid
    # this took over (and so destroyed) our session with payment 1 in it.
    hijacker = probe(f"vm-{MID}", OTHER, clean_session=False)
    hijacker.subscribe(f"vending/{OTHER}/payments")
    cloud.publish(f"vending/{OTHER}/payments", b"marker")
    assert hijacker.get().payload == b"marker"
    link2, sink2 = tls_link(make_link, broker)
    assert sink2.next(Connected).session_present
    assert sink2.next(Inbound).payload == payment(1)
