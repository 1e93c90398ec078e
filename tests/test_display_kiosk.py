"""The kiosk server over plain HTTP: SSE push, input endpoints, origin checks, lifecycle.
(The page itself is driven in a real browser in test_display_browser.py.)"""
from __future__ import annotations

import http.client
import io
import json
import queue
import socket
from urllib.parse import urlsplit

import pytest
import zxingcpp
from PIL import Image

from vending.display.kiosk import KioskServer
from vending.display.view import Cancel, ProductView, Screen, Select, View

COLA = ProductView(1, "cola", "可口可乐", "Coca-Cola", 350, None, "CNY", True, None)
WATER = ProductView(2, "water", "农夫山泉", "Spring Water", 200, 150, "CNY", True, None)
ITEMS = (COLA, WATER)
PAY_URL = "https://pay.example.com/p/vm-001/ord_42?a=150&c=CNY&s=2&e=1700000120&sig=Zm9vYmFy"
NOW = 1_700_000_000
GUARD = 10          # seconds: a hang-guard only


def grid(seq=1) -> View:
    return View(Screen.GRID, ITEMS, now=NOW, seq=seq)


def qr_view(seq=2, url=PAY_URL) -> View:
    return View(Screen.QR, ITEMS, slot=2, product=WATER, amount=150, currency="CNY", qr_url=url,
                expires_at=NOW + 120, order_id="ord_42", now=NOW, seq=seq)


@pytest.fixture
def inputs():
    return queue.Queue()


@pytest.fixture
def kiosk(inputs):
    server = KioskServer("127.0.0.1", 0, inputs.put)
    server.start()
    yield server
    server.stop()


class Sse:
    """A minimal EventSource: one message at a time, as JSON."""

    def __init__(self, kiosk: KioskServer) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", kiosk.port, timeout=GUARD)
        self.conn.request("GET", "/events", headers={"Host": f"127.0.0.1:{kiosk.port}"})
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200
        assert self.resp.getheader("Content-Type").startswith("text/event-stream")

    def next(self) -> dict:
        data: list[bytes] = []
        while True:
            line = self.resp.fp.readline()
            if not line:
                raise EOFError("the server closed the stream")
            line = line.rstrip(b"\r\n")
            if not line and data:
                return json.loads(b"\n".join(data))
            if line.startswith(b"data:"):
                data.append(line[5:].strip())

    def close(self) -> None:
        self.conn.close()


def request(kiosk, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", kiosk.port, timeout=GUARD)
    hdrs = {"Host": f"127.0.0.1:{kiosk.port}"}
    hdrs.update(headers or {})
    conn.request(method, path, body=body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, resp.getheader("Content-Type"), data


def post_json(kiosk, path, obj, **headers):
    return request(kiosk, "POST", path, json.dumps(obj).encode(),
                   {"Content-Type": "application/json", **headers})


# ---- the page and the push ------------------------------------------------------------------

def test_port_zero_gives_a_real_url_and_the_page(kiosk):
    assert kiosk.port > 0 and kiosk.url == f"http://127.0.0.1:{kiosk.port}/"
    status, ctype, body = request(kiosk, "GET", "/")
    assert status == 200 and ctype.startswith("text/html")
    assert b'data-default-lang="zh"' in body and b"/static/kiosk.js" in body
    for name, kind in (("kiosk.js", "text/javascript"), ("kiosk.css", "text/css")):
        status, ctype, _ = request(kiosk, "GET", f"/static/{name}")
        assert status == 200 and ctype.startswith(kind)
    assert request(kiosk, "GET", "/static/../kiosk.py")[0] == 404
    assert request(kiosk, "GET", "/nope")[0] == 404


def test_lang_sets_the_page_default(inputs):
    with KioskServer("127.0.0.1", 0, inputs.put, lang="en") as server:
        assert b'data-default-lang="en"' in request(server, "GET", "/")[2]


def test_events_push_the_latest_view_on_connect_and_on_every_change(kiosk):
    kiosk.show(grid(seq=1))
    sse = Sse(kiosk)
    try:
        first = sse.next()
        assert first["view"]["screen"] == "grid" and first["view"]["seq"] == 1
        assert first["view"]["products"][1]["promo_price"] == 150
        assert first["now"] >= NOW                      # the daemon's clock, for the countdown
        kiosk.show(qr_view(seq=2))
        second = sse.next()
        assert second["view"]["screen"] == "qr" and second["view"]["qr_url"] == PAY_URL
        kiosk.show(grid(seq=3))
        assert sse.next()["view"]["seq"] == 3
    finally:
        sse.close()


def test_a_late_subscriber_gets_only_the_current_view(kiosk):
    for seq in range(1, 6):
        kiosk.show(grid(seq=seq))
    sse = Sse(kiosk)
    assert sse.next()["view"]["seq"] == 5
    sse.close()


def test_older_views_are_ignored(kiosk):
    kiosk.show(grid(seq=5))
    kiosk.show(qr_view(seq=4))
    assert kiosk.latest().view.seq == 5


def test_stop_ends_event_streams_promptly(inputs):
    server = KioskServer("127.0.0.1", 0, inputs.put)
    server.start()
    server.show(grid())
    sse = Sse(server)
    sse.next()
    server.stop()
    with pytest.raises(EOFError):          # well before the 10 s socket hang-guard
        sse.next()
    sse.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=GUARD).close()


def test_show_does_not_wait_for_a_stalled_client(kiosk):
    # A client that connected and never reads: show() must still just swap and return.
    stalled = socket.create_connection(("127.0.0.1", kiosk.port), timeout=GUARD)
    stalled.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{kiosk.port}\r\n\r\n".encode())
    many = tuple(ProductView(i, f"p{i}", "名" * 30, "n" * 60, 100, None, "CNY", True, None)
                 for i in range(1, 61))
    for seq in range(1, 3001):
        kiosk.show(View(Screen.GRID, many, now=NOW, seq=seq))
    assert kiosk.latest().view.seq == 3000
    stalled.close()


def test_two_kiosks_in_one_process_are_independent():
    a_in, b_in = queue.Queue(), queue.Queue()
    with KioskServer("127.0.0.1", 0, a_in.put) as a, KioskServer("127.0.0.1", 0, b_in.put) as b:
        a.show(grid(seq=1))
        b.show(qr_view(seq=9))
        assert Sse(a).next()["view"]["screen"] == "grid"
        assert Sse(b).next()["view"]["screen"] == "qr"
        post_json(a, "/select", {"slot": 1})
        post_json(b, "/cancel", {})
        assert a_in.get(timeout=GUARD) == Select(1) and b_in.get(timeout=GUARD) == Cancel()
        assert a_in.empty() and b_in.empty()


# ---- QR images ------------------------------------------------------------------------------

def test_qr_png_is_the_current_views_qr_only(kiosk):
    kiosk.show(qr_view(seq=2))
    status, ctype, body = request(kiosk, "GET", "/qr.png?seq=2")
    assert status == 200 and ctype == "image/png"
    image = Image.open(io.BytesIO(body)).convert("L")
    big = image.resize((image.width * 8, image.height * 8), Image.Resampling.NEAREST)
    assert [r.text for r in zxingcpp.read_barcodes(big)] == [PAY_URL]
    assert request(kiosk, "GET", "/qr.png?seq=1")[0] == 404        # not the view on screen
    assert request(kiosk, "GET", "/qr.png?seq=abc")[0] == 400
    assert request(kiosk, "GET", "/follow.png?seq=2")[0] == 404    # no follow QR on this screen
    kiosk.show(grid(seq=3))
    assert request(kiosk, "GET", "/qr.png?seq=2")[0] == 404        # that order left the screen
    assert request(kiosk, "GET", "/qr.png?seq=3")[0] == 404        # the grid has no QR


def test_follow_png_only_on_the_thanks_screen(kiosk):
    kiosk.show(View(Screen.THANKS, ITEMS, slot=1, product=COLA,
                    follow_qr_url="https://example.com/follow", seq=4))
    status, _, body = request(kiosk, "GET", "/follow.png?seq=4")
    assert status == 200
    image = Image.open(io.BytesIO(body)).convert("L").resize((400, 400), Image.Resampling.NEAREST)
    assert [r.text for r in zxingcpp.read_barcodes(image)] == ["https://example.com/follow"]
    assert request(kiosk, "GET", "/qr.png?seq=4")[0] == 404


# ---- input ----------------------------------------------------------------------------------

def test_select_and_cancel_reach_on_input(kiosk, inputs):
    origin = f"http://127.0.0.1:{kiosk.port}"
    status, _, body = post_json(kiosk, "/select", {"slot": 2}, Origin=origin,
                                **{"Sec-Fetch-Site": "same-origin"})
    assert status == 202 and json.loads(body) == {"ok": True}
    assert inputs.get(timeout=GUARD) == Select(2)
    assert post_json(kiosk, "/cancel", {}, Origin=origin)[0] == 202
    assert inputs.get(timeout=GUARD) == Cancel()


@pytest.mark.parametrize("headers, status", [
    ({"Origin": "http://evil.example"}, 403),
    ({"Origin": "http://127.0.0.1:1"}, 403),                # another loopback service
    ({"Origin": "null"}, 403),
    ({"Sec-Fetch-Site": "cross-site"}, 403),
    ({"Sec-Fetch-Site": "same-site"}, 403),
    ({"Host": "evil.example"}, 403),                        # DNS rebinding
    ({"Content-Type": "text/plain"}, 415),                  # a form post, no preflight
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
])
def test_cross_origin_writes_are_refused(kiosk, inputs, headers, status):
    hdrs = {"Content-Type": "application/json", **headers}
    code, _, body = request(kiosk, "POST", "/select", b'{"slot": 1}', hdrs)
    assert code == status and "error" in json.loads(body)
    assert inputs.empty()


@pytest.mark.parametrize("body, message", [
    (b"{", "not valid JSON"),
    (b"[1]", "JSON object"),
    (b'{"slot": "1"}', "slot must be an integer"),
    (b'{"slot": true}', "slot must be an integer"),
    (b'{"slot": 0}', "slot must be an integer"),
    (b"{}", "slot must be an integer"),
    (b'{"slot": 1, "x": "' + b"a" * 5000 + b'"}', "too large"),
])
def test_bad_select_bodies_get_a_clear_error(kiosk, inputs, body, message):
    status, ctype, data = request(kiosk, "POST", "/select", body,
                                  {"Content-Type": "application/json"})
    assert status in (400, 413) and ctype == "application/json"
    assert message in json.loads(data)["error"]
    assert inputs.empty()


def test_a_failing_on_input_is_a_500_not_a_dead_server(caplog):
    def broken(event):
        raise RuntimeError("controller queue closed")

    with KioskServer("127.0.0.1", 0, broken) as server:
        assert post_json(server, "/cancel", {})[0] == 500
        assert request(server, "GET", "/")[0] == 200
    assert "controller queue closed" in caplog.text


def test_get_requests_with_a_foreign_host_are_refused(kiosk):
    assert request(kiosk, "GET", "/", headers={"Host": "attacker.example:80"})[0] == 403
    assert request(kiosk, "GET", "/", headers={"Host": f"localhost:{kiosk.port}"})[0] == 200


# ---- binding --------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com", ""])
def test_non_loopback_bind_is_refused(host):
    with pytest.raises(ValueError, match="loopback"):
        KioskServer(host, 0, print)


def test_busy_port_is_a_clear_error(kiosk):
    other = KioskServer("127.0.0.1", kiosk.port, print)
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{kiosk.port}"):
        other.start()


def test_url_of_an_ipv6_loopback_kiosk():
    try:
        server = KioskServer("::1", 0, print)
        server.start()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    try:
        assert server.url == f"http://[::1]:{server.port}/"
        conn = http.client.HTTPConnection("::1", server.port, timeout=GUARD)
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        server.stop()
    assert urlsplit(server.url).hostname == "::1"
