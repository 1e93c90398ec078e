"""The host end of VLP/1: a blocking driver over a real port (the I/O shell).

``HostLink`` owns the port, the line reader and a ``Requester`` (the retransmit rules, in
requester.py).  It is used by one thread at a time; nothing in it is shared.  The daemon
does not use it directly but through ``BoardPump`` (pump.py, also importable from here),
which turns it into a stream of typed events.

Link state is an enum with a small transition table:

    CLOSED --open ok--> UP --port error / no reply after retransmits--> DOWN
    DOWN --backoff elapsed, reopen + HELLO ok--> UP          (close() from anywhere -> CLOSED)

Every (re)open starts from a random seq and says HELLO before anything else, so a board
reboot is seen at once.  While DOWN, calls fail fast with ``LinkDown`` until the backoff
(0.1 s doubling to 2 s) allows the next attempt; the port is reopened on every attempt
because a dead USB-CDC or pty fd never recovers by itself (pyserial keeps reporting
"device reports readiness to read but returned no data").

What happened to the link is queued as notices, drained with ``take_notices()``:
``LinkUp(hello)``, ``LinkDown`` (the exception instance, carrying ``reason``) and
``BoardRebooted(old_boot, new_boot, hello)``.  Order: a reconnect queues LinkUp before any
BoardRebooted it found.  A reboot is noticed from ``boot`` in HELLO, POLL and STATUS
replies, and confirmed with a HELLO before it is reported.

Money-safety helpers (the daemon should use them): ``vend(..., boot=B)`` first checks with
STATUS that the board still runs boot B and otherwise raises ``BoardRebootedError`` without
sending the VEND, because a rebooted board has forgotten the vend id and would dispense
again.  ``vstat`` answering ``unknown`` is followed by a STATUS, so a reboot that explains
it is reported (and raised when ``boot`` was given) rather than read as "never arrived".
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import serial

from firmware_bridge import replies, vlp
from firmware_bridge.replies import (
    BoardError,
    Event,
    HelloInfo,
    LinkDown,
    LinkError,
    ProtocolError,
    VendState,
)
from firmware_bridge.requester import (
    NEVER_RESENT, GaveUp, Matched, Phase, Requester, Write, default_reply_timeout,
)
from firmware_bridge.trace import TraceFn, error_note

try:
    import termios

    _PORT_ERRORS: tuple[type[BaseException], ...] = (serial.SerialException, OSError, termios.error)
except ImportError:  # pragma: no cover - not POSIX
    _PORT_ERRORS = (serial.SerialException, OSError)

__all__ = [
    "BoardError", "BoardRebooted", "BoardRebootedError", "HostLink", "LinkDown", "LinkError",
    "LinkState", "LinkUp", "ProtocolError",
]

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0
RESET_CONFIRM = 5.0  # seconds a reset board gets to answer HELLO with a new boot


class LinkState(enum.Enum):
    CLOSED = "closed"
    UP = "up"
    DOWN = "down"


_TRANSITIONS: dict[tuple[LinkState, str], LinkState] = {
    (LinkState.CLOSED, "up"): LinkState.UP,
    (LinkState.DOWN, "up"): LinkState.UP,
    (LinkState.UP, "up"): LinkState.UP,  # a HELLO on an up link (reset, reboot check)
    (LinkState.CLOSED, "fail"): LinkState.DOWN,
    (LinkState.UP, "fail"): LinkState.DOWN,
    (LinkState.DOWN, "fail"): LinkState.DOWN,
    (LinkState.CLOSED, "close"): LinkState.CLOSED,
    (LinkState.UP, "close"): LinkState.CLOSED,
    (LinkState.DOWN, "close"): LinkState.CLOSED,
}


@dataclass(frozen=True)
class LinkUp:
    hello: HelloInfo


@dataclass(frozen=True)
class BoardRebooted:
    old_boot: int
    new_boot: int
    hello: HelloInfo


class BoardRebootedError(LinkError):
    """The board is not on the boot the caller expected: the request was NOT sent."""

    def __init__(self, expected: int, actual: int | None) -> None:
        super().__init__(f"board rebooted (boot {expected} -> {actual}); request not sent")
        self.expected = expected
        self.actual = actual


Notice = LinkUp | LinkDown | BoardRebooted


class HostLink:
    def __init__(
        self,
        port: str,
        baud: int = 115200,
        *,
        reply_timeout: float | None = None,
        trace: TraceFn | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        read_slice: float = 0.01,
        reset_confirm: float = RESET_CONFIRM,
    ) -> None:
        if not isinstance(port, str) or not port:
            raise ValueError(f"port must be a device path or pyserial URL, got {port!r}")
        self.port = port
        self.baud = baud
        self.reply_timeout = default_reply_timeout(baud) if reply_timeout is None else reply_timeout
        self._requester = Requester(self.reply_timeout)
        self._reader = vlp.LineReader()
        self._trace = trace
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._read_slice = read_slice
        self._reset_confirm = reset_confirm
        self._serial: serial.SerialBase | None = None
        self.state = LinkState.CLOSED
        self.down_reason: str | None = None
        self.boot: int | None = None  # last boot confirmed by HELLO
        self.hello_info: HelloInfo | None = None
        self._ack = 0  # highest event id returned by poll() for self.boot
        self._notices: list[Notice] = []
        self._last_frame: vlp.Frame | None = None
        self._backoff = BACKOFF_FIRST
        self._retry_at = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> HelloInfo:
        """Open the port now (backoff or not) and say HELLO.  Raises LinkDown or ProtocolError."""
        self._close_port()
        try:
            if "://" in self.port:
                self._serial = serial.serial_for_url(
                    self.port, baudrate=self.baud, timeout=self._read_slice,
                    write_timeout=max(1.0, 2 * self.reply_timeout))
            else:  # exclusive: a second program on the same board would steal replies
                self._serial = serial.Serial(
                    self.port, baudrate=self.baud, timeout=self._read_slice,
                    write_timeout=max(1.0, 2 * self.reply_timeout), exclusive=True)
        except (*_PORT_ERRORS, ValueError) as err:
            raise self._fail(f"cannot open port {self.port}: {_describe(err)}") from None
        self._requester.open(self._rng.randint(1, vlp.MAX_SEQ))
        self._reader.reset()
        try:
            return self._hello()
        except ProtocolError as err:
            self._fail(f"board handshake failed: {err}")
            raise

    def close(self) -> None:
        self._close_port()
        self._move("close")

    def __enter__(self) -> HostLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def take_notices(self) -> list[Notice]:
        out, self._notices = self._notices, []
        return out

    def retry_in(self) -> float:
        """Seconds until a DOWN link may try again (0 when it may now, or is not down)."""
        if self.state is not LinkState.DOWN:
            return 0.0
        return max(0.0, self._retry_at - self._clock())

    def ensure_up(self) -> None:
        if self.state is LinkState.UP:
            return
        if self.state is LinkState.DOWN and self.retry_in() > 0:
            raise LinkDown(f"link down ({self.down_reason}); next attempt in {self.retry_in():.1f} s")
        self.open()

    # -- requests ----------------------------------------------------------------------------

    def request(self, verb: str, **args: object) -> vlp.Frame:
        """One request, its OK reply frame.  Raises LinkDown, BoardError, ProtocolError, and
        vlp.EncodeError (a ValueError) for arguments the grammar forbids.  A bare RESET
        here is sent once and not confirmed; ``reset()`` is the confirmed one."""
        if verb == "HELLO":
            self.hello()
            assert self._last_frame is not None
            return self._last_frame
        self.ensure_up()
        frame = self._exchange(verb, args)
        if frame is None:
            raise LinkDown(f"no reply to {verb} (never resent)")
        if verb in ("POLL", "STATUS") and frame.verb == "OK":
            self._observe_boot(frame)
        return replies.check_ok(frame)

    def hello(self) -> HelloInfo:
        if self.state is LinkState.UP:
            return self._hello()
        self.ensure_up()  # opening says HELLO
        assert self.hello_info is not None
        return self.hello_info

    def status(self) -> replies.Status:
        return replies.parse_status(self.request("STATUS"))

    def slots(self) -> replies.Slots:
        return replies.parse_slots(self.request("SLOTS"))

    def test(self, slot: int) -> VendState:
        return replies.parse_test(self.request("TEST", slot=slot))

    def vend(self, vend_id: str, slot: int, *, boot: int | None = None) -> VendState:
        """VEND, resent only after STATUS shows the board still on the boot it was sent to.

        A board that remembers the id answers a resend with the dispense's state, so a resend
        on the same boot is safe. After a reboot it is not: the old board may have started
        the motor before its reply was lost, and the new one would start it again. Then this
        raises LinkDown ("outcome unknown") and the daemon settles it with VSTAT."""
        if boot is not None:
            self.status()  # notices a reboot since the caller last looked
            if self.boot != boot:
                raise BoardRebootedError(boot, self.boot)
        self.ensure_up()
        sent_on = self.boot
        attempts = 1 + self._requester.max_retransmits
        for _ in range(attempts):
            frame = self._exchange("VEND", {"id": vend_id, "slot": slot})
            if frame is not None:
                return replies.parse_vend(replies.check_ok(frame))
            self.status()  # LinkDown if the board is gone: the daemon settles it with VSTAT
            if self.boot != sent_on:
                raise LinkDown(f"no reply to VEND {vend_id} and the board rebooted "
                               f"(boot {sent_on} -> {self.boot}): its outcome is unknown")
        raise self._fail(f"no reply to VEND {vend_id} after {attempts} attempts")

    def vstat(self, vend_id: str, *, boot: int | None = None) -> VendState:
        state = replies.parse_vstat(self.request("VSTAT", id=vend_id))
        if state.state == "unknown":
            # After a reboot "unknown" means uncertain, not "never arrived": look at the boot.
            self.status()
            if boot is not None and self.boot != boot:
                raise BoardRebootedError(boot, self.boot)
        return state

    def poll(self) -> Event | None:
        """The next board event, or None.  Returning an event counts as processing it: the
        next POLL acknowledges it.  After a reboot the old boot's ack is void."""
        self.ensure_up()
        sent_boot = self.boot or 0  # 0 before the first HELLO, as the contract says
        frame = self.request("POLL", boot=sent_boot, ack=self._ack)
        try:
            boot, event = replies.parse_poll(frame)
        except ProtocolError as err:
            if err.event_id is not None and self._boot_unchanged(frame, sent_boot):
                self._ack = max(self._ack, err.event_id)  # skip it, or it blocks the queue
            raise
        if boot != sent_boot or event is None or event.id <= self._ack:
            return None  # a reboot (HELLO already done; re-poll with ack=0) or nothing new
        self._ack = event.id
        return event

    def reset(self) -> HelloInfo:
        """RESET (sent once, never resent), then HELLO until the boot changes."""
        self.ensure_up()
        old = self.boot
        frame = self._exchange("RESET", {})
        if frame is not None:
            replies.check_ok(frame)
        deadline = self._clock() + self._reset_confirm
        while True:
            try:
                info = self._hello() if self.state is LinkState.UP else self.open()
            except LinkDown:
                if self._clock() > deadline:
                    raise
                time.sleep(self.reply_timeout)
                continue
            if info.boot != old:
                return info
            if self._clock() > deadline:
                raise LinkDown(f"board did not confirm the reset: boot still {old}")
            time.sleep(self.reply_timeout)

    # -- internals ---------------------------------------------------------------------------

    def _boot_unchanged(self, frame: vlp.Frame, sent_boot: int) -> bool:
        return frame.get("boot") == str(sent_boot)

    def _hello(self) -> HelloInfo:
        frame = self._exchange("HELLO", {})
        assert frame is not None
        info = replies.parse_hello(frame)
        came_up = self.state is not LinkState.UP
        self._move("up")
        self.down_reason = None
        self._backoff = BACKOFF_FIRST
        if came_up:
            self._notices.append(LinkUp(info))
        if self.boot is not None and info.boot != self.boot:
            self._notices.append(BoardRebooted(self.boot, info.boot, info))
            self._ack = 0
        self.boot, self.hello_info = info.boot, info
        return info

    def _observe_boot(self, frame: vlp.Frame) -> None:
        text = frame.get("boot")
        if text is not None and self.boot is not None and text != str(self.boot):
            self._hello()  # confirm and report with the full HELLO

    def _exchange(self, verb: str, args: dict[str, object]) -> vlp.Frame | None:
        """Send one request and wait for its reply; None only for an unanswered RESET."""
        if self._serial is None:
            raise LinkDown("port is not open")
        write = self._requester.send(verb, args, now=self._clock())
        self._reader.reset()  # a half line from before would spoil the reply
        self._write(write)
        while True:
            now = self._clock()
            deadline = self._requester.deadline
            if deadline is not None and now >= deadline:
                action = self._requester.poll(now)
                if isinstance(action, Write):
                    self._write(action)
                elif isinstance(action, GaveUp):
                    if action.verb in NEVER_RESENT:
                        self._emit(time.time(), "tx", action.line, None, action.reason)
                        return None
                    raise self._fail(action.reason)
                continue
            matched = None
            for item in self._reader.feed(self._read()):
                t = time.time()
                if not isinstance(item, vlp.Frame):
                    self._emit(t, "rx", getattr(item, "line", b""), item, error_note(item))
                    continue
                outcome = self._requester.receive(item, now)
                if isinstance(outcome, Matched):
                    matched = item
                    self._emit(t, "rx", item.raw, item, "")
                else:
                    self._emit(t, "rx", item.raw, item, outcome.note)
            if matched is not None:
                self._last_frame = matched
                return matched

    def _write(self, write: Write) -> None:
        assert self._serial is not None
        self._emit(time.time(), "tx", write.line, None, write.note)
        try:
            self._serial.write(write.line)
        except _PORT_ERRORS as err:
            raise self._fail(f"write to {self.port} failed: {_describe(err)}") from None

    def _read(self) -> bytes:
        assert self._serial is not None
        try:
            return self._serial.read(max(1, self._serial.in_waiting))
        except _PORT_ERRORS as err:
            raise self._fail(f"read from {self.port} failed: {_describe(err)}") from None

    def _emit(self, t: float, direction: str, raw: bytes, decoded: object, note: str) -> None:
        if self._trace is None:
            return
        if decoded is None and raw:
            try:
                decoded = vlp.decode(raw)
            except vlp.VlpError as err:
                decoded = err
        self._trace(t, direction, raw, decoded, note)  # type: ignore[arg-type]

    def _fail(self, reason: str) -> LinkDown:
        """Go DOWN (closing the port), schedule the next attempt, return the error to raise."""
        self._close_port()
        err = LinkDown(reason)
        if self.state is not LinkState.DOWN:
            self._notices.append(err)
        self._move("fail")
        self.down_reason = reason
        self._retry_at = self._clock() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        return err

    def _close_port(self) -> None:
        if self._requester.phase is not Phase.CLOSED:
            self._requester.close()
        port, self._serial = self._serial, None
        if port is not None:
            try:
                port.close()
            except _PORT_ERRORS:
                pass  # already dead; closing is all we wanted

    def _move(self, op: str) -> None:
        self.state = _TRANSITIONS[(self.state, op)]



def _describe(err: BaseException) -> str:
    """The OS's words for a port error; pyserial wraps them in its own text twice over."""
    root = err.__context__ if isinstance(err.__context__, OSError) else err
    if isinstance(root, OSError) and root.strerror:
        return root.strerror
    return str(err)


_PUMP_NAMES = frozenset({
    "BoardPump", "BoardEvent", "CommandDone", "PumpStopped", "Command",
    "Hello", "Status", "Slots", "StatusCmd", "SlotsCmd", "Vend", "VStat", "Test", "Reset",
})


def __getattr__(name: str) -> object:
    # BoardPump and its commands live in pump.py (module size); importable from here too.
    # Lazy, so importing either module first works.  Note link.Status / link.Slots are the
    # pump *commands*; the reply types are replies.Status / replies.Slots.
    if name in _PUMP_NAMES:
        from firmware_bridge import pump

        return getattr(pump, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
