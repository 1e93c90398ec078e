"""Machine configuration: one TOML file, validated whole, every problem with its file:line.

A technician on site fixes the config in one pass only if we report every problem at once, in
plain sentences, at the line where it is. tomllib gives values without positions, so
`TomlLines` (toml_lines.py) maps key paths back to lines. The checks of each section, with the
defaults from config/machine.example.toml (which documents every key), are in config_checks.py;
this module holds what they produce and the two entry points.
"""
from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vending.toml_lines import TomlLines, syntax_problem_position

IDENT = re.compile(r"[A-Za-z0-9_-]{1,64}")
CURRENCY = re.compile(r"[A-Z]{3}")
STANDARD_BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
# pyserial's URL handlers (serial/urlhandler/protocol_*.py): anything else would fail at open.
SERIAL_URL_SCHEMES = ("loop", "rfc2217", "socket", "spy", "hwgrep", "alt", "cp2110")
DISPLAY_KINDS = ("kiosk", "terminal", "png", "none")
LANGS = ("zh", "en")
# A SLOTS bitmap is one VLP value of at most 64 hex digits, so no board can have more slots.
MAX_SLOT = 256


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """Every problem found in one config, in file order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class SerialConfig:
    port: str
    baud: int = 115200
    poll_interval: float = 0.05
    reply_timeout: float | None = None

    @property
    def min_reply_timeout(self) -> float:
        """CONTRACT §1: 100 ms plus the wire time of 400 bytes (10 bits each in 8N1)."""
        return 0.1 + 400 * 10 / self.baud

    @property
    def effective_reply_timeout(self) -> float:
        return self.reply_timeout if self.reply_timeout is not None else self.min_reply_timeout


@dataclass(frozen=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    keepalive: int = 30
    reconnect_max: int = 30

    @property
    def tls(self) -> bool:
        return self.ca is not None

    def read_password(self) -> str | None:
        """The broker password (first line of password_file), or None without one."""
        if self.password_file is None:
            return None
        lines = self.password_file.read_text(encoding="utf-8").splitlines()
        return lines[0] if lines else ""


@dataclass(frozen=True)
class OrdersConfig:
    base_url: str            # no trailing "/": request targets are base_url + "/v1/..."
    timeout: float = 2.0
    retries: int = 3
    backoff: float = 0.2


@dataclass(frozen=True)
class OfflineQrConfig:
    enabled: bool
    pay_base_url: str | None  # no trailing "/"
    ttl: float
    wait_for_api: float = 3.0  # seconds a customer waits for the orders API before this QR


@dataclass(frozen=True)
class DisplayConfig:
    kind: str = "kiosk"
    host: str = "127.0.0.1"
    port: int = 8080
    png_path: Path | None = None
    follow_qr_url: str | None = None
    lang: str = "zh"


@dataclass(frozen=True)
class Product:
    slot: int
    product_id: str
    name_zh: str
    name_en: str
    price: int               # minor units (fen, cents)
    currency: str


@dataclass(frozen=True, kw_only=True)
class Config:
    path: Path               # the file it came from (or the label given to parse_config)
    machine_id: str
    key_file: Path
    currency: str
    session_timeout: float
    late_payment_grace: float
    refund_uncertain: bool
    slot_failure_limit: int
    journal: Path
    telemetry_interval: float
    serial: SerialConfig
    mqtt: MqttConfig
    orders: OrdersConfig
    offline_qr: OfflineQrConfig
    display: DisplayConfig
    planogram: Mapping[int, Product]   # read-only, slot -> Product, in slot order


def load_config(path: str | os.PathLike[str], *, check_files: bool = False) -> Config:
    """Read and validate a config file. Raises ConfigError listing every problem found.

    With `check_files`, also checks the files it names: the key file (permissions and format),
    the TLS files and the password file. check-config uses this; so may the daemon at start.
    """
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError([Problem(name, None, "the config file does not exist")]) from None
    except IsADirectoryError:
        raise ConfigError([Problem(name, None, "is a directory, not a config file")]) from None
    except OSError as e:
        raise ConfigError([Problem(name, None, f"cannot read the config file: {e.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError([Problem(name, line, "is not valid UTF-8 text")]) from None
    return parse_config(text, name, Path(path).absolute().parent, check_files=check_files)


def parse_config(text: str, filename: str, base_dir: str | os.PathLike[str], *,
                 check_files: bool = False) -> Config:
    """Validate config text; relative paths resolve against base_dir."""
    # Imported here, not at the top: config_checks builds the dataclasses above, so it imports
    # this module, and a top-level import each way would fail for whichever loads second.
    from vending.config_checks import Checker, build_config

    filename = str(filename)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line, message = syntax_problem_position(str(e), text)
        raise ConfigError([Problem(filename, line, f"TOML syntax error: {message}")]) from None
    ck = Checker(filename, TomlLines(text), Path(base_dir), check_files)
    config = build_config(ck, data)
    if ck.problems:
        raise ConfigError(sorted(ck.problems, key=lambda p: (p.line or 0)))
    assert config is not None
    return config
