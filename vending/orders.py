"""Orders API client (CONTRACT §3) and the offline order minter (§4).

The order response decides where the customer's money goes, so every field of it is checked
before it becomes an `Order`: a QR that fails here is never shown.

Worst-case time of one call, the customer waiting for the QR meanwhile:
    attempts = retries + 1
    one attempt <= 2 x timeout: connecting <= timeout, every read <= timeout, and the body is
        abandoned once 2 x timeout have passed since the attempt began (checked per chunk, so
        a trickling body cannot stretch it; only headers trickled byte by byte could, up to
        httpx's header size limit)
    backoff before retry n (1-based) <= backoff * 2**(n-1), in total <= backoff * (2**retries - 1)
With the defaults (timeout 2 s, retries 3, backoff 0.2 s): 4 x 4 s + 1.4 s = 17.4 s at worst; a
server that accepts and then stays silent costs 4 x 2 s + 1.4 s = 9.4 s. `worst_case_seconds`
computes the bound for the configured values. Call it from a worker thread.
"""
from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

import httpx

from vending import signing
from vending.clock import ClockCorrection

log = logging.getLogger(__name__)

ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
CURRENCY_RE = re.compile(r"[A-Z]{3}")
ORDER_STATES = frozenset({"pending", "paid", "cancelled", "expired"})
CLOCK_OFFSET_LOG_S = 60
MAX_QR_URL = 2048  # far beyond any provider code_url; a longer one would not fit a scannable QR
_EXCERPT = 200
MAX_RESPONSE = 64 * 1024  # an order response is a few hundred bytes; more is not an orders API


@dataclass(frozen=True)
class Order:
    order_id: str
    qr_url: str
    amount: int
    currency: str
    expires_at: int
    session_id: str
    slot: int
    offline: bool = False


class OrdersError(Exception):
    """Base of every orders API failure. `retryable` says whether trying later may succeed."""

    retryable = False


class Unreachable(OrdersError):
    """Connection error, timeout or 5xx on every attempt. The caller may fall back to offline."""

    retryable = True


class Refused(OrdersError):
    """The server answered 4xx. Never retried: the same request would be refused again."""

    def __init__(self, status: int, body: str, what: str):
        super().__init__(f"{what}: HTTP {status}: {body}")
        self.status = status
        self.body = body


class BadOrder(OrdersError):
    """The response cannot be trusted (signature, amount, currency, shape). Show NO QR for it."""


def _check_id(name: str, value: Any) -> str:
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise ValueError(f"{name} must match [A-Za-z0-9_-]{{1,64}}, got {value!r}")
    return value


def _check_int(name: str, value: Any, minimum: int) -> int:
    # bool is an int in Python; True as an amount would be a bug, not one fen
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_currency(value: Any) -> str:
    if not isinstance(value, str) or not CURRENCY_RE.fullmatch(value):
        raise ValueError(f"currency must be an ISO-4217 code like 'CNY', got {value!r}")
    return value


def _excerpt(response: httpx.Response) -> str:
    return response.content[:_EXCERPT].decode("utf-8", "replace")


class OrdersClient:
    """Signed HTTP client for the orders API. Thread-safe for concurrent calls."""

    def __init__(
        self,
        base_url: str,
        machine_id: str,
        key: bytes,
        *,
        timeout: float = 2.0,
        retries: int = 3,
        backoff: float = 0.2,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ):
        try:
            url = httpx.URL(base_url)
        except (httpx.InvalidURL, TypeError):
            raise ValueError(f"orders base_url is not a URL: {base_url!r}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"orders base_url must be an http(s) URL, got {base_url!r}")
        if url.query or url.fragment:
            raise ValueError(f"orders base_url must not carry a query or fragment: {base_url!r}")
        self.machine_id = _check_id("machine_id", machine_id)
        if not isinstance(key, (bytes, bytearray)) or not key:
            raise ValueError("key must be the machine key as non-empty bytes")
        _check_int("retries", retries, 0)
        if timeout <= 0 or backoff < 0:
            raise ValueError(f"timeout must be > 0 and backoff >= 0, got {timeout}, {backoff}")
        self._key = bytes(key)
        self._retries = retries
        self._backoff = backoff
        self._clock = clock
        self._sleep = sleep
        self._random = random.Random()
        self._logged_offset: float | None = None
        self.clock_offset: float | None = None
        # What X-Timestamp adds to our clock: the same rule as the controller's (vending.clock).
        self._correction = ClockCorrection(clock)
        self.timeout = timeout
        # a trailing "/" makes httpx append our paths to the prefix instead of replacing its tail
        base = str(url).rstrip("/") + "/"
        self._http = httpx.Client(
            base_url=base, timeout=httpx.Timeout(timeout), transport=transport,
            follow_redirects=False, trust_env=False,
        )

    @property
    def worst_case_seconds(self) -> float:
        """Upper bound of one call, in seconds (see the module docstring for its limits)."""
        attempts = self._retries + 1
        return attempts * 2 * self.timeout + self._backoff * (2 ** self._retries - 1)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OrdersClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- endpoints ---------------------------------------------------------------------------

    def create_order(
        self, slot: int, product_id: str, amount: int, currency: str, session_id: str
    ) -> Order:
        _check_int("slot", slot, 1)
        if not isinstance(product_id, str) or not 1 <= len(product_id) <= 64:
            raise ValueError(f"product_id must be a string of 1..64 characters, got {product_id!r}")
        _check_int("amount", amount, 1)
        _check_currency(currency)
        _check_id("session_id", session_id)
        body = json.dumps(
            {"machine_id": self.machine_id, "slot": slot, "product_id": product_id,
             "amount": amount, "currency": currency, "session_id": session_id},
            separators=(",", ":"),
        ).encode()
        what = f"create order for session {session_id}"
        response = self._request("POST", "v1/orders", body, what)
        if response.status_code not in (200, 201):
            raise BadOrder(f"{what}: unexpected HTTP {response.status_code}")
        data = self._json(response, what)
        return self._order_from(data, slot, amount, currency, session_id, what)

    def cancel_order(self, order_id: str) -> str:
        """Returns "cancelled", or "paid" when the customer paid first (HTTP 409)."""
        _check_id("order_id", order_id)
        what = f"cancel order {order_id}"
        response = self._request("POST", f"v1/orders/{order_id}/cancel", b"", what, refuse=False)
        if response.status_code == 409:
            try:
                paid = json.loads(response.content).get("state") == "paid"
            except (ValueError, UnicodeDecodeError, AttributeError):
                paid = False
            if paid:
                return "paid"
        if 400 <= response.status_code < 500:
            raise Refused(response.status_code, _excerpt(response), what)
        if response.status_code != 200:
            raise BadOrder(f"{what}: unexpected HTTP {response.status_code}")
        data = self._json(response, what)
        if data.get("state") != "cancelled":
            raise BadOrder(
                f"{what}: 200 response state must be 'cancelled', got {data.get('state')!r}")
        return "cancelled"

    def get_order(self, order_id: str) -> tuple[str, dict | None]:
        """(state, payment message or None). The payment is NOT verified here: the caller runs
        it through messages.parse_payment exactly as if it came over MQTT."""
        _check_id("order_id", order_id)
        what = f"get order {order_id}"
        response = self._request("GET", f"v1/orders/{order_id}", b"", what)
        if response.status_code != 200:
            raise BadOrder(f"{what}: unexpected HTTP {response.status_code}")
        data = self._json(response, what)
        state, payment = data.get("state"), data.get("payment")
        if state not in ORDER_STATES:
            raise BadOrder(f"{what}: state must be one of {sorted(ORDER_STATES)}, got {state!r}")
        if payment is not None and not isinstance(payment, dict):
            raise BadOrder(
                f"{what}: payment must be an object or null, got {type(payment).__name__}")
        return state, payment

    # -- transport ---------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: bytes, what: str, *, refuse: bool = True
    ) -> httpx.Response:
        """Send with retries. The body bytes are built once by the caller and sent unchanged on
        every attempt; only the timestamp and signature are renewed."""
        last = ""
        resigned = False
        attempt = 0
        while attempt <= self._retries:
            if attempt:
                ceiling = self._backoff * 2 ** (attempt - 1)
                self._sleep(ceiling * self._random.uniform(0.5, 1.0))
            request = self._http.build_request(method, path, content=body)
            self._correction.check()
            correction = self._correction.offset
            self._sign(request, body)
            attempt += 1
            try:
                response = self._send(request)
            except httpx.RequestError as exc:  # connect, timeouts, reset, garbage, bad gzip
                last = f"{type(exc).__name__}: {exc}"
                log.info("%s: attempt %d failed: %s", what, attempt, last)
                continue
            self._learn_offset(response)
            if (response.status_code == 401 and not resigned
                    and self._correction.offset != correction):
                # Refused for our timestamp, and its Date just told us how far off we are: sign
                # again with the corrected time, once, without counting it as a retry.
                resigned, attempt = True, attempt - 1
                log.info("%s: re-signing with the clock corrected by %+.0f s", what,
                         self._correction.offset)
                continue
            if response.status_code >= 500:
                last = f"HTTP {response.status_code}"
                log.info("%s: attempt %d got %s", what, attempt, last)
                continue
            if refuse and 400 <= response.status_code < 500:
                raise Refused(response.status_code, _excerpt(response), what)
            return response
        raise Unreachable(f"{what}: gave up after {self._retries + 1} attempts, last: {last}")

    def _send(self, request: httpx.Request) -> httpx.Response:
        # httpx times each read, not the whole exchange; this deadline bounds the whole attempt
        deadline = time.monotonic() + 2 * self.timeout
        response = self._http.send(request, stream=True)
        try:
            chunks, size = [], 0
            for chunk in response.iter_bytes():  # decoded, so the cap also stops a gzip bomb
                size += len(chunk)
                if size > MAX_RESPONSE:
                    raise httpx.RemoteProtocolError(f"response larger than {MAX_RESPONSE} bytes")
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout(f"attempt took longer than {2 * self.timeout} s")
                chunks.append(chunk)
        finally:
            response.close()
        # a plain response from the checked, already decoded bytes
        headers = [(k, v) for k, v in response.headers.items()
                   if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
        return httpx.Response(response.status_code, headers=headers, content=b"".join(chunks),
                              request=request)

    def _sign(self, request: httpx.Request, body: bytes) -> None:
        # the target is read back from the built request, so it is exactly what goes on the wire,
        # base-URL prefix and percent-encoding included
        target = request.url.raw_path.decode("ascii")
        timestamp = str(int(self._clock() + self._correction.offset))
        request.headers["X-Machine-Id"] = self.machine_id
        request.headers["X-Timestamp"] = timestamp
        request.headers["X-Signature"] = signing.http_signature(
            self._key, request.method, target, timestamp, body)
        if body:
            request.headers["Content-Type"] = "application/json"

    def _learn_offset(self, response: httpx.Response) -> None:
        date = response.headers.get("Date")
        if not date:
            return
        try:
            server = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            log.warning("orders API sent an unreadable Date header: %r", date[:64])
            return
        offset = server - self._clock()
        self.clock_offset = offset
        self._correction.learn(offset)
        # log when it first goes large and whenever it moves by another minute, not per request
        if abs(offset) > CLOCK_OFFSET_LOG_S and (
            self._logged_offset is None or abs(offset - self._logged_offset) > CLOCK_OFFSET_LOG_S
        ):
            log.warning("clock offset to the orders API is %+.0f s", offset)
            self._logged_offset = offset

    @staticmethod
    def _json(response: httpx.Response, what: str) -> dict:
        try:
            data = json.loads(response.content)
        except (ValueError, UnicodeDecodeError):
            raise BadOrder(f"{what}: response is not JSON: {_excerpt(response)!r}") from None
        if not isinstance(data, dict):
            raise BadOrder(f"{what}: response must be a JSON object, got {type(data).__name__}")
        return data

    def _order_from(
        self, data: dict, slot: int, amount: int, currency: str, session_id: str, what: str
    ) -> Order:
        def field(name: str, kind: type) -> Any:
            if name not in data:
                raise BadOrder(f"{what}: response lacks {name!r}")
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, kind):
                raise BadOrder(f"{what}: response {name!r} must be {kind.__name__}, got {value!r}")
            return value

        order_id, qr_url = field("order_id", str), field("qr_url", str)
        got_amount, got_currency = field("amount", int), field("currency", str)
        expires_at, sig = field("expires_at", int), field("sig", str)
        if not ID_RE.fullmatch(order_id):
            raise BadOrder(f"{what}: response order_id {order_id[:80]!r} is not a valid id")
        if not 1 <= len(qr_url) <= MAX_QR_URL or not qr_url.isprintable() or " " in qr_url:
            raise BadOrder(f"{what}: response qr_url is empty, too long or has odd characters")
        if not signing.verify_order_sig(
            self._key, order_id, qr_url, got_amount, got_currency, expires_at, sig
        ):
            raise BadOrder(f"{what}: response sig does not verify for order {order_id}")
        # checked even with a good sig: a signed order for another amount is still not ours
        if got_amount != amount or got_currency != currency:
            raise BadOrder(
                f"{what}: asked {amount} {currency}, response says {got_amount} {got_currency}")
        return Order(order_id, qr_url, amount, currency, expires_at, session_id, slot, False)


def offline_order_id(session_id: str) -> str:
    """Derived, not random, so that minting twice for one session gives one order."""
    _check_id("session_id", session_id)
    candidate = "off-" + session_id
    if len(candidate) <= 64:
        return candidate
    return "off-" + hashlib.sha256(session_id.encode()).hexdigest()[:40]


def offline_order(
    machine_id: str, key: bytes, pay_base_url: str, slot: int, amount: int, currency: str,
    session_id: str, now: int, ttl: int,
) -> Order:
    """Mint an order without the API (CONTRACT §4). Pure: same inputs, same Order."""
    _check_id("machine_id", machine_id)
    _check_int("slot", slot, 1)
    _check_int("amount", amount, 1)
    _check_currency(currency)
    _check_int("now", now, 0)
    _check_int("ttl", ttl, 1)
    order_id = offline_order_id(session_id)
    expires_at = now + ttl
    qr_url = signing.offline_qr_url(
        pay_base_url, key, machine_id, order_id, amount, currency, slot, expires_at)
    return Order(order_id, qr_url, amount, currency, expires_at, session_id, slot, True)
