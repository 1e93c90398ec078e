"""BoardPump: the host link as a stream of typed events, for the daemon.

The daemon's core is sans-I/O; it wants facts in an inbox, not a blocking driver.  The
pump is one thread that owns a ``HostLink``, polls the board, runs commands submitted
from other threads (through a queue: the only shared object) and hands everything to
``emit`` -- typically the daemon inbox's ``put``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from firmware_bridge.link import HostLink, LinkState
from firmware_bridge.replies import Event, LinkDown, LinkError, ProtocolError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hello:
    tag: object = None


@dataclass(frozen=True)
class Status:
    tag: object = None


@dataclass(frozen=True)
class Slots:
    tag: object = None


StatusCmd, SlotsCmd = Status, Slots  # unambiguous names next to replies.Status / replies.Slots


@dataclass(frozen=True)
class Vend:
    """``boot``: the boot the caller believes the board runs.  Give it: if the board has
    rebooted since, the VEND is not sent (BoardRebootedError), since the board forgot the id."""

    vend_id: str
    slot: int
    tag: object = None
    boot: int | None = None


@dataclass(frozen=True)
class VStat:
    vend_id: str
    tag: object = None
    boot: int | None = None


@dataclass(frozen=True)
class Test:
    __test__ = False  # not a pytest class, whatever file imports it

    slot: int
    tag: object = None


@dataclass(frozen=True)
class Reset:
    tag: object = None


Command = Hello | Status | Slots | Vend | VStat | Test | Reset

_RUN: dict[type, Callable[[HostLink, object], object]] = {
    Hello: lambda link, c: link.hello(),
    Status: lambda link, c: link.status(),
    Slots: lambda link, c: link.slots(),
    Vend: lambda link, c: link.vend(c.vend_id, c.slot, boot=c.boot),  # type: ignore[attr-defined]
    VStat: lambda link, c: link.vstat(c.vend_id, boot=c.boot),  # type: ignore[attr-defined]
    Test: lambda link, c: link.test(c.slot),  # type: ignore[attr-defined]
    Reset: lambda link, c: link.reset(),
}


@dataclass(frozen=True)
class BoardEvent:
    event: Event


@dataclass(frozen=True)
class CommandDone:
    """Exactly one per submitted command.  ``error`` is a LinkError (LinkDown: for a Vend,
    "may or may not have reached the board"; BoardError; ProtocolError; BoardRebootedError)
    or a ValueError for arguments the wire cannot carry.  Any other exception would be a bug
    in this package; it is reported here all the same so that no caller waits forever."""

    cmd: Command
    reply: object = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class PumpStopped(RuntimeError):
    """submit() after stop()."""


_STOP = object()


class BoardPump:
    """A thread that owns a HostLink, polls the board and runs submitted commands.

    Guarantees the daemon relies on:
    (a) a submitted command goes to the wire only through HostLink's request/retransmit
        path, once; the pump never repeats it on its own; its CommandDone always comes,
        even at stop() (then with LinkDown("pump stopped") if it never started).
    (b) LinkUp(hello) is emitted every time the link comes (back) up, before any
        BoardEvent or CommandDone that follows; a reboot found on the way is emitted as
        BoardRebooted right after it, or alone if the link stayed up.
    (c) commands run one at a time in submission order; polls run between them.
    (d) while the link is down, commands fail at once with LinkDown; the pump keeps
        reconnecting with backoff by itself.
    (e) stop() returns after the thread ended, finishing the request in flight first.
    ``emit`` is called only from the pump thread.  The queue is the only shared object.
    """

    def __init__(
        self,
        link_or_port: HostLink | str,
        emit: Callable[[object], None],
        *,
        poll_interval: float = 0.05,
        autostart: bool = True,
        **link_kwargs: Any,
    ) -> None:
        """``link_kwargs`` (baud, reply_timeout, trace, rng, ...) go to the HostLink made
        for a port path; they make no sense with a ready HostLink and are refused then."""
        if isinstance(link_or_port, HostLink):
            if link_kwargs:
                raise TypeError(f"HostLink given; unexpected {sorted(link_kwargs)}")
            self.link = link_or_port
        else:
            self.link = HostLink(link_or_port, **link_kwargs)
        self._emit = emit
        self.poll_interval = poll_interval
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders submit() against stop()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="board-pump", daemon=True)
        if autostart:
            self.start()

    def start(self) -> None:
        if not self._thread.is_alive() and not self._stopped:
            self._thread.start()

    def submit(self, cmd: Command) -> None:
        if type(cmd) not in _RUN:
            raise TypeError(f"not a board command: {cmd!r}")
        with self._lock:
            if self._stopped:
                raise PumpStopped(f"pump stopped; {type(cmd).__name__} not run")
            self._queue.put(cmd)

    def stop(self) -> None:
        with self._lock:
            if not self._stopped:
                self._stopped = True
                self._queue.put(_STOP)
        if self._thread.ident is None:  # never started: answer the queue from here
            self._drain_after_stop()
        elif threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> BoardPump:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the pump thread ---------------------------------------------------------------------

    def _run(self) -> None:
        link = self.link
        next_poll = 0.0
        try:
            while True:
                if link.state is not LinkState.UP and link.retry_in() == 0:
                    self._guarded(link.open)
                    next_poll = 0.0
                now = time.monotonic()
                wait = max(0.0, next_poll - now) if link.state is LinkState.UP else link.retry_in()
                try:
                    item = self._queue.get(timeout=max(wait, 0.001))
                except queue.Empty:
                    item = None
                if item is _STOP:
                    break
                if item is not None:
                    self._execute(item)  # type: ignore[arg-type]
                if link.state is LinkState.UP and time.monotonic() >= next_poll:
                    event = self._guarded(link.poll)
                    if isinstance(event, Event):
                        self._send(BoardEvent(event))
                        next_poll = 0.0  # more may be waiting: drain them without a pause
                    else:
                        next_poll = time.monotonic() + self.poll_interval
        finally:
            self._drain_after_stop()
            link.close()

    def _execute(self, cmd: Command) -> None:
        if self.link.state is not LinkState.UP:
            reason = self.link.down_reason or "link down"
            self._send(CommandDone(cmd, error=LinkDown(reason)))
            return
        try:
            reply = _RUN[type(cmd)](self.link, cmd)
        except (LinkError, ValueError) as err:
            self._flush_notices()
            self._send(CommandDone(cmd, error=err))
        except Exception as err:  # a bug; still answered, so no caller waits forever
            log.exception("BoardPump: %r failed unexpectedly", cmd)
            self._flush_notices()
            self._send(CommandDone(cmd, error=err))
        else:
            self._flush_notices()
            self._send(CommandDone(cmd, reply=reply))

    def _guarded(self, fn: Callable[[], object]) -> object:
        """Run a pump-initiated request; its failures show up as notices, not exceptions."""
        try:
            return fn()
        except ProtocolError as err:
            log.warning("board protocol error: %s", err)
            return None
        except LinkError:
            return None
        except Exception:  # a bug; the pump must keep the board link alive regardless
            log.exception("BoardPump: %s failed unexpectedly", getattr(fn, "__name__", fn))
            return None
        finally:
            self._flush_notices()

    def _flush_notices(self) -> None:
        for notice in self.link.take_notices():
            self._send(notice)

    def _send(self, item: object) -> None:
        try:
            self._emit(item)
        except Exception:  # a broken consumer must not kill the link to the board
            log.exception("BoardPump emit callback failed for %r", item)

    def _drain_after_stop(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                self._send(CommandDone(item, error=LinkDown("pump stopped")))  # type: ignore[arg-type]
