"""TOML key paths to line numbers, so a config problem can name the line it is on.

tomllib gives values without positions. `TomlLines` runs only on text tomllib has accepted, so
this scanner can stay small: it needs headers, `key =` lines (bare, quoted and dotted keys), and
enough string/bracket tracking not to mistake the inside of a multi-line string or array for a
key. `syntax_problem_position` does the same for text tomllib refused, from its error message.
"""
from __future__ import annotations

import re
import tomllib

_KEYSEG = r'''(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')'''
_DOTTED = rf"{_KEYSEG}(?:[ \t]*\.[ \t]*{_KEYSEG})*"
_HEADER = re.compile(rf"[ \t]*\[\[?[ \t]*({_DOTTED})[ \t]*\]\]?")
_KEYLINE = re.compile(rf"[ \t]*({_DOTTED})[ \t]*=")
_SEG = re.compile(_KEYSEG)
_POSITION = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")


def _split_key(dotted: str) -> tuple[str, ...]:
    parts = []
    for m in _SEG.finditer(dotted):
        seg = m.group(0)
        if seg.startswith('"'):
            seg = tomllib.loads(f"k = {seg}")["k"]  # exact TOML escapes, for free
        elif seg.startswith("'"):
            seg = seg[1:-1]
        parts.append(seg)
    return tuple(parts)


def _scan(line: str, i: int, delim: str | None, depth: int) -> tuple[str | None, int]:
    """Walk one line from i; return the open multi-line string delimiter and bracket depth."""
    n = len(line)
    while i < n:
        c = line[i]
        if delim is not None:
            if delim == '"""' and c == "\\":
                i += 2
            elif line.startswith(delim, i):
                i += 3
                while i < n and line[i] == delim[0]:  # up to two quotes may end the content
                    i += 1
                delim = None
            else:
                i += 1
        elif c == "#":
            break
        elif line.startswith('"""', i) or line.startswith("'''", i):
            delim, i = line[i:i + 3], i + 3
        elif c in "\"'":
            i += 1
            while i < n and line[i] != c:
                i += 2 if c == '"' and line[i] == "\\" else 1
            i += 1
        else:
            depth = max(0, depth + (c in "[{") - (c in "]}"))
            i += 1
    return delim, depth


class TomlLines:
    """Where each key path (and each table) of a TOML text is defined, 1-based."""

    def __init__(self, text: str) -> None:
        self._at: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        delim: str | None = None
        depth = 0
        for no, line in enumerate(text.split("\n"), 1):
            start = 0
            if delim is None and depth == 0:
                m = _HEADER.match(line)
                k = None if m else _KEYLINE.match(line)
                if m:
                    table = _split_key(m.group(1))
                    self._define(table, 0, no)
                    start = m.end()
                elif k:
                    self._define(table + _split_key(k.group(1)), len(table), no)
                    start = k.end()
            delim, depth = _scan(line, start, delim, depth)

    def _define(self, path: tuple[str, ...], known: int, no: int) -> None:
        # Dotted keys and headers implicitly define their parent tables on the same line.
        for end in range(max(known, 1), len(path) + 1):
            self._at.setdefault(path[:end], no)

    def line(self, path: tuple[str, ...]) -> int | None:
        """The line of path, or of its nearest defined ancestor (e.g. inline tables)."""
        while path:
            if path in self._at:
                return self._at[path]
            path = path[:-1]
        return None


def syntax_problem_position(message: str, text: str) -> tuple[int | None, str]:
    """Split tomllib's '... (at line L, column C)' into L and a sentence keeping the column."""
    m = _POSITION.search(message)
    if not m:
        return None, message
    if m.group(1) is None:
        return text.count("\n") + 1, message[: m.start()] + " at the end of the file"
    return int(m.group(1)), f"{message[: m.start()]} (column {m.group(2)})"
