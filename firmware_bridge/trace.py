"""Line traces of the host link: what a technician reads first when a machine misbehaves.

``HostLink(trace=...)`` calls its trace callback with every line both ways:
``(t, direction, raw, decoded, note)`` where ``t`` is wall-clock seconds, ``direction``
is "tx" or "rx", ``decoded`` the ``vlp.Frame`` or the codec error, and ``note`` says what
the driver made of it ("retransmit 2/5", "crc error", "stale seq 17 (awaiting 18)", ...).
``TraceRecord`` freezes one call so it can be kept (tests, recordings), and
``format_record`` renders it as one line for ``vending board monitor``. ``WireLog`` sends the
same lines to a logger, so a running daemon can be watched without taking its port away.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from firmware_bridge import vlp

TraceFn = Callable[[float, str, bytes, "vlp.Frame | vlp.VlpError | None", str], None]


@dataclass(frozen=True)
class TraceRecord:
    t: float
    direction: str  # "tx" | "rx"
    raw: bytes
    decoded: vlp.Frame | vlp.VlpError | None
    note: str = ""

    @property
    def ok(self) -> bool:
        return isinstance(self.decoded, vlp.Frame)


class TraceRecorder:
    """A trace callback that keeps every record (one per link; no globals)."""

    def __init__(self) -> None:
        self.records: list[TraceRecord] = []

    def __call__(self, t: float, direction: str, raw: bytes, decoded: object, note: str) -> None:
        self.records.append(TraceRecord(t, direction, bytes(raw), decoded, note))  # type: ignore[arg-type]

    def notes(self, contains: str) -> list[TraceRecord]:
        return [r for r in self.records if contains in r.note]


def error_note(err: vlp.VlpError) -> str:
    """The short, technician-facing name of a codec error."""
    if isinstance(err, vlp.DroppedLine):
        return "crc error" if "CRC" in err.reason else f"dropped: {err.reason}"
    if isinstance(err, vlp.BadRequest):
        return f"malformed: {err.reason}"
    return str(err)


def _stamp(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


def format_record(rec: TraceRecord) -> str:
    """``12:00:01.234 >> 17 HELLO*ABCD   [retransmit 1/5]`` -- arrows point board-wards for tx."""
    arrow = ">>" if rec.direction == "tx" else "<<"
    text = rec.raw.rstrip(b"\r\n").decode("ascii", "backslashreplace")
    note = f"   [{rec.note}]" if rec.note else ""
    return f"{_stamp(rec.t)} {arrow} {text}{note}"


def record_json(rec: TraceRecord) -> str:
    """One JSON object per line, for ``monitor --json`` and recorded sessions."""
    doc: dict[str, object] = {
        "t": round(rec.t, 6),
        "dir": rec.direction,
        "line": rec.raw.decode("ascii", "backslashreplace"),
        "note": rec.note,
    }
    if isinstance(rec.decoded, vlp.Frame):
        doc.update(seq=rec.decoded.seq, verb=rec.decoded.verb, args=rec.decoded.as_dict())
    elif rec.decoded is not None:
        doc["error"] = str(rec.decoded)
    return json.dumps(doc, sort_keys=True)


class WireLog:
    """A trace callback that logs every line at DEBUG, as ``vending board monitor`` prints it.

    Idle polls (a ``POLL`` answered ``ev=none``, both clean) are left out: at five a second
    they would bury the lines a technician is looking for. A poll that was retransmitted, or
    whose reply carried an event or an error, is logged with its request. One instance per
    link, called from the link's thread only.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._held: TraceRecord | None = None  # a clean POLL, until its reply says whether it was idle

    def __call__(self, t: float, direction: str, raw: bytes, decoded: object, note: str) -> None:
        rec = TraceRecord(t, direction, bytes(raw), decoded, note)  # type: ignore[arg-type]
        if direction == "tx":
            self._release()
            if rec.ok and rec.decoded.verb == "POLL" and not note:  # type: ignore[union-attr]
                self._held = rec
                return
        elif self._held is not None and not note and _idle_poll_reply(rec, self._held):
            self._held = None
            return
        self._release()
        self._log.debug("%s", format_record(rec))

    def _release(self) -> None:
        if self._held is not None:
            self._log.debug("%s", format_record(self._held))
            self._held = None


def _idle_poll_reply(rec: TraceRecord, poll: TraceRecord) -> bool:
    frame = rec.decoded
    return (isinstance(frame, vlp.Frame) and frame.verb == "OK"
            and frame.seq == poll.decoded.seq  # type: ignore[union-attr]
            and frame.as_dict().get("ev") == "none")
