"""The dynamic payment QR: text -> module matrix -> PNG for the display, or half-block text for a
terminal (demo, technician over ssh).

`make_qr` is the only place that talks to the `qrcode` library; the renderers work from the
plain matrix, so each rendering can be checked module for module against it. All values are
immutable and nothing is cached at module level, so any number of machines can render at once.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from types import MappingProxyType

import qrcode
from PIL import Image
from qrcode.constants import ERROR_CORRECT_M
from qrcode.exceptions import DataOverflowError

__all__ = ["QrError", "QrCode", "make_qr", "to_image", "to_png", "to_terminal",
           "rasterise_terminal", "QUIET_ZONE"]

# ISO/IEC 18004 asks for 4 light modules; phone scanners fail more often with fewer, and the
# display may frame the image with anything.
QUIET_ZONE = 4
_DARK, _LIGHT = 0, 255

# Half blocks pack two module rows into one character cell, which is roughly square on most
# terminal fonts (cells are about twice as tall as wide). Index: (top is ink) * 2 + (bottom).
_HALF_BLOCKS = (" ", "\u2584", "\u2580", "\u2588")  # " ", lower half, upper half, full
_BLOCK_BITS = MappingProxyType({ch: divmod(i, 2) for i, ch in enumerate(_HALF_BLOCKS)})


class QrError(ValueError):
    """The text cannot be made into a QR code, or the code cannot be drawn as asked."""


@dataclass(frozen=True)
class QrCode:
    text: str
    modules: tuple[tuple[bool, ...], ...]  # True = dark; rows top to bottom, quiet zone included

    @property
    def size(self) -> int:
        """Modules per side, quiet zone included."""
        return len(self.modules)

    @property
    def version(self) -> int:
        return (self.size - 2 * QUIET_ZONE - 17) // 4


def make_qr(text: str) -> QrCode:
    """ECC level M (recovers ~15% damage: a scratched or glare-spotted screen still scans),
    the smallest version that holds `text`, quiet zone of 4. Text is encoded as UTF-8."""
    if not isinstance(text, str) or not text:
        raise QrError("QR text must be a non-empty string")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise QrError("QR text is not valid Unicode (lone surrogate)") from None
    code = qrcode.QRCode(version=None, error_correction=ERROR_CORRECT_M, border=QUIET_ZONE,
                         box_size=1)
    code.add_data(data)
    try:
        code.make(fit=True)
    except (DataOverflowError, ValueError):
        raise QrError(f"QR text of {len(data)} bytes does not fit in a version-40 code "
                      "at ECC level M") from None
    modules = tuple(tuple(bool(cell) for cell in row) for row in code.get_matrix())
    return QrCode(text=text, modules=modules)


def _check(qr: QrCode) -> None:
    if not isinstance(qr, QrCode) or not qr.modules:
        raise QrError("expected a QrCode from make_qr")


def to_image(qr: QrCode, size_px: int = 480) -> Image.Image:
    """A `size_px` square greyscale image: a whole number of pixels per module (so no module is
    blurred or a pixel wider than its neighbour), centred on white."""
    _check(qr)
    n = qr.size
    if type(size_px) is not int or size_px < n:
        raise QrError(f"a {n}-module QR needs at least {n} px, got {size_px!r}")
    scale = size_px // n
    raw = bytes(_DARK if cell else _LIGHT for row in qr.modules for cell in row)
    small = Image.frombytes("L", (n, n), raw)
    code = small.resize((n * scale, n * scale), Image.Resampling.NEAREST)
    canvas = Image.new("L", (size_px, size_px), _LIGHT)
    offset = (size_px - n * scale) // 2
    canvas.paste(code, (offset, offset))
    return canvas


def to_png(qr: QrCode, size_px: int = 480) -> bytes:
    """PNG bytes of `to_image`, 1 bit per pixel (a few hundred bytes to a few KiB)."""
    image = to_image(qr, size_px).convert("1", dither=Image.Dither.NONE)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)  # speed over a few bytes: this is on the
    return out.getvalue()                             # key-press -> QR path


def to_terminal(qr: QrCode, invert: bool = False) -> str:
    """Half-block text, two module rows per line, quiet zone included; no trailing newline.

    A terminal draws characters in its foreground colour on its background colour, so which
    modules get ink depends on the terminal:
    - invert=False (default) is for light-on-dark terminals, the usual ssh/console setup: the
      *light* modules are inked, so the quiet zone shows as a solid light frame;
    - invert=True is for dark-on-light terminals: the dark modules are inked.
    (Same convention as `qrencode -t UTF8` / `UTF8i`.) Scanners that accept inverted codes read
    either way; many payment apps do not, so pick the one that matches the terminal."""
    _check(qr)
    ink = [[cell == bool(invert) for cell in row] for row in qr.modules]
    if len(ink) % 2:
        ink.append([False] * qr.size)  # below the quiet zone: plain terminal background
    lines = []
    for top, bottom in zip(ink[0::2], ink[1::2]):
        lines.append("".join(_HALF_BLOCKS[t * 2 + b] for t, b in zip(top, bottom)))
    return "\n".join(lines)


def rasterise_terminal(text: str, dark_terminal: bool = True, px_per_module: int = 6,
                       margin: int = 2) -> Image.Image:
    """Draw `to_terminal` output the way a terminal would, as a greyscale image: each character
    cell is one module wide and two tall, ink in the foreground colour. `dark_terminal=True`
    means light ink on black (matching `to_terminal(qr)`); False means black ink on white
    (matching `to_terminal(qr, invert=True)`). `margin` cells of terminal background surround
    the text, as the rest of the screen would."""
    if not isinstance(text, str):
        raise QrError("expected the text of to_terminal")
    rows = text.rstrip("\n").split("\n")
    width = max(len(r) for r in rows)
    background, ink = (_DARK, _LIGHT) if dark_terminal else (_LIGHT, _DARK)
    w, h = width + 2 * margin, 2 * (len(rows) + 2 * margin)
    pixels = bytearray([background]) * (w * h)
    for y, row in enumerate(rows):
        for x, ch in enumerate(row):
            bits = _BLOCK_BITS.get(ch)
            if bits is None:
                raise QrError(f"line {y + 1}, column {x + 1}: {ch!r} is not a half-block "
                              "character")
            for half, inked in enumerate(bits):
                if inked:
                    pixels[(2 * (y + margin) + half) * w + x + margin] = ink
    image = Image.frombytes("L", (w, h), bytes(pixels))
    return image.resize((w * px_per_module, h * px_per_module), Image.Resampling.NEAREST)
