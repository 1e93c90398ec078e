"""MQTT payloads of CONTRACT §2: parse what the cloud sends. What the daemon sends is built in
payloads.py, and the field rules both sides share are in message_fields.py; both are re-exported
here, so every caller can keep to `messages.X`.

Sans-I/O: bytes (or an already-decoded dict, for the orders API's `payment`) go in, a typed value
or `Rejected` comes out; the clock is always a parameter.

The checks run in the order that keeps money safe, and every failure is a `Rejected`:
1. size cap, UTF-8, one JSON object with no duplicate keys, no NaN, bounded depth -> malformed.
   (A duplicate key is where two JSON parsers disagree about what was signed.)
2. `sig` present and valid over the payload minus `sig` -> else bad_sig. Nothing unauthenticated
   is looked at beyond this point, so field checks cannot be used as an oracle.
3. `machine_id` is ours -> else wrong_machine (a message signed for another machine sharing our
   key must not sell here).
4. `v`, `type` and every field's JSON type and format -> else malformed. Type confusion matters:
   `True == 1` and `350.0 == 350` in Python, so a bool or a float is never an amount.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from .message_fields import (  # noqa: F401 - the unused ones are re-exported
    ALERT_CODES, AMOUNT, COMMAND_NAMES, CURRENCY, CURRENCY_RE, DISPENSE_RESULTS, EVENT_TYPES,
    IDENT, IDENT_RE, INBOUND_TYPES, MESSAGE_TYPES, OPAQUE, PRICES, PROVIDER, REASON_TEXT,
    SLOT, SLOT_KEY_RE, STATUS_STATES, TXN_ID, UNIX, VEND_RESULTS, Reason, is_ident)
from .payloads import (  # noqa: F401 - re-exported: callers write messages.vend_result(...)
    EventFieldError, ack_fields, alert, build_event, command_fields, command_result,
    payment_fields, payment_rejected, status, telemetry, vend_result)
from .signing import verify_payload

MAX_PAYLOAD_BYTES = 16 * 1024
MAX_DEPTH = 8  # the deepest legitimate payload (set_prices) nests 3 levels
FRESH_WINDOW_S = 300
_SURROGATE = re.compile("[\ud800-\udfff]")  # a lone surrogate from a JSON escape


class Rejected(Exception):
    """An inbound message that must not be acted on.

    `order_id` / `cmd_id` are set only when the message carried one that reads as an identifier
    (for `payment_rejected` and `command_result`); `detail` is one sentence naming the field and
    never quotes the key, the sig or the offending value."""

    def __init__(self, reason: Reason | str, detail: str, order_id: str | None = None,
                 cmd_id: str | None = None) -> None:
        self.reason = Reason(reason)
        self.detail = detail
        self.order_id = order_id
        self.cmd_id = cmd_id
        super().__init__(f"{self.reason.value}: {detail}")


@dataclass(frozen=True)
class Payment:
    order_id: str
    amount: int
    currency: str
    provider: str
    txn_id: str
    payer: str | None
    promo: str | None
    ts: int
    message: dict = field(compare=False, repr=False)  # exactly as signed, for journal and replay


@dataclass(frozen=True)
class Command:
    cmd_id: str
    name: str
    args: dict
    expires: int
    ts: int
    message: dict = field(compare=False, repr=False)


@dataclass(frozen=True)
class Ack:
    event_id: str
    ts: int


def _derived(prefix: str, domain: str, *idents: str, tail: str = "") -> str:
    for p in idents:
        if not is_ident(p):
            raise ValueError(f"{domain}: every id must match [A-Za-z0-9_-]{{1,64}}")
    # Only the last part may hold '|', so the joined string still has one reading.
    text = "|".join((domain,) + idents) + (f"|{tail}" if tail else "")
    return prefix + hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def vend_id_for(machine_id: str, order_id: str, *, free_vend: bool = False) -> str:
    """The board's vend id for a paid order: a pure function of it, so a restarted daemon
    re-asks the board about the same dispense instead of minting a second one. "v" + 24 hex
    digits: a valid VLP value and identifier; 96 bits make a clash among the board's remembered
    dispenses impossible in practice. For a free vend pass its cmd_id with free_vend=True: a
    separate namespace, so a cmd_id that happens to equal an order_id cannot make the board
    report the free dispense as that order's."""
    return _derived("v", "free_vend/1" if free_vend else "vend_id/1", machine_id, order_id)


def event_id_for(machine_id: str, kind: str, key: str) -> str:
    """A deterministic event_id, e.g. (mid, "vend_result", txn_id): a crash between deciding an
    event and storing it cannot produce two events with different ids. `key` may be any
    non-empty string (a txn_id need not be an identifier)."""
    if not isinstance(key, str) or not key:
        raise ValueError("event_id_for: key must be a non-empty string")
    return _derived("e", "event_id/1", machine_id, kind, tail=key)


def new_event_id() -> str:
    return "e" + secrets.token_hex(12)


def is_fresh(ts: int, now: float, window: int = FRESH_WINDOW_S) -> bool:
    """`ts` within `window` seconds of `now`, either side (a sender's clock may run ahead)."""
    if type(ts) is not int or not isinstance(now, (int, float)) or isinstance(now, bool):
        return False
    return abs(now - ts) <= window  # False for NaN and infinities too


# --- step 1: bytes to a bounded JSON object --------------------------------------------------

def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a JSON object repeats a key")
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number overflows")
    return value


def _check_tree(obj: Any) -> str | None:
    """Why `obj` is not a plain, shallow JSON tree, or None. Iterative, so depth (or a cycle in
    a dict handed in directly) cannot exhaust the stack."""
    stack = [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth >= MAX_DEPTH:
                return f"nested deeper than {MAX_DEPTH} levels"
            if isinstance(node, dict):
                if not all(isinstance(k, str) and not _SURROGATE.search(k) for k in node):
                    return "an object key is not a valid Unicode string"
                children = node.values()
            else:
                children = node
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(node, float):
            if not math.isfinite(node):
                return "holds NaN or an infinity"
        elif isinstance(node, str):
            if _SURROGATE.search(node):
                return "holds a string that is not valid Unicode"
        elif not (node is None or isinstance(node, (str, int, bool))):
            return f"holds a {type(node).__name__}, which is not JSON"
    return None


def _load(raw: bytes | str | dict, what: str) -> dict:
    def bad(detail: str) -> Rejected:
        return Rejected(Reason.MALFORMED, f"{what} {detail}")

    if isinstance(raw, dict):
        obj: Any = raw
    else:
        if isinstance(raw, (bytes, bytearray, memoryview)):
            data = bytes(raw)
        elif isinstance(raw, str):
            if len(raw) > MAX_PAYLOAD_BYTES:
                raise bad(f"is larger than {MAX_PAYLOAD_BYTES} bytes")
            try:
                data = raw.encode("utf-8")
            except UnicodeEncodeError:
                raise bad("is not valid Unicode text") from None
        else:
            raise bad(f"arrived as a {type(raw).__name__}, not bytes")
        if len(data) > MAX_PAYLOAD_BYTES:
            raise bad(f"is larger than {MAX_PAYLOAD_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise bad("is not UTF-8") from None
        try:
            obj = json.loads(text, object_pairs_hook=_no_duplicates,
                             parse_constant=_no_constant, parse_float=_finite_float)
        except (ValueError, RecursionError) as exc:
            # JSONDecodeError messages quote positions, never content; others are ours.
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc) or "deep"
            raise bad(f"is not valid JSON ({reason})") from None
    if not isinstance(obj, dict):
        raise bad("is not a JSON object")
    problem = _check_tree(obj)
    if problem:
        raise bad(problem)
    if isinstance(raw, dict):
        # Same size cap as on the wire, and a private deep copy: the Payment keeps `message`
        # for the journal, which must not change if the caller's dict does later.
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
        if len(text.encode("utf-8")) > MAX_PAYLOAD_BYTES:
            raise bad(f"is larger than {MAX_PAYLOAD_BYTES} bytes")
        obj = json.loads(text)
    return obj


# --- steps 2-4: authenticity, then the envelope ----------------------------------------------

def _check_receiver(key: bytes, machine_id: str) -> None:
    # Misconfiguration, not hostile input: an empty key would make every message "bad_sig"
    # and silently strand every payment, so fail loudly instead.
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise ValueError("machine key must be non-empty bytes")
    if not is_ident(machine_id):
        raise ValueError("machine_id must match [A-Za-z0-9_-]{1,64}")


def parse_signed(raw: bytes | str | dict, key: bytes, machine_id: str,
                 types: tuple[str, ...] = MESSAGE_TYPES, *, id_field: str = "") -> dict:
    """Steps 1-4 for the envelope; returns the message dict. Also what a cloud double uses to
    read the daemon's events. `id_field` names the identifier to report on rejection."""
    _check_receiver(key, machine_id)
    what = "/".join(types) if len(types) <= 2 else "message"
    msg = _load(raw, what)
    ident = msg.get(id_field) if id_field else None
    ident = ident if is_ident(ident) else None

    def reject(reason: Reason, detail: str) -> Rejected:
        return Rejected(reason, detail,
                        order_id=ident if id_field == "order_id" else None,
                        cmd_id=ident if id_field == "cmd_id" else None)

    if "sig" not in msg:
        raise reject(Reason.BAD_SIG, f"{what} has no sig")
    if not verify_payload(key, msg):
        raise reject(Reason.BAD_SIG, f"{what} sig does not verify with this machine's key")
    if msg.get("machine_id") != machine_id:
        raise reject(Reason.WRONG_MACHINE, f"{what} machine_id is not this machine's")
    if type(msg.get("v")) is not int or msg["v"] != 1:
        raise reject(Reason.MALFORMED, f"{what} field 'v' must be the integer 1")
    if msg.get("type") not in types:
        raise reject(Reason.MALFORMED, f"{what} field 'type' must be one of {', '.join(types)}")
    if type(msg.get("ts")) is not int or msg["ts"] < 0:
        raise reject(Reason.MALFORMED, f"{what} field 'ts' must be Unix seconds as an integer")
    return msg


# Per command name: the exact set of args and how each is checked. Args we do not know are
# refused rather than ignored: a command half understood is not executed.
COMMAND_ARGS: Mapping[str, Mapping[str, tuple]] = MappingProxyType({
    "set_prices": MappingProxyType({"prices": PRICES}),
    "set_promo": MappingProxyType({"slot": SLOT, "amount": AMOUNT, "start": UNIX, "end": UNIX}),
    "free_vend": MappingProxyType({"slot": SLOT, "reason": REASON_TEXT}),
    "cancel_session": MappingProxyType({}),
    "ping": MappingProxyType({}),
})


def _fields(msg: dict, where: str, spec: Mapping[str, tuple], reject: Callable[[str], Rejected],
            optional: tuple[str, ...] = ()) -> None:
    for name, (check, description) in spec.items():
        if name not in msg and name in optional:
            continue
        if name not in msg:
            raise reject(f"{where} lacks field '{name}'")
        if not check(msg[name]):
            raise reject(f"{where} field '{name}' must be {description}")


def parse_payment(raw: bytes | str | dict, key: bytes, machine_id: str) -> Payment:
    msg = parse_signed(raw, key, machine_id, ("payment",), id_field="order_id")
    oid = msg["order_id"] if is_ident(msg.get("order_id")) else None

    def reject(detail: str) -> Rejected:
        return Rejected(Reason.MALFORMED, detail, order_id=oid)

    _fields(msg, "payment", {"order_id": IDENT, "amount": AMOUNT, "currency": CURRENCY,
                             "provider": PROVIDER, "txn_id": TXN_ID, "payer": OPAQUE,
                             "promo": OPAQUE}, reject, optional=("payer", "promo"))
    return Payment(order_id=msg["order_id"], amount=msg["amount"], currency=msg["currency"],
                   provider=msg["provider"], txn_id=msg["txn_id"], payer=msg.get("payer"),
                   promo=msg.get("promo"), ts=msg["ts"], message=msg)


def parse_command(raw: bytes | str | dict, key: bytes, machine_id: str) -> Command:
    """Authenticity and shape only; freshness and expiry are the caller's (`is_fresh`)."""
    msg = parse_signed(raw, key, machine_id, ("command",), id_field="cmd_id")
    cid = msg["cmd_id"] if is_ident(msg.get("cmd_id")) else None

    def reject(detail: str) -> Rejected:
        return Rejected(Reason.MALFORMED, detail, cmd_id=cid)

    _fields(msg, "command", {"cmd_id": IDENT, "expires": UNIX}, reject)
    name = msg.get("name")
    if name not in COMMAND_NAMES:
        raise reject(f"command field 'name' must be one of {', '.join(COMMAND_NAMES)}")
    args = msg.get("args")
    if not isinstance(args, dict):
        raise reject("command field 'args' must be an object")
    spec = COMMAND_ARGS[name]
    extra = sorted(set(args) - set(spec))
    if extra:
        which = f"'{extra[0]}'" if is_ident(extra[0]) else "with an odd name"
        raise reject(f"command {name} args has an unknown field {which}")
    _fields(args, f"command {name} args", spec, reject)
    if name == "set_promo" and args["end"] < args["start"]:
        raise reject("command set_promo args field 'end' must not be before 'start'")
    return Command(cmd_id=msg["cmd_id"], name=name, args=args, expires=msg["expires"],
                   ts=msg["ts"], message=msg)


def parse_ack(raw: bytes | str | dict, key: bytes, machine_id: str) -> Ack:
    msg = parse_signed(raw, key, machine_id, ("ack",))
    _fields(msg, "ack", {"event_id": IDENT}, lambda d: Rejected(Reason.MALFORMED, d))
    return Ack(event_id=msg["event_id"], ts=msg["ts"])
