"""A display for machines whose screen is driven by another program: the current screen as a PNG
file plus a JSON sidecar with the view, both replaced atomically.

The PNG holds the payment QR on the QR screen and a plain status card on every other screen,
never the "follow us" QR: a program that shows "scan to pay" next to whatever the PNG holds must
not be able to show a non-payment code there. The sidecar carries everything else.

The reader never sees a half-written file: each is written to a temporary name in the same
directory and renamed over the old one (os.replace is atomic on POSIX). The sidecar is written
after the PNG, so when the sidecar changes the image already matches it.
"""
from __future__ import annotations

import io
import json
import os
import re
import tempfile
from pathlib import Path
from types import MappingProxyType

from PIL import Image, ImageDraw, ImageFont

from vending.display.view import Screen, View, format_money, view_to_json
from vending.display.worker import LatestViewWorker, WorkerDisplay

_STATUS = MappingProxyType({
    Screen.GRID: "Choose a product",
    Screen.ORDERING: "Preparing your QR code",
    Screen.DISPENSING: "Payment received - dispensing",
    Screen.THANKS: "Thank you!",
    Screen.REFUND: "Sorry - your payment will be refunded",
    Screen.OUT_OF_SERVICE: "Out of service",
})


class PngDisplay(WorkerDisplay):
    def __init__(self, path: str | os.PathLike, *, size_px: int = 480) -> None:
        path = Path(path)
        if path.suffix.lower() == ".json":
            raise ValueError(f"png_path {str(path)!r} ends in .json, which is the sidecar's name")
        if not path.parent.is_dir():
            raise ValueError(f"png_path {str(path)!r}: directory {str(path.parent)!r} does not exist")
        if isinstance(size_px, bool) or not isinstance(size_px, int) or not 64 <= size_px <= 4096:
            raise ValueError(f"size_px must be an int in 64..4096, got {size_px!r}")
        self.path = path
        self.sidecar = path.with_suffix(".json")
        self.size_px = size_px
        self._worker = LatestViewWorker(self._render, "display-png")
        self._last_key: object = None       # touched by the worker thread only

    def _render(self, view: View) -> None:
        data = view_to_json(view)
        key = {k: v for k, v in data.items() if k not in ("now", "seq")}
        if key == self._last_key:           # spare the SD card: nothing visible changed
            return
        if view.screen is Screen.QR and view.qr_url:
            png, kind = _qr_png(view.qr_url, self.size_px), "qr"
        else:
            png, kind = status_png(view, self.size_px), "status"
        _atomic_write(self.path, png)
        sidecar = {"image": kind, "png": self.path.name, "view": data}
        _atomic_write(self.sidecar, json.dumps(sidecar, ensure_ascii=False, indent=1).encode())
        self._last_key = key


def status_png(view: View, size_px: int) -> bytes:
    """A white card with one English line (and the amount), for screens without a payment QR.
    English only: Pillow's bundled font has no CJK glyphs, and this is a fallback, not the UI."""
    img = Image.new("L", (size_px, size_px), 255)
    draw = ImageDraw.Draw(img)
    lines = [_STATUS.get(view.screen, view.screen.value)]
    if view.screen in (Screen.ORDERING, Screen.REFUND) and view.amount is not None and view.currency:
        money = format_money(view.amount, view.currency)
        if not money.isascii():             # "¥3.50" -> "3.50 CNY": the font may lack the symbol
            money = re.sub(r"[^0-9.\-]", "", money) + " " + view.currency
        lines.append(money)
    font = ImageFont.load_default(size=max(12, size_px // 20))
    y = size_px // 2 - len(lines) * size_px // 30
    for line in lines:
        draw.text((size_px // 2, y), line, fill=0, font=font, anchor="mm")
        y += size_px // 15
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def _qr_png(text: str, size_px: int) -> bytes:
    from vending import qr
    return qr.to_png(qr.make_qr(text), size_px)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)                # mkstemp's 0600 would hide it from a display user
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
