"""The kiosk page in real headless Chromium, driven by views we construct.

The QR is read back from a screenshot, as a customer's phone would read it from the panel.
Screenshots for people to look at go to test-artifacts/ (git-ignored).
"""
from __future__ import annotations

import http.server
import io
import queue
import threading
import time

import pytest
import zxingcpp
from PIL import Image

from tests.browser import artifact, browser, page_at  # noqa: F401  (fixtures)
from vending.display.kiosk import KioskServer
from vending.display.view import Cancel, ProductView, Screen, Select, View

pytestmark = pytest.mark.browser

GUARD = 10.0        # seconds: hang-guards only, never a performance claim
SIZES = [(800, 480), (1080, 1920)]
PRODUCTS = (
    ProductView(1, "cola", "可口可乐", "Coca-Cola", 350, None, "CNY", True, None),
    ProductView(2, "water", "农夫山泉", "Spring Water", 200, 150, "CNY", True, None),
    ProductView(3, "tea", "东方树叶 乌龙茶", "Oriental Leaf Oolong Tea", 500, None, "CNY", False,
                "sold_out"),
    ProductView(4, "coffee", "雀巢咖啡", "Nescafé Coffee", 600, None, "CNY", True, None),
    ProductView(5, "juice", "橙汁", "Orange Juice", 450, 399, "CNY", True, None),
    ProductView(6, "milk", "纯牛奶", "Milk", 300, None, "CNY", False, "disabled"),
    ProductView(7, "chips", "薯片", "Potato Chips", 650, None, "CNY", True, None),
    ProductView(8, "choc", "巧克力", "Chocolate Bar", 800, None, "CNY", True, None),
)
WATER = PRODUCTS[1]
COLA = PRODUCTS[0]
PAY_URL = ("https://pay.example.com/p/vm-001/ord_8f3a2c91d4?a=150&c=CNY&s=2&e=1700000120"
           "&sig=q3Jk1t0Yl2cN9rX5e4bQvA8mWzP7uHs6dFgTiLoKy0E")
FOLLOW_URL = "https://example.com/follow/vm-001"


class Kiosk:
    """A KioskServer plus the inputs it reported and a seq counter, as the controller has."""

    def __init__(self, lang: str = "zh") -> None:
        self.inputs: queue.Queue = queue.Queue()
        self.server = KioskServer("127.0.0.1", 0, self.inputs.put, lang=lang)
        self.server.start()
        self.seq = 0

    def show(self, screen: Screen, **fields) -> View:
        self.seq += 1
        fields.setdefault("now", int(time.time()))
        view = View(screen, PRODUCTS, seq=self.seq, **fields)
        self.server.show(view)
        return view

    def next_input(self):
        return self.inputs.get(timeout=GUARD)


@pytest.fixture
def kiosk():
    k = Kiosk()
    yield k
    k.server.stop()


def open_kiosk(page_at, kiosk, size=(800, 480), lang=None):
    page = page_at(*size)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.errors = errors
    page.goto(kiosk.server.url)
    if lang:
        page.locator("#lang-toggle").wait_for()
        if page.locator("body").get_attribute("data-lang") != lang:
            page.click("#lang-toggle")
    return page


def wait_view(page, view: View) -> None:
    """Until the page has rendered `view` (it marks the seq on <body>)."""
    page.wait_for_selector(f"body[data-seq='{view.seq}']", state="attached")


def screenshot(page, name: str | None = None) -> Image.Image:
    png = page.screenshot(animations="disabled")
    if name:
        artifact(name).write_bytes(png)
    return Image.open(io.BytesIO(png))


def decoded(image: Image.Image) -> list[str]:
    return [r.text for r in zxingcpp.read_barcodes(image)]


def pay_view(kiosk, seconds_left=120, url=PAY_URL, now=None) -> View:
    now = int(time.time()) if now is None else now
    return kiosk.show(Screen.QR, slot=2, product=WATER, amount=150, currency="CNY", qr_url=url,
                      expires_at=now + seconds_left, order_id="ord_8f3a2c91d4", now=now)


# ---- grid -----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
def test_grid_shows_the_planogram(page_at, kiosk, size):
    page = open_kiosk(page_at, kiosk, size)
    wait_view(page, kiosk.show(Screen.GRID))
    cards = page.locator("#products button.product")
    assert cards.count() == len(PRODUCTS)
    water = page.locator("button.product[data-slot='2']")
    assert water.locator(".name").text_content() == "农夫山泉"
    assert water.locator(".name-alt").text_content() == "Spring Water"
    assert water.locator("s.regular").text_content() == "¥2.00"         # struck through
    assert water.locator(".now.promo").text_content() == "¥1.50"
    assert page.locator("button.product[data-slot='1'] .now").text_content() == "¥3.50"
    assert page.locator("button.product[data-slot='1'] s").count() == 0
    tea = page.locator("button.product[data-slot='3']")
    assert tea.is_disabled() and tea.get_attribute("data-reason") == "sold_out"
    assert tea.locator(".badge").text_content() == "售罄"
    assert page.locator("button.product[data-slot='6'] .badge").text_content() == "暂停销售"
    screenshot(page, f"kiosk-grid-{size[0]}x{size[1]}.png")
    page.click("#lang-toggle")
    assert tea.locator(".badge").text_content() == "Sold out"
    assert water.locator(".name").text_content() == "Spring Water"
    screenshot(page, f"kiosk-grid-{size[0]}x{size[1]}-en.png")
    assert page.errors == []


def test_touching_a_product_selects_it_and_unavailable_ones_do_nothing(page_at, kiosk):
    page = open_kiosk(page_at, kiosk)
    wait_view(page, kiosk.show(Screen.GRID))
    page.click("button.product[data-slot='3']", force=True)      # sold out: no request at all
    page.click("button.product[data-slot='5']")
    assert kiosk.next_input() == Select(5)                       # the first input is slot 5's
    assert kiosk.inputs.empty()


# ---- ordering and QR ----------------------------------------------------------------------------

def test_ordering_is_calm_and_shows_no_qr(page_at, kiosk):
    page = open_kiosk(page_at, kiosk)
    wait_view(page, kiosk.show(Screen.ORDERING, slot=2, product=WATER, amount=150,
                               currency="CNY"))
    assert page.locator("#pay-amount").text_content() == "¥1.50"
    assert page.locator("#qr").get_attribute("src") is None      # no QR before one is verified
    assert page.locator("#qr-preparing").text_content() == "正在生成付款码…"
    assert decoded(screenshot(page)) == []


@pytest.mark.parametrize("size", SIZES)
def test_qr_screen_scans_from_the_screenshot(page_at, kiosk, size):
    page = open_kiosk(page_at, kiosk, size)
    wait_view(page, kiosk.show(Screen.ORDERING, slot=2, product=WATER, amount=150,
                               currency="CNY"))
    view = pay_view(kiosk)
    wait_view(page, view)
    page.wait_for_selector("#qr.loaded")
    assert page.locator("#pay-name").text_content() == "农夫山泉"
    assert page.locator("#pay-amount").text_content() == "¥1.50"
    hint = page.locator("#scan-hint").text_content()
    assert "微信" in hint and "支付宝" in hint and "扫码支付" in hint
    assert page.locator("#countdown").is_visible() and page.locator("#cancel").is_visible()
    # Crisp: drawn at a whole number of screen pixels per module.
    natural, shown = page.locator("#qr").evaluate("e => [e.naturalWidth, e.clientWidth]")
    assert shown % natural == 0 and shown // natural >= 4
    assert decoded(screenshot(page, f"kiosk-qr-{size[0]}x{size[1]}.png")) == [PAY_URL]
    page.click("#lang-toggle")
    assert "WeChat" in page.locator("#scan-hint").text_content()
    screenshot(page, f"kiosk-qr-{size[0]}x{size[1]}-en.png")
    assert page.errors == []


def test_countdown_runs_down_on_the_daemons_clock(page_at, kiosk):
    page = open_kiosk(page_at, kiosk)
    # The daemon's clock is 1000 s behind the browser's: the page must count from the daemon's.
    daemon_now = int(time.time()) - 1000
    wait_view(page, pay_view(kiosk, seconds_left=90, now=daemon_now))
    countdown = page.locator("#countdown")
    first = countdown.text_content()
    minutes, seconds = map(int, first.split(":"))
    assert 60 <= minutes * 60 + seconds <= 90      # not 0:00, as the browser's clock would say
    deadline = time.monotonic() + GUARD
    while countdown.text_content() == first and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    later = countdown.text_content()
    m2, s2 = map(int, later.split(":"))
    assert m2 * 60 + s2 < minutes * 60 + seconds


def test_an_expired_qr_is_taken_off_the_screen(page_at, kiosk):
    page = open_kiosk(page_at, kiosk)
    wait_view(page, pay_view(kiosk, seconds_left=-5))
    page.wait_for_selector("#qr-expired", state="visible")
    assert page.locator("#countdown").text_content() == "0:00"
    assert not page.locator("#qr").is_visible()
    assert decoded(screenshot(page)) == []
    # The next order's QR is not hidden by the last one's expiry (this one has no deadline).
    other = PAY_URL.replace("ord_8f3a2c91d4", "ord_00000002")
    wait_view(page, kiosk.show(Screen.QR, slot=2, product=WATER, amount=150, currency="CNY",
                               qr_url=other, order_id="ord_00000002"))
    page.wait_for_selector("#qr.loaded")
    assert page.locator("#countdown-row").is_hidden()
    assert decoded(screenshot(page)) == [other]


def test_cancel_button_cancels(page_at, kiosk):
    page = open_kiosk(page_at, kiosk)
    wait_view(page, pay_view(kiosk))
    page.click("#cancel")
    assert kiosk.next_input() == Cancel()


def test_a_new_order_replaces_the_qr(page_at, kiosk):
    page = open_kiosk(page_at, kiosk)
    wait_view(page, pay_view(kiosk))
    page.wait_for_selector("#qr.loaded")
    other = PAY_URL.replace("ord_8f3a2c91d4", "ord_00000001")
    wait_view(page, pay_view(kiosk, url=other))
    page.wait_for_selector("#qr.loaded")
    assert decoded(screenshot(page)) == [other]


# ---- outcomes -------------------------------------------------------------------------------

def test_dispensing_screen(page_at, kiosk):
    page = open_kiosk(page_at, kiosk, lang="en")
    wait_view(page, kiosk.show(Screen.DISPENSING, slot=2, product=WATER, amount=150,
                               currency="CNY"))
    assert page.locator("#screen-dispensing h1").text_content() == "Payment received"
    assert page.locator("#dispensing-name").text_content() == "Spring Water"


@pytest.mark.parametrize("size", SIZES)
def test_refund_screen_says_why_in_plain_words(page_at, kiosk, size):
    page = open_kiosk(page_at, kiosk, size, lang="en")
    view = kiosk.show(Screen.REFUND, slot=1, product=COLA, amount=350, currency="CNY",
                      refund_reason="jam", order_id="ord_8f3a2c91d4")
    wait_view(page, view)
    assert page.locator("#refund-reason").text_content() == "The product got stuck."
    assert page.locator("#refund-money").text_content() == "Your payment of ¥3.50 will be refunded."
    assert "ord_8f3a2c91d4" in page.locator("#refund-ref").text_content()
    screenshot(page, f"kiosk-refund-{size[0]}x{size[1]}-en.png")
    page.click("#lang-toggle")
    assert page.locator("#refund-reason").text_content() == "商品卡住了，未能出货。"
    assert page.locator("#refund-money").text_content() == "您支付的 ¥3.50 将原路退回。"
    screenshot(page, f"kiosk-refund-{size[0]}x{size[1]}.png")


@pytest.mark.parametrize("reason, words", [
    ("no_drop", "did not drop"), ("empty", "sold out"), ("timeout", "took too long"),
    ("late", "after the order had closed"), ("mismatch", "did not match"),
    ("duplicate", "already been paid"), ("board_offline", "could not dispense"),
    ("uncertain", "could not confirm"), ("something_new", "Something went wrong"),
])
def test_every_refund_reason_has_words(page_at, kiosk, reason, words):
    page = open_kiosk(page_at, kiosk, lang="en")
    wait_view(page, kiosk.show(Screen.REFUND, amount=350, currency="CNY", refund_reason=reason))
    assert words in page.locator("#refund-reason").text_content()


def test_unrefunded_uncertain_outcome_says_contact_the_operator(page_at, kiosk):
    page = open_kiosk(page_at, kiosk, lang="en")
    wait_view(page, kiosk.show(Screen.REFUND, amount=350, currency="CNY",
                               refund_reason="uncertain", refunded=False, order_id="ord_7"))
    assert page.locator("#refund-money").text_content() == "Please contact the operator for help."
    assert "refunded" not in page.locator("#screen-refund").text_content()


@pytest.mark.parametrize("size", SIZES)
def test_thanks_shows_follow_qr_only_when_set(page_at, kiosk, size):
    page = open_kiosk(page_at, kiosk, size)
    wait_view(page, kiosk.show(Screen.THANKS, slot=2, product=WATER))
    assert page.locator("#screen-thanks h1").is_visible()
    assert not page.locator("#follow-qr").is_visible()
    assert decoded(screenshot(page)) == []
    wait_view(page, kiosk.show(Screen.THANKS, slot=2, product=WATER, follow_qr_url=FOLLOW_URL))
    page.wait_for_selector("#follow-qr.loaded")
    assert decoded(screenshot(page, f"kiosk-thanks-{size[0]}x{size[1]}.png")) == [FOLLOW_URL]


def test_out_of_service(page_at, kiosk):
    page = open_kiosk(page_at, kiosk, lang="en")
    wait_view(page, kiosk.show(Screen.OUT_OF_SERVICE, reason="door_open"))
    assert page.locator("#screen-out_of_service h1").text_content() == "Temporarily out of service"
    assert "Maintenance" in page.locator("#oos-reason").text_content()
    assert page.locator("#products").is_hidden()


# ---- language, connection, origin ----------------------------------------------------------------

def test_language_toggle_persists_across_reloads(page_at, kiosk):
    page = open_kiosk(page_at, kiosk)
    view = kiosk.show(Screen.GRID)
    wait_view(page, view)
    assert page.locator(".grid-title").text_content() == "请选择商品"
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    page.click("#lang-toggle")
    assert page.locator(".grid-title").text_content() == "Choose a product"
    assert page.locator("html").get_attribute("lang") == "en"
    page.reload()
    wait_view(page, view)
    assert page.locator(".grid-title").text_content() == "Choose a product"


def test_server_lang_is_the_default_for_a_fresh_kiosk(page_at):
    k = Kiosk(lang="en")
    try:
        page = open_kiosk(page_at, k)
        wait_view(page, k.show(Screen.GRID))
        assert page.locator(".grid-title").text_content() == "Choose a product"
    finally:
        k.server.stop()


def test_page_reconnects_to_a_restarted_daemon(page_at, kiosk):
    page = open_kiosk(page_at, kiosk)
    for _ in range(5):
        view = kiosk.show(Screen.GRID)
    wait_view(page, view)
    port = kiosk.server.port
    kiosk.server.stop()
    page.wait_for_selector("body[data-screen='connecting']")     # no stale screen left up
    # The new process counts seq from 1 again: the page must not ignore it as "older".
    restarted = KioskServer("127.0.0.1", port, kiosk.inputs.put)
    restarted.start()
    try:
        restarted.show(View(Screen.OUT_OF_SERVICE, PRODUCTS, reason="board_offline", seq=1,
                            now=int(time.time())))
        page.wait_for_selector("body[data-screen='out_of_service'][data-seq='1']",
                               timeout=GUARD * 1000)
    finally:
        restarted.stop()


class _AttackerPage(http.server.BaseHTTPRequestHandler):
    """Another site on the same machine that tries to make the kiosk sell."""
    target = ""

    def do_GET(self):
        body = f"""<!doctype html><script>
          fetch("{self.target}select", {{method: "POST", mode: "no-cors",
                headers: {{"Content-Type": "text/plain"}}, body: '{{"slot": 1}}'}});
          fetch("{self.target}select", {{method: "POST",
                headers: {{"Content-Type": "application/json"}}, body: '{{"slot": 1}}'}})
            .catch(() => {{ document.title = "blocked"; }});
        </script>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_cross_origin_page_cannot_select(page_at, kiosk):
    handler = type("Attacker", (_AttackerPage,), {"target": kiosk.server.url})
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        page = page_at(800, 480)
        with page.expect_response(lambda r: r.url.endswith("/select")) as refused:
            page.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        assert refused.value.status == 403
        page.wait_for_function("document.title === 'blocked'")   # preflighted one never sent
    finally:
        evil.shutdown()
        evil.server_close()
    # Nothing reached the controller; a real touch on the kiosk page still does.
    kiosk_page = open_kiosk(page_at, kiosk)
    wait_view(kiosk_page, kiosk.show(Screen.GRID))
    kiosk_page.click("button.product[data-slot='2']")
    assert kiosk.next_input() == Select(2)
    assert kiosk.inputs.empty()
