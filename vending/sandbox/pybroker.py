"""A pure-Python MQTT broker (amqtt) for `vending demo` on machines without mosquitto.

Same surface as `vending.sandbox.broker.Mosquitto` as far as `Rig` and the demo use it (host,
port, running, start, stop, close, log_tail), so the demo can hand either one to the rig.

amqtt runs in a child process (`python -m vending.sandbox.pybroker --port N`), not a thread:
like mosquitto it can then be stopped with a signal, its asyncio loop and chatty logging stay
out of the demo's process, and a stuck broker cannot hang the demo's shutdown.

Only for the demo: amqtt keeps sessions in memory (nothing survives a restart), so the tests
that prove persistence and redelivery keep running against mosquitto.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from vending.sandbox.broker import BrokerUnavailable, free_port, spawn_listening


def available() -> bool:
    """True when amqtt can be imported (the optional `demo` extra is installed)."""
    try:
        import amqtt.broker  # noqa: F401  (only whether it imports)
    except ImportError:
        return False
    return True


class PyBroker:
    """One amqtt broker process on 127.0.0.1:<port>, anonymous, plain TCP."""

    def __init__(self, *, workdir: str | os.PathLike[str] | None = None, port: int | None = None,
                 start_timeout: float = 20.0) -> None:
        if not available():
            raise BrokerUnavailable("the pure-Python broker needs amqtt (pip install amqtt)")
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="amqtt-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port()
        self.tls = False
        self.start_timeout = start_timeout
        self.log_path = self.dir / "amqtt.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> "PyBroker":
        if self.running:
            return self
        self._proc = spawn_listening(
            [sys.executable, "-m", "vending.sandbox.pybroker", "--port", str(self.port)],
            self.log_path, self.host, self.port, self.start_timeout, "amqtt", self.log_tail)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def restart(self) -> "PyBroker":
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> "PyBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PyBroker({self.host}:{self.port}, running={self.running})"


# ---- the child process ---------------------------------------------------------------------

def broker_config(port: int) -> dict:
    # Loopback only, no credentials, like the generated mosquitto config. The $SYS and packet
    # logger plugins are left out: they only add noise and load.
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {f"{__name__}.LoopbackAuthPlugin": {}},
    }


def _auth_plugin_class() -> type:
    from amqtt.plugins.base import BaseAuthPlugin

    class LoopbackAuthPlugin(BaseAuthPlugin):
        """Let every client in, and do NOT mark it anonymous. amqtt's own AnonymousAuthPlugin
        does, and amqtt then drops anonymous clients' persistent sessions and never queues
        QoS 1 messages for them while offline: exactly what the payment path relies on."""

        async def authenticate(self, *, session) -> bool:  # type: ignore[override]
            return True

    return LoopbackAuthPlugin


def __getattr__(name: str) -> type:
    # amqtt imports plugins by dotted path; building the class lazily keeps `import
    # vending.sandbox.pybroker` working where amqtt is not installed.
    if name == "LoopbackAuthPlugin":
        return _auth_plugin_class()
    raise AttributeError(name)


async def _serve(port: int) -> None:
    from amqtt.broker import Broker
    broker = Broker(broker_config(port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await broker.start()
    await stop.wait()
    await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vending.sandbox.pybroker")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_serve(args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
