"""The board side of VLP/1 (CONTRACT.md section 1), sans-I/O.

``Board`` turns request lines into reply lines.  It owns no port and no clock:
time comes in as ``now`` (any monotonic float, seconds), so every rule is
testable in microseconds and the emulator just wires it to a pty.

Test controls are plain methods (stock, fault injection, door, keys, power).
``ledger`` records every motor start and survives power cycles: it is the
physical truth ("how many products actually fell") that tests check the
host's books against.

Choices where the contract is silent (all picked to keep money safe):

* A power cycle during a vend: the motor stops and the product does NOT fall,
  unless the caller says ``power_cycle(now, product_fell=True)`` to model the
  worst case (customer has it, board forgot it).  The ledger entry becomes
  ``interrupted`` or ``ok`` accordingly.
* A known vend id wins even if the request names a different slot: a known id
  never dispenses again, whatever else the line says.
* ``empty`` is decided before the motor starts and answered at once; it still
  queues a ``kind=vend`` event, so every accepted VEND yields exactly one event.
* Refusal order after the known-id check: fault, door_open, bad_slot, busy.
  A permanent refusal (bad slot) is reported before the transient ``busy``.
* TEST honours injected outcomes and decrements stock on ``ok``; it never
  emits a vend event (it has no vend id).
* A fault is cleared by a power cycle or ``clear_fault()``.
"""

from __future__ import annotations

import dataclasses
import enum
import random
import re
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from . import vlp

PROTO = "1"
OUTCOMES = frozenset({"ok", "jam", "no_drop", "empty", "timeout"})
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_UINT_RE = re.compile(r"0|[1-9][0-9]{0,9}")


class BoardState(enum.Enum):
    IDLE = "idle"
    VENDING = "vending"
    SERVICE = "service"
    FAULT = "fault"


class BoardControlError(ValueError):
    """A test control was called with an impossible argument."""


class _Refuse(Exception):
    """Internal: answer ERR code=<code>."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class LedgerEntry:
    kind: str               # "vend" or "test"
    vend_id: str | None     # None for a TEST
    slot: int
    result: str | None      # None while the motor runs; "interrupted" if power was lost
    boot: int
    started: float
    finished: float | None = None


@dataclass
class _Run:
    """The one motor run in progress."""

    kind: str
    vend_id: str | None
    slot: int
    outcome: str
    ends_at: float
    ledger_index: int


class Board:
    def __init__(
        self,
        slots: int = 10,
        *,
        stock: int = 5,
        vend_duration: float = 0.2,
        vend_limit: float | None = None,
        fw: str = "emu-1.0",
        board_id: str = "EMU0001",
        temp: int = 40,
        event_capacity: int = 16,
        vend_memory: int = 32,
        seed: int | None = None,
    ) -> None:
        if not 1 <= slots <= 64:
            raise BoardControlError(f"slots must be 1..64: {slots!r}")
        if event_capacity < 16 or vend_memory < 32:
            raise BoardControlError("the contract needs event_capacity >= 16 and vend_memory >= 32")
        self.slots = slots
        self.fw = fw
        self.board_id = board_id
        self.temp = temp  # deci-degC
        # A vend takes vend_duration; a "timeout" is reported after vend_limit
        # (default: 3 vend durations, at least 1 s, so it always outlasts a normal vend).
        self.vend_duration = vend_duration
        self._vend_limit = vend_limit
        self.event_capacity = event_capacity
        self.vend_memory = vend_memory
        self.stock = {s: stock for s in range(1, slots + 1)}
        self.disabled: set[int] = set()
        self.door_open = False
        self.fault: str | None = None
        self.ledger: list[LedgerEntry] = []
        self._rng = random.Random(seed)
        self._injected: dict[int, deque[str]] = {}
        self._persistent: dict[int, str] = {}
        self.boot = 0
        self._power_up()

    # ---- power -------------------------------------------------------------

    def _power_up(self) -> None:
        old = self.boot
        while self.boot in (0, old):
            self.boot = self._rng.randint(1, 999_999_999)
        self._events: deque[tuple[int, tuple[tuple[str, object], ...]]] = deque()
        self._next_event = 1
        self._vends: OrderedDict[str, str | None] = OrderedDict()  # id -> result (None = running)
        self._run: _Run | None = None
        self._last_request: bytes | None = None
        self._last_reply: bytes | None = None
        self.fault = None

    def power_cycle(self, now: float, *, product_fell: bool = False) -> None:
        """Cut power and bring the board back with a new boot; RAM is lost."""
        run = self._run
        if run is not None:
            if product_fell:
                self.stock[run.slot] = max(0, self.stock[run.slot] - 1)
            self._close_ledger(run, "ok" if product_fell else "interrupted", now)
        self._power_up()

    # ---- test controls -------------------------------------------------------

    def _check_slot(self, slot: int) -> int:
        if isinstance(slot, bool) or not isinstance(slot, int) or not 1 <= slot <= self.slots:
            raise BoardControlError(f"slot must be an int in 1..{self.slots}: {slot!r}")
        return slot

    def set_stock(self, slot: int, count: int) -> None:
        if count < 0:
            raise BoardControlError(f"stock must be >= 0: {count!r}")
        self.stock[self._check_slot(slot)] = count

    def inject(self, slot: int, outcome: str, times: int = 1, *, persistent: bool = False) -> None:
        """Force the outcome of the next ``times`` motor runs on ``slot`` (or all, if persistent)."""
        self._check_slot(slot)
        if outcome not in OUTCOMES:
            raise BoardControlError(f"outcome must be one of {sorted(OUTCOMES)}: {outcome!r}")
        if persistent:
            self._persistent[slot] = outcome
        else:
            self._injected.setdefault(slot, deque()).extend([outcome] * times)

    def clear_injections(self, slot: int | None = None) -> None:
        for table in (self._injected, self._persistent):
            if slot is None:
                table.clear()
            else:
                table.pop(self._check_slot(slot), None)

    def disable_slot(self, slot: int) -> None:
        self.disabled.add(self._check_slot(slot))

    def enable_slot(self, slot: int) -> None:
        self.disabled.discard(self._check_slot(slot))

    def open_door(self) -> None:
        if not self.door_open:
            self.door_open = True
            self._queue_event(kind="door", state="open")

    def close_door(self) -> None:
        if self.door_open:
            self.door_open = False
            self._queue_event(kind="door", state="closed")

    def press_key(self, slot: int) -> None:
        self._queue_event(kind="key", slot=self._check_slot(slot))

    def press_cancel(self) -> None:
        self._queue_event(kind="cancel")

    def raise_fault(self, code: str) -> None:
        vlp.encode(1, "OK", [("code", code)])  # raises EncodeError on an unsendable code
        self.fault = code
        self._queue_event(kind="fault", code=code)

    def clear_fault(self) -> None:
        self.fault = None

    # ---- observers -----------------------------------------------------------

    @property
    def state(self) -> BoardState:
        if self.fault is not None:
            return BoardState.FAULT
        if self.door_open:
            return BoardState.SERVICE
        if self._run is not None:
            return BoardState.VENDING
        return BoardState.IDLE

    @property
    def vend_limit(self) -> float:
        if self._vend_limit is not None:
            return self._vend_limit
        return max(1.0, 3 * self.vend_duration)

    @vend_limit.setter
    def vend_limit(self, value: float | None) -> None:
        self._vend_limit = value

    @property
    def running(self) -> bool:
        return self._run is not None

    def next_deadline(self) -> float | None:
        """When ``tick`` next has work to do (for the emulator's sleep)."""
        return self._run.ends_at if self._run is not None else None

    def dispense_count(self, vend_id: str | None = None) -> int:
        """Products that physically fell, optionally for one vend id."""
        return sum(
            1 for e in self.ledger
            if e.result == "ok" and (vend_id is None or e.vend_id == vend_id)
        )

    def pending_events(self) -> int:
        return len(self._events)

    # ---- time ----------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Finish the running motor if its time is up."""
        run = self._run
        if run is None or now < run.ends_at:
            return
        self._run = None
        if run.outcome == "ok":
            self.stock[run.slot] -= 1
        self._close_ledger(run, run.outcome, now)
        if run.kind == "vend":
            self._remember_vend(run.vend_id, run.outcome)
            self._queue_event(kind="vend", id=run.vend_id, result=run.outcome)

    # ---- the wire --------------------------------------------------------------

    def handle_line(self, line: bytes, now: float) -> bytes | None:
        """One request line in, one reply line out (None: dropped, say nothing)."""
        self.tick(now)
        try:
            frame = vlp.decode(line)
        except vlp.DroppedLine:
            return None
        except vlp.BadRequest as err:
            key, seq, verb = _identity(err.line), err.seq, None
        else:
            key, seq, verb = _identity(frame.raw), frame.seq, frame.verb
        if key == self._last_request and self._last_reply is not None:
            return self._last_reply  # a retransmit: same bytes, no second action
        handler = self._HANDLERS.get(verb) if verb is not None else None
        try:
            if handler is None:
                raise _Refuse("bad_request")
            args = handler(self, frame, now)
        except _Refuse as refusal:
            reply = vlp.encode(seq, "ERR", [("code", refusal.code)])
        else:
            reply = vlp.encode(seq, "OK", args)
        if verb == "RESET":
            self._power_up()  # reboots after replying; the new RAM remembers nothing
        else:
            self._last_request, self._last_reply = key, reply
        return reply

    # ---- request handlers (frame -> reply args, or raise _Refuse) -------------

    def _hello(self, frame: vlp.Frame, now: float) -> list:
        return [("proto", PROTO), ("fw", self.fw), ("board", self.board_id),
                ("boot", self.boot), ("slots", self.slots)]

    def _poll(self, frame: vlp.Frame, now: float) -> list:
        boot, ack = _uint(frame, "boot"), _uint(frame, "ack")
        if boot != self.boot:
            ack = 0  # the host has not seen this boot yet: its ack is about an older RAM
        while self._events and self._events[0][0] <= ack:
            self._events.popleft()
        if not self._events:
            return [("boot", self.boot), ("ev", "none")]
        ev_id, ev_args = self._events[0]
        return [("boot", self.boot), ("ev", ev_id), *ev_args]

    def _status(self, frame: vlp.Frame, now: float) -> list:
        return [("boot", self.boot), ("state", self.state.value),
                ("door", "open" if self.door_open else "closed"), ("temp", self.temp)]

    def _vend(self, frame: vlp.Frame, now: float) -> list:
        vend_id, slot = _ident(frame, "id"), _uint(frame, "slot")
        if vend_id in self._vends:
            return _vend_state(self._vends[vend_id])  # wins over every refusal
        for refused, code in (
            (self.fault is not None, "fault"),
            (self.door_open, "door_open"),
            (not 1 <= slot <= self.slots or slot in self.disabled, "bad_slot"),
            (self._run is not None, "busy"),
        ):
            if refused:
                raise _Refuse(code)
        outcome = self._next_outcome(slot)
        if outcome == "empty":
            self._remember_vend(vend_id, "empty")
            self._queue_event(kind="vend", id=vend_id, result="empty")
            return _vend_state("empty")
        self._remember_vend(vend_id, None)
        self._start_motor("vend", vend_id, slot, outcome, now)
        return _vend_state(None)

    def _vstat(self, frame: vlp.Frame, now: float) -> list:
        vend_id = _ident(frame, "id")
        if vend_id not in self._vends:
            return [("state", "unknown")]
        return _vend_state(self._vends[vend_id])

    def _slots(self, frame: vlp.Frame, now: float) -> list:
        empty = sum(1 << (s - 1) for s, n in self.stock.items()
                    if n == 0 or self._persistent.get(s) == "empty")
        disabled = sum(1 << (s - 1) for s in self.disabled)
        return [("n", self.slots), ("empty", f"{empty:X}"), ("disabled", f"{disabled:X}")]

    def _test(self, frame: vlp.Frame, now: float) -> list:
        slot = _uint(frame, "slot")
        if not self.door_open:
            raise _Refuse("not_service")
        if not 1 <= slot <= self.slots:
            raise _Refuse("bad_slot")
        if self._run is not None:
            raise _Refuse("busy")
        outcome = self._next_outcome(slot)
        # A technician's test turns the motor even on an empty slot: nothing falls.
        self._start_motor("test", None, slot, "no_drop" if outcome == "empty" else outcome, now)
        return [("state", "running")]

    def _reset(self, frame: vlp.Frame, now: float) -> list:
        if self._run is not None:
            self._close_ledger(self._run, "interrupted", now)
        return []

    _HANDLERS: dict[str, Callable[[Board, vlp.Frame, float], list]] = {
        "HELLO": _hello, "POLL": _poll, "STATUS": _status, "VEND": _vend,
        "VSTAT": _vstat, "SLOTS": _slots, "TEST": _test, "RESET": _reset,
    }

    # ---- internals -------------------------------------------------------------

    def _next_outcome(self, slot: int) -> str:
        queued = self._injected.get(slot)
        if queued:
            return queued.popleft()
        if slot in self._persistent:
            return self._persistent[slot]
        return "ok" if self.stock[slot] > 0 else "empty"

    def _start_motor(self, kind: str, vend_id: str | None, slot: int, outcome: str,
                     now: float) -> None:
        if outcome == "ok" and self.stock[slot] == 0:
            outcome = "no_drop"  # an injected "ok" cannot conjure a product
        duration = self.vend_limit if outcome == "timeout" else self.vend_duration
        self.ledger.append(LedgerEntry(kind, vend_id, slot, None, self.boot, now))
        self._run = _Run(kind, vend_id, slot, outcome, now + duration, len(self.ledger) - 1)

    def _close_ledger(self, run: _Run, result: str, now: float) -> None:
        entry = self.ledger[run.ledger_index]
        self.ledger[run.ledger_index] = dataclasses.replace(entry, result=result, finished=now)

    def _remember_vend(self, vend_id: str, result: str | None) -> None:
        self._vends[vend_id] = result
        self._vends.move_to_end(vend_id)
        while len(self._vends) > self.vend_memory:
            self._vends.popitem(last=False)

    def _queue_event(self, **args: object) -> None:
        self._events.append((self._next_event, tuple(args.items())))
        self._next_event += 1
        while len(self._events) > self.event_capacity:
            self._events.popleft()  # full: the oldest goes, per the contract


def _identity(raw: bytes) -> bytes:
    """What makes two request lines "identical": the bytes before any line ending."""
    return raw.rstrip(b"\r\n")


def _vend_state(result: str | None) -> list:
    if result is None:
        return [("state", "running")]
    return [("state", "done"), ("result", result)]


def _uint(frame: vlp.Frame, key: str) -> int:
    value = frame.get(key)
    if value is None or not _UINT_RE.fullmatch(value):
        raise _Refuse("bad_request")
    return int(value)


def _ident(frame: vlp.Frame, key: str) -> str:
    value = frame.get(key)
    if value is None or not _ID_RE.fullmatch(value):
        raise _Refuse("bad_request")
    return value
