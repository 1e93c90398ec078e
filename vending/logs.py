"""Structured logs: one logfmt line per record, journald-friendly, with secrets removed.

    level=INFO logger=vending.sale msg="vend done" order_id=o-1 slot=3 result=ok

Under systemd (stderr is the stream named by JOURNAL_STREAM) journald adds the timestamp, so we
leave it out and prefix the syslog priority (<6>) instead, which journald turns into the entry's
priority for `journalctl -p`. Elsewhere each line starts with an ISO-8601 UTC `ts=`.

Secrets must not reach a log whatever the caller did, so redaction happens in two places:
- the formatter always applies the fixed rules (secret-named fields, 64-hex runs, sig values);
- a per-daemon `Redactor`, installed as a filter on the handler, also removes the exact secrets
  that daemon registered (its machine key, its broker password). Several daemons in one process
  share the root handler, each adding its own Redactor.
"""
from __future__ import annotations

import base64
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, TextIO

REDACTED = "[REDACTED]"
FIELDS_ATTR = "log_fields"  # where log_event puts its key=value fields on the LogRecord
SECRET_NAMES = frozenset({"key", "sig", "signature", "password", "passwd", "secret", "token"})
_RESERVED = frozenset({"ts", "level", "logger", "msg", "exc", "stack"})
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                    logging.CRITICAL: 2}

# name=value, name: value, "name":"value", 'name': 'value', X-Signature: value, &sig=value ...
# where the last word of the name is a secret name. The lookahead keeps it idempotent.
_SECRET_FIELD = re.compile(
    r"""(?P<pre>(?<![A-Za-z0-9])["']?(?:[A-Za-z0-9]+[_.-])*"""
    r"""(?:key|sig|signature|password|passwd|secret|token)["']?[ \t]*[:=][ \t]*)"""
    r"""(?!\[REDACTED\])(?P<val>"(?:[^"\\]|\\.)*"|'[^']*'|[^\s,;&}\])]+)""",
    re.IGNORECASE)
# A machine key in hex is 64 digits; nothing else we log legitimately is that long and all hex.
_HEX_RUN = re.compile(r"[0-9A-Fa-f]{64,}")


def is_secret_name(name: str) -> bool:
    """True for key, sig, machine_key, X-Signature, api_token...: the last word decides."""
    return re.split(r"[_.\-]", name.lower())[-1] in SECRET_NAMES


def scrub(text: str) -> str:
    """The fixed redaction rules, needing no registered secrets."""
    def _field(m: re.Match[str]) -> str:
        val = m.group("val")
        quote = val[0] if val[0] in "\"'" else ""
        return f"{m.group('pre')}{quote}{REDACTED}{quote}"
    return _HEX_RUN.sub(REDACTED, _SECRET_FIELD.sub(_field, text))


class Redactor(logging.Filter):
    """Removes one daemon's registered secrets (and the fixed patterns) from log records."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None

    def add(self, secret: str | bytes) -> None:
        """Register a secret. Bytes (a key) are also registered in hex and base64 forms."""
        if isinstance(secret, bytes):
            forms = {secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(),
                     base64.urlsafe_b64encode(secret).decode().rstrip("=")}
        else:
            forms = {str(secret)}
        forms.discard("")
        with self._lock:
            self._secrets = self._secrets | forms
            # Longest first, so a secret containing another is removed whole.
            alternatives = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in alternatives))

    def redact(self, text: str) -> str:
        pattern = self._pattern  # one read: add() may swap it from another thread
        if pattern is not None:
            text = pattern.sub(REDACTED, text)
        return scrub(text)

    def filter(self, record: logging.LogRecord) -> bool:
        # Render the message now, so secrets passed as %-args are caught too.
        record.msg, record.args = self.redact(_message(record)), None
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, Mapping):
            # A new dict: the caller's own dict is not ours to change.
            setattr(record, FIELDS_ATTR, {k: self._field(k, v) for k, v in fields.items()})
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True

    def _field(self, name: str, value: Any) -> Any:
        if is_secret_name(str(name)):
            return REDACTED
        if value is None or isinstance(value, (bool, int, float, bytes)):
            return value  # no text in them to leak; bytes are never printed (see _render)
        return self.redact(str(value))


class LogfmtFormatter(logging.Formatter):
    def __init__(self, timestamps: bool = True, syslog_prefix: bool = False) -> None:
        super().__init__()
        self.timestamps, self.syslog_prefix = timestamps, syslog_prefix

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.timestamps:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            parts.append(f"ts={stamp}.{int(record.msecs):03d}Z")
        parts += [f"level={record.levelname}", f"logger={_render(record.name)}",
                  f"msg={_quote(scrub(_message(record)))}"]
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, Mapping):
            for name, value in fields.items():
                key = re.sub(r"[^A-Za-z0-9_.-]", "_", str(name)) or "_"
                if key in _RESERVED:
                    key += "_"
                shown = REDACTED if is_secret_name(key) else _render(value)
                parts.append(f"{key}={shown}")
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            parts.append(f"exc={_quote(scrub(record.exc_text))}")
        if record.stack_info:
            parts.append(f"stack={_quote(scrub(record.stack_info))}")
        line = " ".join(parts)
        if self.syslog_prefix:
            line = f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a broken format string must not lose the record
        return f"{record.msg!r} args={record.args!r}"


def _quote(text: str) -> str:
    # One record must stay one line for journald, so newlines are escaped, never written.
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    out = out.replace("\r", "\\r").replace("\t", "\\t")
    out = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", out)
    return f'"{out}"'


def _render(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"  # raw bytes are how keys travel: show only the size
    text = scrub(str(value))
    if text and re.fullmatch(r"[^\s\"=\\\x00-\x1f\x7f]+", text):
        return text
    return _quote(text)


class _LogfmtHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler setup_logging installs on the root logger."""


def setup_logging(level: str | int = "INFO", stream: TextIO | None = None,
                  redactor: Redactor | None = None, *,
                  timestamps: bool | None = None) -> logging.Handler:
    """Send all logging to `stream` (default: stderr) as logfmt. Idempotent.

    Calling it again (another daemon in the same process) reuses the handler, switches its
    stream and level, and adds `redactor` to its filters. `timestamps` overrides the journald
    detection.
    """
    if isinstance(level, str):
        numeric = logging.getLevelName(level.upper())
        if not isinstance(numeric, int):
            raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING or ERROR")
        level = numeric
    stream = stream if stream is not None else sys.stderr
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _LogfmtHandler)), None)
    if handler is None:
        handler = _LogfmtHandler(stream)
        root.addHandler(handler)
    elif handler.stream is not stream:
        handler.setStream(stream)
    journald = under_journald(stream)
    handler.setFormatter(LogfmtFormatter(
        timestamps=(not journald) if timestamps is None else timestamps, syslog_prefix=journald))
    if redactor is not None and redactor not in handler.filters:
        handler.addFilter(redactor)
    root.setLevel(level)
    return handler


def remove_redactor(redactor: Redactor) -> None:
    """Detach a stopped daemon's Redactor from the shared handler."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _LogfmtHandler):
            handler.removeFilter(redactor)


def under_journald(stream: TextIO) -> bool:
    """True when `stream` is the journal stream systemd gave us (systemd.exec(5), JOURNAL_STREAM).

    The variable is inherited by child processes whose stderr may go elsewhere, so it is
    compared with the stream's device and inode when the stream has a file descriptor.
    """
    value = os.environ.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return True
    try:
        st = os.fstat(fd)
        dev, ino = (int(x) for x in value.split(":", 1))
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def log_event(logger: logging.Logger, msg: str, /, *, level: int = logging.INFO,
              exc_info: Any = None, **fields: Any) -> None:
    """Log msg with key=value fields: log_event(log, "vend done", order_id=o, slot=3)."""
    logger.log(level, msg, exc_info=exc_info, extra={FIELDS_ATTR: fields}, stacklevel=2)
