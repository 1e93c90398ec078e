"""A thread that renders the newest view, so `show()` never waits on a slow terminal or disk.

The controller's owner thread must never block on the display. Sinks that do I/O (a terminal
piped into a full buffer, an SD card mid-erase) hand each view to this worker instead. Views
that arrive while a render is running are coalesced: only the newest is drawn next, because a
customer display has no use for a screen that is already out of date.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from vending.display.view import View

log = logging.getLogger(__name__)


class LatestViewWorker:
    def __init__(self, render: Callable[[View], None], name: str) -> None:
        self._render = render
        self._name = name
        self._cond = threading.Condition()
        # All three are guarded by _cond; the view objects themselves are immutable.
        self._pending: View | None = None
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def submit(self, view: View) -> None:
        """Replace whatever is waiting with `view`. Never blocks beyond a brief lock."""
        with self._cond:
            self._pending = view
            self._cond.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every submitted view has been rendered (tests, orderly shutdown)."""
        with self._cond:
            if self._thread is None:        # not started: nothing will ever drain the queue
                return self._pending is None
            return self._cond.wait_for(
                lambda: (self._pending is None and not self._busy) or self._thread is None,
                timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Render what is pending (the last screen matters at shutdown), then end the thread."""
        with self._cond:
            thread = self._thread
            self._stopping = True
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)
        with self._cond:
            self._thread = None
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._pending is not None or self._stopping)
                view, self._pending = self._pending, None
                if view is None:            # stopping, nothing left to draw
                    return
                self._busy = True
            try:
                self._render(view)
            except Exception:               # a broken sink must not take the controller down
                log.exception("%s: rendering view seq=%s failed", self._name, view.seq)


class WorkerDisplay:
    """Base of the displays that render off the owner thread: `show` only hands the view over.
    Subclasses set `self._worker = LatestViewWorker(self._render, name)` and write `_render`."""

    _worker: LatestViewWorker

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()

    def show(self, view: View) -> None:
        if not isinstance(view, View):
            raise TypeError(f"show() takes a View, got {type(view).__name__}")
        self._worker.submit(view)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the newest view is drawn (tests, shutdown)."""
        return self._worker.flush(timeout)

    def _render(self, view: View) -> None:
        raise NotImplementedError
