"""The VLP/1 retransmit queue, sans-I/O (CONTRACT.md section 1, "Retransmission").

Like Klipper's small serial queue, this is the one place that decides *when* a line goes
on the wire.  It has no clock and no port: the caller passes ``now`` (monotonic seconds)
and writes what it is told to.  One request is in flight at a time, because the board
remembers only its last request line; a second one would make it forget the first.

Rules it keeps:

* every new request gets the next seq (wrapping 65535 -> 1); the caller gives a random
  start on each port open, so a reply from before the open cannot match by chance;
* on timeout the *identical* line is resent (the board answers a repeat from memory,
  without acting again) up to ``max_retransmits`` times, then the request gives up;
* RESET is never resent: the rebooted board has forgotten it, so a resend would reset
  it twice.  The caller confirms a reset with HELLO instead;
* VEND is never resent blindly either: if the board rebooted after acting on it (motor
  started, reply lost), the new board has forgotten the id and would dispense again.  The
  caller checks the boot with STATUS and only then sends the VEND again (HostLink.vend);
* a reply whose seq is not the awaited one, or that arrives when nothing is awaited, is
  stale and discarded.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from firmware_bridge import vlp

DEFAULT_RETRANSMITS = 5
NEVER_RESENT = frozenset({"RESET", "VEND"})


def default_reply_timeout(baud: int) -> float:
    """100 ms plus the wire time of 400 bytes at 10 bits a byte (8N1): the contract's floor."""
    if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
        raise ValueError(f"baud must be a positive integer, got {baud!r}")
    return 0.100 + 4000 / baud


class Phase(enum.Enum):
    CLOSED = "closed"  # no port: no seq to number a request with
    IDLE = "idle"
    AWAITING = "awaiting"


class Op(enum.Enum):
    OPEN = "open"
    SEND = "send"
    MATCH = "match"
    RETRANSMIT = "retransmit"
    GIVE_UP = "give up"
    CLOSE = "close"


# Legal moves; anything missing is a caller bug and raises RequesterStateError.
_TRANSITIONS: dict[tuple[Phase, Op], Phase] = {
    (Phase.CLOSED, Op.OPEN): Phase.IDLE,
    (Phase.IDLE, Op.OPEN): Phase.IDLE,
    (Phase.AWAITING, Op.OPEN): Phase.IDLE,  # reopening abandons the request in flight
    (Phase.IDLE, Op.SEND): Phase.AWAITING,
    (Phase.AWAITING, Op.MATCH): Phase.IDLE,
    (Phase.AWAITING, Op.RETRANSMIT): Phase.AWAITING,
    (Phase.AWAITING, Op.GIVE_UP): Phase.IDLE,
    (Phase.CLOSED, Op.CLOSE): Phase.CLOSED,
    (Phase.IDLE, Op.CLOSE): Phase.CLOSED,
    (Phase.AWAITING, Op.CLOSE): Phase.CLOSED,
}


class RequesterStateError(RuntimeError):
    """The caller asked for something the current phase does not allow."""


@dataclass(frozen=True)
class Write:
    """Put ``line`` on the wire.  ``attempt`` 0 is the first send, 1..n the retransmits."""

    line: bytes
    seq: int
    verb: str
    attempt: int
    limit: int  # retransmits allowed for this request

    @property
    def note(self) -> str:
        return "" if self.attempt == 0 else f"retransmit {self.attempt}/{self.limit}"


@dataclass(frozen=True)
class Matched:
    """The awaited reply."""

    frame: vlp.Frame
    verb: str  # of the request it answers
    attempts: int  # lines written for it, first send included


@dataclass(frozen=True)
class Stale:
    """A frame that answers nothing we wait for; discard it."""

    frame: vlp.Frame
    note: str


@dataclass(frozen=True)
class GaveUp:
    """No reply after every allowed send.  The request may or may not have been acted on."""

    line: bytes
    seq: int
    verb: str
    attempts: int

    @property
    def reason(self) -> str:
        if self.verb in NEVER_RESENT:
            return f"no reply to {self.verb} seq={self.seq} (never resent)"
        return f"no reply to {self.verb} seq={self.seq} after {self.attempts} sends"


class Requester:
    def __init__(self, reply_timeout: float, *, max_retransmits: int = DEFAULT_RETRANSMITS) -> None:
        if not reply_timeout > 0:
            raise ValueError(f"reply_timeout must be > 0 seconds, got {reply_timeout!r}")
        if isinstance(max_retransmits, bool) or not isinstance(max_retransmits, int) or max_retransmits < 0:
            raise ValueError(f"max_retransmits must be an integer >= 0, got {max_retransmits!r}")
        self.reply_timeout = float(reply_timeout)
        self.max_retransmits = max_retransmits
        self.phase = Phase.CLOSED
        self._next_seq = 0
        self._line = b""
        self._seq = 0
        self._verb = ""
        self._attempts = 0
        self._deadline: float | None = None

    def _move(self, op: Op) -> None:
        try:
            self.phase = _TRANSITIONS[(self.phase, op)]
        except KeyError:
            raise RequesterStateError(f"cannot {op.value} while {self.phase.value}") from None

    # -- inputs ----------------------------------------------------------------------------

    def open(self, first_seq: int) -> None:
        """A (re)opened port: forget any request in flight, number from ``first_seq``."""
        if isinstance(first_seq, bool) or not isinstance(first_seq, int) or not 1 <= first_seq <= vlp.MAX_SEQ:
            raise ValueError(f"first_seq must be an integer in 1..{vlp.MAX_SEQ}, got {first_seq!r}")
        self._move(Op.OPEN)
        self._next_seq = first_seq
        self._deadline = None

    def close(self) -> None:
        self._move(Op.CLOSE)
        self._deadline = None

    def send(
        self,
        verb: str,
        args: Mapping[str, object] | Iterable[tuple[str, object]] = (),
        *,
        now: float,
    ) -> Write:
        """Start a new request.  Raises vlp.EncodeError for a line the grammar forbids
        (before any state changes, so the seq is not used up)."""
        if self.phase is not Phase.IDLE:
            raise RequesterStateError(f"cannot send {verb!r} while {self.phase.value}")
        seq = self._next_seq
        line = vlp.encode(seq, verb, args)
        self._move(Op.SEND)
        self._next_seq = 1 if seq == vlp.MAX_SEQ else seq + 1
        self._line, self._seq, self._verb, self._attempts = line, seq, verb, 1
        self._deadline = now + self.reply_timeout
        return Write(line, seq, verb, 0, self._limit(verb))

    def receive(self, frame: vlp.Frame, now: float) -> Matched | Stale:
        """Offer one decoded frame read from the port."""
        if not frame.is_reply:
            # e.g. our own line echoed by a half-duplex RS-485 transceiver
            return Stale(frame, f"not a reply ({frame.verb})")
        if self.phase is not Phase.AWAITING:
            return Stale(frame, f"stale seq {frame.seq} (nothing awaited)")
        if frame.seq != self._seq:
            return Stale(frame, f"stale seq {frame.seq} (awaiting {self._seq})")
        self._move(Op.MATCH)
        self._deadline = None
        return Matched(frame, self._verb, self._attempts)

    def poll(self, now: float) -> Write | GaveUp | None:
        """Call when ``now`` reaches ``deadline``: a retransmit to write, or the end."""
        if self.phase is not Phase.AWAITING or self._deadline is None or now < self._deadline:
            return None
        if self._verb in NEVER_RESENT or self._attempts > self.max_retransmits:
            self._move(Op.GIVE_UP)
            self._deadline = None
            return GaveUp(self._line, self._seq, self._verb, self._attempts)
        self._move(Op.RETRANSMIT)
        attempt = self._attempts
        self._attempts += 1
        self._deadline = now + self.reply_timeout
        return Write(self._line, self._seq, self._verb, attempt, self._limit(self._verb))

    def _limit(self, verb: str) -> int:
        return 0 if verb in NEVER_RESENT else self.max_retransmits

    # -- views -----------------------------------------------------------------------------

    @property
    def deadline(self) -> float | None:
        """When ``poll`` next has something to say; None when nothing is in flight."""
        return self._deadline

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def awaiting(self) -> tuple[int, str] | None:
        """(seq, verb) of the request in flight."""
        return (self._seq, self._verb) if self.phase is Phase.AWAITING else None
