"""A pure-Python MQTT broker (amqtt) for `vending demo` on machines without mosquitto.

Shares its lifecycle with `vending.sandbox.broker.Mosquitto` through `BrokerProcess` (host,
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
import signal
import sys
import tempfile
from pathlib import Path

from vending.sandbox.broker import BrokerProcess, BrokerUnavailable, free_port


def available() -> bool:
    """True when amqtt can be imported (the optional `demo` extra is installed)."""
    try:
        import amqtt.broker  # noqa: F401  (only whether it imports)
    except ImportError:
        return False
    return True


class PyBroker(BrokerProcess):
    """One amqtt broker process on 127.0.0.1:<port>, anonymous, plain TCP."""

    name = "amqtt"

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
        self._proc = None

    def _argv(self) -> list[str]:
        return [sys.executable, "-m", "vending.sandbox.pybroker", "--port", str(self.port)]


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
