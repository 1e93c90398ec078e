"""HMAC signatures of CONTRACT §2 (MQTT payloads), §3 (HTTP requests, order responses) and §4
(offline QR URLs).

Pure functions over bytes and plain values; the machine key is always a parameter, so any number
of machines can sign side by side in one process.

Two rules run through the module:
- Signing functions raise `SigningError` (a ValueError) naming the bad argument: a bad field on
  our side is a bug that must be loud.
- Verifying functions return False on *any* oddity and never raise: what they check comes from
  the network, and a verifier that can be made to throw is a verifier that can be bypassed by a
  careless caller.

Every string that is signed is built so that it has one reading only: the `|`-joined fields are
identifiers, canonical decimals and currency codes, which cannot contain `|`, except `qr_url`,
which sits between two such fields and so is still delimited unambiguously.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from typing import Any

__all__ = [
    "SigningError",
    "b64url",
    "b64url_decode",
    "canonical",
    "key_from_hex",
    "sign_payload",
    "payload_sig",
    "verify_payload",
    "http_signature",
    "verify_http_signature",
    "order_sig",
    "verify_order_sig",
    "offline_qr_sig",
    "offline_qr_url",
    "parse_offline_qr_url",
    "verify_offline_qr_url",
]

_IDENT = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
# Canonical decimals only: "0350" and "350" must not both name the same signed amount.
_UINT = re.compile(r"0|[1-9][0-9]*")
_SLOT = re.compile(r"[1-9][0-9]{0,5}")
_SIG_LEN = 43  # base64url of 32 bytes, unpadded


class SigningError(ValueError):
    """A value handed to a signing function cannot be signed as the contract requires."""


# --- base64url and canonical JSON ---------------------------------------------------------

def b64url(data: bytes) -> str:
    """RFC 4648 §5 base64url without padding."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SigningError(f"b64url: expected bytes, got {type(data).__name__}")
    return base64.urlsafe_b64encode(bytes(data)).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict inverse of `b64url`: no padding, no whitespace, no standard-alphabet characters,
    and no non-zero trailing bits, so that every byte string has exactly one accepted text.
    Raises ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"base64url: expected str, got {type(text).__name__}")
    if not _B64URL.fullmatch(text):
        raise ValueError("base64url: character outside A-Z a-z 0-9 - _ (padding is not allowed)")
    if len(text) % 4 == 1:
        raise ValueError("base64url: impossible length")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - the regex rules these out
        raise ValueError(f"base64url: {exc}") from None
    if b64url(data) != text:
        raise ValueError("base64url: non-canonical encoding (stray bits in the last character)")
    return data


def canonical(obj: dict) -> bytes:
    """The signed form of a payload (CONTRACT §2). NaN and infinities are refused (they are not
    JSON); a string that is not valid Unicode (a lone surrogate) fails to encode. Both raise
    ValueError."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def key_from_hex(text: str) -> bytes:
    """The machine key from its key-file form: 64 hex characters (surrounding whitespace, such
    as the file's trailing newline, is ignored)."""
    if not isinstance(text, str):
        raise SigningError(f"machine key: expected str, got {type(text).__name__}")
    stripped = text.strip()
    if not re.fullmatch(r"[0-9A-Fa-f]{64}", stripped):
        raise SigningError("machine key: expected exactly 64 hex characters (32 bytes)")
    return bytes.fromhex(stripped)


# --- primitives ----------------------------------------------------------------------------

def _check_key(key: Any) -> bytes:
    # An empty key is what a failed config load looks like; HMAC would happily "sign" with it.
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise SigningError("machine key: expected non-empty bytes")
    return bytes(key)


def _mac(key: bytes, message: bytes) -> bytes:
    return hmac.new(_check_key(key), message, hashlib.sha256).digest()


def _sig_matches(key: bytes, message: bytes, sig: Any) -> bool:
    """Constant-time check of a base64url sig. Decoding first (strictly) means the comparison is
    between two 32-byte digests, so timing reveals nothing about how much of the sig was right."""
    if not isinstance(sig, str) or len(sig) != _SIG_LEN:
        return False
    try:
        given = b64url_decode(sig)
    except ValueError:
        return False
    return hmac.compare_digest(_mac(key, message), given)


def _is_int(value: Any) -> bool:
    # bool is an int in Python, and True == 1 would otherwise sign as "True".
    return type(value) is int


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise SigningError(what)


# --- §2 MQTT payloads --------------------------------------------------------------------

def _unsigned(payload: dict) -> dict:
    return {k: v for k, v in payload.items() if k != "sig"}


def payload_sig(key: bytes, payload: dict) -> str:
    """The `sig` value for a payload (any `sig` already in it is left out of the signed bytes)."""
    _need(isinstance(payload, dict), "payload: expected a dict")
    try:
        body = canonical(_unsigned(payload))
    except (TypeError, ValueError, RecursionError) as exc:
        raise SigningError(f"payload: not canonical JSON ({exc})") from None
    return b64url(_mac(key, body))


def sign_payload(key: bytes, payload: dict) -> dict:
    """A copy of `payload` with `sig` set over the payload minus `sig`."""
    signed = _unsigned(payload) if isinstance(payload, dict) else payload
    sig = payload_sig(key, signed)
    return {**signed, "sig": sig}


def verify_payload(key: bytes, payload: dict) -> bool:
    """True only if `payload` is a dict whose `sig` is the HMAC of the rest of it."""
    try:
        if not isinstance(payload, dict):
            return False
        return _sig_matches(key, canonical(_unsigned(payload)), payload.get("sig"))
    except Exception:  # noqa: BLE001 - a verifier must never raise (see module docstring)
        return False


# --- §3 HTTP requests and order responses -------------------------------------------------

def _http_message(method: str, target: str, timestamp: str | int, body: bytes | str) -> bytes:
    _need(isinstance(method, str) and re.fullmatch(r"[A-Z]{1,16}", method) is not None,
          "http signature: method must be an upper-case token such as POST")
    _need(isinstance(target, str) and target.startswith("/") and "\n" not in target,
          "http signature: target must be the request path starting with '/'")
    if _is_int(timestamp):
        timestamp = str(timestamp)
    _need(isinstance(timestamp, str) and _UINT.fullmatch(timestamp) is not None,
          "http signature: timestamp must be Unix seconds in decimal")
    if isinstance(body, str):
        body = body.encode("utf-8")
    _need(isinstance(body, (bytes, bytearray)), "http signature: body must be bytes")
    return f"{method}\n{target}\n{timestamp}\n".encode("utf-8") + bytes(body)


def http_signature(key: bytes, method: str, target: str, timestamp: str | int,
                   body: bytes | str = b"") -> str:
    """X-Signature of CONTRACT §3. `target` is the path as sent, including any base-URL prefix
    and query string; `body` is the exact bytes sent (empty for a GET)."""
    return b64url(_mac(key, _http_message(method, target, timestamp, body)))


def verify_http_signature(key: bytes, method: str, target: str, timestamp: str | int,
                          body: bytes | str, sig: str) -> bool:
    """Server side of `http_signature` (for the cloud double). Freshness is the caller's job."""
    try:
        return _sig_matches(key, _http_message(method, target, timestamp, body), sig)
    except Exception:  # noqa: BLE001
        return False


def _order_fields(order_id: str, qr_url: str, amount: int, currency: str,
                  expires_at: int) -> bytes:
    _need(isinstance(order_id, str) and _IDENT.fullmatch(order_id) is not None,
          "order sig: order_id must match [A-Za-z0-9_-]{1,64}")
    # The QR text is free-form, but a control character in it is never a legitimate pay URL.
    _need(isinstance(qr_url, str) and qr_url != ""
          and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in qr_url),
          "order sig: qr_url must be a non-empty string without control characters")
    _need(_is_int(amount) and amount >= 0, "order sig: amount must be an integer >= 0")
    _need(isinstance(currency, str) and _CURRENCY.fullmatch(currency) is not None,
          "order sig: currency must be three upper-case letters")
    _need(_is_int(expires_at) and expires_at >= 0, "order sig: expires_at must be Unix seconds")
    return f"{order_id}|{qr_url}|{amount}|{currency}|{expires_at}".encode("utf-8")


def order_sig(key: bytes, order_id: str, qr_url: str, amount: int, currency: str,
              expires_at: int) -> str:
    """`sig` of a `POST /v1/orders` response (CONTRACT §3)."""
    return b64url(_mac(key, _order_fields(order_id, qr_url, amount, currency, expires_at)))


def verify_order_sig(key: bytes, order_id: str, qr_url: str, amount: int, currency: str,
                     expires_at: int, sig: str) -> bool:
    """False also when a field has the wrong JSON type or format (e.g. amount 350.0): such a
    response is not one the daemon may show a QR for."""
    try:
        return _sig_matches(key, _order_fields(order_id, qr_url, amount, currency, expires_at),
                            sig)
    except Exception:  # noqa: BLE001
        return False


# --- §4 offline QR ---------------------------------------------------------------------------

def _offline_fields(machine_id: str, order_id: str, amount: int, currency: str, slot: int,
                    expires_at: int) -> bytes:
    _need(isinstance(machine_id, str) and _IDENT.fullmatch(machine_id) is not None,
          "offline QR: machine_id must match [A-Za-z0-9_-]{1,64}")
    _need(isinstance(order_id, str) and _IDENT.fullmatch(order_id) is not None,
          "offline QR: order_id must match [A-Za-z0-9_-]{1,64}")
    _need(_is_int(amount) and amount >= 0, "offline QR: amount must be an integer >= 0")
    _need(isinstance(currency, str) and _CURRENCY.fullmatch(currency) is not None,
          "offline QR: currency must be three upper-case letters")
    _need(_is_int(slot) and slot >= 1, "offline QR: slot must be an integer >= 1")
    _need(_is_int(expires_at) and expires_at >= 0, "offline QR: expires_at must be Unix seconds")
    return f"{machine_id}|{order_id}|{amount}|{currency}|{slot}|{expires_at}".encode("ascii")


def offline_qr_sig(key: bytes, machine_id: str, order_id: str, amount: int, currency: str,
                   slot: int, expires_at: int) -> str:
    return b64url(_mac(key, _offline_fields(machine_id, order_id, amount, currency, slot,
                                            expires_at)))


def offline_qr_url(pay_base_url: str, key: bytes, machine_id: str, order_id: str, amount: int,
                   currency: str, slot: int, expires_at: int) -> str:
    """The URL the offline QR encodes. One trailing '/' on the base URL is tolerated so that a
    config written either way gives the same URL."""
    _need(isinstance(pay_base_url, str) and re.fullmatch(r"https?://[^\s?#]+", pay_base_url)
          is not None, "offline QR: pay_base_url must be an http(s) URL without query or fragment")
    sig = offline_qr_sig(key, machine_id, order_id, amount, currency, slot, expires_at)
    base = pay_base_url[:-1] if pay_base_url.endswith("/") else pay_base_url
    return (f"{base}/p/{machine_id}/{order_id}"
            f"?a={amount}&c={currency}&s={slot}&e={expires_at}&sig={sig}")


_OFFLINE_URL = re.compile(
    r"(?P<base>https?://[^\s?#]+?)/p/(?P<machine_id>[A-Za-z0-9_-]{1,64})"
    r"/(?P<order_id>[A-Za-z0-9_-]{1,64})\?(?P<query>[^#\s]*)"
)
_OFFLINE_QUERY = ("a", "c", "s", "e", "sig")


def parse_offline_qr_url(url: str) -> dict:
    """Split an offline QR URL into machine_id, order_id, amount, currency, slot, expires_at, sig
    (and base_url). Raises ValueError naming the first thing that is not as §4 writes it.

    Values are taken raw, without percent-decoding: every legitimate value is already URL-safe,
    so an escaped one can only be an attempt to smuggle a second spelling past a checker."""
    if not isinstance(url, str):
        raise ValueError(f"offline QR URL: expected str, got {type(url).__name__}")
    m = _OFFLINE_URL.fullmatch(url)
    if m is None:
        raise ValueError("offline QR URL: not of the form <base>/p/<machine_id>/<order_id>?...")
    params: dict[str, str] = {}
    for part in m["query"].split("&"):
        name, eq, value = part.partition("=")
        if not eq or name not in _OFFLINE_QUERY:
            raise ValueError(f"offline QR URL: unexpected query parameter {name[:16]!r}")
        if name in params:
            raise ValueError(f"offline QR URL: query parameter {name!r} repeated")
        params[name] = value
    missing = [n for n in _OFFLINE_QUERY if n not in params]
    if missing:
        raise ValueError(f"offline QR URL: missing query parameter {missing[0]!r}")
    checks = (("a", _UINT, "amount"), ("c", _CURRENCY, "currency"), ("s", _SLOT, "slot"),
              ("e", _UINT, "expires_at"))
    for name, pattern, label in checks:
        if pattern.fullmatch(params[name]) is None:
            raise ValueError(f"offline QR URL: {label} ({name}=) is not in canonical form")
    if len(params["sig"]) != _SIG_LEN or _B64URL.fullmatch(params["sig"]) is None:
        raise ValueError("offline QR URL: sig is not a base64url HMAC-SHA256")
    return {
        "base_url": m["base"],
        "machine_id": m["machine_id"],
        "order_id": m["order_id"],
        "amount": int(params["a"]),
        "currency": params["c"],
        "slot": int(params["s"]),
        "expires_at": int(params["e"]),
        "sig": params["sig"],
    }


def verify_offline_qr_url(key: bytes, url: str) -> bool:
    try:
        f = parse_offline_qr_url(url)
        message = _offline_fields(f["machine_id"], f["order_id"], f["amount"], f["currency"],
                                  f["slot"], f["expires_at"])
        return _sig_matches(key, message, f["sig"])
    except Exception:  # noqa: BLE001
        return False
