"""`vending demo`: a whole vending machine on this host, on embedded defaults.

An MQTT broker (Debian's mosquitto, else amqtt from the optional `demo` extra), the board
emulator on a pty, the sandbox cloud (orders API and pay pages) and the real daemon with the
kiosk display, all wired by `vending.sandbox.rig.Rig`. Interactive by default: stdin lines
become board actions ("key 3", "door open", "jam 2", "power", ...). `--headless` runs one
scripted sale instead and says what happened: a smoke test for README readers and CI.

Ctrl-C / SIGTERM stop the parts in order: the daemon first (so it parks the board and says
offline), then the cloud, the emulator and the broker last.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import queue
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from vending.display.view import format_money
from vending.sandbox.broker import BrokerUnavailable, Mosquitto, find_binary
from vending.sandbox.rig import DEFAULT_PLANOGRAM, Rig, RigOptions

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GUARD = 30.0             # seconds a headless step may take before we call it hung
HELP = ("commands: key N | cancel | pay [wechat|alipay] | door open | door close | "
        "jam N | nodrop N | empty N | power | status | help | quit")


class DemoError(Exception):
    """Why the demo could not go on, in one sentence for the person who ran it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=None,
                        help="kiosk page port (default 8080, or any free one with --headless; "
                             "0 = any free port)")
    parser.add_argument("--slots", type=int, default=len(DEFAULT_PLANOGRAM),
                        help=f"how many slots the board has, 1..{len(DEFAULT_PLANOGRAM)}")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the config, key, journal and logs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp workdir on exit (a --workdir you name is always kept)")
    parser.add_argument("--headless", action="store_true",
                        help="run one scripted sale end to end, report it and exit 0 (or 1)")
    parser.add_argument("--broker", choices=("auto", "mosquitto", "python"), default="auto",
                        help="MQTT broker: mosquitto if installed, else pure-Python amqtt")


def run(args: argparse.Namespace) -> int:
    out = sys.stdout
    if not 1 <= args.slots <= len(DEFAULT_PLANOGRAM):
        print(f"vending demo: --slots must be 1..{len(DEFAULT_PLANOGRAM)}", file=sys.stderr)
        return 2
    port = args.port if args.port is not None else (0 if args.headless else 8080)
    own_dir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="vending-demo-")) if own_dir else args.workdir
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in STOP_SIGNALS}
    rig: Rig | None = None
    broker: Any = None
    try:
        _check_port_free(port)
        broker = make_broker(args.broker, workdir / "broker")
        rig = Rig(workdir, RigOptions(display="kiosk", display_port=port, slots=args.slots),
                  broker=broker)
        wire = Wire()
        with _children_ignore_terminal_interrupt():
            broker.start()
            rig.start(daemon=False)
            rig.emulator.trace = wire.record
            rig.start_daemon()
        kiosk_url = wait_kiosk_url(rig, stop)
        if args.headless:
            print(f"vending demo --headless: one sale on a whole machine (workdir {workdir})",
                  file=out, flush=True)
            return headless_sale(rig, kiosk_url, wire, stop, out)
        return interactive(rig, broker, kiosk_url, stop, out, workdir)
    except DemoError as e:
        print(f"vending demo: {e}", file=sys.stderr)
        if rig is not None and rig.log_path.exists():
            tail = rig.daemon_log().splitlines()[-15:]
            print("daemon log tail:\n  " + "\n  ".join(tail), file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as e:   # a part would not start: broker, cloud, pty
        print(f"vending demo: could not start the machine: {e}", file=sys.stderr)
        return 1
    finally:
        shutdown(rig, broker)
        for s, handler in previous.items():
            signal.signal(s, handler)
        if own_dir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif own_dir:
            print(f"kept {workdir}", file=out)


# ---- parts ------------------------------------------------------------------------------------

def make_broker(choice: str, workdir: Path) -> Any:
    """mosquitto when it is installed (or asked for), else amqtt; DemoError with the fix."""
    if choice in ("auto", "mosquitto"):
        try:
            find_binary()
            return Mosquitto(workdir=workdir)
        except BrokerUnavailable:
            if choice == "mosquitto":
                raise DemoError("mosquitto is not installed: apt-get install mosquitto") from None
    from vending.sandbox import pybroker
    if not pybroker.available():
        raise DemoError("no MQTT broker: apt-get install mosquitto (or pip install "
                        "'vending[demo]' for the pure-Python one)")
    return pybroker.PyBroker(workdir=workdir)


def shutdown(rig: Rig | None, broker: Any) -> None:
    """Daemon first (it parks the board and publishes offline while the broker is still up),
    then the cloud and the emulator (Rig.stop), then the broker we own."""
    if rig is not None:
        rig.stop()
    if broker is not None:
        broker.stop()
        broker.close()


@contextlib.contextmanager
def _children_ignore_terminal_interrupt() -> Iterator[None]:
    # Ctrl-C in a terminal sends SIGINT to the whole foreground process group, so the daemon and
    # the broker would die at the same moment as we do, in no order. A blocked signal mask is
    # inherited across fork and exec, so children started in here never see that SIGINT; we
    # stop them ourselves, in order, with SIGTERM. Only this thread's mask changes, and briefly.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _check_port_free(port: int) -> None:
    if port == 0:
        return
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise DemoError(f"port {port} is taken: choose another with --port, "
                            f"or --port 0 for any free one") from None


def wait_kiosk_url(rig: Rig, stop: threading.Event, timeout: float = GUARD) -> str:
    """The kiosk URL the daemon logged once it listened (the real port, also for --port 0)."""
    def found() -> str | None:
        if stop.is_set():
            raise DemoError("interrupted while starting")
        return rig.logged_kiosk_url()
    return _wait(rig, found, timeout, "the daemon to serve the kiosk page")


def _wait(rig: Rig, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    try:
        return rig.wait(predicate, timeout, what=what)
    except AssertionError as e:
        raise DemoError(str(e).splitlines()[0]) from None


class Wire:
    """Lines the daemon sent the board, recorded from the emulator's trace (its own thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: list[str] = []

    def record(self, direction: str, line: bytes, note: str) -> None:
        if direction == "<" and not note:
            with self._lock:
                self._lines.append(line.decode("ascii", "replace").strip())

    def find(self, verb: str, **args: object) -> str | None:
        want = [f"{k}={v}" for k, v in args.items()]
        with self._lock:
            for line in self._lines:
                words = line.split("*")[0].split()
                if len(words) > 1 and words[1] == verb and all(w in words for w in want):
                    return line
        return None


class KioskFeed:
    """The views the kiosk page receives, read from its SSE stream as the browser would."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.views: queue.Queue[dict] = queue.Queue()
        self.latest: dict = {}
        # a daemon thread: it ends by itself when the daemon stops and closes the stream
        threading.Thread(target=self._read, name="demo-kiosk-feed", daemon=True).start()

    def _read(self) -> None:
        try:
            with urllib.request.urlopen(self.url + "events", timeout=60) as resp:
                for raw in resp:
                    if raw.startswith(b"data: "):
                        self.views.put(json.loads(raw[6:])["view"])
        except (OSError, ValueError):
            pass

    def wait(self, pred: Callable[[dict], bool], stop: threading.Event, what: str) -> dict:
        deadline = time.monotonic() + GUARD
        while not pred(self.latest):
            if stop.is_set():
                raise DemoError(f"interrupted while waiting for {what}")
            if time.monotonic() > deadline:
                raise DemoError(f"the kiosk never showed {what} (it shows "
                                f"{self.latest.get('screen', 'nothing')!r})")
            try:
                self.latest = self.views.get(timeout=0.2)
            except queue.Empty:
                pass
        return self.latest


def _post(url: str, data: bytes, ctype: str) -> str:
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=GUARD) as resp:
        return resp.read().decode("utf-8", "replace")


# ---- headless: one scripted sale ------------------------------------------------------------

def headless_sale(rig: Rig, kiosk_url: str, wire: Wire, stop: threading.Event,
                  out: TextIO) -> int:
    def say(what: str) -> None:
        print(f"  {what}", file=out, flush=True)

    feed = KioskFeed(kiosk_url)
    grid = feed.wait(lambda v: v.get("screen") == "grid" and any(
        p["available"] for p in v["products"]), stop, "the product grid")
    say(f"kiosk at {kiosk_url} shows {len(grid['products'])} products")
    product = next(p for p in grid["products"] if p["available"])
    _post(kiosk_url + "select", json.dumps({"slot": product["slot"]}).encode(), "application/json")
    say(f"chose slot {product['slot']}: {product['name_en']} "
        f"{format_money(product['price'], product['currency'])} (a touch on the kiosk)")
    qr = feed.wait(lambda v: v.get("screen") == "qr" and v.get("slot") == product["slot"],
                   stop, "the payment QR")
    say(f"order {qr['order_id']}: QR {qr['qr_url']}")
    # what the customer's phone does after scanning: open the pay page and press Pay
    page = _post(qr["qr_url"], b"provider=wechat", "application/x-www-form-urlencoded")
    if 'data-state="paid"' not in page:
        raise DemoError(f"the pay page did not take the payment: {_page_state(page)}")
    txn = ((rig.cloud.order(qr["order_id"]) or {}).get("payment") or {}).get("txn_id")
    say(f"paid via sandbox WeChat Pay: txn {txn}")
    vend = _wait(rig, lambda: wire.find("VEND", slot=product["slot"]), GUARD, "VEND on the wire")
    say(f"VEND on the wire: {vend}")
    result = _wait(rig, lambda: rig.results(txn_id=txn), GUARD, "a vend_result")[0]
    if result["result"] != "ok" or not result["dispensed"]:
        raise DemoError(f"the vend failed: result={result['result']} refund={result['refund']}")
    say(f"dispensed: vend_result ok for vend {result['vend_id']}")
    _wait(rig, lambda: result["event_id"] in rig.cloud.acked_event_ids(), GUARD,
          "the cloud to ack the vend_result")
    say("vend_result acked by the cloud")
    feed.wait(lambda v: v.get("screen") == "thanks", stop, "the thank-you screen")
    count = rig.dispenses()
    say(f"kiosk says thank you; board ledger: {count} dispense{'s' if count != 1 else ''}")
    if count != 1:
        raise DemoError(f"the board dispensed {count} times for one sale")
    print("sale OK", file=out, flush=True)
    return 0


def _page_state(page: str) -> str:
    m = re.search(r'data-state="([a-z_]+)"', page)
    return m.group(1) if m else "no status on the page"


# ---- interactive ------------------------------------------------------------------------------

def interactive(rig: Rig, broker: Any, kiosk_url: str, stop: threading.Event, out: TextIO,
                workdir: Path) -> int:
    kind = "mosquitto" if isinstance(broker, Mosquitto) else "amqtt (pure Python, demo only)"
    print("\n".join([
        f"vending demo: a whole vending machine on this host (workdir {workdir})",
        f"  kiosk (the touch screen): {kiosk_url}   <- open this in a browser",
        f"  pay pages (the QR leads there): {rig.cloud.pay_base_url}/q/<order_id>",
        f"  broker: {kind} on {broker.host}:{broker.port}",
        f"  board: emulated on {rig.emulator.path}; daemon log: {rig.log_path}",
        f"type a command and Enter ({HELP}); Ctrl-C stops everything",
    ]), file=out, flush=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_stdin, args=(lines,), name="demo-stdin", daemon=True).start()
    news = _News(rig, out)
    while not stop.is_set():
        if rig.proc is None or rig.proc.poll() is not None:
            print(f"the daemon exited; see {rig.log_path}", file=out, flush=True)
            return 1
        news.report()
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        try:
            if command(rig, line, out) == "quit":
                break
        except Exception as e:  # a typo or a bad slot must not end the demo
            print(f"  ! {e}", file=out, flush=True)
    print("stopping: daemon, cloud, board, broker", file=out, flush=True)
    return 0


def _read_stdin(lines: queue.Queue[str]) -> None:
    for line in sys.stdin:      # at EOF (no terminal) the demo simply runs until a signal
        lines.put(line)


def command(rig: Rig, line: str, out: TextIO) -> str | None:
    """Carry out one stdin command; "quit" to stop."""
    words = line.lower().split()
    if not words:
        return None
    verb, rest = words[0], words[1:]
    em = rig.emulator
    if verb in ("quit", "exit", "q"):
        return "quit"
    if verb in ("help", "?"):
        print(f"  {HELP}", file=out, flush=True)
    elif verb == "key" or verb.isdigit():
        em.press_key(_slot(rest if verb == "key" else [verb]))
    elif verb == "cancel":
        em.press_cancel()
    elif verb == "door" and rest in (["open"], ["close"]):
        em.open_door() if rest == ["open"] else em.close_door()
    elif verb in ("jam", "nodrop", "empty"):
        em.inject(_slot(rest), {"nodrop": "no_drop"}.get(verb, verb))
        print(f"  the next vend from slot {rest[0]} will fail: {verb}", file=out, flush=True)
    elif verb == "power":
        print(f"  board power-cycled (boot {em.power_cycle()})", file=out, flush=True)
    elif verb == "pay":
        pending = [o for o in rig.cloud.orders() if o["state"] == "pending"]
        if not pending:
            print("  no order waiting for payment: press a key first", file=out, flush=True)
        else:
            rig.cloud.take_payment(pending[-1]["order_id"], rest[0] if rest else "wechat")
    elif verb == "status":
        print(f"  dispensed {rig.dispenses()}; orders {len(rig.cloud.orders())}; "
              f"ledger {[(e.slot, e.result) for e in em.ledger()]}", file=out, flush=True)
    else:
        print(f"  ? {line.strip()!r}; {HELP}", file=out, flush=True)
    return None


def _slot(words: list[str]) -> int:
    if not words or not words[0].isdigit():
        raise ValueError("which slot? e.g. 'key 3' or 'jam 2'")
    return int(words[0])


class _News:
    """Tells the person at the terminal about orders, payments and vend results as they come."""

    def __init__(self, rig: Rig, out: TextIO) -> None:
        self.rig, self.out = rig, out
        self.seen: set[tuple[str, str]] = set()

    def report(self) -> None:
        for o in self.rig.cloud.orders():
            key = (o["order_id"], o["state"])
            if key not in self.seen:
                self.seen.add(key)
                money = format_money(o["amount"], o["currency"]) if o["amount"] else ""
                self._say(f"order {o['order_id']} slot {o['slot']} {money}: {o['state']}"
                          + (f"  pay page {o['qr_url']}" if o["state"] == "pending" else ""))
        for e in self.rig.cloud.events("vend_result"):
            key = (e["event_id"], "result")
            if key not in self.seen:
                self.seen.add(key)
                self._say(f"vend_result {e['result']} slot {e['slot']} order {e['order_id']}"
                          f"{' (refund)' if e['refund'] else ''}")

    def _say(self, text: str) -> None:
        print(f"  * {text}", file=self.out, flush=True)
