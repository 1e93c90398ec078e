"""Property fuzzing of every parser that reads bytes from outside: the VLP codec (serial), the MQTT
message parsers and the machine config. For any input the result is a typed value or the module's
typed error, never another exception, and never a hang (a generous hypothesis deadline is the
hang guard, not a speed test). Inputs are built to get past the outer checks too: lines with a
correct CRC, payloads signed with the machine key, configs that are mostly valid.

More examples: VENDING_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py. Coverage-guided fuzzing of
the same targets: bench/fuzz_atheris.py.
"""
from __future__ import annotations

import json
import os
import re
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge import vlp
from vending import messages, signing
from vending.config import Config, ConfigError, parse_config

EXAMPLES = int(os.environ.get("VENDING_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=2), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
KEY = bytes(range(32))
MID = "VM-0001"

# ---- VLP/1 ---------------------------------------------------------------------------------

PRINTABLE = st.binary().map(lambda b: bytes(0x20 + x % 95 for x in b))
TOKENS = st.sampled_from([b"1", b"65535", b"65536", b"0", b"01", b"OK", b"ERR", b"VEND", b"POLL",
                          b"id=v1", b"slot=3", b"boot=0", b"ack=7", b"k=", b"=v", b"a=b=c", b"*",
                          b"x" * 70, b"key_" + b"k" * 20 + b"=1", b"\r", b" ", b"  ", b"\x7f"])
BODIES = st.lists(st.one_of(TOKENS, PRINTABLE), max_size=12).map(lambda ts: b" ".join(ts))


def with_crc(body: bytes) -> bytes:
    return body + b"*%04X\n" % vlp.crc16(body)


LINES = st.one_of(st.binary(max_size=300), BODIES.map(with_crc), PRINTABLE.map(with_crc),
                  BODIES.map(lambda b: b + b"\n"))


@FUZZ
@given(LINES)
def test_vlp_decode_only_raises_its_two_errors(line):
    try:
        frame = vlp.decode(line)
    except (vlp.DroppedLine, vlp.BadRequest) as err:
        if isinstance(err, vlp.BadRequest):
            assert 1 <= err.seq <= vlp.MAX_SEQ
        return
    assert 1 <= frame.seq <= vlp.MAX_SEQ
    assert re.fullmatch(r"[A-Z]{2,10}", frame.verb)
    assert len({k for k, _ in frame.args}) == len(frame.args)
    # what decodes re-encodes to the same bytes (the CRC is over the exact body)
    expected = frame.raw[:-2] + b"\n" if frame.raw.endswith(b"\r\n") else frame.raw
    assert vlp.encode(frame.seq, frame.verb, frame.args) == expected


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


def _outcome(item) -> tuple:
    if isinstance(item, vlp.Frame):
        return ("frame", item.seq, item.verb, item.args)
    if isinstance(item, vlp.BadRequest):
        return ("bad", item.seq)
    assert isinstance(item, vlp.DroppedLine)
    return ("dropped",)


@FUZZ
@given(st.lists(LINES, max_size=8).map(b"".join), st.lists(st.integers(0, 4000), max_size=12))
def test_line_reader_never_raises_and_chunking_does_not_matter(stream, cuts):
    whole = _feed_all([stream])
    chunked = _feed_all(_split(stream, cuts))
    assert [_outcome(x) for x in whole] == [_outcome(x) for x in chunked]


def _feed_all(chunks: list[bytes]) -> list:
    reader, out = vlp.LineReader(), []
    for chunk in chunks:
        items = reader.feed(chunk)
        assert all(isinstance(x, (vlp.Frame, vlp.DroppedLine, vlp.BadRequest)) for x in items)
        assert reader.pending < vlp.MAX_LINE
        out += items
    return out


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=8), ch, max_size=4),
    max_leaves=12)


@FUZZ
@given(st.one_of(st.integers(-5, 70000), JSONISH), st.one_of(st.text(max_size=12), JSONISH),
       st.one_of(st.lists(st.tuples(st.text(max_size=18), st.one_of(st.integers(), st.text(
           max_size=70), JSONISH)), max_size=6), JSONISH))
def test_vlp_encode_only_raises_encode_error_and_round_trips(seq, verb, args):
    try:
        line = vlp.encode(seq, verb, args)
    except vlp.EncodeError:
        return
    assert len(line) <= vlp.MAX_LINE
    frame = vlp.decode(line)
    assert (frame.seq, frame.verb) == (seq, verb)


# ---- MQTT messages -------------------------------------------------------------------------

def _field(valid):
    return st.one_of(valid, valid, JSONISH)


IDENTS = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
PAYMENT_FIELDS = st.fixed_dictionaries({
    "v": _field(st.just(1)), "type": _field(st.just("payment")),
    "machine_id": _field(st.sampled_from([MID, "VM-0002"])), "ts": _field(st.integers(0, 2**40)),
    "order_id": _field(IDENTS), "amount": _field(st.integers(0, 10**6)),
    "currency": _field(st.sampled_from(["CNY", "USD", "cny", "CN"])),
    "provider": _field(st.sampled_from(["wechat", "alipay", "sandbox", ""])),
    "txn_id": _field(st.text(min_size=1, max_size=130)),
}, optional={"payer": _field(st.text(max_size=40)), "promo": _field(st.text(max_size=40)),
             "extra": JSONISH})
ARGS = st.one_of(JSONISH, st.fixed_dictionaries(
    {}, optional={"slot": _field(st.integers(0, 20)), "reason": _field(st.text(max_size=300)),
                  "prices": _field(st.dictionaries(st.sampled_from(["1", "2", "01", "x"]),
                                                   _field(st.integers(-1, 999)), max_size=3)),
                  "amount": _field(st.integers(-1, 999)), "start": _field(st.integers(-1, 99)),
                  "end": _field(st.integers(-1, 99))}))
COMMAND_FIELDS = st.fixed_dictionaries({
    "v": _field(st.just(1)), "type": _field(st.just("command")),
    "machine_id": _field(st.just(MID)), "ts": _field(st.integers(0, 2**40)),
    "cmd_id": _field(IDENTS), "name": _field(st.sampled_from(messages.COMMAND_NAMES)),
    "args": ARGS, "expires": _field(st.integers(-1, 2**40)),
})
ACK_FIELDS = st.fixed_dictionaries({
    "v": _field(st.just(1)), "type": _field(st.just("ack")), "machine_id": _field(st.just(MID)),
    "ts": _field(st.integers(-1, 2**40)), "event_id": _field(IDENTS)})


def _wire(draw_obj, how: str, sign: bool):
    obj = draw_obj
    if sign:
        try:
            obj = signing.sign_payload(KEY, draw_obj)
        except signing.SigningError:     # NaN or infinity: not canonical JSON, so not signable
            pass
    if how == "dict":
        return obj
    text = json.dumps(obj, ensure_ascii=how == "ascii")
    return text if how == "str" else text.encode("utf-8", "surrogatepass")


def _mutate(raw, cut: int, junk: bytes):
    if isinstance(raw, dict):
        return raw
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    cut %= len(data) + 1
    return data[:cut] + junk + data[cut + len(junk):]


def _inputs(fields):
    shaped = st.builds(_wire, fields, st.sampled_from(["dict", "str", "ascii", "bytes"]),
                       st.sampled_from([True, True, True, False]))
    mutated = st.builds(_mutate, shaped, st.integers(0, 10**4),
                        st.binary(max_size=4) | st.sampled_from([b'"\\ud800"', b"NaN", b"1e999",
                                                                 b'{"a":1,"a":2}', b"[[[[[[[[[["]))
    return st.one_of(shaped, shaped, mutated, st.binary(max_size=400), st.text(max_size=200),
                     JSONISH)


def _parses_to(parse, raw, typed):
    try:
        out = parse(raw, KEY, MID)
    except messages.Rejected as r:
        assert r.reason in tuple(messages.Reason)
        assert r.order_id is None or messages.is_ident(r.order_id)
        return None
    assert isinstance(out, typed)
    return out


@FUZZ
@given(_inputs(PAYMENT_FIELDS))
def test_parse_payment_only_rejects(raw):
    p = _parses_to(messages.parse_payment, raw, messages.Payment)
    if p is not None:   # what gets through is exactly what money code may rely on
        assert type(p.amount) is int and p.amount >= 0 and type(p.ts) is int
        assert re.fullmatch(r"[A-Z]{3}", p.currency) and messages.is_ident(p.order_id)
        assert isinstance(p.txn_id, str) and 0 < len(p.txn_id) <= 128
        assert signing.verify_payload(KEY, p.message) and p.message["machine_id"] == MID


@FUZZ
@given(_inputs(COMMAND_FIELDS))
def test_parse_command_only_rejects(raw):
    c = _parses_to(messages.parse_command, raw, messages.Command)
    if c is not None:
        assert c.name in messages.COMMAND_NAMES and messages.is_ident(c.cmd_id)
        assert set(c.args) == set(messages.COMMAND_ARGS[c.name])
        if c.name == "free_vend":
            assert type(c.args["slot"]) is int and c.args["slot"] >= 1


@FUZZ
@given(_inputs(ACK_FIELDS))
def test_parse_ack_only_rejects(raw):
    a = _parses_to(messages.parse_ack, raw, messages.Ack)
    if a is not None:
        assert messages.is_ident(a.event_id) and type(a.ts) is int


# ---- machine config ------------------------------------------------------------------------

BASE = Path("/etc/vending")
VALID = """\
machine_id = "VM-0001"
key_file = "machine.key"
journal = "/var/lib/vending/journal"
session_timeout = 120
late_payment_grace = 60
[serial]
port = "/dev/ttyUSB0"
baud = 115200
[mqtt]
host = "127.0.0.1"
port = 1883
[orders]
base_url = "https://api.example.com"
[offline_qr]
pay_base_url = "https://pay.example.com"
ttl = 100
[display]
kind = "png"
png_path = "/run/vending/qr.png"
[planogram.1]
product_id = "cola-330"
name_zh = "可乐"
name_en = "Cola"
price = 350
"""
TOML_VALUES = st.one_of(st.sampled_from([
    '""', '"x"', "0", "-1", "1e400", "nan", "inf", "-inf", "1.5", "true", "[1, 2]", "[]",
    "{a = 1}", '"\\u0000"', "0x10", "1979-05-27T07:32:00Z", "07:32:00", '"""a\nb"""', "'lit'",
    '"/dev/ttyUSB0"', '"http://[::1]:80/"', '"ftp://x"', "99999999999999999999", '"VM 1"']),
    st.integers().map(str), st.text(max_size=20).map(json.dumps))


def _mutate_config(lines: list[str], edits: list[tuple[int, int, str]]) -> str:
    lines = list(lines)
    for op, at, value in edits:
        if not lines:
            break
        i = at % len(lines)
        if op == 0:                                   # new value for a key
            key = lines[i].split("=", 1)[0].strip() if "=" in lines[i] else "x"
            lines[i] = f"{key} = {value}"
        elif op == 1:
            del lines[i]
        elif op == 2:
            lines.insert(i, lines[i])                 # a duplicated key or table
        elif op == 3:
            lines.insert(i, f"[{value.strip(chr(34))[:12] or 'x'}]")
        else:
            lines[i] = lines[i][: len(value)]          # a truncated line
    return "\n".join(lines)


CONFIG_TEXTS = st.one_of(
    st.text(max_size=400),
    st.builds(_mutate_config, st.just(VALID.split("\n")),
              st.lists(st.tuples(st.integers(0, 4), st.integers(0, 100), TOML_VALUES),
                       min_size=1, max_size=6)))


@FUZZ
@given(CONFIG_TEXTS)
def test_parse_config_only_raises_config_error(text):
    try:
        cfg = parse_config(text, "fuzz.toml", BASE)
    except ConfigError as e:
        assert e.problems and all(p.file == "fuzz.toml" for p in e.problems)
        return
    assert isinstance(cfg, Config)


def test_the_unmutated_config_is_valid():
    assert parse_config(VALID, "fuzz.toml", BASE).machine_id == "VM-0001"
