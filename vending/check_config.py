"""`vending check-config FILE`: validate a machine config and the files it names, before a restart.

Prints every problem as `file:line: message` on stderr and exits 1, so a technician fixes them all
in one pass; prints a short summary and exits 0 when the machine would start. The summary never
shows a secret: no key, no password, and URLs without any user information.
"""
from __future__ import annotations

import argparse
import sys
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

from vending.config import Config, ConfigError, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the machine config, e.g. /etc/vending/machine.toml")


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        config = load_config(args.file, check_files=True)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=err)
        count = len(e.problems)
        print(f"{args.file}: {count} problem{'s' if count != 1 else ''}; the daemon would not start",
              file=err)
        return 1
    print(summary(config), file=out)
    return 0


def summary(config: Config) -> str:
    """A few lines a technician can compare with the operator's records. No secrets."""
    slots = sorted(config.planogram)
    m = config.mqtt
    scheme = "mqtts" if m.tls else "mqtt"
    login = f", user {m.username}" if m.username else ""
    if m.password_file is not None:
        login += ", password from file"
    if m.cert is not None:
        login += ", client certificate"
    offline = f"on, pay page {_safe_url(config.offline_qr.pay_base_url)}" \
        if config.offline_qr.enabled and config.offline_qr.pay_base_url else "off"
    lines = [
        f"{config.path}: OK",
        f"machine  {config.machine_id}, {config.currency}, {len(slots)} slot"
        f"{'s' if len(slots) != 1 else ''} ({_ranges(slots)})",
        f"board    {config.serial.port} at {config.serial.baud} baud",
        f"broker   {scheme}://{m.host}:{m.port}{login}",
        f"orders   {_safe_url(config.orders.base_url)}",
        f"offline  {offline}",
        f"key      {config.key_file} (ok)",
        f"journal  {config.journal}",
    ]
    return "\n".join(lines)


def _safe_url(url: str | None) -> str:
    # config.py already refuses user info in URLs; this guards the summary if that ever changes.
    if not url:
        return "-"
    u = urlsplit(url)
    netloc = u.hostname or ""
    if u.port is not None:
        netloc += f":{u.port}"
    return urlunsplit((u.scheme, netloc, u.path, "", ""))


def _ranges(slots: list[int]) -> str:
    """[1, 2, 3, 5] -> "1-3, 5"."""
    parts: list[str] = []
    start = prev = None
    for s in slots + [None]:  # type: ignore[list-item]
        if start is not None and (s is None or s != prev + 1):
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if s is not None and start is None:
            start = s
        prev = s
    return ", ".join(parts)
