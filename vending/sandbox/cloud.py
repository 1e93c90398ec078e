"""A sandbox operator cloud on loopback: the orders API (CONTRACT §3), the pay pages (§3 qr_url,
§4 offline QR) and the MQTT side (§2) that takes events, acks them and sends payments and
commands. Used by end-to-end tests, the demo and the chaos soak, so it is also a chaos tool:
the API can be switched down, refusing, slow or lying, and acks can be withheld.

All mutable state sits in this object behind one lock, so any number of clouds can run in one
process. Network callbacks (HTTP handler threads in cloud_http.py, the paho thread) only call
methods here. The chaos knobs, the test drivers (pay, forgeries, commands) and the readouts are
in cloud_controls.py, which this class inherits.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import secrets
import ssl
import threading
import time
from collections import deque
from typing import Any, Callable

import paho.mqtt.client as mqtt

from vending.mqtt import no_delay
from vending import signing
from vending.sandbox import cloud_http
from vending.sandbox.cloud_controls import (  # noqa: F401 - the tuples are re-exported
    ACK_POLICIES, API_MODES, PAYMENT_FORGERIES, CloudControls, mqtt_bytes)

log = logging.getLogger(__name__)

TIMESTAMP_WINDOW_S = 300
_ID_OK = re.compile(r"[A-Za-z0-9_-]{1,64}").fullmatch


class SandboxCloud(CloudControls):
    def __init__(
        self, machine_id: str, key: bytes, *, mqtt_host: str = "127.0.0.1", mqtt_port: int,
        http_host: str = "127.0.0.1", http_port: int = 0, order_ttl: int = 120,
        clock: Callable[[], float] = time.time, mqtt_tls: ssl.SSLContext | None = None,
        mqtt_username: str | None = None, mqtt_password: str | None = None,
        mqtt_client_id: str | None = None, slow_delay: float = 3.0,
    ):
        if not isinstance(machine_id, str) or not _ID_OK(machine_id):
            raise ValueError(f"machine_id must match [A-Za-z0-9_-]{{1,64}}, got {machine_id!r}")
        if not isinstance(key, (bytes, bytearray)) or not key:
            raise ValueError("key must be the machine key as non-empty bytes")
        self.machine_id, self._key, self.clock = machine_id, bytes(key), clock
        self.order_ttl, self.slow_delay = order_ttl, slow_delay
        self._http_addr = (http_host, http_port)
        self._mqtt_addr = (mqtt_host, mqtt_port)
        self._topic = f"vending/{machine_id}/"
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._running = False
        self._subscribed = threading.Event()
        self._http_lock = threading.Lock()  # opening and closing the listener, nothing else
        self._server: cloud_http.Server | None = None
        self._server_thread: threading.Thread | None = None
        # --- everything below is guarded by self._lock ---
        self._orders: dict[str, dict] = {}
        self._sessions: dict[str, str] = {}  # session_id -> order_id, the idempotency index
        self._payments: list[dict] = []      # every payment published, forged ones included
        self._commands: list[dict] = []
        self._deliveries: list[dict] = []    # every message received, in order, duplicates kept
        self._events: dict[str, dict] = {}   # event_id -> first delivery (the cloud's "table")
        self._acked: list[str] = []
        self._rejected: list[dict] = []      # inauthentic or malformed messages received
        self._status: list[dict] = []
        self._telemetry: deque[dict] = deque(maxlen=10_000)  # bounded: a soak sends it forever
        self._api_log: list[dict] = []
        self._api_mode, self._api_mode_left = "ok", None
        self._ack_policy, self._ack_withhold_left = "all", 0
        self._mqtt = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=mqtt_client_id or f"cloud-{machine_id}-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv311, clean_session=False)  # like a real back end: no event lost while it reconnects
        if mqtt_tls is not None:
            self._mqtt.tls_set_context(mqtt_tls)
        if mqtt_username is not None:
            self._mqtt.username_pw_set(mqtt_username, mqtt_password)
        self._mqtt.reconnect_delay_set(min_delay=0.1, max_delay=1)  # chaos restarts the broker
        self._mqtt.on_connect = self._on_connect
        self._mqtt.on_subscribe = self._on_subscribe
        self._mqtt.on_disconnect = lambda *a: self._subscribed.clear()
        self._mqtt.on_message = lambda c, u, msg: self._on_message(msg.topic, msg.payload)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, *, wait: float = 10.0) -> SandboxCloud:
        """Serve HTTP and connect to the broker; with `wait` > 0, return only once subscribed."""
        self._stopping.clear()
        self._running = True
        self._open_http()
        self._mqtt.connect_async(*self._mqtt_addr, keepalive=30)
        self._mqtt.loop_start()
        if wait and not self._subscribed.wait(wait):
            self.stop()
            raise RuntimeError(f"sandbox cloud: no MQTT subscription at {self._mqtt_addr} "
                               f"within {wait} s")
        return self

    def stop(self) -> None:
        self._running = False
        self._stopping.set()
        self._mqtt.disconnect()
        self._mqtt.loop_stop()
        self._close_http()

    def __enter__(self) -> SandboxCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def http_port(self) -> int:
        return self._http_addr[1]

    @property
    def pay_base_url(self) -> str:
        return f"http://{self._http_addr[0]}:{self._http_addr[1]}"

    @property
    def base_url(self) -> str:
        """Orders API root; it has a path prefix so clients must sign it as part of the target."""
        return self.pay_base_url + cloud_http.API_PREFIX

    @property
    def mqtt_connected(self) -> bool:
        return self._subscribed.is_set()

    def _open_http(self) -> None:
        with self._http_lock:
            if self._server is not None:
                return
            # the second time round (after "refuse") the same port is reused: URLs stay valid
            self._server = cloud_http.Server(self._http_addr, self)
            self._http_addr = (self._http_addr[0], self._server.server_address[1])
            self._server_thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                name=f"cloud-http-{self.machine_id}", daemon=True)
            self._server_thread.start()

    def _close_http(self) -> None:
        with self._http_lock:
            server, self._server = self._server, None
            if server is not None:
                server.shutdown()
                server.server_close()
                if self._server_thread is not None:
                    self._server_thread.join(5)

    # --- orders API (the HTTP side, cloud_http.py, calls these) -------------------------------

    def record_api(self, entry: dict) -> None:
        with self._lock:
            self._api_log.append(entry)
            self._changed.notify_all()

    def wait_unless_stopped(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def authenticate(self, method: str, target: str, headers: Any, body: bytes) -> str | None:
        """None if the request is signed by our machine within the window, else the problem."""
        if headers.get("X-Machine-Id") != self.machine_id:
            return "unknown X-Machine-Id"
        ts = headers.get("X-Timestamp") or ""
        if not ts.isdigit() or abs(int(ts) - self.clock()) > TIMESTAMP_WINDOW_S:
            return "X-Timestamp missing or outside the 300 s window"
        if not signing.verify_http_signature(
                self._key, method, target, ts, body, headers.get("X-Signature") or ""):
            return "X-Signature does not verify"
        return None

    def api_create(self, fields: dict, mode: str) -> tuple[int, dict]:
        """POST /v1/orders with an already validated body; idempotent by session_id."""
        with self._lock:
            existing = self._sessions.get(fields["session_id"])
            if existing is not None:
                rec = self._orders[existing]
                if rec["request"] != fields:
                    return 409, {"error": "session_id reused with a different body"}
            else:
                order_id = "o-" + secrets.token_hex(8)
                rec = {**{k: fields[k] for k in ("session_id", "slot", "product_id", "amount",
                                                 "currency")},
                       "order_id": order_id, "qr_url": f"{self.pay_base_url}/q/{order_id}",
                       "expires_at": int(self.clock()) + self.order_ttl, "state": "pending",
                       "payment": None, "offline": False, "request": dict(fields)}
                self._orders[order_id] = rec
                self._sessions[fields["session_id"]] = order_id
                self._changed.notify_all()
            amount = rec["amount"] + (1 if mode == "wrong_amount" else 0)
            sig_key = hashlib.sha256(b"not the machine key" + self._key).digest() \
                if mode == "bad_sig" else self._key
            sig = signing.order_sig(sig_key, rec["order_id"], rec["qr_url"], amount,
                                    rec["currency"], rec["expires_at"])
            return 201, {"order_id": rec["order_id"], "qr_url": rec["qr_url"], "amount": amount,
                         "currency": rec["currency"], "expires_at": rec["expires_at"], "sig": sig}

    def api_get(self, order_id: str) -> tuple[int, dict]:
        with self._lock:
            rec = self._orders.get(order_id)
            if rec is None:
                return 404, {"error": f"unknown order {order_id[:64]}"}
            return 200, {"state": self._state_of(rec), "payment": rec["payment"]}

    def api_cancel(self, order_id: str) -> tuple[int, dict]:
        with self._lock:
            rec = self._orders.get(order_id)
            if rec is None and order_id.startswith("off-") and _ID_OK(order_id):
                # an offline order the customer never opened: a tombstone makes sure a late scan
                # of that QR cannot take money for a session the machine has closed
                rec = self._orders[order_id] = _offline_record(order_id, None, "cancelled")
            if rec is None:
                return 404, {"error": f"unknown order {order_id[:64]}"}
            if rec["state"] == "paid":
                return 409, {"state": "paid"}
            rec["state"] = "cancelled"
            self._changed.notify_all()
            return 200, {"state": "cancelled"}

    def _state_of(self, rec: dict) -> str:
        if rec["state"] == "pending" and self.clock() >= rec["expires_at"]:
            return "expired"
        return rec["state"]

    # --- pay pages (called by cloud_http.py) --------------------------------------------------

    def order(self, order_id: str) -> dict | None:
        """A snapshot of one order, its state brought up to date, or None."""
        with self._lock:
            rec = self._orders.get(order_id)
            return None if rec is None else {**copy.deepcopy(rec), "state": self._state_of(rec)}

    def open_offline(self, path_and_query: str) -> tuple[str, dict | None]:
        """Check an offline QR URL (§4) and find or create its order record. Returns
        ("ok", order) or (problem, None), problem one of bad_sig, wrong_machine, expired,
        conflict."""
        url = self.pay_base_url + path_and_query
        if not signing.verify_offline_qr_url(self._key, url):
            return "bad_sig", None
        f = signing.parse_offline_qr_url(url)
        if f["machine_id"] != self.machine_id:
            return "wrong_machine", None
        with self._lock:
            rec = self._orders.get(f["order_id"])
            if rec is None:
                if self.clock() >= f["expires_at"]:
                    return "expired", None
                rec = _offline_record(f["order_id"], f, "pending", url)
                self._orders[f["order_id"]] = rec
                self._changed.notify_all()
            elif rec["offline"] and rec["amount"] is None:
                pass  # a tombstone from a cancel: it stays cancelled, the page says so
            elif not rec["offline"] or (rec["amount"], rec["currency"], rec["slot"]) != (
                    f["amount"], f["currency"], f["slot"]):
                return "conflict", None
        return "ok", self.order(f["order_id"])

    def take_payment(self, order_id: str, provider: str) -> tuple[str, dict | None]:
        """The customer pressed Pay. Returns (outcome, payment message): "paid" with the message
        just published, or "already_paid" / "cancelled" / "expired" / "unknown" with None. The
        state flips to paid under the lock, so a double click or a racing cancel sees it."""
        with self._lock:
            rec = self._orders.get(order_id)
            if rec is None:
                return "unknown", None
            state = self._state_of(rec)
            if state != "pending":
                return ("already_paid" if state == "paid" else state), None
            message = self._mark_paid(rec, self.build_payment(
                order_id, rec["amount"], rec["currency"], provider=provider))
        self.publish_payment(message)
        return "paid", message

    def _mark_paid(self, rec: dict, message: dict) -> dict:
        rec["state"], rec["payment"] = "paid", message
        self._changed.notify_all()
        return message

    # --- MQTT out -----------------------------------------------------------------------------

    def build_payment(self, order_id: str, amount: int, currency: str, *, provider: str = "wechat",
                      txn_id: str | None = None, payer: str | None = None,
                      ts: int | None = None) -> dict:
        """A signed `payment` message; nothing is published or recorded."""
        payload = {"v": 1, "type": "payment", "machine_id": self.machine_id,
                   "ts": int(self.clock()) if ts is None else ts, "order_id": order_id,
                   "amount": amount, "currency": currency, "provider": provider,
                   "txn_id": txn_id or f"sbx-{secrets.token_hex(10)}"}
        if payer is not None:
            payload["payer"] = payer
        return signing.sign_payload(self._key, payload)

    def publish_payment(self, message: dict | bytes) -> None:
        """Publish a payment as is (QoS 1) and record it; paho queues it while disconnected."""
        with self._lock:  # recorded first, so whoever receives it also finds it recorded
            self._payments.append(copy.deepcopy(message) if isinstance(message, dict)
                                  else {"raw": message})
            self._changed.notify_all()
        self._publish("payments", message)

    def _publish(self, subtopic: str, payload: dict | bytes, qos: int = 1,
                 retain: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else mqtt_bytes(payload)
        self._mqtt.publish(self._topic + subtopic, data, qos=qos, retain=retain)

    # --- MQTT in ------------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            log.warning("sandbox cloud: MQTT connect refused: %s", reason)
            return
        no_delay(client)
        client.subscribe([(self._topic + "events", 1), (self._topic + "status", 1),
                          (self._topic + "telemetry", 0)])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list,
                      properties: Any) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:  # e.g. an ACL that does not grant the cloud user these topics
            log.warning("sandbox cloud: broker refused a subscription: %s", refused)
        else:
            self._subscribed.set()

    def _on_message(self, topic: str, raw: bytes) -> None:
        kind = topic.rsplit("/", 1)[-1]
        try:
            payload = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            payload = None
        problem = _inbound_problem(self._key, self.machine_id, kind, payload)
        ack = None
        with self._lock:
            if kind != "telemetry" or problem is not None:  # telemetry has its own bounded log
                self._deliveries.append({"topic": kind, "raw": raw, "payload": payload,
                                         "authentic": problem is None, "problem": problem,
                                         "at": self.clock()})
            if problem is not None:
                self._rejected.append({"topic": kind, "raw": raw, "problem": problem})
            elif kind == "events":
                self._events.setdefault(payload["event_id"], payload)
                ack = payload["event_id"] if self._take_ack() else None
            elif kind == "status":
                self._status.append(payload)
            elif kind == "telemetry":
                self._telemetry.append(payload)
            self._changed.notify_all()
        if problem is not None:
            log.info("sandbox cloud: dropped a message on %s: %s", kind, problem)
        if ack is not None:
            with self._lock:  # recorded first, so whoever sees the ack also sees it recorded
                self._acked.append(ack)
                self._changed.notify_all()
            # outside the lock: paho has locks of its own, and the event is "stored" already
            self._publish("acks", signing.sign_payload(self._key, {
                "v": 1, "type": "ack", "machine_id": self.machine_id,
                "ts": int(self.clock()), "event_id": ack}))


def _offline_record(order_id: str, f: dict | None, state: str, url: str | None = None) -> dict:
    f = f or {}
    return {"order_id": order_id, "session_id": None, "slot": f.get("slot"), "product_id": None,
            "amount": f.get("amount"), "currency": f.get("currency"), "qr_url": url,
            "expires_at": f.get("expires_at", 0), "state": state, "payment": None,
            "offline": True, "request": None}


def _inbound_problem(key: bytes, machine_id: str, kind: str, payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return "malformed"
    if not signing.verify_payload(key, payload):
        return "bad_sig"
    if payload.get("machine_id") != machine_id:
        return "wrong_machine"
    if kind == "events" and not (isinstance(payload.get("event_id"), str)
                                 and _ID_OK(payload["event_id"])):
        return "malformed"
    return None
