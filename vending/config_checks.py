"""The checks behind parse_config: each [section] of the TOML read and validated into its dataclass.

Every problem is reported, not just the first, each at its line (`Checker.report`), and a
section with problems builds nothing. `_Section` holds the typed getters, with defaults from
config/machine.example.toml; one builder per section (`_serial`, `_mqtt`, ...) adds the rules
that tie keys together.
"""
from __future__ import annotations

import difflib
import math
import os
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vending import keyfile
from vending.config import (CURRENCY, DISPLAY_KINDS, IDENT, LANGS, MAX_SLOT, SERIAL_URL_SCHEMES,
                            STANDARD_BAUDS, Config, DisplayConfig, MqttConfig, OfflineQrConfig,
                            OrdersConfig, Problem, Product, SerialConfig)
from vending.display.kiosk import is_loopback
from vending.toml_lines import TomlLines

_ZERO_DECIMAL = frozenset({"JPY", "KRW", "VND", "CLP", "ISK", "PYG", "UGX", "XAF", "XOF"})
_REQUIRED = object()


def _describe(v: Any) -> str:
    if isinstance(v, bool):
        return f"the boolean {str(v).lower()}"
    if isinstance(v, int):
        return f"the integer {v}"
    if isinstance(v, float):
        return f"the decimal number {v}"
    if isinstance(v, str):
        return f'the string "{v[:40]}"' + ("..." if len(v) > 40 else "")
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        return "an array"
    return "a date/time"


def _url_problem(v: str) -> str | None:
    """Why v is not a usable base URL (we append paths and query strings to it), or None."""
    try:
        u = urlsplit(v)
        u.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "is not a valid URL"
    if u.scheme not in ("http", "https") or not u.hostname or any(c.isspace() for c in v):
        return "must be an http:// or https:// URL with a host name"
    if u.username is not None or u.password is not None:
        # It would be logged, and for pay pages shown in the QR to every customer.
        return "must not contain a user name or password"
    if u.query or u.fragment or v.endswith(("?", "#")):
        return "must not have a query string or fragment"
    return None


class Checker:
    """Collects problems; knows where each key path is in the text."""

    def __init__(self, filename: str, lines: TomlLines, base_dir: Path, check_files: bool) -> None:
        self.filename, self.lines, self.base_dir = filename, lines, base_dir
        self.check_files = check_files
        self.problems: list[Problem] = []

    def report(self, path: tuple[str, ...], message: str) -> None:
        self.problems.append(Problem(self.filename, self.lines.line(path), message))


class _Section:
    """Typed access to one TOML table. Getters report problems and return a fallback."""

    def __init__(self, ck: Checker, data: Any, path: tuple[str, ...], known: tuple[str, ...]) -> None:
        self.ck, self.path, self.known = ck, path, known
        self.data: dict[str, Any] = {}
        if isinstance(data, dict):
            self.data = data
        elif data is not None:
            ck.report(path, f"{self.qual()} must be a table ([{self.qual()}]), not {_describe(data)}")

    def qual(self, key: str | None = None) -> str:
        return ".".join(self.path + ((key,) if key else ()))

    def bad(self, key: str, message: str) -> None:
        self.ck.report(self.path + (key,), f"{self.qual(key)} {message}")

    def _get(self, key: str, default: Any) -> Any:
        assert key in self.known, key
        if key in self.data:
            return self.data[key]
        if default is _REQUIRED:
            where = f" to [{self.qual()}]" if self.path else ""
            self.ck.report(self.path, f"{self.qual(key)} is missing; add {key} = ...{where}")
        return None

    def text(self, key: str, default: Any = _REQUIRED, *, pattern: re.Pattern[str] | None = None,
             rule: str = "", choices: tuple[str, ...] = ()) -> Any:
        v = self._get(key, default)
        if v is None:
            return None if default is _REQUIRED else default
        if not isinstance(v, str):
            self.bad(key, f"must be a string, not {_describe(v)}")
        elif choices and v not in choices:
            self.bad(key, f"must be one of {', '.join(repr(c) for c in choices)}, not {v!r}")
        elif pattern is not None and not pattern.fullmatch(v):
            self.bad(key, f"must be {rule}, not {v!r}")
        elif not v.strip():
            self.bad(key, "must not be empty")
        else:
            return v
        return None

    def integer(self, key: str, default: Any = _REQUIRED, lo: int = 0, hi: int | None = None,
                what: str = "an integer") -> Any:
        v = self._get(key, default)
        if v is None:
            return None if default is _REQUIRED else default
        if isinstance(v, bool) or not isinstance(v, int):
            self.bad(key, f"must be {what}, not {_describe(v)}")
        elif v < lo or (hi is not None and v > hi):
            span = f"from {lo} to {hi}" if hi is not None else f"at least {lo}"
            self.bad(key, f"must be {span}, not {v}")
        else:
            return v
        return None

    def seconds(self, key: str, default: Any = _REQUIRED, *, lo: float = 0.0, hi: float = 86400.0,
                zero_ok: bool = False) -> Any:
        v = self._get(key, default)
        if v is None:
            return None if default is _REQUIRED else default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            self.bad(key, f"must be a number of seconds, not {_describe(v)}")
        elif (v < lo or (v == 0 and not zero_ok) or v > hi):
            low = f"at least {lo:g}" if lo > 0 or zero_ok else "more than 0"
            self.bad(key, f"must be {low} and at most {hi:g} seconds, not {v:g}")
        else:
            return float(v)
        return None

    def flag(self, key: str, default: bool) -> bool | None:
        v = self._get(key, default)
        if v is None:
            return default
        if not isinstance(v, bool):
            self.bad(key, f"must be true or false, not {_describe(v)}")
            return None
        return v

    def path_(self, key: str, default: Any = None) -> Path | None:
        v = self.text(key, default)
        if v is None:
            return None
        p = Path(v)
        return p if p.is_absolute() else self.ck.base_dir / p

    def url(self, key: str, default: Any = None) -> str | None:
        v = self.text(key, default)
        if v is None:
            return None
        why = _url_problem(v)
        if why:
            self.bad(key, why + f", not {v!r}")
            return None
        return v.rstrip("/")

    def finish(self) -> None:
        for key in self.data:
            if key in self.known:
                continue
            close = difflib.get_close_matches(key, self.known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            self.ck.report(self.path + (key,), f"unknown key {self.qual(key)}{hint}")


def build_config(ck: Checker, data: dict[str, Any]) -> Config | None:
    top = _Section(ck, data, (), (
        "machine_id", "key_file", "currency", "session_timeout", "late_payment_grace",
        "refund_uncertain", "slot_failure_limit", "journal", "telemetry_interval",
        "serial", "mqtt", "orders", "offline_qr", "display", "planogram"))
    machine_id = top.text("machine_id", pattern=IDENT,
                          rule="1 to 64 letters, digits, '_' or '-' (CONTRACT identifiers)")
    key_file = top.path_("key_file", _REQUIRED)
    currency = top.text("currency", "CNY", pattern=CURRENCY,
                        rule="a three-letter upper-case ISO-4217 code such as CNY")
    session_timeout = top.seconds("session_timeout", 120.0)
    grace = top.seconds("late_payment_grace", 60.0, zero_ok=True)
    refund_uncertain = top.flag("refund_uncertain", True)
    failure_limit = top.integer("slot_failure_limit", 3, lo=1, hi=100)
    journal = top.path_("journal", _REQUIRED)
    telemetry = top.seconds("telemetry_interval", 60.0)
    if ck.check_files and key_file is not None:
        try:
            keyfile.load_key(key_file)
        except keyfile.KeyFileError as e:
            ck.report(("key_file",), str(e))

    serial = _serial(ck, _Section(ck, data.get("serial"), ("serial",), (
        "port", "baud", "poll_interval", "reply_timeout")))
    mqtt = _mqtt(ck, _Section(ck, data.get("mqtt"), ("mqtt",), (
        "host", "port", "ca", "cert", "key", "username", "password_file", "keepalive",
        "reconnect_max")))
    o = _Section(ck, data.get("orders"), ("orders",), ("base_url", "timeout", "retries", "backoff"))
    orders = OrdersConfig(o.url("base_url", _REQUIRED), o.seconds("timeout", 2.0, hi=60),
                          o.integer("retries", 3, hi=10), o.seconds("backoff", 0.2, zero_ok=True, hi=60))
    o.finish()
    offline = _offline(ck, _Section(ck, data.get("offline_qr"), ("offline_qr",),
                                    ("enabled", "pay_base_url", "ttl", "wait_for_api")),
                       session_timeout, grace)
    display = _display(_Section(ck, data.get("display"), ("display",), (
        "kind", "host", "port", "png_path", "follow_qr_url", "lang")))
    planogram = _planogram(ck, data.get("planogram"), currency)
    top.finish()
    if ck.problems:
        return None
    return Config(path=Path(ck.filename), machine_id=machine_id, key_file=key_file,
                  currency=currency, session_timeout=session_timeout, late_payment_grace=grace,
                  refund_uncertain=refund_uncertain, slot_failure_limit=failure_limit,
                  journal=journal, telemetry_interval=telemetry, serial=serial, mqtt=mqtt,
                  orders=orders, offline_qr=offline, display=display, planogram=planogram)


def _serial(ck: Checker, s: _Section) -> SerialConfig | None:
    port = s.text("port")
    if port is not None:
        scheme = port.split("://", 1)[0] if "://" in port else None
        if scheme is not None and scheme not in SERIAL_URL_SCHEMES:
            s.bad("port", f"uses {scheme}://, which pyserial does not know; use a device path "
                          f"such as /dev/ttyUSB0 or one of {', '.join(x + '://' for x in SERIAL_URL_SCHEMES)}")
        elif scheme is None and not port.startswith("/"):
            s.bad("port", f"must be an absolute device path such as /dev/ttyUSB0 or a pyserial URL "
                          f"such as loop://, not {port!r}")
    baud = s.integer("baud", 115200, lo=1)
    if baud is not None and baud not in STANDARD_BAUDS:
        s.bad("baud", f"must be a standard rate ({', '.join(map(str, STANDARD_BAUDS))}), not {baud}")
        baud = None
    poll = s.seconds("poll_interval", 0.05, hi=10)
    reply = s.seconds("reply_timeout", None, hi=60)
    if reply is not None and baud is not None:
        need = SerialConfig("", baud).min_reply_timeout
        if reply < need:
            s.bad("reply_timeout", f"must be at least {need:.3f} s at {baud} baud (100 ms plus the "
                                   f"wire time of 400 bytes, CONTRACT §1), not {reply:g}")
    s.finish()
    if None in (port, baud, poll):
        return None
    return SerialConfig(port, baud, poll, reply)


def _mqtt(ck: Checker, s: _Section) -> MqttConfig | None:
    host = s.text("host", "127.0.0.1")
    if host is not None and ("://" in host or "/" in host or any(c.isspace() for c in host)):
        s.bad("host", f"must be a host name or address, not a URL ({host!r})")
    ca, cert, key = s.path_("ca"), s.path_("cert"), s.path_("key")
    port = s.integer("port", 8883 if ca is not None else 1883, lo=1, hi=65535)
    username = s.text("username", None)
    password_file = s.path_("password_file")
    keepalive = s.integer("keepalive", 30, lo=5, hi=65535, what="a whole number of seconds")
    reconnect_max = s.integer("reconnect_max", 30, lo=1, hi=3600, what="a whole number of seconds")
    if (cert is None) != (key is None):
        have, lack = ("cert", "key") if cert is not None else ("key", "cert")
        s.bad(have, f"is set but mqtt.{lack} is not; a client certificate needs both")
    elif cert is not None and ca is None:
        s.bad("cert", "needs mqtt.ca: TLS is on only when ca is set")
    if password_file is not None and username is None:
        s.bad("password_file", "is set but mqtt.username is not; MQTT sends a password only with a user name")
    if ck.check_files:
        for name, p, private in (("ca", ca, False), ("cert", cert, False), ("key", key, True),
                                 ("password_file", password_file, True)):
            if p is not None:
                why = _file_problem(p, private)
                if why:
                    s.bad(name, why)
    s.finish()
    if None in (host, port, keepalive, reconnect_max):
        return None
    return MqttConfig(host, port, ca, cert, key, username, password_file, keepalive, reconnect_max)


def _file_problem(p: Path, private: bool) -> str | None:
    try:
        st = p.stat()
    except FileNotFoundError:
        return f"names {p}, which does not exist"
    except OSError as e:
        return f"names {p}, which cannot be checked: {e.strerror}"
    if not p.is_file():
        return f"names {p}, which is not a regular file"
    if not os.access(p, os.R_OK):
        return f"names {p}, which this user cannot read"
    if private and st.st_mode & 0o007:
        # Group access is allowed here (root:vending 0640 is a common layout); others never.
        return f"names {p}, which other users can access (mode {st.st_mode & 0o777:04o}); run: chmod o-rwx {p}"
    return None


def _offline(ck: Checker, s: _Section, session_timeout: float | None,
             grace: float | None) -> OfflineQrConfig | None:
    enabled = s.flag("enabled", True)
    url = s.url("pay_base_url", _REQUIRED if enabled else None)
    ttl = s.seconds("ttl", session_timeout)
    wait = s.seconds("wait_for_api", 3.0, hi=30.0)
    if ttl is not None and session_timeout is not None and grace is not None \
            and "ttl" in s.data and ttl > session_timeout + grace:
        # A QR still payable after the machine stops honouring it takes money only to refund it.
        s.bad("ttl", f"must not exceed session_timeout + late_payment_grace "
                     f"({session_timeout + grace:g} s), not {ttl:g}")
    s.finish()
    if enabled is None or ttl is None or wait is None or (enabled and url is None):
        return None
    return OfflineQrConfig(enabled, url, ttl, wait)


def _display(s: _Section) -> DisplayConfig | None:
    kind = s.text("kind", "kiosk", choices=DISPLAY_KINDS)
    host = s.text("host", "127.0.0.1")
    if host is not None and not is_loopback(host):
        # The kiosk page shows payment QRs; anyone on the network could otherwise swap them.
        s.bad("host", f"must be a loopback address such as 127.0.0.1, not {host!r}")
    port = s.integer("port", 8080, lo=0, hi=65535)  # 0: any free port (tests, demo)
    png_path = s.path_("png_path", _REQUIRED if kind == "png" else None)
    follow = s.url("follow_qr_url")
    lang = s.text("lang", "zh", choices=LANGS)
    s.finish()
    if None in (kind, host, port, lang) or (kind == "png" and png_path is None):
        return None
    return DisplayConfig(kind, host, port, png_path, follow, lang)


def _planogram(ck: Checker, raw: Any, currency: str | None) -> Mapping[int, Product] | None:
    if raw is None:
        ck.report(("planogram",), "no slots configured; add a [planogram.1] table for each slot")
        return None
    if not isinstance(raw, dict):
        ck.report(("planogram",), f"planogram must be a table of slots ([planogram.1], ...), not {_describe(raw)}")
        return None
    if not raw:
        ck.report(("planogram",), "no slots configured; add a [planogram.1] table for each slot")
    minor = "fen" if currency == "CNY" else "cents"
    products: dict[int, Product] = {}
    for name, table in raw.items():
        if not re.fullmatch(r"[1-9][0-9]{0,2}", name) or int(name) > MAX_SLOT:
            ck.report(("planogram", name), f"planogram.{name} must be named by its slot number, "
                                           f"1 to {MAX_SLOT}, as in [planogram.3]")
            continue
        s = _Section(ck, table, ("planogram", name),
                     ("product_id", "name_zh", "name_en", "price", "currency"))
        if not isinstance(table, dict):
            continue  # already reported; its keys would only add noise
        pid = s.text("product_id", pattern=IDENT, rule="1 to 64 letters, digits, '_' or '-'")
        zh, en = s.text("name_zh"), s.text("name_en")
        raw_price = s.data.get("price")
        if isinstance(raw_price, float):
            # Most currencies have 2 decimals; a wrong suggestion for the others would mislead.
            hint = f"; for {raw_price:.2f} {currency} write {round(raw_price * 100)}" \
                if currency and currency not in _ZERO_DECIMAL else ""
            s.bad("price", f"must be an integer number of minor units ({minor}), not {raw_price:g}{hint}")
            price = None
        else:
            price = s.integer("price", lo=0, what=f"an integer number of minor units ({minor})")
        cur = s.text("currency", currency, pattern=CURRENCY, rule="a three-letter ISO-4217 code")
        if cur is not None and currency is not None and cur != currency:
            s.bad("currency", f"is {cur} but the machine sells in {currency}; every slot must use "
                              f"the machine currency")
            cur = None
        s.finish()
        if None not in (pid, zh, en, price, cur):
            products[int(name)] = Product(int(name), pid, zh, en, price, cur)
    return types.MappingProxyType(dict(sorted(products.items())))
