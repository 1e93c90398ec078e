"""vending.config: every field parsed, every problem reported with its line, all at once."""
from __future__ import annotations

import dataclasses
import os
import shutil
import textwrap
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vending import keyfile
from vending.config import (Config, ConfigError, Problem, TomlLines, load_config, parse_config)

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "machine.example.toml"
BASE = Path("/etc/vending")

MINIMAL = """\
machine_id = "VM-0001"
key_file = "machine.key"
journal = "/var/lib/vending/journal"

[serial]
port = "/dev/ttyUSB0"

[orders]
base_url = "https://api.example.com"

[offline_qr]
pay_base_url = "https://pay.example.com"

[planogram.1]
product_id = "cola-330"
name_zh = "可乐"
name_en = "Cola"
price = 350
"""

# Every key set, each to something other than its default.
FULL = """\
machine_id = "VM_test-7"
key_file = "/secure/m.key"
currency = "USD"
session_timeout = 90
late_payment_grace = 30.5
refund_uncertain = false
slot_failure_limit = 5
journal = "state/journal"
telemetry_interval = 15

[serial]
port = "rfc2217://10.0.0.5:4000"
baud = 9600
poll_interval = 0.1
reply_timeout = 0.75

[mqtt]
host = "broker.example.com"
ca = "tls/ca.pem"
cert = "tls/client.pem"
key = "tls/client.key"
username = "vm7"
password_file = "mqtt.password"
keepalive = 45
reconnect_max = 60

[orders]
base_url = "https://api.example.com/vending/"
timeout = 3.5
retries = 5
backoff = 0.5

[offline_qr]
enabled = true
pay_base_url = "http://127.0.0.1:9000/pay"
ttl = 100
wait_for_api = 1.5

[display]
kind = "png"
host = "::1"
port = 9090
png_path = "/run/vending/qr.png"
follow_qr_url = "https://example.com/follow"
lang = "en"

[planogram.2]
product_id = "water"
name_zh = "水"
name_en = "Water"
price = 0

[planogram.1]
product_id = "cola"
name_zh = "可乐"
name_en = "Cola"
price = 125
currency = "USD"  # the machine's
"""


def parse(text: str, **kw) -> Config:
    return parse_config(text, "m.toml", BASE, **kw)


def problems(text: str, **kw) -> list[Problem]:
    with pytest.raises(ConfigError) as ei:
        parse(text, **kw)
    return ei.value.problems


def line_of(text: str, needle: str) -> int:
    for no, line in enumerate(text.split("\n"), 1):
        if needle in line:
            return no
    raise AssertionError(f"{needle!r} not in text")


def test_minimal_config_gets_every_default():
    c = parse(MINIMAL)
    assert c.path == Path("m.toml")
    assert c.machine_id == "VM-0001"
    assert c.key_file == BASE / "machine.key"
    assert c.journal == Path("/var/lib/vending/journal")
    assert (c.currency, c.session_timeout, c.late_payment_grace) == ("CNY", 120.0, 60.0)
    assert (c.refund_uncertain, c.slot_failure_limit, c.telemetry_interval) == (True, 3, 60.0)
    assert c.serial.baud == 115200 and c.serial.poll_interval == 0.05
    assert c.serial.reply_timeout is None
    assert c.mqtt.host == "127.0.0.1" and c.mqtt.port == 1883 and not c.mqtt.tls
    assert (c.mqtt.ca, c.mqtt.cert, c.mqtt.key, c.mqtt.username, c.mqtt.password_file) == (None,) * 5
    assert (c.mqtt.keepalive, c.mqtt.reconnect_max) == (30, 30)
    assert (c.orders.timeout, c.orders.retries, c.orders.backoff) == (2.0, 3, 0.2)
    assert c.offline_qr.enabled and c.offline_qr.ttl == 120.0 and c.offline_qr.wait_for_api == 3.0
    assert c.display == type(c.display)(kind="kiosk", host="127.0.0.1", port=8080, png_path=None,
                                        follow_qr_url=None, lang="zh")
    p = c.planogram[1]
    assert (p.slot, p.product_id, p.name_zh, p.name_en, p.price, p.currency) == \
        (1, "cola-330", "可乐", "Cola", 350, "CNY")


def test_full_config_every_field():
    c = parse(FULL)
    assert c.machine_id == "VM_test-7"
    assert c.key_file == Path("/secure/m.key")
    assert c.journal == BASE / "state/journal"
    assert (c.currency, c.session_timeout, c.late_payment_grace) == ("USD", 90.0, 30.5)
    assert (c.refund_uncertain, c.slot_failure_limit, c.telemetry_interval) == (False, 5, 15.0)
    assert c.serial.port == "rfc2217://10.0.0.5:4000"
    assert (c.serial.baud, c.serial.poll_interval, c.serial.reply_timeout) == (9600, 0.1, 0.75)
    assert c.serial.effective_reply_timeout == 0.75
    m = c.mqtt
    assert m.tls and m.host == "broker.example.com" and m.port == 8883
    assert (m.ca, m.cert, m.key) == (BASE / "tls/ca.pem", BASE / "tls/client.pem", BASE / "tls/client.key")
    assert (m.username, m.password_file) == ("vm7", BASE / "mqtt.password")
    assert (m.keepalive, m.reconnect_max) == (45, 60)
    # The trailing "/" goes: request targets are built as base_url + "/v1/...".
    assert c.orders.base_url == "https://api.example.com/vending"
    assert (c.orders.timeout, c.orders.retries, c.orders.backoff) == (3.5, 5, 0.5)
    assert c.offline_qr.pay_base_url == "http://127.0.0.1:9000/pay" and c.offline_qr.ttl == 100.0
    assert c.offline_qr.wait_for_api == 1.5
    d = c.display
    assert (d.kind, d.host, d.port, d.png_path, d.follow_qr_url, d.lang) == \
        ("png", "::1", 9090, Path("/run/vending/qr.png"), "https://example.com/follow", "en")
    assert list(c.planogram) == [1, 2]  # slot order, whatever the file order
    assert c.planogram[1].price == 125 and c.planogram[1].currency == "USD"
    assert c.planogram[2].price == 0 and c.planogram[2].currency == "USD"


def test_config_is_immutable():
    c = parse(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.machine_id = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.planogram[2] = c.planogram[1]  # type: ignore[index]
    assert dataclasses.replace(c, session_timeout=5.0).session_timeout == 5.0


def test_reply_timeout_defaults_to_the_contract_minimum():
    fast = parse(MINIMAL).serial
    slow = parse(MINIMAL.replace('port = "/dev/ttyUSB0"', 'port = "loop://"\nbaud = 9600')).serial
    assert fast.effective_reply_timeout == pytest.approx(0.1347, abs=1e-3)
    assert slow.effective_reply_timeout == pytest.approx(0.5167, abs=1e-3)


def test_explicit_mqtt_port_with_tls_and_offline_disabled_without_url():
    text = MINIMAL.replace('[orders]', '[mqtt]\nca = "/ca.pem"\nport = 1884\n\n[orders]')
    text = text.replace('pay_base_url = "https://pay.example.com"', "enabled = false")
    c = parse(text)
    assert c.mqtt.tls and c.mqtt.port == 1884
    assert not c.offline_qr.enabled and c.offline_qr.pay_base_url is None


def test_read_password(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    text = MINIMAL.replace("[orders]", '[mqtt]\nusername = "u"\npassword_file = "pw"\n\n[orders]')
    c = parse_config(text, "m.toml", tmp_path)
    assert c.mqtt.read_password() == "s3cret"
    assert parse(MINIMAL).mqtt.read_password() is None


def test_relative_paths_resolve_against_the_config_directory(tmp_path, monkeypatch):
    (tmp_path / "m.toml").write_text(MINIMAL)
    monkeypatch.chdir("/")
    c = load_config(tmp_path / "m.toml")
    assert c.key_file == tmp_path / "machine.key"
    assert c.path == tmp_path / "m.toml"


def test_shipped_example_validates_with_a_key_file_beside_it(tmp_path):
    cfg = tmp_path / "machine.toml"
    shutil.copy(EXAMPLE, cfg)
    keyfile.write_key(tmp_path / "machine.key")
    c = load_config(cfg, check_files=True)
    assert c.machine_id == "VM-0001" and len(c.planogram) == 3
    assert c.key_file == tmp_path / "machine.key"


def test_example_documents_every_key():
    # Each key the loader knows appears in the example, set or commented out.
    text = EXAMPLE.read_text()
    for key in ("machine_id", "key_file", "currency", "session_timeout", "late_payment_grace",
                "refund_uncertain", "slot_failure_limit", "journal", "telemetry_interval", "port",
                "baud", "poll_interval", "reply_timeout", "host", "ca", "cert", "key", "username",
                "password_file", "keepalive", "reconnect_max", "base_url", "timeout", "retries",
                "backoff", "enabled", "pay_base_url", "ttl", "wait_for_api", "kind", "png_path", "follow_qr_url",
                "lang", "product_id", "name_zh", "name_en", "price"):
        assert f"\n{key} = " in text or f"\n# {key} = " in text, key


# (old text in FULL, new text, fragment of the message). The problem must be on the new line.
EDITS = [
    ('machine_id = "VM_test-7"', 'machine_id = "VM 7"', "machine_id must be 1 to 64 letters"),
    ('machine_id = "VM_test-7"', f'machine_id = "{"x" * 65}"', "machine_id must be 1 to 64"),
    ('key_file = "/secure/m.key"', "key_file = 3", "key_file must be a string, not the integer 3"),
    ('currency = "USD"\nsession', 'currency = "usd"\nsession', "ISO-4217"),
    ("session_timeout = 90", "session_timeout = 0", "session_timeout must be more than 0"),
    ("session_timeout = 90", 'session_timeout = "90"', "must be a number of seconds"),
    ("late_payment_grace = 30.5", "late_payment_grace = -1", "late_payment_grace must be at least 0"),
    ("refund_uncertain = false", "refund_uncertain = 0", "refund_uncertain must be true or false"),
    ("slot_failure_limit = 5", "slot_failure_limit = 0", "slot_failure_limit must be from 1 to 100"),
    ("slot_failure_limit = 5", "slot_failure_limit = 2.0", "must be an integer, not the decimal"),
    ("slot_failure_limit = 5", "slot_failure_limit = true", "must be an integer, not the boolean"),
    ("telemetry_interval = 15", "telemetry_interval = nan", "must be a number of seconds"),
    ('port = "rfc2217://10.0.0.5:4000"', 'port = "ttyUSB0"', "absolute device path"),
    ('port = "rfc2217://10.0.0.5:4000"', 'port = "tcp://x:1"', "pyserial does not know"),
    ("baud = 9600", "baud = 1234", "serial.baud must be a standard rate"),
    ("poll_interval = 0.1", "poll_interval = 11", "serial.poll_interval must be more than 0 and at most 10"),
    ("reply_timeout = 0.75", "reply_timeout = 0.3", "at least 0.517 s at 9600 baud"),
    ('host = "broker.example.com"', 'host = "mqtt://broker"', "not a URL"),
    ('ca = "tls/ca.pem"', "ca = []", "mqtt.ca must be a string, not an array"),
    ('cert = "tls/client.pem"', "", "mqtt.key is set but mqtt.cert is not"),
    ('username = "vm7"', "", "mqtt.password_file is set but mqtt.username is not"),
    ("keepalive = 45", "keepalive = 4", "mqtt.keepalive must be from 5 to 65535"),
    ("reconnect_max = 60", "reconnect_max = 0.5", "mqtt.reconnect_max must be a whole number"),
    ('base_url = "https://api.example.com/vending/"', 'base_url = "ftp://x"', "http:// or https://"),
    ('base_url = "https://api.example.com/vending/"', 'base_url = "https://a/?q=1"', "query string"),
    ('base_url = "https://api.example.com/vending/"', 'base_url = "https://u:p@a/"', "user name or password"),
    ('base_url = "https://api.example.com/vending/"', 'base_url = "https://a:99999"', "not a valid URL"),
    ("timeout = 3.5", "timeout = 61", "orders.timeout must be more than 0 and at most 60"),
    ("retries = 5", "retries = -1", "orders.retries must be from 0 to 10"),
    ("backoff = 0.5", "backoff = false", "orders.backoff must be a number of seconds"),
    ("enabled = true", 'enabled = "yes"', "offline_qr.enabled must be true or false"),
    ('pay_base_url = "http://127.0.0.1:9000/pay"', 'pay_base_url = "pay.example.com"', "http:// or https://"),
    ("ttl = 100", "ttl = 121", "must not exceed session_timeout + late_payment_grace (120.5 s)"),
    ("wait_for_api = 1.5", "wait_for_api = 0", "offline_qr.wait_for_api must be more than 0 and at most 30"),
    ("wait_for_api = 1.5", "wait_for_api = 31", "offline_qr.wait_for_api must be more than 0 and at most 30"),
    ('kind = "png"', 'kind = "lcd"', "display.kind must be one of 'kiosk', 'terminal', 'png', 'none'"),
    ('host = "::1"', 'host = "0.0.0.0"', "display.host must be a loopback address"),
    ("port = 9090", "port = 70000", "display.port must be from 0 to 65535"),
    ('follow_qr_url = "https://example.com/follow"', 'follow_qr_url = "x"', "display.follow_qr_url must be"),
    ('lang = "en"', 'lang = "fr"', "display.lang must be one of 'zh', 'en'"),
    ('product_id = "cola"', 'product_id = "co la"', "planogram.1.product_id must be 1 to 64"),
    ('name_zh = "水"', 'name_zh = ""', "planogram.2.name_zh must not be empty"),
    ("price = 125", "price = 3.5", "price must be an integer number of minor units (cents), not 3.5"),
    ("price = 0", "price = -1", "planogram.2.price must be at least 0"),
    ('currency = "USD"  #', 'currency = "EUR"  #', "is EUR but the machine sells in USD"),
    ("refund_uncertain = false", "refund_uncertian = false", "unknown key refund_uncertian; did you mean refund_uncertain?"),
    ("keepalive = 45", "keep_alive = 45", "unknown key mqtt.keep_alive; did you mean keepalive?"),
    ("[display]", "[dispaly]", "unknown key dispaly; did you mean display?"),
    ("name_en = \"Water\"", "name_en = \"Water\"\nprize = 3", "unknown key planogram.2.prize; did you mean price?"),
    ("[planogram.2]", "[planogram.02]", "planogram.02 must be named by its slot number"),
    ("[planogram.2]", "[planogram.257]", "1 to 256"),
]


@pytest.mark.parametrize("old,new,fragment", EDITS, ids=[f"{i}:{e[1][:24]}" for i, e in enumerate(EDITS)])
def test_each_problem_names_its_line(old, new, fragment):
    assert FULL.count(old) == 1, old
    text = FULL.replace(old, new)
    changed = [ln for ln in new.split("\n") if ln not in old.split("\n")]
    expected = line_of(text, changed[0]) if new else line_of(text, old_partner(old))
    found = problems(text)
    hits = [p for p in found if fragment in p.message]
    assert hits, (fragment, [str(p) for p in found])
    assert hits[0].line == expected, str(hits[0])
    assert str(hits[0]) == f"m.toml:{expected}: {hits[0].message}"


def old_partner(old: str) -> str:
    """For a deleted line, the problem sits on the line that needed it."""
    return {'cert = "tls/client.pem"': 'key = "tls/client.key"',
            'username = "vm7"': 'password_file = "mqtt.password"'}[old]


def test_a_float_price_suggests_the_integer():
    text = MINIMAL.replace("price = 350", "price = 3.5")
    (p,) = problems(text)
    assert p.line == line_of(text, "price = 3.5")
    assert p.message == ("planogram.1.price must be an integer number of minor units (fen), not 3.5; "
                         "for 3.50 CNY write 350")


@pytest.mark.parametrize("drop,header,message", [
    ('port = "/dev/ttyUSB0"\n', "[serial]", "serial.port is missing; add port = ... to [serial]"),
    ('base_url = "https://api.example.com"\n', "[orders]", "orders.base_url is missing"),
    ('pay_base_url = "https://pay.example.com"\n', "[offline_qr]", "offline_qr.pay_base_url is missing"),
    ("price = 350\n", "[planogram.1]", "planogram.1.price is missing"),
])
def test_missing_key_in_a_table_points_at_its_header(drop, header, message):
    text = MINIMAL.replace(drop, "")
    (p,) = problems(text)
    assert message in p.message and p.line == line_of(text, header)


def test_missing_top_level_keys_and_tables_have_no_line():
    text = MINIMAL.replace('machine_id = "VM-0001"\n', "")
    text = text.split("[planogram.1]")[0].replace("[serial]\nport = \"/dev/ttyUSB0\"\n", "")
    found = problems(text)
    messages = {p.message: p.line for p in found}
    assert messages == {
        "machine_id is missing; add machine_id = ...": None,
        "serial.port is missing; add port = ... to [serial]": None,
        "no slots configured; add a [planogram.1] table for each slot": None,
    }
    assert str(found[0]).startswith("m.toml: ")


def test_an_empty_or_scalar_slot_is_reported():
    text = MINIMAL + "\n[planogram.2]\n"
    found = problems(text)
    assert {p.message.split(";")[0] for p in found} == {
        f"planogram.2.{k} is missing" for k in ("product_id", "name_zh", "name_en", "price")}
    assert {p.line for p in found} == {line_of(text, "[planogram.2]")}
    text = MINIMAL.replace("[planogram.1]", "[planogram]\n3 = 5\n[planogram.1]")
    (p,) = problems(text)
    assert p.line == line_of(text, "3 = 5")
    assert p.message == "planogram.3 must be a table ([planogram.3]), not the integer 5"


def test_png_display_needs_png_path():
    text = MINIMAL + '\n[display]\nkind = "png"\n'
    (p,) = problems(text)
    assert p.message.startswith("display.png_path is missing") and p.line == line_of(text, "[display]")


def test_a_section_that_is_not_a_table():
    text = 'serial = "loop://"\n' + MINIMAL.replace('[serial]\nport = "/dev/ttyUSB0"\n', "")
    found = problems(text)
    assert any(p.line == 1 and "serial must be a table ([serial])" in p.message for p in found)


def test_every_problem_is_reported_at_once_in_line_order():
    text = FULL
    for old, new in [("baud = 9600", "baud = 9601"), ("price = 0", "price = 0.5"),
                     ('lang = "en"', 'lang = "de"'), ("retries = 5", "retries = 50"),
                     ("currency = \"USD\"\nsession", "currency = \"US\"\nsession")]:
        text = text.replace(old, new, 1)
    found = problems(text)
    assert len(found) >= 5
    lines = [p.line for p in found]
    assert lines == sorted(lines)
    assert str(ConfigError(found)).count("\n") == len(found) - 1


def test_toml_syntax_error_gives_line_and_column():
    text = MINIMAL.replace("price = 350", "price = = 350")
    (p,) = problems(text)
    assert p.line == line_of(text, "price = = 350")
    assert p.message.startswith("TOML syntax error: Invalid value") and "(column 9)" in p.message
    (dup,) = problems(MINIMAL + "price = 1\n")
    assert dup.line == MINIMAL.count("\n") + 1 and "Cannot overwrite a value" in dup.message
    (eof,) = problems(MINIMAL + "[serial\n")
    assert eof.line is not None and "TOML syntax error" in eof.message


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path / "nope.toml")
    assert str(ei.value) == f"{tmp_path / 'nope.toml'}: the config file does not exist"
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(MINIMAL.encode() + b'# caf\xe9\n')
    with pytest.raises(ConfigError) as ei:
        load_config(bad)
    assert ei.value.problems == [Problem(str(bad), MINIMAL.count("\n") + 1, "is not valid UTF-8 text")]


def test_check_files_reports_key_tls_and_password_files(tmp_path):
    (tmp_path / "machine.key").write_text("00" * 32 + "\n")
    os.chmod(tmp_path / "machine.key", 0o644)
    (tmp_path / "ca.pem").write_text("x")
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    os.chmod(pw, 0o604)
    text = MINIMAL.replace("[orders]", '[mqtt]\nca = "ca.pem"\ncert = "c.pem"\nkey = "c.key"\n'
                                       'username = "u"\npassword_file = "pw"\n\n[orders]')
    assert parse_config(text, "m.toml", tmp_path).mqtt.tls  # without check_files: fine
    with pytest.raises(ConfigError) as ei:
        parse_config(text, "m.toml", tmp_path, check_files=True)
    got = {p.line: p.message for p in ei.value.problems}
    assert "chmod 600" in got[line_of(text, "key_file")]
    assert got[line_of(text, 'cert = "c.pem"')] == f"mqtt.cert names {tmp_path / 'c.pem'}, which does not exist"
    assert "which does not exist" in got[line_of(text, 'key = "c.key"')]
    assert "other users can access (mode 0604)" in got[line_of(text, "password_file")]
    assert line_of(text, 'ca = "ca.pem"') not in got


# ---- TomlLines: the key-path -> line map --------------------------------------------------

def test_toml_lines_handles_dotted_quoted_and_multiline_syntax():
    text = textwrap.dedent('''\
        top = 1
        serial.port = "loop://"
        "quoted key" = 2
        [ display ]
        'lit.key' = 3
        note = """
        fake = 1
        [fake]
        """
        lines = [
          "x = 1",
          ["[y]"],
        ]
        raw = \'\'\'
        raw = 2\'\'\'
        inline = { a = 1, b = 2 }
        [planogram."7"]
        price = 1
        [[items]]
        sub.deep."k.k" = 4
        ''')
    tomllib.loads(text)  # the sample must be valid TOML
    lines = TomlLines(text)
    assert lines.line(("top",)) == 1
    assert lines.line(("serial",)) == 2 and lines.line(("serial", "port")) == 2
    assert lines.line(("quoted key",)) == 3
    assert lines.line(("display",)) == 4 and lines.line(("display", "lit.key")) == 5
    assert lines.line(("display", "note")) == 6
    # Lines inside the multi-line string are not keys: the lookup falls back to the table.
    assert lines.line(("fake",)) is None and lines.line(("display", "fake")) == 4
    assert lines.line(("display", "lines")) == 10
    assert lines.line(("y",)) is None
    assert lines.line(("display", "raw")) == 14
    assert lines.line(("display", "inline", "b")) == 16  # inside an inline table: its line
    assert lines.line(("planogram",)) == 17 and lines.line(("planogram", "7", "price")) == 18
    assert lines.line(("items", "sub", "deep", "k.k")) == 20
    assert lines.line(("nowhere",)) is None


def test_toml_lines_with_crlf_and_escaped_quotes():
    text = 'a = "x\\"\\"\\" = y"\r\nb = """\\"""\r\nc = 1\r\n"""\r\nd = 2\r\n'
    assert tomllib.loads(text)["d"] == 2
    lines = TomlLines(text)
    assert (lines.line(("a",)), lines.line(("b",)), lines.line(("c",)), lines.line(("d",))) == (1, 2, None, 5)


_bare = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)
_value = st.sampled_from(['1', '"s = 1"', "'lit'", '"""\nq = 2\n[t]\n"""', "[\n  1,\n  2,\n]",
                          "{ i = 1 }", "'''\nk = 3'''", "true"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_bare, st.lists(st.tuples(_bare, st.booleans(), _value), max_size=4)),
                max_size=4, unique_by=lambda t: t[0]))
def test_toml_lines_finds_generated_keys(tables):
    out: list[str] = []
    expected = {}
    for name, entries in tables:
        out.append(f"[tbl.{name}]")
        expected[("tbl", name)] = len(out)
        seen = set()
        for key, quoted, value in entries:
            if key in seen:
                continue
            seen.add(key)
            expected[("tbl", name, key)] = len(out) + 1
            shown = f'"{key}"' if quoted else key
            out.extend(f"{shown} = {value}".split("\n"))
    text = "\n".join(out) + "\n"
    tomllib.loads(text)  # the generator must produce valid TOML
    lines = TomlLines(text)
    for path, no in expected.items():
        assert lines.line(path) == no, (path, text)
