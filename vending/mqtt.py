"""The MQTT link (contract §2): a thin paho-mqtt 2.x adapter feeding one owner thread.

Everything that decides money lives in the owner. This module only moves bytes and reports
what happened as small frozen objects through `emit` (Inbound, Connected, Disconnected).
paho runs our callbacks on its network thread under its own locks, so a callback never
blocks, never waits for a publish and never lets an exception escape into paho (an escaping
exception would kill paho's thread and with it every reconnect).

Delivery guarantees, and why they hold:
- Inbound QoS1 is acknowledged manually (`manual_ack=True`): the PUBACK goes out only when
  the owner calls `ack(token)` after its journal commit. Until then the broker keeps the
  message in our persistent session and resends it (DUP) after any reconnect, including
  after a broker restart with persistence. The owner therefore sees redeliveries and must
  de-duplicate (by txn_id / cmd_id / event_id), which the contract requires anyway.
- A token is valid only on the connection it arrived on; `ack()` drops older ones. A PUBACK
  queued while paho reconnects would go out before the new CONNECT (a protocol error), and
  after a lost session (broker without persistence) the same packet id may name another
  message, which we would then acknowledge unread. The broker resends an un-acked message
  with a fresh token, so dropping costs one redelivery, which the owner de-duplicates.
- Outbound QoS1 is at-least-once while connected (paho resends its in-flight messages after
  a reconnect, from memory only). While disconnected, publish_event/telemetry are dropped,
  not queued in paho: the daemon's durable outbox republishes every un-acked event on
  `Connected`, so a second in-memory queue would only add stale duplicates and unbounded RAM.
- `Connected` is emitted when the SUBACK arrives, not at CONNACK: from then on a payment
  published to us is delivered. On a resumed session the broker's redeliveries may arrive
  just before it (their tokens are already valid).
- Status: the Last Will (retained, QoS1, state=offline) is re-signed before every connect
  attempt (paho's on_pre_connect runs before the CONNECT is built), so its `ts` is the time
  of that connect. At each SUBACK we republish the latest requested state (online, or
  out_of_service if the owner said so), retained; why not at CONNACK: see _on_subscribe.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import paho.mqtt.client as paho

from vending import messages

log = logging.getLogger(__name__)

KINDS = ("payments", "commands", "acks")
STATUS_STATES = ("online", "offline", "out_of_service")
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class MqttConfigError(ValueError):
    """A constructor argument of MqttLink is invalid; the message names which and why."""


@dataclass(frozen=True)
class Inbound:
    kind: str  # "payments" | "commands" | "acks"
    payload: bytes
    token: object  # pass back to MqttLink.ack() once the message is durably handled


@dataclass(frozen=True)
class Connected:
    session_present: bool


@dataclass(frozen=True)
class Disconnected:
    reason: str


@dataclass(frozen=True)
class _Token:
    connection: int  # which connection the message arrived on (see module doc)
    mid: int
    qos: int


def _encode(payload: dict[str, Any], what: str) -> bytes:
    if not isinstance(payload, dict):
        raise TypeError(f"{what}: expected a signed payload dict, got {type(payload).__name__}")
    try:
        return json.dumps(payload, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode()
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: payload is not JSON-serialisable: {e}") from e


class MqttLink:
    def __init__(self, *, machine_id: str, key: bytes, host: str, port: int,
                 emit: Callable[[object], None], started: int, version: str,
                 tls_ca: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, username: str | None = None,
                 password: str | None = None, keepalive: int = 30, reconnect_max: int = 30,
                 clock: Callable[[], float] = time.time) -> None:
        if not isinstance(machine_id, str) or not _ID_RE.fullmatch(machine_id):
            raise MqttConfigError(f"machine_id {machine_id!r}: must match [A-Za-z0-9_-]{{1,64}}")
        if not isinstance(key, (bytes, bytearray)) or not key:
            raise MqttConfigError("key: must be the machine key as non-empty bytes")
        if not isinstance(host, str) or not host:
            raise MqttConfigError(f"host {host!r}: must be a non-empty string")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise MqttConfigError(f"port {port!r}: must be an int in 1..65535")
        if not callable(emit):
            raise MqttConfigError("emit: must be callable")
        for name, v in (("keepalive", keepalive), ("reconnect_max", reconnect_max)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise MqttConfigError(f"{name} {v!r}: must be a positive int (seconds)")
        if (tls_cert is None) != (tls_key is None):
            raise MqttConfigError("tls_cert and tls_key: give both or neither")
        if tls_cert is not None and tls_ca is None:
            raise MqttConfigError("tls_ca: required with a client certificate")

        self.machine_id = machine_id
        self._key = bytes(key)
        self._host, self._port, self._keepalive = host, port, keepalive
        self._emit_to = emit
        self._started, self._version, self._clock = started, version, clock
        self._root = f"vending/{machine_id}/"
        self._lock = threading.Lock()  # guards _connection and _is_connected against ack()
        self._connection = 0
        self._is_connected = False
        self._status_state = "online"
        self._running = False
        self._sub_mid: int | None = None
        self._session_present = False

        try:  # fail here, not later in paho's thread, if version/started are unusable
            self._status_payload("offline")
        except ValueError as e:
            raise MqttConfigError(f"status fields (version={version!r}, started={started!r}): "
                                  f"{e}") from e

        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"vm-{machine_id}",
                        clean_session=False, protocol=paho.MQTTv311, manual_ack=True)
        c.reconnect_delay_set(1, reconnect_max)
        # No in-flight cap: on reconnect paho then resends every pending publish while it
        # handles the CONNACK, i.e. before our SUBACK-triggered status (see _on_subscribe).
        c.max_inflight_messages_set(0)
        if username is not None:
            c.username_pw_set(username, password)
        if tls_ca is not None:
            try:
                c.tls_set(ca_certs=tls_ca, certfile=tls_cert, keyfile=tls_key)
            except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
                raise MqttConfigError(f"TLS files (ca={tls_ca!r}, cert={tls_cert!r}, "
                                      f"key={tls_key!r}): {e}") from e
        c.on_pre_connect = self._on_pre_connect
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self._client = c

    # -- owner-facing API (any thread) --------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._is_connected

    def start(self) -> None:
        """Connect in the background and keep reconnecting; never blocks on a dead broker."""
        if self._running:
            raise RuntimeError("MqttLink.start(): already started")
        self._running = True
        self._set_will()
        self._client.connect_async(self._host, self._port, keepalive=self._keepalive)
        self._client.loop_start()

    def stop(self, timeout: float = 3.0) -> None:
        """Say offline (retained, signed) if we can, then disconnect cleanly.

        A clean DISCONNECT suppresses the Last Will, hence the explicit offline status. The
        session stays on the broker, so payments published while we are down are queued.
        """
        if not self._running:
            return
        self._running = False
        if self._is_connected:
            info = self._client.publish(self._root + "status", self._status_payload("offline"),
                                        qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as e:
                log.warning("offline status not confirmed before disconnect: %s", e)
        self._client.disconnect()
        self._client.loop_stop()
        with self._lock:
            self._is_connected = False
            self._connection += 1

    def publish_event(self, signed_payload: dict[str, Any]) -> None:
        self._publish("events", _encode(signed_payload, "publish_event"), qos=1)

    def publish_telemetry(self, signed_payload: dict[str, Any]) -> None:
        self._publish("telemetry", _encode(signed_payload, "publish_telemetry"), qos=0)

    def publish_status(self, state: str) -> None:
        """Retained signed status. The state is remembered and republished on every connect,
        so an out_of_service machine does not announce itself online after a reconnect."""
        if state not in STATUS_STATES:
            raise ValueError(f"publish_status: state {state!r} is not one of {STATUS_STATES}")
        self._status_state = state
        self._publish("status", self._status_payload(state), qos=1, retain=True)

    def ack(self, token: object) -> None:
        """PUBACK the message now. Call only after the message is durably journaled."""
        if not isinstance(token, _Token):
            raise TypeError(f"ack(): expected the token of an Inbound, got {type(token).__name__}")
        with self._lock:
            # Checked and sent under one lock: _on_disconnect/_on_pre_connect take it too,
            # so a PUBACK is either queued before paho clears its packet queue for the
            # reconnect, or not at all (see module doc on stale tokens).
            if token.connection != self._connection or not self._is_connected:
                log.info("ack of mid %d from an earlier connection dropped; the broker "
                         "redelivers it", token.mid)
                return
            self._client.ack(token.mid, token.qos)

    # -- internals ----------------------------------------------------------------------
    def _publish(self, sub: str, data: bytes, qos: int, retain: bool = False) -> None:
        if not self._is_connected:
            log.debug("not connected: %s publish skipped (outbox/on-connect resends)", sub)
            return
        info = self._client.publish(self._root + sub, data, qos=qos, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            log.warning("%s publish refused by paho: %s", sub, paho.error_string(info.rc))

    def _status_payload(self, state: str) -> bytes:
        fields = messages.status(state=state, version=self._version, started=self._started)
        env = messages.build_event(self._key, self.machine_id, "status", fields,
                                   int(self._clock()))
        return _encode(env, "status")

    def _set_will(self) -> None:
        self._client.will_set(self._root + "status", self._status_payload("offline"),
                              qos=1, retain=True)

    def _emit(self, obj: object) -> bool:
        try:
            self._emit_to(obj)
            return True
        except Exception:  # never into paho's thread: it would stop reconnecting
            log.exception("emit(%r) raised", type(obj).__name__)
            return False

    # -- paho callbacks (paho's thread, under paho's locks: never block here) --------------
    def _on_pre_connect(self, client: paho.Client, userdata: Any) -> None:
        with self._lock:
            self._connection += 1
            self._is_connected = False
        try:
            self._set_will()  # a fresh ts for this connection's Will
        except Exception:
            log.exception("could not re-sign the Last Will; keeping the previous one")

    def _on_connect(self, client: paho.Client, userdata: Any, flags: paho.ConnectFlags,
                    reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            self._emit(Disconnected(f"refused: {reason_code}"))
            return
        no_delay(client)
        # Subscribing on every connect: a lost session (broker without persistence, or a
        # fresh one) has no subscriptions, and re-subscribing a kept one is harmless.
        # The status and Connected wait for the SUBACK (see _on_subscribe).
        _, self._sub_mid = client.subscribe([(self._root + k, 1) for k in KINDS])
        self._session_present = bool(flags.session_present)
        with self._lock:
            self._is_connected = True

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        log.debug("connect to %s:%s failed; paho retries with backoff", self._host, self._port)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any,
                       reason_code: Any, properties: Any) -> None:
        with self._lock:
            was = self._is_connected
            self._is_connected = False
            self._connection += 1
        if was:
            self._emit(Disconnected(str(reason_code)))

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int,
                      reason_codes: list[Any], properties: Any) -> None:
        """Announce our status and emit Connected only now, for two reasons. "online" and
        Connected then mean "subscribed: a payment published from now on reaches me". And paho
        resends the previous connection's unacknowledged publishes *after* on_connect
        returns, so a status published in on_connect would be overwritten by a stale retained
        one (seen in tests); the SUBACK comes after them."""
        if mid != self._sub_mid:
            return
        state = self._status_state
        bad = [str(rc) for rc in reason_codes if rc.is_failure]
        if bad:  # e.g. an ACL that does not match our certificate: we would never get paid
            log.error("subscription refused by the broker (%s): announcing out_of_service",
                      ", ".join(bad))
            state = "out_of_service"
        try:
            client.publish(self._root + "status", self._status_payload(state), qos=1,
                           retain=True)
        except Exception:
            log.exception("could not publish status %s", state)
        self._emit(Connected(self._session_present))

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            token = _Token(self._connection, msg.mid, msg.qos)
        kind = msg.topic[len(self._root):] if msg.topic.startswith(self._root) else ""
        if kind not in KINDS:
            # Not ours to act on, but ack it: un-acked junk would fill the broker's
            # in-flight window and stall real payments behind it.
            log.warning("message on unexpected topic %r ignored", msg.topic)
            if msg.qos:
                client.ack(msg.mid, msg.qos)
            return
        self._emit(Inbound(kind, bytes(msg.payload), token))
        # If emit failed we do not ack: the broker redelivers on the next connection.


def no_delay(client: paho.Client) -> None:
    """Turn Nagle off on the MQTT socket: paho never does, and a PUBACK or a payment held back
    for a delayed TCP ACK added ~5 ms to every payment -> VEND (bench/latency.py)."""
    sock = client.socket()
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as e:
        log.debug("TCP_NODELAY not set: %s", e)
