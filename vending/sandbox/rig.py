"""A whole vending machine on one host: broker, emulated board, sandbox cloud and the daemon.

Used by the end-to-end tests, the chaos soak, the latency benchmark and `vending demo`. The daemon
runs as a real child process (`python -m vending run`), so tests can SIGKILL it and restart it on
the same journal exactly as systemd would.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from firmware_bridge.board import Board
from firmware_bridge.emulator import Emulator
from vending.keyfile import write_key
from vending.sandbox.broker import Mosquitto
from vending.sandbox.cloud import SandboxCloud

_KIOSK_URL = re.compile(r"kiosk page at (http://[^\s\"]+)")

DEFAULT_PLANOGRAM = (
    # slot, product_id, zh, en, price (fen)
    (1, "cola-330", "可乐 330ml", "Cola 330ml", 350),
    (2, "water-550", "矿泉水 550ml", "Mineral water 550ml", 200),
    (3, "tea-500", "绿茶 500ml", "Green tea 500ml", 400),
    (4, "juice-300", "橙汁 300ml", "Orange juice 300ml", 500),
    (5, "coffee-250", "咖啡 250ml", "Iced coffee 250ml", 600),
    (6, "snack-bar", "能量棒", "Energy bar", 300),
)


@dataclass
class RigOptions:
    machine_id: str = "VM-0001"
    slots: int = 6
    stock: int = 20
    vend_seconds: float = 0.2
    session_timeout: int = 120
    late_payment_grace: int = 60
    refund_uncertain: bool = True
    slot_failure_limit: int = 3
    offline_qr: bool = True
    wait_for_api: float = 3.0
    cloud_clock_offset: float = 0.0   # the cloud's clock minus the machine's (a machine booted off)
    display: str = "png"            # png gives tests the screen as a JSON sidecar
    display_port: int = 0
    follow_qr_url: str | None = None
    corrupt_rate: float = 0.0
    drop_rate: float = 0.0
    orders_timeout: float = 1.0
    orders_retries: int = 1
    telemetry_interval: int = 60
    seed: int | None = None
    log_level: str = "INFO"
    extra_env: dict = field(default_factory=dict)


class Rig:
    def __init__(self, workdir: str | os.PathLike | None = None, options: RigOptions | None = None,
                 broker: Mosquitto | None = None):
        self.o = options or RigOptions()
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="vending-rig-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = write_key(self.dir / "machine.key", overwrite=True)
        self._own_broker = broker is None
        self.broker = broker or Mosquitto(workdir=self.dir / "broker")
        self.emulator: Emulator | None = None
        self.cloud: SandboxCloud | None = None
        self.proc: subprocess.Popen | None = None
        self.config_path = self.dir / "machine.toml"
        self.journal_path = self.dir / "journal.db"
        self.png_path = self.dir / "screen.png"
        self.log_path = self.dir / "daemon.log"
        self.restarts = 0

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self, *, daemon: bool = True) -> "Rig":
        if not self.broker.running:
            self.broker.start()
        board = Board(slots=self.o.slots, stock=self.o.stock, vend_duration=self.o.vend_seconds)
        self.emulator = Emulator(board, link_path=str(self.dir / "board.tty"),
                                 corrupt_rate=self.o.corrupt_rate, drop_rate=self.o.drop_rate,
                                 seed=self.o.seed)
        self.emulator.start()
        skew = self.o.cloud_clock_offset
        self.cloud = SandboxCloud(self.o.machine_id, self.key, mqtt_port=self.broker.port,
                                  clock=(lambda: time.time() + skew) if skew else time.time)
        self.cloud.start()
        self.write_config()
        if daemon:
            self.start_daemon()
        return self

    def stop(self) -> None:
        self.stop_daemon()
        for part in (self.cloud, self.emulator):
            if part is not None:
                try:
                    part.stop()
                except Exception:
                    pass
        if self._own_broker:
            self.broker.close()

    def __enter__(self) -> "Rig":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def write_config(self, **overrides: Any) -> None:
        o = self.o
        lines = [
            f'machine_id = "{o.machine_id}"', 'key_file = "machine.key"', 'currency = "CNY"',
            f"session_timeout = {o.session_timeout}", f"late_payment_grace = {o.late_payment_grace}",
            f"refund_uncertain = {str(o.refund_uncertain).lower()}",
            f"slot_failure_limit = {o.slot_failure_limit}", f'journal = "{self.journal_path}"',
            f"telemetry_interval = {o.telemetry_interval}",
            "[serial]", f'port = "{self.emulator.path}"', "baud = 115200", "poll_interval = 0.02",
            "[mqtt]", f'host = "{self.broker.host}"', f"port = {self.broker.port}", "reconnect_max = 2",
            "[orders]", f'base_url = "{self.cloud.base_url}"', f"timeout = {o.orders_timeout}",
            f"retries = {o.orders_retries}", "backoff = 0.05",
            "[offline_qr]", f"enabled = {str(o.offline_qr).lower()}",
            f'pay_base_url = "{self.cloud.pay_base_url}"', f"wait_for_api = {o.wait_for_api}",
            "[display]", f'kind = "{o.display}"', f"port = {o.display_port}",
            f'png_path = "{self.png_path}"',
        ]
        if o.follow_qr_url:
            lines.append(f'follow_qr_url = "{o.follow_qr_url}"')
        for slot, pid, zh, en, price in DEFAULT_PLANOGRAM[: o.slots]:
            lines += [f"[planogram.{slot}]", f'product_id = "{pid}"', f'name_zh = "{zh}"',
                      f'name_en = "{en}"', f"price = {price}"]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    # ---- the daemon process ------------------------------------------------------------------

    def start_daemon(self, crash_at: str | None = None) -> None:
        """`crash_at` arms the daemon's fault injection (VENDING_CRASH_AT) for this run only."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.o.extra_env}
        env.pop("VENDING_CRASH_AT", None)
        if crash_at:
            env["VENDING_CRASH_AT"] = crash_at
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vending", "run", "--config", str(self.config_path),
             "--log-level", self.o.log_level],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(self.dir))
        log.close()

    def kill_daemon(self) -> None:
        """SIGKILL: no cleanup at all, as in a power loss of the controller."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop_daemon(self, timeout: float = 10.0) -> int | None:
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        rc, self.proc = self.proc.returncode, None
        return rc

    def restart_daemon(self, crash_at: str | None = None) -> None:
        self.kill_daemon()
        self.restarts += 1
        self.start_daemon(crash_at)

    def wait_exit(self, timeout: float = 20.0) -> int:
        """Wait for a daemon armed with a crash point to die by it."""
        assert self.proc is not None
        rc = self.proc.wait(timeout)
        self.proc = None
        return rc

    def daemon_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def logged_kiosk_url(self) -> str | None:
        """The kiosk URL the daemon logged once it listened (the real port, also for port 0)."""
        m = _KIOSK_URL.search(self.daemon_log())
        return m.group(1) if m else None

    # ---- what the customer sees (the PNG display's JSON sidecar) ---------------------------

    def screen(self) -> dict:
        try:
            return json.loads(self.png_path.with_suffix(".json").read_text())["view"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return {}

    def wait_screen(self, screen: str, timeout: float = 15.0, pred: Callable[[dict], bool] | None = None) -> dict:
        return self.wait(lambda: (v := self.screen()).get("screen") == screen and
                         (pred is None or pred(v)) and v, timeout,
                         what=f"the screen to show {screen!r}")

    # ---- customers ---------------------------------------------------------------------------

    def select(self, slot: int, timeout: float = 15.0) -> dict:
        """Press a key on the board and wait for the QR; returns the QR view."""
        self.wait_screen("grid", timeout)
        self.emulator.press_key(slot)
        return self.wait_screen("qr", timeout, pred=lambda v: v.get("slot") == slot)

    def buy(self, slot: int, **pay_kw: Any) -> tuple[dict, dict]:
        view = self.select(slot)
        payment = self.cloud.pay(view["order_id"], **pay_kw)
        return view, payment

    # ---- records -----------------------------------------------------------------------------

    def results(self, order_id: str | None = None, txn_id: str | None = None) -> list[dict]:
        return [e for e in self.cloud.events("vend_result")
                if (order_id is None or e["order_id"] == order_id)
                and (txn_id is None or e["txn_id"] == txn_id)]

    def wait_result(self, txn_id: str, timeout: float = 20.0, acked: bool = True) -> dict:
        def done():
            rs = self.results(txn_id=txn_id)
            if rs and (not acked or rs[0]["event_id"] in self.cloud.acked_event_ids()):
                return rs[0]
            return None
        return self.wait(done, timeout, what=f"an acked vend_result for txn {txn_id}")

    def journal_rows(self, table: str) -> list[dict]:
        db = sqlite3.connect(f"file:{self.journal_path}?mode=ro", uri=True)
        try:
            cur = db.execute(f"SELECT * FROM {table} ORDER BY rowid")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]
        finally:
            db.close()

    def dispenses(self, vend_id: str | None = None) -> int:
        return self.emulator.dispense_count(vend_id)

    def wait(self, predicate: Callable[[], Any], timeout: float = 15.0, what: str = "a condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited ({self.proc.returncode}) while waiting for "
                                     f"{what}:\n{self.daemon_log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; daemon log tail:\n"
                                     f"{self.daemon_log()[-3000:]}")
            time.sleep(0.02)
