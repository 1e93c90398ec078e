"""The customer's side, end to end: real headless Chromium on the kiosk page of the real daemon
process (Rig: mosquitto, board emulator on a pty, sandbox cloud), and a second page as the
customer's phone on the sandbox pay page the QR leads to.

The QR is read back from a screenshot, as a phone would read it off the panel. Screenshots for
people to look at go to test-artifacts/ (git-ignored).
"""
from __future__ import annotations

import io
import re

import pytest
import zxingcpp
from PIL import Image

from tests.browser import artifact     # the browser and page_at fixtures come via conftest
from vending.sandbox.rig import Rig

pytestmark = [pytest.mark.broker, pytest.mark.browser]

GUARD = 15.0                       # seconds: hang-guards only, never a performance claim
FOLLOW_URL = "https://example.com/follow/VM-0001"


@pytest.fixture
def make_kiosk_rig(make_rig):
    def make(**opts) -> Rig:
        rig = make_rig(display="kiosk", **opts)
        rig.kiosk_url = rig.wait(rig.logged_kiosk_url, GUARD, what="the kiosk page to be served")
        return rig
    return make


def open_kiosk(page_at, rig: Rig, size=(800, 480)):
    page = page_at(*size)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    page.goto(rig.kiosk_url)
    wait_screen(page, "grid")
    return page


def wait_screen(page, screen: str) -> None:
    page.wait_for_selector(f'body[data-screen="{screen}"]', timeout=GUARD * 1000)


def choose(page, slot: int) -> None:
    page.click(f'button.product[data-slot="{slot}"]')
    wait_screen(page, "pay")
    page.wait_for_selector("#qr.loaded", timeout=GUARD * 1000)


def shot(page, name: str) -> Image.Image:
    # animations="disabled" ends the screens' fade-in at once, so the picture is the settled one
    png = page.screenshot(path=str(artifact(name)), animations="disabled")
    return Image.open(io.BytesIO(png))


def qr_texts(image: Image.Image) -> list[str]:
    return [r.text for r in zxingcpp.read_barcodes(image)
            if r.format == zxingcpp.BarcodeFormat.QRCode]


def the_order(rig: Rig) -> dict:
    orders = rig.wait(lambda: [o for o in rig.cloud.orders() if o["state"] == "pending"],
                      GUARD, what="a pending order at the cloud")
    assert len(orders) == 1
    return orders[0]


def test_a_customer_buys_with_the_phone_and_the_kiosk_says_thanks(make_kiosk_rig, page_at):
    rig = make_kiosk_rig()
    kiosk = open_kiosk(page_at, rig)
    tall = open_kiosk(page_at, rig, (1080, 1920))     # a second panel: same views, pushed
    shot(kiosk, "e2e-grid-800x480.png")
    shot(tall, "e2e-grid-1080x1920.png")

    choose(kiosk, 3)
    order = the_order(rig)
    assert order["slot"] == 3 and order["amount"] == 400
    assert qr_texts(shot(kiosk, "e2e-qr-800x480.png")) == [order["qr_url"]]
    tall.wait_for_selector("#qr.loaded", timeout=GUARD * 1000)
    assert qr_texts(shot(tall, "e2e-qr-1080x1920.png")) == [order["qr_url"]]
    assert re.fullmatch(r"\d+:\d\d", kiosk.text_content("#countdown"))

    phone = page_at(390, 844)
    phone.goto(order["qr_url"])
    assert phone.get_attribute("#status", "data-state") == "pending"
    assert "¥4.00" in phone.text_content("#amount")
    phone.check('input[name="provider"][value="alipay"]')
    phone.click("#pay")
    phone.wait_for_selector('#status[data-state="paid"]', timeout=GUARD * 1000)
    shot(phone, "e2e-paypage-paid.png")

    wait_screen(kiosk, "thanks")
    shot(kiosk, "e2e-thanks-800x480.png")
    wait_screen(tall, "thanks")
    shot(tall, "e2e-thanks-1080x1920.png")
    assert kiosk.is_hidden("#follow")                 # no follow_qr_url configured
    payment = rig.cloud.order(order["order_id"])["payment"]
    assert payment["provider"] == "alipay"
    result = rig.wait_result(payment["txn_id"])
    assert result["result"] == "ok" and result["slot"] == 3
    assert rig.dispenses() == 1 and rig.dispenses(result["vend_id"]) == 1
    assert [e.slot for e in rig.emulator.ledger() if e.kind == "vend"] == [3]
    assert kiosk.errors == [] and tall.errors == []


def test_a_jammed_slot_shows_the_refund_notice_with_the_reason(make_kiosk_rig, page_at):
    rig = make_kiosk_rig()
    rig.emulator.inject(2, "jam")
    kiosk = open_kiosk(page_at, rig)
    choose(kiosk, 2)
    payment = rig.cloud.pay(the_order(rig)["order_id"])
    wait_screen(kiosk, "refund")
    assert kiosk.get_attribute("#refund-reason", "data-reason") == "jam"
    assert "卡住" in kiosk.text_content("#refund-reason")
    assert "¥2.00" in kiosk.text_content("#refund-money")
    kiosk.click("#lang-toggle")
    assert "stuck" in kiosk.text_content("#refund-reason")
    assert "refunded" in kiosk.text_content("#refund-money")
    shot(kiosk, "e2e-refund-jam-800x480-en.png")
    result = rig.wait_result(payment["txn_id"])
    assert result["result"] == "jam" and result["refund"] is True
    assert rig.dispenses() == 0


def test_the_countdown_runs_out_and_the_order_is_cancelled(make_kiosk_rig, page_at):
    rig = make_kiosk_rig(session_timeout=5)   # long enough to see the QR, short to wait out
    kiosk = open_kiosk(page_at, rig)
    choose(kiosk, 1)
    order = the_order(rig)
    assert re.fullmatch(r"0:0[0-5]", kiosk.text_content("#countdown"))
    wait_screen(kiosk, "grid")
    assert rig.cloud.wait_for(
        lambda: rig.cloud.order(order["order_id"])["state"] == "cancelled", GUARD)
    assert kiosk.is_hidden("#qr")
    assert rig.dispenses() == 0


def test_the_language_toggle_switches_zh_and_en_and_persists(make_kiosk_rig, page_at):
    rig = make_kiosk_rig()
    kiosk = open_kiosk(page_at, rig)
    cola = 'button.product[data-slot="1"] .name'
    assert kiosk.text_content(".grid-title") == "请选择商品"
    assert kiosk.text_content(cola) == "可乐 330ml"
    assert kiosk.text_content("#lang-toggle") == "English"
    kiosk.click("#lang-toggle")
    assert kiosk.text_content(".grid-title") == "Choose a product"
    assert kiosk.text_content(cola) == "Cola 330ml"
    assert kiosk.text_content("#lang-toggle") == "中文"
    assert kiosk.get_attribute("html", "lang") == "en"
    shot(kiosk, "e2e-grid-800x480-en.png")
    kiosk.reload()
    wait_screen(kiosk, "grid")
    assert kiosk.text_content(".grid-title") == "Choose a product"
    kiosk.click("#lang-toggle")
    assert kiosk.text_content(cola) == "可乐 330ml"


def test_the_follow_us_qr_is_for_first_time_payers_only(make_kiosk_rig, page_at):
    rig = make_kiosk_rig(follow_qr_url=FOLLOW_URL)
    kiosk = open_kiosk(page_at, rig)
    for first_time in (True, False):
        wait_screen(kiosk, "grid")
        choose(kiosk, 1)
        order = the_order(rig)
        rig.cloud.pay(order["order_id"], payer="wx-openid-42")
        wait_screen(kiosk, "thanks")
        if first_time:
            kiosk.wait_for_selector("#follow-qr.loaded", timeout=GUARD * 1000)
            assert qr_texts(shot(kiosk, "e2e-thanks-follow-800x480.png")) == [FOLLOW_URL]
        else:
            assert kiosk.is_hidden("#follow")
            assert qr_texts(shot(kiosk, "e2e-thanks-returning-800x480.png")) == []
    assert rig.wait(lambda: rig.dispenses() == 2, GUARD, what="two dispenses")
