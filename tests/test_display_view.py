"""The view model, money formatting, the display factory and the render worker."""
from __future__ import annotations

import json
import threading

import pytest

from vending.display import KINDS, NullDisplay, make_display
from vending.display.kiosk import KioskServer
from vending.display.pngfile import PngDisplay
from vending.display.terminal import TerminalDisplay
from vending.display.view import (Cancel, ProductView, Screen, Select, View, format_money,
                                  view_to_json)
from vending.display.worker import LatestViewWorker

COLA = ProductView(1, "cola", "可口可乐", "Coca-Cola", 350, None, "CNY", True, None)
WATER = ProductView(2, "water", "农夫山泉", "Spring Water", 200, 150, "CNY", True, None)
TEA = ProductView(3, "tea", "乌龙茶", "Oolong Tea", 500, None, "CNY", False, "sold_out")
ITEMS = (COLA, WATER, TEA)


def test_view_to_json_is_plain_json_with_every_field():
    view = View(Screen.QR, ITEMS, slot=2, product=WATER, amount=150, currency="CNY",
                qr_url="https://pay.example/p/x", expires_at=1_700_000_120, order_id="ord_1",
                now=1_700_000_000, seq=7)
    data = view_to_json(view)
    assert json.loads(json.dumps(data, ensure_ascii=False)) == data    # nothing non-JSON inside
    assert data["screen"] == "qr"
    assert data["products"][1] == {
        "slot": 2, "product_id": "water", "name_zh": "农夫山泉", "name_en": "Spring Water",
        "price": 200, "promo_price": 150, "currency": "CNY", "available": True, "reason": None}
    assert data["products"][2]["available"] is False and data["products"][2]["reason"] == "sold_out"
    assert data["product"]["slot"] == 2
    assert (data["amount"], data["currency"], data["qr_url"]) == (150, "CNY", "https://pay.example/p/x")
    assert (data["expires_at"], data["order_id"], data["now"], data["seq"]) == (
        1_700_000_120, "ord_1", 1_700_000_000, 7)
    assert data["offline"] is False and data["refunded"] is True
    assert {"refund_reason", "follow_qr_url", "reason"} <= data.keys()


def test_view_json_for_refund_and_out_of_service():
    refund = view_to_json(View(Screen.REFUND, ITEMS, amount=350, currency="CNY",
                               refund_reason="uncertain", refunded=False))
    assert (refund["screen"], refund["refund_reason"], refund["refunded"]) == ("refund", "uncertain", False)
    oos = view_to_json(View("out_of_service", (), reason="door_open"))   # str screen coerced
    assert (oos["screen"], oos["reason"], oos["products"], oos["product"]) == (
        "out_of_service", "door_open", [], None)


def test_views_are_immutable_and_coerce_lists():
    view = View(Screen.GRID, list(ITEMS))
    assert view.products == ITEMS
    with pytest.raises(AttributeError):
        view.seq = 3                                    # type: ignore[misc]
    assert WATER.pay_price == 150 and COLA.pay_price == 350


@pytest.mark.parametrize("kwargs, match", [
    (dict(screen="dancing"), "View.screen must be one of"),
    (dict(products=("x",)), "tuple of ProductView"),
    (dict(amount=1.5), "View.amount must be an int"),
    (dict(amount=-1), "View.amount must be >= 0"),
    (dict(seq=True), "View.seq must be an int"),
    (dict(currency="cny"), "ISO 4217"),
    (dict(screen=Screen.QR), "QR view needs qr_url"),
    (dict(now="noon"), "View.now must be unix seconds"),
    (dict(qr_url=b"https://x"), "View.qr_url must be a str"),
])
def test_bad_views_fail_where_they_are_built(kwargs, match):
    args = dict(screen=Screen.GRID, products=ITEMS) | kwargs
    with pytest.raises((TypeError, ValueError), match=match):
        View(**args)


def test_bad_product_views_fail_clearly():
    with pytest.raises(ValueError, match="slot must be >= 1"):
        ProductView(0, "x", "x", "x", 100, None, "CNY", True, None)
    with pytest.raises(TypeError, match="price must be an int"):
        ProductView(1, "x", "x", "x", 1.0, None, "CNY", True, None)
    with pytest.raises(ValueError, match="ISO 4217"):
        ProductView(1, "x", "x", "x", 100, None, "RMB!", True, None)


def test_inputs_are_values():
    assert Select(3) == Select(3) and Select(3) != Select(4)
    assert Cancel() == Cancel()
    with pytest.raises(AttributeError):
        Select(3).slot = 4                               # type: ignore[misc]


@pytest.mark.parametrize("amount, currency, text", [
    (350, "CNY", "¥3.50"), (5, "CNY", "¥0.05"), (0, "CNY", "¥0.00"), (100000, "CNY", "¥1000.00"),
    (120, "JPY", "¥120"), (1999, "USD", "$19.99"), (1234, "KWD", "1.234 KWD"),
    (250, "XTS", "2.50 XTS"), (-350, "CNY", "-¥3.50"),
])
def test_format_money_from_minor_units(amount, currency, text):
    assert format_money(amount, currency) == text


def test_make_display_builds_each_kind(tmp_path):
    assert set(KINDS) == {"kiosk", "terminal", "png", "none"}
    kiosk = make_display("kiosk", on_input=lambda e: None, host="127.0.0.1", port=0, lang="en")
    assert isinstance(kiosk, KioskServer) and kiosk.lang == "en"
    assert isinstance(make_display("terminal", on_input=None), TerminalDisplay)
    png = make_display("png", on_input=None, png_path=tmp_path / "screen.png")
    assert isinstance(png, PngDisplay) and png.sidecar == tmp_path / "screen.json"
    null = make_display("none", on_input=None)
    assert isinstance(null, NullDisplay)
    null.start()
    null.show(View(Screen.GRID, ITEMS))
    null.stop()


@pytest.mark.parametrize("kind, kwargs, match", [
    ("hologram", {}, "unknown display kind 'hologram'"),
    ("kiosk", {}, "needs on_input"),
    ("png", {}, "needs png_path"),
    ("kiosk", dict(on_input=print, host="0.0.0.0"), "loopback"),
    ("kiosk", dict(on_input=print, port=70000), "port"),
    ("kiosk", dict(on_input=print, lang="fr"), "lang"),
])
def test_make_display_rejects_bad_settings(kind, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_display(kind, **kwargs)


def test_show_rejects_non_views(tmp_path):
    for display in (NullDisplay(), TerminalDisplay(), PngDisplay(tmp_path / "s.png"),
                    KioskServer("127.0.0.1", 0, print)):
        with pytest.raises(TypeError, match="takes a View"):
            display.show({"screen": "grid"})


def test_worker_coalesces_to_the_newest_view():
    gate, entered = threading.Event(), threading.Event()
    drawn = []

    def render(view):
        drawn.append(view.seq)
        entered.set()
        gate.wait(10)

    worker = LatestViewWorker(render, "test-worker")
    worker.start()
    try:
        worker.submit(View(Screen.GRID, ITEMS, seq=1))
        assert entered.wait(10)                  # seq 1 is being drawn and is stuck there
        for seq in range(2, 50):                 # the caller never waits for the stuck sink
            worker.submit(View(Screen.GRID, ITEMS, seq=seq))
        gate.set()
        assert worker.flush(10)
        assert drawn == [1, 49]                  # the stale screens in between were skipped
    finally:
        gate.set()
        worker.stop()


def test_worker_survives_a_failing_render(caplog):
    drawn = []

    def render(view):
        if view.seq == 1:
            raise OSError("disk full")
        drawn.append(view.seq)

    worker = LatestViewWorker(render, "test-worker")
    worker.start()
    worker.submit(View(Screen.GRID, ITEMS, seq=1))
    assert worker.flush(10)
    worker.submit(View(Screen.GRID, ITEMS, seq=2))
    assert worker.flush(10)
    worker.stop()
    assert drawn == [2]
    assert "disk full" in caplog.text


def test_worker_draws_what_is_pending_before_stopping():
    drawn = []
    worker = LatestViewWorker(lambda v: drawn.append(v.seq), "test-worker")
    worker.submit(View(Screen.GRID, ITEMS, seq=5))       # before start: kept, not lost
    assert worker.flush(0) is False
    worker.start()
    worker.stop()
    assert drawn == [5]
