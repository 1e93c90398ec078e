"""The field vocabulary of CONTRACT §2, shared by both directions: messages.py checks what the
cloud sends against it, payloads.py checks what the daemon builds.

Each field rule is (predicate, description); the description completes "field 'x' must be ...".
Type confusion matters: `True == 1` and `350.0 == 350` in Python, so a bool or a float is never
an amount.
"""
from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Callable

IDENT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
CURRENCY_RE = re.compile(r"[A-Z]{3}")
SLOT_KEY_RE = re.compile(r"[1-9][0-9]{0,5}")  # a slot as a JSON object key: "12", never "012"

INBOUND_TYPES = ("payment", "command", "ack")
EVENT_TYPES = ("vend_result", "payment_rejected", "command_result", "alert")
MESSAGE_TYPES = INBOUND_TYPES + EVENT_TYPES + ("status", "telemetry")
COMMAND_NAMES = ("set_prices", "set_promo", "free_vend", "cancel_session", "ping")
DISPENSE_RESULTS = ("ok", "jam", "no_drop", "empty", "timeout")
VEND_RESULTS = DISPENSE_RESULTS + ("uncertain", "late", "mismatch", "board_offline", "duplicate")
ALERT_CODES = ("jam", "slot_disabled", "door_open_during_sale", "board_link_down",
               "board_rebooted", "inauthentic_message", "clock_offset", "low_stock")
STATUS_STATES = ("online", "offline", "out_of_service")


class Reason(StrEnum):
    """Why an inbound message was rejected; also the `reason` of a `payment_rejected` event."""
    BAD_SIG = "bad_sig"
    WRONG_MACHINE = "wrong_machine"
    MALFORMED = "malformed"


def is_ident(s: Any) -> bool:
    return isinstance(s, str) and IDENT_RE.fullmatch(s) is not None


def _int_min(lo: int) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and v >= lo


def _text(max_len: int, ascii_only: bool = False) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        return (isinstance(v, str) and 0 < len(v) <= max_len and v.isprintable()
                and (not ascii_only or v.isascii()))
    return check


IDENT = (is_ident, "an identifier [A-Za-z0-9_-]{1,64}")
AMOUNT = (_int_min(0), "an integer >= 0 in minor units")
CURRENCY = (lambda v: isinstance(v, str) and CURRENCY_RE.fullmatch(v) is not None,
            "three upper-case letters")
SLOT = (_int_min(1), "an integer slot number >= 1")
UNIX = (_int_min(0), "Unix seconds as an integer")
TXN_ID = (_text(128, ascii_only=True), "a printable string of 1 to 128 characters")
PROVIDER = (_text(64, ascii_only=True), "a printable string of 1 to 64 characters")
OPAQUE = (lambda v: v is None or (isinstance(v, str) and len(v) <= 1024),
          "a string or null")
REASON_TEXT = (_text(256), "a printable string of 1 to 256 characters")
PRICES = (lambda v: isinstance(v, dict) and all(
    SLOT_KEY_RE.fullmatch(k) and type(p) is int and p >= 0 for k, p in v.items()),
    'an object {"<slot>": integer >= 0}')
