"""A ``Board`` on a real pseudo-terminal, served by its own thread.

The host under test opens ``emulator.path`` (a stable symlink to the current
/dev/pts/N) exactly as it would open /dev/ttyUSB0.  Everything the board owns
lives on the emulator thread; other threads reach it only through ``call()``,
which queues a function, wakes the selector through a pipe and waits for the
result.  So there is no lock around board state, and no state shared otherwise.

Line noise is applied per line, independently in each direction: ``drop_rate``
makes a line vanish, ``corrupt_rate`` alters one byte so the CRC fails (CRC-16
catches every single-byte error; the new byte stays printable, so the line
still ends where it did).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import random
import selectors
import shutil
import tempfile
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from . import vlp
from .board import Board, LedgerEntry

log = logging.getLogger(__name__)
T = TypeVar("T")
Trace = Callable[[str, bytes, str], None]  # (direction "<" host->board / ">" board->host, line, note)


@dataclass(frozen=True)
class EmulatorStats:
    lines_in: int = 0    # complete lines read from the host, before noise
    lines_out: int = 0   # replies the board produced, before noise
    corrupted: int = 0   # lines altered, both directions
    dropped: int = 0     # lines made to vanish, both directions


class EmulatorError(RuntimeError):
    pass


class Emulator:
    def __init__(
        self,
        board: Board | None = None,
        *,
        link_path: str | None = None,
        corrupt_rate: float = 0.0,
        drop_rate: float = 0.0,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        trace: Trace | None = None,
    ) -> None:
        for name, rate in (("corrupt_rate", corrupt_rate), ("drop_rate", drop_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in 0..1: {rate!r}")
        self.board = board if board is not None else Board(seed=seed)
        self.corrupt_rate = corrupt_rate
        self.drop_rate = drop_rate
        self.clock = clock
        self.trace = trace
        self._rng = random.Random(seed)
        self._tmpdir: str | None = None
        if link_path is None:
            self._tmpdir = tempfile.mkdtemp(prefix="vlp-board-")
            link_path = os.path.join(self._tmpdir, "tty")
        self.path = link_path
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r = self._wake_w = -1  # the wake-up pipe exists while started
        self._thread: threading.Thread | None = None
        self._stopping = False
        # Owned by the emulator thread once started:
        self._master: int | None = None
        self._slave: int | None = None
        self._inbuf = bytearray()
        self._discarding = False
        self._outbuf = bytearray()
        self._stats = EmulatorStats()
        self._sel: selectors.DefaultSelector | None = None

    # ---- lifecycle -------------------------------------------------------------

    def start(self) -> str:
        if self._thread is not None:
            raise EmulatorError("emulator already started")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._plug()
        self._thread = threading.Thread(target=self._serve, name="vlp-emulator", daemon=True)
        self._thread.start()
        return self.path

    def stop(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            self.call(lambda _b: setattr(self, "_stopping", True))
            thread.join(timeout=10)
        self._thread = None
        self._unplug()
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def unplug(self) -> None:
        """Pull the cable: the host's open fd starts failing and the path disappears."""
        self.call(lambda _b: self._unplug())

    def replug(self) -> str:
        """A new pty behind the same path (like a USB adapter re-enumerating)."""
        return self.call(lambda _b: self._plug())

    @property
    def plugged(self) -> bool:
        return self.call(lambda _b: self._master is not None)

    # ---- cross-thread access -------------------------------------------------------

    def call(self, fn: Callable[[Board], T]) -> T:
        """Run ``fn(board)`` on the emulator thread and return (or raise) its result."""
        thread = self._thread
        if thread is None or not thread.is_alive() or threading.current_thread() is thread:
            return fn(self.board)  # no other thread touches the board right now
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((fn, fut))
        self._wake()
        return fut.result(timeout=30)

    def press_key(self, slot: int) -> None:
        self.call(lambda b: b.press_key(slot))

    def press_cancel(self) -> None:
        self.call(lambda b: b.press_cancel())

    def open_door(self) -> None:
        self.call(lambda b: b.open_door())

    def close_door(self) -> None:
        self.call(lambda b: b.close_door())

    def inject(self, slot: int, outcome: str, times: int = 1, *, persistent: bool = False) -> None:
        self.call(lambda b: b.inject(slot, outcome, times, persistent=persistent))

    def set_stock(self, slot: int, count: int) -> None:
        self.call(lambda b: b.set_stock(slot, count))

    def raise_fault(self, code: str) -> None:
        self.call(lambda b: b.raise_fault(code))

    def power_cycle(self, *, product_fell: bool = False) -> int:
        """Power-cycle the board now; returns the new boot."""
        def cycle(b: Board) -> int:
            b.power_cycle(self.clock(), product_fell=product_fell)
            return b.boot
        return self.call(cycle)

    def ledger(self) -> list[LedgerEntry]:
        return self.call(lambda b: list(b.ledger))

    def dispense_count(self, vend_id: str | None = None) -> int:
        return self.call(lambda b: b.dispense_count(vend_id))

    def stats(self) -> EmulatorStats:
        return self.call(lambda _b: self._stats)

    @property
    def lines_in(self) -> int:
        return self.stats().lines_in

    @property
    def lines_out(self) -> int:
        return self.stats().lines_out

    @property
    def corrupted(self) -> int:
        return self.stats().corrupted

    @property
    def dropped(self) -> int:
        return self.stats().dropped

    # ---- the emulator thread ------------------------------------------------------

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # pipe full: a wake-up is already pending

    def _serve(self) -> None:
        sel = self._sel
        assert sel is not None
        while not self._stopping:
            deadline = self.board.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            for key, mask in sel.select(timeout):
                if key.data == "wake":
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                elif key.data == "pty":
                    if mask & selectors.EVENT_READ:
                        self._read_pty()
                    if mask & selectors.EVENT_WRITE and self._master is not None:
                        self._flush()
            self._run_calls()
            self.board.tick(self.clock())
        self._run_calls()

    def _run_calls(self) -> None:
        while True:
            try:
                fn, fut = self._calls.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(self.board))
            except BaseException as exc:  # handed to the caller, who re-raises it
                fut.set_exception(exc)

    def _plug(self) -> str:
        self._unplug()
        master, slave = os.openpty()
        # Raw: no echo, no line editing, no CR/LF translation.  We keep the slave
        # open ourselves so the host closing and reopening it never gives us EIO.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._inbuf.clear()
        self._discarding = False
        self._outbuf.clear()
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, self.path)  # atomic: the path never points nowhere mid-switch
        if self._sel is not None:
            self._sel.register(master, selectors.EVENT_READ, "pty")
        return self.path

    def _unplug(self) -> None:
        if self._master is not None:
            if self._sel is not None:
                try:
                    self._sel.unregister(self._master)
                except (KeyError, ValueError):
                    pass
            for fd in (self._master, self._slave):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._master = self._slave = None
        try:
            if os.path.islink(self.path):
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _read_pty(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # EIO: no slave end open right now; our own slave fd prevents this
        start = 0
        while start < len(data):
            nl = data.find(b"\n", start)
            end = len(data) if nl < 0 else nl + 1
            chunk, start = data[start:end], end
            if self._discarding:
                self._discarding = nl < 0
                continue
            self._inbuf += chunk
            if nl >= 0:
                line = bytes(self._inbuf)
                self._inbuf.clear()
                self._on_line(line)
            elif len(self._inbuf) > vlp.MAX_LINE:
                # Overlong: the board drops it; keep memory bounded until "\n".
                self._count(lines_in=1)
                self._emit_trace("<", bytes(self._inbuf[:vlp.MAX_LINE]), "too long")
                self._inbuf.clear()
                self._discarding = True

    def _on_line(self, line: bytes) -> None:
        self._count(lines_in=1)
        line, note = self._noise(line)
        self._emit_trace("<", line, note)
        if note == "dropped":
            return
        reply = self.board.handle_line(line, self.clock())
        if reply is None:
            self._emit_trace(">", b"", "no reply")
            return
        self._count(lines_out=1)
        reply, note = self._noise(reply)
        self._emit_trace(">", reply, note)
        if note != "dropped":
            self._outbuf += reply
            self._flush()

    def _noise(self, line: bytes) -> tuple[bytes, str]:
        if self.drop_rate and self._rng.random() < self.drop_rate:
            self._count(dropped=1)
            return line, "dropped"
        if self.corrupt_rate and self._rng.random() < self.corrupt_rate:
            self._count(corrupted=1)
            return corrupt_line(line, self._rng), "corrupted"
        return line, ""

    def _flush(self) -> None:
        if self._master is None:
            return
        try:
            written = os.write(self._master, self._outbuf) if self._outbuf else 0
        except (BlockingIOError, InterruptedError):
            written = 0
        except OSError:
            written = len(self._outbuf)  # nobody listening: the bytes are lost on the wire
        del self._outbuf[:written]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._outbuf else 0)
        if self._sel is not None:
            self._sel.modify(self._master, events, "pty")

    def _count(self, **inc: int) -> None:
        s = self._stats
        self._stats = EmulatorStats(**{
            f: getattr(s, f) + inc.get(f, 0) for f in ("lines_in", "lines_out", "corrupted", "dropped")
        })

    def _emit_trace(self, direction: str, line: bytes, note: str) -> None:
        if self.trace is not None:
            try:
                self.trace(direction, line, note)
            except Exception:  # a broken observer must not take the board down
                log.exception("emulator trace callback failed")


def corrupt_line(line: bytes, rng: random.Random) -> bytes:
    """Alter one byte before the line ending to a different printable byte.

    Staying printable keeps the line boundary where it was, so the receiver sees
    exactly one bad line (never two half-lines); CRC-16 detects the change.
    """
    end = len(line.rstrip(b"\r\n"))
    if end == 0:
        return line
    i = rng.randrange(end)
    new = rng.randrange(0x20, 0x7E)  # 95 printable bytes; skip the original one
    if new >= line[i]:
        new += 1
    if new > 0x7E:
        new = 0x20
    return line[:i] + bytes([new]) + line[i + 1:]
