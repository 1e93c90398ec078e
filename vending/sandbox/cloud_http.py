"""The sandbox cloud's HTTP side: one loopback server for the orders API (CONTRACT §3) and the
mobile pay pages the QR leads to. The state and its rules live in `SandboxCloud`; this module
only reads requests, checks their shape and writes responses.

    /api/v1/orders...                       the orders API, signed requests only
    GET  /q/<order_id>                      pay page of an order made through the API
    GET  /p/<mid>/<order_id>?a=&c=&s=&e=&sig=   pay page of an offline order (§4), sig checked
    POST to either page URL, form `provider=wechat|alipay`: pay

A Pay on an order that is no longer pending changes nothing and says why ("already paid"), so a
double click or a reload cannot pay twice. Every page carries `<p id="status" data-state=...>`
for tests and browsers to read.
"""
from __future__ import annotations

import email.utils
import html
import json
import logging
import re
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vending.sandbox.cloud import SandboxCloud

log = logging.getLogger(__name__)

API_PREFIX = "/api"  # a path prefix, so clients must sign it as part of the target
MAX_BODY = 64 * 1024
Reply = tuple[int, str, bytes, float]  # status, content type, body, delay before answering
PROVIDERS = {"wechat": "微信支付 WeChat Pay", "alipay": "支付宝 Alipay"}
_Q = re.compile(r"/q/([A-Za-z0-9_-]{1,64})/?")
_P = re.compile(r"/p/([A-Za-z0-9_-]{1,64})/([A-Za-z0-9_-]{1,64})")

# data-state -> (HTTP status, Chinese, English)
_MESSAGES = {
    "pending": (200, "请选择支付方式", "Choose how to pay"),
    "paid": (200, "支付成功，请取货", "Paid. Please take your product"),
    "already_paid": (200, "此订单已支付", "This order is already paid"),
    "cancelled": (409, "订单已取消，未扣款", "The order was cancelled; nothing was charged"),
    "expired": (409, "订单已过期，未扣款", "The order has expired; nothing was charged"),
    "unknown": (404, "找不到此订单", "No such order"),
    "bad_sig": (403, "二维码无效", "This QR code is not valid"),
    "wrong_machine": (404, "找不到此售货机", "No such machine"),
    "conflict": (409, "二维码与订单不符", "This QR code does not match its order"),
    "bad_provider": (400, "不支持的支付方式", "Unsupported payment method"),
    "not_found": (404, "页面不存在", "Page not found"),
}


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler sleeping in "slow" mode must not hold up stop()

    def __init__(self, address: tuple[str, int], cloud: SandboxCloud):
        self.cloud = cloud
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that timed out and hung up is expected here, not worth a traceback
        log.debug("sandbox cloud: connection from %s ended badly", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server_version = "SandboxCloud/1"
    protocol_version = "HTTP/1.0"  # one request per connection, so "refuse" really refuses

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def date_time_string(self, timestamp: float | None = None) -> str:
        # the Date header follows the cloud's (possibly skewed) clock; clients learn offsets from it
        return email.utils.formatdate(self.server.cloud.clock(), usegmt=True)  # type: ignore

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("sandbox cloud: " + format, *args)

    def _serve(self, method: str) -> None:
        cloud: SandboxCloud = self.server.cloud  # type: ignore[attr-defined]
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if self.headers.get("Transfer-Encoding") or not 0 <= length <= MAX_BODY:
            status, ctype, body, delay = 400, "text/plain", b"bad or missing Content-Length\n", 0.0
        else:
            data = self.rfile.read(length) if length else b""
            status, ctype, body, delay = route(cloud, method, self.path, self.headers, data)
        if delay:
            cloud.wait_unless_stopped(delay)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def route(cloud: SandboxCloud, method: str, target: str, headers: Any, body: bytes) -> Reply:
    path, _, query = target.partition("?")
    if path.startswith(API_PREFIX + "/"):
        return _api(cloud, method, target, path[len(API_PREFIX):], headers, body)
    status, page = _page(cloud, method, path, query, body)
    return status, "text/html; charset=utf-8", page, 0.0


# --- orders API -------------------------------------------------------------------------------

def _json(status: int, obj: Any) -> Reply:
    return status, "application/json", json.dumps(obj, separators=(",", ":")).encode(), 0.0


def _api(cloud: SandboxCloud, method: str, target: str, path: str, headers: Any,
         body: bytes) -> Reply:
    mode = cloud.take_api_mode()
    if mode == "down":  # like a load balancer in front of a dead backend: no auth, no state
        reply = _json(503, {"error": "service unavailable (sandbox api mode 'down')"})
    else:
        reply = _api_call(cloud, method, target, path, headers, body, mode)
        if mode == "slow":  # the work is done, only the answer comes late: a lost reply
            reply = (*reply[:3], cloud.slow_delay)
    cloud.record_api({"method": method, "target": target, "body": body, "status": reply[0],
                      "mode": mode, "machine_id": headers.get("X-Machine-Id"),
                      "timestamp": headers.get("X-Timestamp")})
    return reply


def _api_call(cloud: SandboxCloud, method: str, target: str, path: str, headers: Any,
              body: bytes, mode: str) -> Reply:
    problem = cloud.authenticate(method, target, headers, body)
    if problem:
        return _json(401, {"error": problem})
    parts = path.strip("/").split("/")
    if parts[:2] != ["v1", "orders"] or len(parts) > 4:
        return _json(404, {"error": f"no route {method} {path[:80]}"})
    if method == "POST" and len(parts) == 2:
        try:
            req = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _json(400, {"error": "body is not JSON"})
        problem = _order_request_problem(req, cloud.machine_id)
        if problem:
            return _json(400, {"error": problem})
        return _json(*cloud.api_create({k: req[k] for k in _ORDER_FIELDS}, mode))
    if method == "GET" and len(parts) == 3:
        return _json(*cloud.api_get(parts[2]))
    if method == "POST" and len(parts) == 4 and parts[3] == "cancel":
        return _json(*cloud.api_cancel(parts[2]))
    return _json(404, {"error": f"no route {method} {path[:80]}"})


_ORDER_FIELDS = ("machine_id", "slot", "product_id", "amount", "currency", "session_id")
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CURRENCY = re.compile(r"[A-Z]{3}")


def _order_request_problem(req: Any, machine_id: str) -> str | None:
    if not isinstance(req, dict):
        return "body must be a JSON object"
    checks = (
        ("machine_id", lambda v: v == machine_id, f"must be {machine_id!r} (X-Machine-Id)"),
        ("slot", lambda v: type(v) is int and v >= 1, "must be an integer >= 1"),
        ("product_id", lambda v: isinstance(v, str) and 1 <= len(v) <= 64, "must be a string"),
        ("amount", lambda v: type(v) is int and v >= 1, "must be an integer >= 1 (minor units)"),
        ("currency", lambda v: isinstance(v, str) and _CURRENCY.fullmatch(v) is not None,
         "must be an ISO-4217 code"),
        ("session_id", lambda v: isinstance(v, str) and _ID.fullmatch(v) is not None,
         "must match [A-Za-z0-9_-]{1,64}"),
    )
    for name, ok, rule in checks:
        if name not in req:
            return f"{name} is missing"
        if not ok(req[name]):
            return f"{name} {rule}"
    return None


# --- pay pages --------------------------------------------------------------------------------

def _page(cloud: SandboxCloud, method: str, path: str, query: str,
          body: bytes) -> tuple[int, bytes]:
    if method not in ("GET", "POST"):
        return render("not_found", None, "")
    if m := _Q.fullmatch(path):
        order = cloud.order(m[1])
        state = order["state"] if order else "unknown"
    elif _P.fullmatch(path):
        # checked again on the POST: the sig, not an earlier page view, is what authorises
        problem, order = cloud.open_offline(f"{path}?{query}")
        state = order["state"] if order else problem
    else:
        return render("not_found", None, "")
    action = path + ("?" + query if query else "")
    if order is None:
        return render(state, None, action)
    if method == "POST":
        provider = urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("provider", [""])[0]
        if provider not in PROVIDERS:
            return render("bad_provider", order, action)
        state, _ = cloud.take_payment(order["order_id"], provider)
        order = cloud.order(order["order_id"]) or order
    elif state == "paid":
        state = "already_paid"
    return render(state, order, action)


def _money(amount: int | None, currency: str | None) -> str:
    if amount is None or currency is None:
        return ""
    symbol = {"CNY": "¥", "USD": "$", "EUR": "€"}.get(currency, "")
    return f"{symbol}{amount // 100}.{amount % 100:02d} {currency}"


def render(state: str, order: dict | None, action: str) -> tuple[int, bytes]:
    status, zh, en = _MESSAGES.get(state, _MESSAGES["not_found"])
    parts = [f'<p id="status" data-state="{html.escape(state)}">{html.escape(zh)}<br>'
             f'<span lang="en">{html.escape(en)}</span></p>']
    if order is not None:
        parts.insert(0, f'<p id="amount" class="amount">'
                        f'{html.escape(_money(order.get("amount"), order.get("currency")))}</p>'
                        f'<p class="order">订单 Order <code id="order-id">'
                        f'{html.escape(order["order_id"])}</code></p>')
    if state == "pending":
        choices = "".join(
            f'<label><input type="radio" name="provider" value="{value}"'
            f'{" checked" if value == "wechat" else ""}> {html.escape(label)}</label>'
            for value, label in PROVIDERS.items())
        # the button disables itself: a nicety only, the server refuses a second payment anyway
        parts.append(
            f'<form id="pay-form" method="post" action="{html.escape(action)}" '
            f'onsubmit="this.querySelector(\'button\').disabled=true">{choices}'
            f'<button id="pay" type="submit">支付 Pay</button></form>')
    page = (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<title>支付 Pay</title><style>'
        'body{font-family:sans-serif;max-width:26em;margin:2em auto;padding:0 1em;'
        'text-align:center}'
        '.amount{font-size:2.4em;font-weight:bold;margin:.3em 0}'
        'label{display:block;border:1px solid #ccc;border-radius:.5em;padding:.8em;margin:.5em 0;'
        'text-align:left}button{width:100%;padding:1em;font-size:1.2em;border:0;'
        'border-radius:.5em;background:#07c160;color:#fff}button:disabled{background:#999}'
        '#status{margin:1.2em 0;font-size:1.1em}</style></head><body>'
        + "".join(parts) + "</body></html>")
    return status, page.encode("utf-8")
