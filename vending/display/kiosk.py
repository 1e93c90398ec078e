"""The customer touch screen: a page served on loopback to the kiosk browser.

The controller calls `show(view)`; the page receives each view over Server-Sent Events the moment
it changes (pushed, never polled), and posts touches back to /select and /cancel, which become
`Select` / `Cancel` on the `on_input` callback.

Threads meet at one place: `_latest`, an immutable `_Shown` swapped under a Condition. `show()`
only swaps it and notifies, so the controller's owner thread never waits on a browser. Each SSE
handler sleeps on the Condition and writes whatever is newest when it wakes.

Only loopback is served: the page can make the machine sell, so nothing off the box may reach it.
Cross-origin writes are refused (JSON content type, Origin, Sec-Fetch-Site) and the Host header
must be a loopback name, which also defeats DNS rebinding.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from vending.display.view import Cancel, Screen, Select, View, view_to_json

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
_STATIC_TYPES = MappingProxyType({
    "kiosk.css": "text/css; charset=utf-8",
    "kiosk.js": "text/javascript; charset=utf-8",
})
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
KEEPALIVE_S = 15.0        # SSE comment interval: finds dead clients, keeps the socket warm
MAX_BODY = 4096


@dataclass(frozen=True)
class _Shown:
    view: View
    mono: float            # time.monotonic() at show(): lets us tell the page the daemon's "now"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: the only places the kiosk page may be served."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class KioskServer:
    def __init__(self, host: str, port: int, on_input: Callable[[object], None], *,
                 lang: str = "zh") -> None:
        if not isinstance(host, str) or not is_loopback(host):
            raise ValueError(f"kiosk host must be a loopback address (127.0.0.1, ::1 or "
                             f"localhost), got {host!r}: the page can start a sale, so it is "
                             f"never served off the machine")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"kiosk port must be an int in 0..65535, got {port!r}")
        if lang not in ("zh", "en"):
            raise ValueError(f"kiosk lang must be 'zh' or 'en', got {lang!r}")
        if not callable(on_input):
            raise TypeError("on_input must be callable")
        self.host, self._port, self.lang = host, port, lang
        self.on_input = on_input
        self._files = _load_static(lang)
        self._cond = threading.Condition()
        self._latest: _Shown | None = None       # guarded by _cond
        self._stopping = False                   # guarded by _cond
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._httpd is not None:
            return
        server_cls = _Server6 if ":" in self.host else _Server
        try:
            httpd = server_cls((self.host, self._port), _Handler)
        except OSError as exc:
            raise OSError(exc.errno, f"kiosk cannot listen on {self.host}:{self._port}: "
                                     f"{exc.strerror}") from exc
        httpd.kiosk = self
        self._port = httpd.server_address[1]
        with self._cond:
            self._stopping = False
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="kiosk-http", daemon=True)
        self._thread.start()
        log.info("kiosk page at %s", self.url)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True          # wakes every SSE handler; each returns at once
            self._cond.notify_all()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> "KioskServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}/"

    # ---- the controller's side ------------------------------------------------------------
    def show(self, view: View) -> None:
        """Publish `view` to every connected page. Non-blocking: one swap under a short lock."""
        if not isinstance(view, View):
            raise TypeError(f"show() takes a View, got {type(view).__name__}")
        with self._cond:
            if self._latest is not None and view.seq < self._latest.view.seq:
                log.warning("kiosk: dropped view seq=%s older than seq=%s",
                            view.seq, self._latest.view.seq)
                return
            self._latest = _Shown(view, time.monotonic())
            self._cond.notify_all()

    # ---- the HTTP handlers' side ------------------------------------------------------------
    def latest(self) -> _Shown | None:
        with self._cond:
            return self._latest

    def wait_change(self, seen: _Shown | None, timeout: float) -> tuple[bool, _Shown | None]:
        """Block until there is a view other than `seen`, or stop, or timeout.
        Returns (stopping, latest)."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopping or self._latest is not seen, timeout)
            return self._stopping, self._latest

    def static(self, name: str) -> bytes | None:
        return self._files.get(name)


def event_payload(shown: _Shown) -> bytes:
    """One SSE message. `now` is the daemon's clock at send time, not at show(): a page that
    connects late still gets a countdown that is right."""
    now = shown.view.now + (time.monotonic() - shown.mono)
    body = json.dumps({"view": view_to_json(shown.view), "now": round(now, 3)},
                      ensure_ascii=False, separators=(",", ":"))
    return f"id: {shown.view.seq}\ndata: {body}\n\n".encode()


def render_qr_png(text: str) -> bytes:
    """One pixel per module: the page scales it by a whole number with `pixelated`, so every
    module on the panel is the same size however large the QR is drawn."""
    from vending import qr
    code = qr.make_qr(text)
    return qr.to_png(code, code.size)


def _load_static(lang: str) -> MappingProxyType:
    files = {name: (STATIC_DIR / name).read_bytes() for name in _STATIC_TYPES}
    index = (STATIC_DIR / "index.html").read_text("utf-8")
    files["index.html"] = index.replace('data-default-lang="zh"',
                                        f'data-default-lang="{lang}"').encode()
    return MappingProxyType(files)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    kiosk: KioskServer


class _Server6(_Server):
    address_family = socket.AF_INET6


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10                   # a client that stops reading cannot pin a thread forever
    server_version = "vending-kiosk"
    sys_version = ""

    @property
    def kiosk(self) -> KioskServer:
        return self.server.kiosk

    def log_message(self, fmt: str, *args: object) -> None:
        log.debug("kiosk %s " + fmt, self.address_string(), *args)

    # ---- dispatch ---------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._guard(self._get)

    def do_POST(self) -> None:
        self._guard(self._post)

    def _guard(self, handler: Callable[[], None]) -> None:
        try:
            self._check_host()
            handler()
        except _HttpError as exc:
            self._send_json(exc.status, {"error": str(exc)})
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass                                   # the browser went away; nothing to tell it
        except Exception:
            log.exception("kiosk: %s %s failed", self.command, self.path)
            try:
                self._send_json(500, {"error": "internal error"})
            except OSError:
                pass

    def _get(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        if path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", self.kiosk.static("index.html"))
        elif path.startswith("/static/") and path[8:] in _STATIC_TYPES:
            self._send(200, _STATIC_TYPES[path[8:]], self.kiosk.static(path[8:]))
        elif path == "/events":
            self._events()
        elif path in ("/qr.png", "/follow.png"):
            self._qr(path, parts.query)
        elif path == "/favicon.ico":
            self._send(204, "image/x-icon", b"")
        else:
            raise _HttpError(404, f"no such page: {path}")

    def _post(self) -> None:
        path = urlsplit(self.path).path
        if path not in ("/select", "/cancel"):
            raise _HttpError(404, f"no such action: {path}")
        self._check_same_origin()
        body = self._read_json()
        if path == "/select":
            slot = body.get("slot")
            if isinstance(slot, bool) or not isinstance(slot, int) or not 1 <= slot <= 9999:
                raise _HttpError(400, "slot must be an integer from 1 to 9999")
            event: object = Select(slot)
        else:
            event = Cancel()
        self.kiosk.on_input(event)
        self._send_json(202, {"ok": True})

    # ---- checks -----------------------------------------------------------------------------
    def _allowed_hosts(self) -> set[str]:
        port = self.kiosk.port
        host = self.kiosk.host.lower()
        names = {"127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host}
        hosts = {f"{n}:{port}" for n in names}
        return hosts | names if port == 80 else hosts

    def _check_host(self) -> None:
        host = (self.headers.get("Host") or "").lower()
        if host not in self._allowed_hosts():
            raise _HttpError(403, "this page is served to the machine's own screen only")

    def _check_same_origin(self) -> None:
        origin = self.headers.get("Origin")
        if origin is not None and origin.lower() != f"http://{self.headers.get('Host', '').lower()}":
            raise _HttpError(403, "cross-origin request refused")
        site = self.headers.get("Sec-Fetch-Site")
        if site is not None and site != "same-origin":
            raise _HttpError(403, "cross-site request refused")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise _HttpError(415, "Content-Type must be application/json")

    def _read_json(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise _HttpError(411, "Content-Length required")
        if int(length) > MAX_BODY:
            raise _HttpError(413, "request body too large")
        raw = self.rfile.read(int(length))
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise _HttpError(400, "body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _HttpError(400, "body must be a JSON object")
        return body

    # ---- responses --------------------------------------------------------------------------
    def _events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(b"retry: 1000\n\n")       # reconnect quickly after a daemon restart
        self.wfile.flush()
        seen: _Shown | None = None
        while True:
            stopping, latest = self.kiosk.wait_change(seen, KEEPALIVE_S)
            if stopping:
                return
            if latest is seen:
                self.wfile.write(b": keepalive\n\n")
            else:
                self.wfile.write(event_payload(latest))
                seen = latest
            self.wfile.flush()

    def _qr(self, path: str, query: str) -> None:
        seq = parse_qs(query).get("seq", [""])[0]
        if not seq.isdigit():
            raise _HttpError(400, "seq must be the view's sequence number")
        latest = self.kiosk.latest()
        # Only the QR of the view on screen right now: an older seq may belong to an order that
        # is already closed, and that QR must never be shown again.
        if latest is None or latest.view.seq != int(seq):
            raise _HttpError(404, "that view is no longer current")
        view = latest.view
        if path == "/qr.png":
            text = view.qr_url if view.screen is Screen.QR else None
        else:
            text = view.follow_qr_url if view.screen is Screen.THANKS else None
        if not text:
            raise _HttpError(404, "the current view has no such QR")
        self._send(200, "image/png", render_qr_png(text))

    def _send_json(self, status: int, obj: dict) -> None:
        self._send(status, "application/json", json.dumps(obj).encode())

    def _send(self, status: int, ctype: str, body: bytes | None) -> None:
        if body is None:
            raise _HttpError(404, "not found")
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", _CSP)
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        self.wfile.write(body)
