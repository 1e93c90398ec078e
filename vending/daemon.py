"""`vending run --config FILE`: wires the adapters to the controller and runs it in the foreground.

Start-up recovery happens before any adapter starts: unfinished vends come back from the journal
into the core, and sessions that were live when the process died are closed (their orders are
cancelled, or fetched if the customer paid). A `Daemon` is self-contained so a fleet simulation
can run many in one process.
"""
from __future__ import annotations

import argparse
import logging
import os
import queue
import secrets
import signal
import sys
import time

from firmware_bridge.link import HostLink
from firmware_bridge.trace import WireLog
from firmware_bridge.pump import BoardPump
from vending import __version__
from vending.config import Config, ConfigError, load_config
from vending.controller import Controller, Stop
from vending.core import actions as A
from vending.core.machine import Machine, Settings
from vending.display import make_display
from vending.journal import Journal
from vending.keyfile import KeyFileError, load_key
from vending.mqtt import MqttLink
from vending.orders import OrdersClient
from vending.orders_adapter import OrdersWorker

log = logging.getLogger("vending.daemon")
# Every serial line but idle polls, at DEBUG: `vending run --log-level DEBUG` shows what the board
# is doing without stopping the daemon (which `vending board monitor` would need).
wire_log = logging.getLogger("vending.wire")

EXIT_CONFIG = 78   # EX_CONFIG: systemd's unit does not restart on it (RestartPreventExitStatus)


def settings_from(cfg: Config, started: float) -> Settings:
    return Settings(
        machine_id=cfg.machine_id, currency=cfg.currency, planogram=dict(cfg.planogram),
        session_timeout=cfg.session_timeout, late_payment_grace=cfg.late_payment_grace,
        refund_uncertain=cfg.refund_uncertain, slot_failure_limit=cfg.slot_failure_limit,
        telemetry_interval=cfg.telemetry_interval, offline_qr=cfg.offline_qr.enabled,
        offline_after=cfg.offline_qr.wait_for_api,
        follow_qr_url=cfg.display.follow_qr_url, started=started)


class Daemon:
    def __init__(self, cfg: Config, key: bytes, *, display=None, clock=time.time):
        self.cfg, self._key, self._clock = cfg, key, clock
        self.started = clock()
        self.inbox: queue.Queue[object] = queue.Queue()
        self.journal = Journal(cfg.journal)
        self.machine = Machine(settings_from(cfg, self.started), secrets.token_hex(4), self.started)
        self.machine.restore(self.journal.unfinished_vends(), self.journal.settings())
        self._close_open_orders()
        password = None
        if cfg.mqtt.password_file:
            password = cfg.mqtt.password_file.read_text().strip()
        self.mqtt = MqttLink(
            machine_id=cfg.machine_id, key=key, host=cfg.mqtt.host, port=cfg.mqtt.port,
            emit=self.inbox.put, started=int(self.started), version=__version__,
            tls_ca=_s(cfg.mqtt.ca), tls_cert=_s(cfg.mqtt.cert), tls_key=_s(cfg.mqtt.key),
            username=cfg.mqtt.username, password=password, keepalive=cfg.mqtt.keepalive,
            reconnect_max=cfg.mqtt.reconnect_max, clock=clock)
        client = OrdersClient(cfg.orders.base_url, cfg.machine_id, key, timeout=cfg.orders.timeout,
                              retries=cfg.orders.retries, backoff=cfg.orders.backoff, clock=clock)
        self.orders = OrdersWorker(client, self.inbox.put, machine_id=cfg.machine_id, key=key,
                                   pay_base_url=cfg.offline_qr.pay_base_url,
                                   offline_ttl=int(cfg.offline_qr.ttl))
        self.board = BoardPump(
            HostLink(cfg.serial.port, cfg.serial.baud, reply_timeout=cfg.serial.reply_timeout,
                     trace=WireLog(wire_log) if wire_log.isEnabledFor(logging.DEBUG) else None),
            self.inbox.put, poll_interval=cfg.serial.poll_interval, autostart=False)
        self.display = display if display is not None else make_display(
            cfg.display.kind, on_input=self.inbox.put, host=cfg.display.host,
            port=cfg.display.port, png_path=cfg.display.png_path, lang=cfg.display.lang)
        self.controller = Controller(
            machine=self.machine, journal=self.journal, key=key, machine_id=cfg.machine_id,
            board=self.board, mqtt=self.mqtt, orders=self.orders, display=self.display,
            inbox=self.inbox, clock=clock, crash_at=os.environ.get("VENDING_CRASH_AT") or None)

    def _close_open_orders(self) -> None:
        """Sessions that were live at the crash: the screen is gone, so close them now. Their
        cancel goes out once we run; a payment for them is then judged as a late payment."""
        now = self._clock()
        self._reopened = self.journal.open_orders()
        if self._reopened:
            self.journal.apply(tuple(A.CloseOrder(o, now, "restart") for o in self._reopened))

    def run(self) -> None:
        for order_id in self._reopened:
            self.orders.submit(A.CancelOrder(order_id), self._clock())
        self.display.start()
        self.board.start()
        self.mqtt.start()
        try:
            self.controller.run()
        finally:
            self.shutdown()

    def stop(self) -> None:
        """Ask the controller to park and leave (safe from any thread or a signal handler)."""
        self.inbox.put(Stop())

    def shutdown(self) -> None:
        for step in (lambda: self.mqtt.stop(timeout=1.0), self.board.stop, self.display.stop,
                     self.orders.close, self.journal.close):
            try:
                step()
            except Exception:
                log.exception("error while stopping")


def _s(p) -> str | None:
    return None if p is None else str(p)


# ---- CLI -------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="machine config (TOML)")
    parser.add_argument("--log-level", default=os.environ.get("VENDING_LOG_LEVEL", "INFO"),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    from vending.logs import Redactor, setup_logging
    redactor = Redactor()
    setup_logging(args.log_level, redactor=redactor)
    try:
        cfg = load_config(args.config)
        key = load_key(cfg.key_file)
    except ConfigError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return EXIT_CONFIG
    except KeyFileError as e:
        print(f"vending: {e}", file=sys.stderr)
        return EXIT_CONFIG
    redactor.add(key.hex())
    logging.getLogger("httpx").setLevel(logging.WARNING)   # one line per request is noise
    daemon = Daemon(cfg, key)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: daemon.stop())
    log.info("starting machine_id=%s version=%s pid=%d", cfg.machine_id, __version__, os.getpid())
    daemon.run()
    log.info("stopped")
    return 0
