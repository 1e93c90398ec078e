"""VLP/1 line codec (CONTRACT.md section 1, "Framing"), sans-I/O.

Bytes in, frames out; no port, no clock.  Both ends use it: the host link driver
to build requests and read replies, the board emulator the other way round.

The receiver has two ways to refuse a line, and the difference matters:

* ``DroppedLine`` - the line cannot be trusted at all (too long, bad or missing
  CRC, a byte outside 0x20..0x7E, or a seq that cannot be read).  Nobody answers
  it: a reply could not echo a seq we cannot trust.
* ``BadRequest`` - the CRC is good, so the bytes are what the sender meant, but
  the body breaks the grammar.  A board answers ``ERR code=bad_request``.

An unknown verb is *not* a codec error: the grammar allows any ``[A-Z]{2,10}``,
and whether the board knows it is the board's business.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MAX_LINE = 200  # bytes, everything up to and including "\n"
MAX_SEQ = 65535

REPLY_VERBS = frozenset({"OK", "ERR"})

_SEQ_RE = re.compile(r"[1-9][0-9]{0,4}")
_VERB_RE = re.compile(r"[A-Z]{2,10}")
_KEY_RE = re.compile(r"[a-z][a-z0-9_]{0,15}")
# 0x21..0x7E minus "*" (0x2A) and "=" (0x3D).
_VALUE_RE = re.compile(r"[\x21-\x29\x2B-\x3C\x3E-\x7E]{1,64}")
_CRC_RE = re.compile(rb"[0-9A-F]{4}")  # lower-case hex is a bad CRC, on purpose


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, xorout 0."""
    return binascii.crc_hqx(data, 0xFFFF)


class VlpError(Exception):
    """Base of every codec error."""


class EncodeError(VlpError, ValueError):
    """The caller tried to build a line the grammar forbids."""


class DroppedLine(VlpError):
    """A line the receiver must drop silently (no reply)."""

    def __init__(self, reason: str, line: bytes) -> None:
        super().__init__(f"dropped line ({reason}): {line[:80]!r}")
        self.reason = reason
        self.line = line


class BadRequest(VlpError):
    """A line with a good CRC whose body breaks the grammar."""

    def __init__(self, seq: int, reason: str, line: bytes) -> None:
        super().__init__(f"bad request seq={seq} ({reason}): {line[:80]!r}")
        self.seq = seq
        self.reason = reason
        self.line = line


@dataclass(frozen=True)
class Frame:
    seq: int
    verb: str
    args: tuple[tuple[str, str], ...]
    raw: bytes

    @property
    def is_reply(self) -> bool:
        return self.verb in REPLY_VERBS

    @property
    def body(self) -> str:
        return " ".join([str(self.seq), self.verb, *(f"{k}={v}" for k, v in self.args)])

    def get(self, key: str, default: str | None = None) -> str | None:
        for k, v in self.args:
            if k == key:
                return v
        return default

    def __getitem__(self, key: str) -> str:
        for k, v in self.args:
            if k == key:
                return v
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return any(k == key for k, _ in self.args)

    def as_dict(self) -> dict[str, str]:
        return dict(self.args)


def _value_text(key: str, value: object) -> str:
    # bool is an int subclass; "True" on the wire is never what the caller meant.
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise EncodeError(f"value of {key!r} must be int or str, not {type(value).__name__}")
    text = str(value)
    if not _VALUE_RE.fullmatch(text):
        raise EncodeError(
            f"value of {key!r} must be 1..64 bytes of 0x21..0x7E without '*' or '=': {text[:80]!r}"
        )
    return text


def encode(
    seq: int,
    verb: str,
    args: Mapping[str, object] | Iterable[tuple[str, object]] = (),
) -> bytes:
    """Build one complete line, "\\n" included.  Raises EncodeError naming the bad field."""
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_SEQ:
        raise EncodeError(f"seq must be an int in 1..{MAX_SEQ}: {seq!r}")
    if not isinstance(verb, str) or not _VERB_RE.fullmatch(verb):
        raise EncodeError(f"verb must match [A-Z]{{2,10}}: {verb!r}")
    pairs = args.items() if isinstance(args, Mapping) else args
    parts = [str(seq), verb]
    seen: set[str] = set()
    for pair in pairs:
        try:
            key, value = pair
        except (TypeError, ValueError):
            raise EncodeError(f"argument must be a (key, value) pair: {pair!r}") from None
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise EncodeError(f"key must match [a-z][a-z0-9_]{{0,15}}: {key!r}")
        if key in seen:
            raise EncodeError(f"key {key!r} appears twice")
        seen.add(key)
        parts.append(f"{key}={_value_text(key, value)}")
    body = " ".join(parts).encode("ascii")
    line = body + b"*%04X\n" % crc16(body)
    if len(line) > MAX_LINE:
        raise EncodeError(f"line would be {len(line)} bytes, more than {MAX_LINE}")
    return line


def decode(line: bytes) -> Frame:
    """Decode one line, with or without its trailing "\\n" (or "\\r\\n").

    Raises DroppedLine or BadRequest; never anything else for any bytes.
    """
    line = bytes(line)
    raw = line if line.endswith(b"\n") else line + b"\n"
    if len(raw) > MAX_LINE:
        raise DroppedLine("too long", line)
    content = raw[:-1]
    if content.endswith(b"\r"):
        content = content[:-1]
    if any(b < 0x20 or b > 0x7E for b in content):
        raise DroppedLine("byte outside 0x20..0x7E", line)
    body, star, crc = content.rpartition(b"*")
    if not star:
        raise DroppedLine("missing CRC", line)
    if not _CRC_RE.fullmatch(crc) or int(crc, 16) != crc16(body):
        raise DroppedLine("bad CRC", line)
    text = body.decode("ascii")  # safe: every byte checked printable above
    tokens = text.split(" ")
    if not _SEQ_RE.fullmatch(tokens[0]) or int(tokens[0]) > MAX_SEQ:
        raise DroppedLine("unreadable seq", line)
    seq = int(tokens[0])
    if len(tokens) < 2 or not _VERB_RE.fullmatch(tokens[1]):
        got = tokens[1] if len(tokens) > 1 else ""
        raise BadRequest(seq, f"verb must match [A-Z]{{2,10}}: {got[:20]!r}", raw)
    args: list[tuple[str, str]] = []
    seen: set[str] = set()
    for pos, token in enumerate(tokens[2:], start=1):
        key, eq, value = token.partition("=")
        if not eq:
            raise BadRequest(seq, f"argument {pos} is not key=value: {token[:20]!r}", raw)
        if not _KEY_RE.fullmatch(key):
            raise BadRequest(seq, f"argument {pos} has a bad key: {key[:20]!r}", raw)
        if key in seen:
            raise BadRequest(seq, f"key {key!r} appears twice", raw)
        if not _VALUE_RE.fullmatch(value):
            raise BadRequest(seq, f"value of {key!r} is garbled: {value[:20]!r}", raw)
        seen.add(key)
        args.append((key, value))
    return Frame(seq=seq, verb=tokens[1], args=tuple(args), raw=raw)


class LineReader:
    """Byte stream -> lines, resynchronising at every "\\n".

    Memory is bounded: a partial line that grows past MAX_LINE is discarded up
    to the next "\\n" and reported once.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[Frame | DroppedLine | BadRequest]:
        out: list[Frame | DroppedLine | BadRequest] = []
        start = 0
        data = bytes(data)
        while start < len(data):
            nl = data.find(b"\n", start)
            end = len(data) if nl < 0 else nl + 1
            chunk = data[start:end]
            start = end
            if self._discarding:
                if nl >= 0:
                    self._discarding = False
                continue
            self._buf += chunk
            if nl >= 0:
                line = bytes(self._buf)
                self._buf.clear()
                try:
                    out.append(decode(line))
                except (DroppedLine, BadRequest) as err:
                    out.append(err)
            elif len(self._buf) >= MAX_LINE:
                # Even with "\n" next this line would exceed MAX_LINE.
                out.append(DroppedLine("too long", bytes(self._buf[:MAX_LINE])))
                self._buf.clear()
                self._discarding = True
        return out

    def reset(self) -> None:
        """Forget any partial line (e.g. after the port was reopened)."""
        self._buf.clear()
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes of the current partial line."""
        return len(self._buf)
