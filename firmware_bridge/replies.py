"""Typed VLP/1 replies and the errors of the host side of the link (CONTRACT.md section 1).

A reply ``Frame`` from the codec is only syntax; these parsers turn the reply to one
particular request into a value the daemon can rely on.  Everything a board could send
wrong (a missing key, a lower-case bitmap, a slot bit beyond ``n``, an unknown vend state)
becomes a ``ProtocolError`` naming the field; nothing else ever escapes.  Enumerated
values are checked strictly because the daemon decides about money on them; unknown
*extra* keys are ignored, as the contract asks for forward compatibility.

One deliberate leniency: an unknown dispense ``result`` string is kept as it is.  Only
``ok`` means the customer got the product, so any other word is safely "not delivered".
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Callable, TypeVar

from firmware_bridge.vlp import Frame

PROTO = 1

BOARD_STATES = frozenset({"idle", "vending", "service", "fault"})
DOOR_STATES = frozenset({"open", "closed"})
VEND_STATES = frozenset({"running", "done", "unknown"})
RESULTS = frozenset({"ok", "jam", "no_drop", "empty", "timeout"})
ERROR_CODES = frozenset({"busy", "bad_slot", "door_open", "not_service", "bad_request", "fault"})
EVENT_KINDS = frozenset({"key", "cancel", "door", "fault", "vend"})

_UINT_RE = re.compile(r"[0-9]{1,10}")
_INT_RE = re.compile(r"-?[0-9]{1,10}")
_HEX_RE = re.compile(r"[0-9A-F]{1,16}")  # upper case only, as the contract says


# -- errors -------------------------------------------------------------------------------


class LinkError(Exception):
    """Base of everything the host link raises."""


class LinkDown(LinkError):
    """No usable reply: the port failed, or the board stayed silent through every
    retransmit.  For a VEND this means "may or may not have reached the board"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProtocolError(LinkError):
    """The board answered, but the reply breaks the contract."""

    def __init__(self, reason: str, frame: Frame | None = None) -> None:
        where = f" in reply {frame.raw.rstrip()!r}" if frame is not None else ""
        super().__init__(f"{reason}{where}")
        self.reason = reason
        self.frame = frame
        # Set for a malformed POLL event whose id was readable, so it can be acked past.
        self.event_id: int | None = None


class BoardError(LinkError):
    """An ``ERR code=<c>`` reply: the board understood and refused."""

    def __init__(self, code: str, frame: Frame | None = None) -> None:
        super().__init__(f"board refused: code={code}")
        self.code = code
        self.frame = frame


# -- typed replies ------------------------------------------------------------------------


@dataclass(frozen=True)
class HelloInfo:
    proto: int
    fw: str
    board: str
    boot: int
    slots: int


@dataclass(frozen=True)
class Status:
    boot: int
    state: str  # idle | vending | service | fault
    door: str  # open | closed
    temp: int  # deci-degrees Celsius

    @property
    def door_open(self) -> bool:
        return self.door == "open"


@dataclass(frozen=True)
class VendState:
    state: str  # running | done | unknown
    result: str | None = None  # set exactly when state == "done"

    @property
    def dispensed(self) -> bool:
        return self.state == "done" and self.result == "ok"


@dataclass(frozen=True)
class Slots:
    n: int
    empty: frozenset[int]
    disabled: frozenset[int]


@dataclass(frozen=True)
class Event:
    """One POLL event.  Only the fields of its kind are set; the rest stay None.

    ``state`` is the door state for ``kind=door``; ``vend_id`` is the ``id`` key of a
    ``kind=vend`` event (renamed so it cannot be confused with the event id).
    """

    id: int
    kind: str
    boot: int
    slot: int | None = None
    state: str | None = None
    code: str | None = None
    vend_id: str | None = None
    result: str | None = None


# -- parsing helpers ----------------------------------------------------------------------

T = TypeVar("T")


def _field(frame: Frame, key: str) -> str:
    value = frame.get(key)
    if value is None:
        raise ProtocolError(f"reply lacks {key}=", frame)
    return value


def _uint(frame: Frame, key: str, *, minimum: int = 0) -> int:
    text = _field(frame, key)
    if not _UINT_RE.fullmatch(text) or int(text) < minimum:
        raise ProtocolError(f"{key}= must be an integer >= {minimum}, got {text!r}", frame)
    return int(text)


def _choice(frame: Frame, key: str, allowed: frozenset[str]) -> str:
    text = _field(frame, key)
    if text not in allowed:
        raise ProtocolError(f"{key}= must be one of {'|'.join(sorted(allowed))}, got {text!r}", frame)
    return text


def check_ok(frame: Frame) -> Frame:
    """Raise BoardError for ``ERR``; return the frame for ``OK``."""
    if frame.verb == "ERR":
        code = frame.get("code")
        if code is None:
            raise ProtocolError("ERR reply lacks code=", frame)
        # An unknown code is still a refusal; keep the board's word for the technician.
        raise BoardError(code, frame)
    if frame.verb != "OK":
        raise ProtocolError(f"expected OK or ERR, got {frame.verb!r}", frame)
    return frame


def bitmap(frame: Frame, key: str, n: int) -> frozenset[int]:
    """Slot set of an upper-case hex bitmap: bit i-1 is slot i; "0" means none."""
    text = _field(frame, key)
    if not _HEX_RE.fullmatch(text):
        raise ProtocolError(f"{key}= must be upper-case hex, got {text!r}", frame)
    value = int(text, 16)
    if value >> n:
        raise ProtocolError(f"{key}={text} marks a slot above n={n}", frame)
    return frozenset(i + 1 for i in range(n) if value >> i & 1)


def to_bitmap(slots: frozenset[int] | set[int]) -> str:
    """Inverse of ``bitmap`` (handy for boards and tests)."""
    value = 0
    for slot in slots:
        value |= 1 << (slot - 1)
    return "%X" % value


# -- one parser per request ---------------------------------------------------------------


def parse_hello(frame: Frame) -> HelloInfo:
    check_ok(frame)
    proto = _uint(frame, "proto")
    if proto != PROTO:
        # A different proto may change what a reply means; never guess about money.
        raise ProtocolError(f"board speaks proto={proto}, this host speaks proto={PROTO}", frame)
    return HelloInfo(
        proto=proto,
        fw=_field(frame, "fw"),
        board=_field(frame, "board"),
        boot=_uint(frame, "boot"),
        slots=_uint(frame, "slots", minimum=1),
    )


def parse_status(frame: Frame) -> Status:
    check_ok(frame)
    temp = _field(frame, "temp")
    if not _INT_RE.fullmatch(temp):
        raise ProtocolError(f"temp= must be an integer in deci-degC, got {temp!r}", frame)
    return Status(
        boot=_uint(frame, "boot"),
        state=_choice(frame, "state", BOARD_STATES),
        door=_choice(frame, "door", DOOR_STATES),
        temp=int(temp),
    )


def parse_slots(frame: Frame) -> Slots:
    check_ok(frame)
    n = _uint(frame, "n", minimum=1)
    if n > 64:
        raise ProtocolError(f"n={n} slots is more than a 64-bit bitmap holds", frame)
    return Slots(n=n, empty=bitmap(frame, "empty", n), disabled=bitmap(frame, "disabled", n))


def _result(frame: Frame) -> str:
    text = _field(frame, "result")
    if not re.fullmatch(r"[a-z_]{1,32}", text):
        raise ProtocolError(f"result= is not a result word: {text!r}", frame)
    return text


def parse_vstat(frame: Frame, *, allow_unknown: bool = True) -> VendState:
    check_ok(frame)
    allowed = VEND_STATES if allow_unknown else VEND_STATES - {"unknown"}
    state = _choice(frame, "state", allowed)
    if state == "done":
        return VendState("done", _result(frame))
    if "result" in frame:
        raise ProtocolError(f"state={state} must not carry result=", frame)
    return VendState(state, None)


def parse_vend(frame: Frame) -> VendState:
    """VEND answers running or done; "unknown" would be meaningless and is refused."""
    return parse_vstat(frame, allow_unknown=False)


def parse_test(frame: Frame) -> VendState:
    check_ok(frame)
    return VendState(_choice(frame, "state", frozenset({"running"})), None)


def parse_reset(frame: Frame) -> None:
    check_ok(frame)


def parse_poll(frame: Frame) -> tuple[int, Event | None]:
    """(boot, event or None).  A malformed event raises ProtocolError with ``event_id``
    set when the id itself was readable, so the caller can acknowledge past it."""
    check_ok(frame)
    boot = _uint(frame, "boot")
    ev = _field(frame, "ev")
    if ev == "none":
        return boot, None
    if not _UINT_RE.fullmatch(ev) or int(ev) < 1:
        raise ProtocolError(f"ev= must be none or an event id >= 1, got {ev!r}", frame)
    event_id = int(ev)
    try:
        return boot, _event(frame, event_id, boot)
    except ProtocolError as err:
        err.event_id = event_id
        raise


def _event(frame: Frame, event_id: int, boot: int) -> Event:
    kind = _choice(frame, "kind", EVENT_KINDS)
    make = _EVENT_FIELDS[kind]
    return make(frame, Event(id=event_id, kind=kind, boot=boot))


def _with(**fields: Callable[[Frame], object]) -> Callable[[Frame, Event], Event]:
    def build(frame: Frame, base: Event) -> Event:
        return dataclasses.replace(base, **{name: get(frame) for name, get in fields.items()})

    return build


_EVENT_FIELDS: dict[str, Callable[[Frame, Event], Event]] = {
    "key": _with(slot=lambda f: _uint(f, "slot", minimum=1)),
    "cancel": _with(),
    "door": _with(state=lambda f: _choice(f, "state", DOOR_STATES)),
    "fault": _with(code=lambda f: _field(f, "code")),
    "vend": _with(vend_id=lambda f: _field(f, "id"), result=_result),
}

PARSERS: dict[str, Callable[[Frame], object]] = {
    "HELLO": parse_hello,
    "STATUS": parse_status,
    "SLOTS": parse_slots,
    "VEND": parse_vend,
    "VSTAT": parse_vstat,
    "TEST": parse_test,
    "RESET": parse_reset,
    "POLL": parse_poll,
}


def parse(verb: str, frame: Frame) -> object:
    """Typed value of the reply to ``verb``; the checked frame itself for unknown verbs."""
    parser = PARSERS.get(verb)
    return parser(frame) if parser is not None else check_ok(frame)
