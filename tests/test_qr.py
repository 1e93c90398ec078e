"""vending.qr: every rendering is decoded by a real QR reader (zxing-cpp) and checked module for
module against the matrix."""
from __future__ import annotations

import io

import pytest
import qrcode
import zxingcpp
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from qrcode.constants import ERROR_CORRECT_M
from qrcode.exceptions import DataOverflowError

from tests.vectors import VECTORS
from vending.qr import (
    QUIET_ZONE,
    QrCode,
    QrError,
    make_qr,
    rasterise_terminal,
    to_image,
    to_png,
    to_terminal,
)

OFFLINE_URL = VECTORS["offline_qr"]["url"]
TEXTS = [
    OFFLINE_URL,
    "https://pay.example.test/q/o-20261125-0001",
    "weixin://wxpay/bizpayurl?pr=Ab3dEf9",
    "售货机付款 ¥3.50 — Grüße",
    "0123456789" * 30,  # numeric mode, version > 1
]


def decode(image: Image.Image) -> list[str]:
    # try_invert=False: a code drawn in the wrong polarity must not pass as readable.
    return [r.text for r in zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode,
                                                   try_invert=False)]


def matrix_from_image(image: Image.Image, n: int) -> tuple[tuple[bool, ...], ...]:
    """Read the modules back, asserting each module is a solid whole-pixel square."""
    size = image.width
    scale = size // n
    offset = (size - n * scale) // 2
    pixels = image.convert("L").tobytes()
    rows = []
    for my in range(n):
        row = []
        for mx in range(n):
            block = {pixels[(offset + my * scale + dy) * size + offset + mx * scale + dx]
                     for dy in range(scale) for dx in range(scale)}
            assert block in ({0}, {255}), f"module {mx},{my} is not crisp: {block}"
            row.append(block == {0})
        rows.append(tuple(row))
    return tuple(rows)


def png_image(data: bytes) -> Image.Image:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("size_px", [320, 480, 333, None])
def test_png_decodes_and_is_crisp(text, size_px):
    qr = make_qr(text)
    size_px = size_px or qr.size  # the smallest legal rendering: one pixel per module
    image = png_image(to_png(qr, size_px))
    assert image.size == (size_px, size_px)
    assert decode(image) == [text]
    assert matrix_from_image(image, qr.size) == qr.modules
    # Everything outside the code is white background, and the margins are even to a pixel.
    scale = size_px // qr.size
    offset = (size_px - qr.size * scale) // 2
    far = size_px - offset - qr.size * scale
    assert abs(far - offset) <= 1
    grey = image.convert("L")
    for box in [(0, 0, size_px, offset), (0, 0, offset, size_px),
                (0, size_px - far, size_px, size_px), (size_px - far, 0, size_px, size_px)]:
        if box[2] > box[0] and box[3] > box[1]:
            assert grey.crop(box).getextrema() == (255, 255)


@pytest.mark.parametrize("text", TEXTS)
def test_matrix_is_ecc_m_smallest_version_with_quiet_zone(text):
    qr = make_qr(text)
    n = qr.size
    assert QUIET_ZONE == 4 and n == 17 + 4 * qr.version + 8
    assert all(len(row) == n for row in qr.modules)
    for i in range(QUIET_ZONE):
        assert not any(qr.modules[i]) and not any(qr.modules[n - 1 - i])
        assert not any(row[i] or row[n - 1 - i] for row in qr.modules)
    # Finder pattern's dark corner just inside the quiet zone.
    assert qr.modules[QUIET_ZONE][QUIET_ZONE]
    result = zxingcpp.read_barcodes(to_image(qr, n * 4), try_invert=False)[0]
    assert result.ec_level == "M" and result.format == zxingcpp.BarcodeFormat.QRCode
    if qr.version > 1:
        smaller = qrcode.QRCode(version=qr.version - 1, error_correction=ERROR_CORRECT_M,
                                border=QUIET_ZONE)
        smaller.add_data(text.encode("utf-8"))
        with pytest.raises(DataOverflowError):
            smaller.make(fit=False)


def test_typical_urls_stay_small():
    assert make_qr("https://pay.example.test/q/o-20261125-0001").version <= 3
    assert make_qr(OFFLINE_URL).version <= 8  # 57 modules: 5 px each on a 320 px display


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("invert", [False, True])
def test_terminal_rendering_decodes_on_the_matching_terminal(text, invert):
    qr = make_qr(text)
    out = to_terminal(qr, invert=invert)
    lines = out.split("\n")
    assert len(lines) == (qr.size + 1) // 2
    assert all(len(line) == qr.size for line in lines)
    assert set(out) <= set(" \u2580\u2584\u2588\n")
    # QR sizes are odd: the last line's lower halves lie below the code, in plain background.
    assert qr.size % 2 == 1 and set(lines[-1]) <= {" ", "\u2580"}
    dark_terminal = not invert
    image = rasterise_terminal(out, dark_terminal=dark_terminal, px_per_module=4, margin=0)
    # Read back the modules as the matching terminal shows them: the code itself, either way.
    shown = matrix_from_image(image.crop((0, 0, qr.size * 4, qr.size * 4)), qr.size)
    assert shown == qr.modules
    assert decode(rasterise_terminal(out, dark_terminal=dark_terminal)) == [text]
    # The other terminal shows a negative, which strict readers refuse: polarity matters.
    assert decode(rasterise_terminal(out, dark_terminal=not dark_terminal)) == []


def test_default_terminal_output_inks_the_quiet_zone_for_dark_terminals():
    qr = make_qr("x")
    first = to_terminal(qr).split("\n")[0]
    assert first == "\u2588" * qr.size
    assert to_terminal(qr, invert=True).split("\n")[0] == " " * qr.size


@settings(max_examples=15, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1,
               max_size=300))
def test_arbitrary_ascii_roundtrips_through_png(text):
    qr = make_qr(text)
    assert decode(to_image(qr, qr.size * 3)) == [text]


@pytest.mark.parametrize("bad", ["", None, b"https://x", "\ud800", "x" * 2400])
def test_make_qr_refuses(bad):
    with pytest.raises(QrError):
        make_qr(bad)


def test_largest_fitting_text_works():
    text = "A" * 1800  # alphanumeric mode; v40-M holds 3391 such characters
    assert make_qr(text).version <= 40


def test_render_errors_are_typed():
    qr = make_qr("https://pay.example.test/q/o-1")
    for size in [qr.size - 1, 0, -5, 320.0, True]:
        with pytest.raises(QrError):
            to_png(qr, size)
    with pytest.raises(QrError):
        to_png(QrCode(text="x", modules=()), 320)
    with pytest.raises(QrError, match="line 1, column 2"):
        rasterise_terminal(" x")
    with pytest.raises(QrError):
        rasterise_terminal(None)


def test_qrcode_is_immutable_value():
    a, b = make_qr("same"), make_qr("same")
    assert a == b and hash(a) == hash(b)
    with pytest.raises(AttributeError):
        a.text = "other"  # type: ignore[misc]


def test_module_has_no_mutable_globals():
    import vending.qr as module
    for name, value in vars(module).items():
        if not name.startswith("__"):
            assert not isinstance(value, (list, dict, set, bytearray)), name
