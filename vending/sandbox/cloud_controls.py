"""The knobs and readouts of the sandbox cloud: what tests, the demo and the chaos soak use to
bend it (API modes, ack policies), to drive it past its own checks (pay, forgeries, commands,
raw publishes) and to read what it saw. `SandboxCloud` (cloud.py) inherits them; the cloud as
the daemon meets it (orders API, pay pages, MQTT in and out) stays in cloud.py.

The state these methods touch is SandboxCloud's, made in its __init__ and guarded by its one
lock; the annotations below list it. They also call these SandboxCloud methods: _open_http,
_close_http, _state_of, _mark_paid, order, build_payment, publish_payment and _publish.
"""
from __future__ import annotations

import copy
import hashlib
import json
import secrets
import threading
import time
from collections import deque
from typing import Any, Callable

from vending import signing

API_MODES = ("ok", "down", "refuse", "slow", "bad_sig", "wrong_amount")
ACK_POLICIES = ("all", "none", "withhold_first")
PAYMENT_FORGERIES = ("bad_sig", "wrong_machine", "malformed", "not_json")


def mqtt_bytes(obj: Any) -> bytes:
    """A payload as the cloud publishes it: compact JSON in UTF-8."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class CloudControls:
    machine_id: str
    clock: Callable[[], float]
    slow_delay: float
    _key: bytes
    _running: bool
    _lock: threading.RLock
    _changed: threading.Condition
    _api_mode: str
    _api_mode_left: int | None
    _ack_policy: str
    _ack_withhold_left: int
    _orders: dict[str, dict]
    _payments: list[dict]
    _commands: list[dict]
    _deliveries: list[dict]
    _events: dict[str, dict]
    _acked: list[str]
    _rejected: list[dict]
    _status: list[dict]
    _telemetry: deque[dict]
    _api_log: list[dict]

    # --- chaos knobs, and where the HTTP and MQTT sides read them ------------------------------

    def set_api_mode(self, mode: str, *, requests: int | None = None,
                     delay: float | None = None) -> None:
        """How the orders API behaves: ok, down (503), refuse (listener closed), slow (answers
        after `delay` s, default `slow_delay`), bad_sig (order sig wrong), wrong_amount (order
        correctly signed for amount+1). With `requests`, the mode lasts that many API requests
        and then reverts to ok. Pay pages are affected only by "refuse" (same listener)."""
        if mode not in API_MODES:
            raise ValueError(f"api mode must be one of {API_MODES}, got {mode!r}")
        if mode == "refuse" and requests is not None:
            raise ValueError("api mode 'refuse' closes the listener, so it cannot count requests")
        if requests is not None and requests < 1:
            raise ValueError(f"requests must be >= 1, got {requests}")
        with self._lock:
            self._api_mode, self._api_mode_left = mode, requests
            if delay is not None:
                self.slow_delay = delay
        if mode == "refuse":
            self._close_http()
        elif self._running:
            self._open_http()

    def set_ack_policy(self, policy: str, n: int = 0) -> None:
        """all: ack every event delivery; none: ack nothing; withhold_first: ignore the next `n`
        event deliveries, then ack all."""
        if policy not in ACK_POLICIES:
            raise ValueError(f"ack policy must be one of {ACK_POLICIES}, got {policy!r}")
        with self._lock:
            self._ack_policy, self._ack_withhold_left = policy, n

    def take_api_mode(self) -> str:
        """The mode for one API request, counting it against a `requests` limit."""
        with self._lock:
            mode = self._api_mode
            if self._api_mode_left is not None:
                self._api_mode_left -= 1
                if self._api_mode_left <= 0:
                    self._api_mode, self._api_mode_left = "ok", None
            return mode

    def _take_ack(self) -> bool:
        """Whether to ack one event delivery under the ack policy, counting it against
        withhold_first. Called with the lock held, by the MQTT side."""
        if self._ack_policy == "all":
            return True
        if self._ack_policy == "withhold_first":
            if self._ack_withhold_left > 0:
                self._ack_withhold_left -= 1
                return False
            return True
        return False

    # --- driving it past its own checks ------------------------------------------------------

    def pay(self, order_id: str, provider: str = "wechat", txn_id: str | None = None,
            amount: int | None = None, currency: str | None = None, **extra: Any) -> dict:
        """Pay as the provider would, bypassing the page's checks: paying a paid order again
        makes a duplicate (new txn_id) or a redelivery (same txn_id); amount/currency override
        the order's (a mismatch). An unknown order needs amount and currency."""
        with self._lock:
            rec = self._orders.get(order_id)
            if rec is not None and rec["amount"] is None:
                rec = None  # a tombstone: nothing known about the order but its id
            if rec is None and (amount is None or currency is None):
                raise ValueError(f"pay: unknown order {order_id!r} needs amount and currency")
            message = self.build_payment(
                order_id, rec["amount"] if amount is None else amount,
                rec["currency"] if currency is None else currency,
                provider=provider, txn_id=txn_id, **extra)
            if rec is not None and rec["state"] != "paid":
                self._mark_paid(rec, message)
        self.publish_payment(message)
        return message

    def forge_payment(self, order_id: str, kind: str, **fields: Any) -> bytes:
        """Publish an inauthentic payment: bad_sig (signed with another key), wrong_machine
        (another machine_id, our key), malformed (authentic but amount is a float) or not_json.
        Returns the bytes published."""
        if kind not in PAYMENT_FORGERIES:
            raise ValueError(f"forgery must be one of {PAYMENT_FORGERIES}, got {kind!r}")
        rec = self.order(order_id) or {}
        payload = self.build_payment(order_id, fields.pop("amount", rec.get("amount") or 100),
                                     fields.pop("currency", rec.get("currency") or "CNY"),
                                     **fields)
        if kind == "bad_sig":
            payload = signing.sign_payload(hashlib.sha256(b"forger" + self._key).digest(), payload)
        elif kind == "wrong_machine":
            payload = signing.sign_payload(self._key, {**payload, "machine_id": "VM-NOT-" +
                                                       self.machine_id[:50]})
        elif kind == "malformed":
            payload = signing.sign_payload(self._key, {**payload,
                                                       "amount": payload["amount"] / 100})
        raw = b'{"v":1,"type":"payment","order_id":' if kind == "not_json" else mqtt_bytes(payload)
        self.publish_payment(raw)
        return raw

    def send_command(self, name: str, args: dict | None = None, cmd_id: str | None = None,
                     expires: int | None = None, ts: int | None = None) -> dict:
        now = int(self.clock())
        ts = now if ts is None else ts
        message = signing.sign_payload(self._key, {
            "v": 1, "type": "command", "machine_id": self.machine_id, "ts": ts,
            "cmd_id": cmd_id or f"c-{secrets.token_hex(8)}", "name": name, "args": args or {},
            "expires": ts + 300 if expires is None else expires})
        with self._lock:
            self._commands.append(copy.deepcopy(message))
        self._publish("commands", message)
        return message

    def publish_raw(self, subtopic: str, payload: dict | bytes, qos: int = 1,
                    retain: bool = False) -> None:
        self._publish(subtopic, payload, qos, retain)

    # --- records ------------------------------------------------------------------------------

    def _snapshot(self, items: Any) -> list:
        with self._lock:
            return copy.deepcopy(list(items))

    def orders(self) -> list[dict]:
        with self._lock:
            return [{**copy.deepcopy(r), "state": self._state_of(r)} for r in self._orders.values()]

    def payments(self) -> list[dict]:
        return self._snapshot(self._payments)

    def commands(self) -> list[dict]:
        return self._snapshot(self._commands)

    def events(self, type: str | None = None) -> list[dict]:
        """Distinct events (first delivery of each event_id), in arrival order."""
        with self._lock:
            return copy.deepcopy([e for e in self._events.values()
                                  if type is None or e.get("type") == type])

    def deliveries(self) -> list[dict]:
        """Every message received on events and status (and any rejected one), in order,
        duplicates included."""
        return self._snapshot(self._deliveries)

    def acked_event_ids(self) -> list[str]:
        return self._snapshot(self._acked)

    def rejected(self) -> list[dict]:
        return self._snapshot(self._rejected)

    def status_history(self) -> list[dict]:
        return self._snapshot(self._status)

    def telemetry(self) -> list[dict]:
        return self._snapshot(self._telemetry)

    def api_requests(self) -> list[dict]:
        return self._snapshot(self._api_log)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Wait until predicate() is truthy and return its value, or return the last falsy value
        after `timeout` (a hang guard, not a measurement). Wakes on every change recorded here
        and polls besides, so predicates about other objects work too."""
        deadline = time.monotonic() + timeout
        while True:
            # evaluated outside the lock: a predicate may well take other objects' locks
            value = predicate()
            remaining = deadline - time.monotonic()
            if value or remaining <= 0:
                return value
            with self._changed:
                self._changed.wait(min(remaining, 0.05))
