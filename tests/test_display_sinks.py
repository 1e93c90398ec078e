"""Terminal and PNG-file displays: what a technician or an external screen program gets."""
from __future__ import annotations

import io
import json

import pytest
import zxingcpp
from PIL import Image

from vending import qr
from vending.display.pngfile import PngDisplay
from vending.display.terminal import TerminalDisplay, format_view
from vending.display.view import ProductView, Screen, View

COLA = ProductView(1, "cola", "可口可乐", "Coca-Cola", 350, None, "CNY", True, None)
WATER = ProductView(2, "water", "农夫山泉", "Spring Water", 200, 150, "CNY", True, None)
TEA = ProductView(3, "tea", "乌龙茶", "Oolong Tea", 500, None, "CNY", False, "sold_out")
ITEMS = (COLA, WATER, TEA)
PAY_URL = "https://pay.example.com/p/vm-001/ord_42?a=150&c=CNY&s=2&e=1700000120&sig=Zm9vYmFy"
NOW = 1_700_000_000


def qr_view(seq=3, url=PAY_URL, now=NOW) -> View:
    return View(Screen.QR, ITEMS, slot=2, product=WATER, amount=150, currency="CNY", qr_url=url,
                expires_at=NOW + 120, order_id="ord_42", now=now, seq=seq)


def decode(image: Image.Image) -> list[str]:
    return [r.text for r in zxingcpp.read_barcodes(image)]


def qr_block(output: str) -> str:
    """The half-block lines the terminal display drew between the order line and the URL."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("order ")) + 1
    end = next(i for i, line in enumerate(lines) if line.startswith("pay: "))
    return "\n".join(lines[start:end])


@pytest.fixture
def terminal():
    out = io.StringIO()
    display = TerminalDisplay(out)
    display.start()
    yield display, out
    display.stop()


# ---- terminal -------------------------------------------------------------------------------

@pytest.mark.parametrize("invert", [False, True])
def test_terminal_draws_a_scannable_qr(invert):
    out = io.StringIO()
    display = TerminalDisplay(out, invert=invert)
    display.start()
    display.show(qr_view())
    assert display.flush(10)
    display.stop()
    text = out.getvalue()
    assert "== QR == slot 2 农夫山泉 / Spring Water ¥1.50" in text
    assert "order ord_42, expires" in text and "(in 120 s)" in text
    assert f"pay: {PAY_URL}" in text
    image = qr.rasterise_terminal(qr_block(text), dark_terminal=not invert)
    assert decode(image) == [PAY_URL]


def test_terminal_prints_each_screen_change_once(terminal):
    display, out = terminal
    grid = View(Screen.GRID, ITEMS, now=NOW, seq=1)
    display.show(grid)
    assert display.flush(10)
    first = out.getvalue()
    assert first.startswith("== GRID ==\n")
    assert "    1  可口可乐 / Coca-Cola  ¥3.50\n" in first
    assert "    2  农夫山泉 / Spring Water  ¥1.50 (was ¥2.00)\n" in first
    assert "    3  乌龙茶 / Oolong Tea  ¥5.00  [sold_out]\n" in first
    # Only the clock and seq moved: a technician's scrollback is not flooded with copies.
    display.show(View(Screen.GRID, ITEMS, now=NOW + 5, seq=2))
    assert display.flush(10)
    assert out.getvalue() == first
    display.show(View(Screen.DISPENSING, ITEMS, slot=2, product=WATER, amount=150,
                      currency="CNY", now=NOW + 6, seq=3))
    assert display.flush(10)
    assert out.getvalue()[len(first):] == (
        "== DISPENSING == slot 2 农夫山泉 / Spring Water ¥1.50 - payment received, dispensing\n")


def test_terminal_texts_for_the_other_screens():
    refund = View(Screen.REFUND, ITEMS, slot=1, product=COLA, amount=350, currency="CNY",
                  refund_reason="jam", order_id="ord_9")
    assert format_view(refund) == (
        "== REFUND == slot 1 可口可乐 / Coca-Cola [jam] The product got stuck. "
        "The payment of ¥3.50 will be refunded.\norder ord_9\n")
    kept = View(Screen.REFUND, ITEMS, slot=1, product=COLA, amount=350, currency="CNY",
                refund_reason="uncertain", refunded=False)
    assert "contact the operator" in format_view(kept)
    thanks = View(Screen.THANKS, ITEMS, slot=1, product=COLA, follow_qr_url="https://ex.com/f")
    assert format_view(thanks).endswith("follow us: https://ex.com/f\n")
    oos = View(Screen.OUT_OF_SERVICE, (), reason="board_offline")
    assert format_view(oos) == "== OUT OF SERVICE == reason: board_offline\n"
    ordering = View(Screen.ORDERING, ITEMS, slot=2, product=WATER, amount=150, currency="CNY")
    assert "preparing the QR" in format_view(ordering)
    assert "minted offline" in format_view(View(**{**qr_view().__dict__, "offline": True}))


def test_terminal_survives_an_ascii_only_console():
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    display = TerminalDisplay(stream)
    display.start()
    display.show(View(Screen.REFUND, ITEMS, slot=1, product=COLA, amount=350, currency="CNY",
                      refund_reason="jam"))
    assert display.flush(10)
    display.stop()
    assert b"The product got stuck." in raw.getvalue()


# ---- PNG file -------------------------------------------------------------------------------

def test_png_sink_writes_a_decodable_qr_and_a_sidecar(tmp_path):
    path = tmp_path / "screen.png"
    display = PngDisplay(path, size_px=400)
    display.start()
    try:
        display.show(qr_view(seq=3))
        assert display.flush(10)
        image = Image.open(path)
        assert image.size == (400, 400)
        assert decode(image) == [PAY_URL]
        sidecar = json.loads((tmp_path / "screen.json").read_text("utf-8"))
        assert sidecar["image"] == "qr" and sidecar["png"] == "screen.png"
        assert sidecar["view"]["seq"] == 3 and sidecar["view"]["qr_url"] == PAY_URL
        assert sidecar["view"]["product"]["name_zh"] == "农夫山泉"

        # The thanks screen's follow-us QR never lands in the payment image.
        display.show(View(Screen.THANKS, ITEMS, slot=2, product=WATER,
                          follow_qr_url="https://example.com/follow", seq=4))
        assert display.flush(10)
        assert decode(Image.open(path)) == []
        sidecar = json.loads((tmp_path / "screen.json").read_text("utf-8"))
        assert sidecar["image"] == "status"
        assert sidecar["view"]["follow_qr_url"] == "https://example.com/follow"
    finally:
        display.stop()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["screen.json", "screen.png"]  # no temp files


def test_png_sink_replaces_the_qr_when_the_order_changes(tmp_path):
    display = PngDisplay(tmp_path / "screen.png")
    display.start()
    other = PAY_URL.replace("ord_42", "ord_43")
    display.show(qr_view(seq=1))
    display.show(qr_view(seq=2, url=other))
    assert display.flush(10)
    display.stop()
    assert decode(Image.open(tmp_path / "screen.png")) == [other]


def test_png_sink_status_image_for_other_screens(tmp_path):
    display = PngDisplay(tmp_path / "screen.png", size_px=240)
    display.start()
    display.show(View(Screen.REFUND, ITEMS, amount=350, currency="CNY", refund_reason="jam"))
    assert display.flush(10)
    display.stop()
    image = Image.open(tmp_path / "screen.png").convert("L")
    assert image.size == (240, 240)
    assert image.getextrema() == (0, 255)            # not blank: the status line is drawn


@pytest.mark.parametrize("path, match", [
    ("missing-dir/screen.png", "does not exist"),
    ("screen.json", "sidecar"),
])
def test_png_sink_rejects_bad_paths(tmp_path, path, match):
    with pytest.raises(ValueError, match=match):
        PngDisplay(tmp_path / path)


def test_png_sink_rejects_bad_size(tmp_path):
    with pytest.raises(ValueError, match="size_px"):
        PngDisplay(tmp_path / "s.png", size_px=10)
