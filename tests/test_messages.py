"""vending.messages: CONTRACT §2 payloads, and everything hostile a broker can deliver."""
from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.vectors import VECTORS
from vending import messages as m
from vending.messages import (
    Ack,
    Command,
    EventFieldError,
    Payment,
    Rejected,
    build_event,
    is_fresh,
    is_ident,
    parse_ack,
    parse_command,
    parse_payment,
    parse_signed,
    vend_id_for,
)
from vending.signing import sign_payload

KEY = bytes.fromhex(VECTORS["machine_key_hex"])
OTHER_KEY = bytes(range(32))
MID = "VM-0001"
VECTOR_PAYMENT = {**VECTORS["mqtt_payment"]["payload_without_sig"],
                  "sig": VECTORS["mqtt_payment"]["sig"]}
BASE = {k: v for k, v in VECTOR_PAYMENT.items() if k != "sig"}
TS = BASE["ts"]


def signed(payload: dict, key: bytes = KEY) -> bytes:
    return json.dumps(sign_payload(key, payload), ensure_ascii=False).encode("utf-8")


def rejected(fn, raw, reason, **attrs) -> Rejected:
    with pytest.raises(Rejected) as info:
        fn(raw, KEY, MID)
    exc = info.value
    assert exc.reason == reason, exc.detail
    for name, value in attrs.items():
        assert getattr(exc, name) == value
    assert VECTORS["machine_key_hex"] not in str(exc)
    sig = raw.get("sig") if isinstance(raw, dict) else None
    assert not (isinstance(sig, str) and len(sig) > 8 and sig in str(exc))
    assert exc.detail and "\n" not in exc.detail
    return exc


# --- payments ----------------------------------------------------------------------------------

@pytest.mark.parametrize("form", [
    lambda d: json.dumps(d).encode(), lambda d: json.dumps(d), lambda d: dict(d),
    lambda d: bytearray(json.dumps(d, indent=2).encode()),
])
def test_vector_payment_parses(form):
    p = parse_payment(form(VECTOR_PAYMENT), KEY, MID)
    assert p == Payment(order_id="o-20261125-0001", amount=350, currency="CNY",
                        provider="wechat", txn_id="4200001234202611250001",
                        payer="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", promo=None, ts=TS,
                        message=VECTOR_PAYMENT)
    assert p.message == VECTOR_PAYMENT
    assert type(p.amount) is int


def test_payment_from_a_dict_keeps_a_private_copy():
    given_dict = json.loads(json.dumps(VECTOR_PAYMENT))
    p = parse_payment(given_dict, KEY, MID)
    given_dict["amount"] = 1
    assert p.message["amount"] == 350 and p.message == VECTOR_PAYMENT


def test_optional_payer_and_promo_and_unicode_promo():
    fields = {k: v for k, v in BASE.items() if k != "payer"}
    p = parse_payment(signed({**fields, "promo": "买一送一"}), KEY, MID)
    assert p.payer is None and p.promo == "买一送一"
    assert parse_payment(signed({**BASE, "payer": None}), KEY, MID).payer is None


@pytest.mark.parametrize("field,value", [
    ("amount", 351), ("amount", 350.0), ("amount", True), ("currency", "USD"),
    ("order_id", "o-20261125-0002"), ("txn_id", "4200001234202611250009"), ("ts", TS + 1),
    ("machine_id", "VM-0002"), ("type", "command"), ("v", True), ("payer", "someone-else"),
    ("provider", "alipay"), ("promo", "free"),
])
def test_every_tampered_field_is_bad_sig(field, value):
    raw = {**VECTOR_PAYMENT, field: value}
    oid = raw["order_id"]
    rejected(parse_payment, json.dumps(raw).encode(), m.Reason.BAD_SIG, order_id=oid)


def test_missing_or_odd_sig_is_bad_sig():
    rejected(parse_payment, json.dumps(BASE).encode(), "bad_sig", order_id=BASE["order_id"])
    for sig in [None, 5, "", VECTOR_PAYMENT["sig"] + "="]:
        rejected(parse_payment, json.dumps({**BASE, "sig": sig}), "bad_sig")
    rejected(parse_payment, signed(BASE, key=OTHER_KEY), "bad_sig")


def test_order_id_is_reported_only_when_it_is_an_ident():
    rejected(parse_payment, json.dumps({**BASE, "order_id": "o 1"}), "bad_sig", order_id=None)
    rejected(parse_payment, json.dumps({**BASE, "order_id": 7}), "bad_sig", order_id=None)


def test_wrong_machine_is_checked_after_the_sig():
    rejected(parse_payment, signed({**BASE, "machine_id": "VM-0002"}), "wrong_machine",
             order_id=BASE["order_id"])
    # A forged message for another machine is bad_sig, whatever else it says.
    rejected(parse_payment, signed({**BASE, "machine_id": "VM-0002"}, OTHER_KEY), "bad_sig")


def test_unauthenticated_garbage_is_bad_sig_not_malformed():
    # Field checks must not run before the sig: no oracle for unsigned content.
    rejected(parse_payment, json.dumps({**BASE, "amount": "lots", "sig": "x"}), "bad_sig")


MALFORMED_FIELDS = [
    ("amount", 350.0), ("amount", "350"), ("amount", True), ("amount", -1), ("amount", None),
    ("currency", "cny"), ("currency", "CN"), ("currency", "CNYY"), ("currency", 156),
    ("order_id", "o 1"), ("order_id", ""), ("order_id", "o" * 65), ("order_id", 12),
    ("txn_id", ""), ("txn_id", "t" * 129), ("txn_id", "a\nb"), ("txn_id", 42), ("txn_id", None),
    ("provider", ""), ("provider", None), ("ts", 1.5), ("ts", "1764050400"), ("ts", True),
    ("ts", -1), ("v", True), ("v", 2), ("v", "1"), ("v", 1.0), ("type", "command"),
    ("type", None), ("payer", 5), ("promo", ["x"]), ("promo", {"a": 1}),
]


@pytest.mark.parametrize("field,value", MALFORMED_FIELDS)
def test_signed_but_malformed_fields(field, value):
    exc = rejected(parse_payment, signed({**BASE, field: value}), "malformed")
    assert repr(field) in exc.detail
    assert exc.order_id == (BASE["order_id"] if field != "order_id" else None)


@pytest.mark.parametrize("field", ["order_id", "amount", "currency", "provider", "txn_id",
                                   "ts", "v", "type"])
def test_signed_but_missing_field(field):
    payload = {k: v for k, v in BASE.items() if k != field}
    rejected(parse_payment, signed(payload), "malformed")


def _dup_amount() -> bytes:
    # The last "amount" is the signed one; a parser taking the first would read 1.
    good = signed(BASE).decode()
    return good.replace('"amount": 350', '"amount": 1, "amount": 350').encode()


def _padded() -> bytes:
    return signed({**BASE, "promo": "x" * m.MAX_PAYLOAD_BYTES})


HOSTILE = [
    b"", b"null", b"[]", b'"payment"', b"350", b"[" * 20000, b'{"a":' * 3000,
    b"{" + b'"a":' * 2 + b"1}", b"\xff\xfe{}", b"\xef\xbb\xbf{}", b'{"a":NaN}',
    b'{"a":Infinity}', b'{"a":-Infinity}', b'{"a":1e999}', b'{"a":' + b"9" * 5000 + b"}",
    b'{"a":"\\ud800"}', b'{"\\udc00":1}', b"{'a':1}", b'{"a":1,}', b"\x00",
    json.dumps({"x": [[[[[[[[[[1]]]]]]]]]]}).encode(), b" " * (m.MAX_PAYLOAD_BYTES + 1),
    "\ud800", "x" * (m.MAX_PAYLOAD_BYTES + 1), None, 42, ["a"], 1.5, {1: "a"},
    {"a": float("nan")}, {"a": object()}, b"[" * 15000,
    {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {}}}}}}}}},
]


@pytest.mark.parametrize("raw", HOSTILE + [_dup_amount(), _padded()])
def test_hostile_payloads_are_malformed(raw):
    for fn in (parse_payment, parse_command, parse_ack):
        rejected(fn, raw, "malformed")


def test_cyclic_dict_is_malformed():
    loop: dict = {"a": 1}
    loop["self"] = loop
    rejected(parse_payment, loop, "malformed")


def test_huge_dict_from_the_orders_api_is_malformed():
    rejected(parse_payment, sign_payload(KEY, {**BASE, "promo": "x" * 20000}), "malformed")


def test_receiver_misconfiguration_is_loud():
    with pytest.raises(ValueError):
        parse_payment(json.dumps(VECTOR_PAYMENT), b"", MID)
    with pytest.raises(ValueError):
        parse_payment(json.dumps(VECTOR_PAYMENT), KEY, "VM 1")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_ever_rejected(raw):
    with pytest.raises(Rejected):
        parse_payment(raw, KEY, MID)


json_leaf = (st.none() | st.booleans() | st.integers()
             | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10))
json_tree = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                         max_leaves=15)
FIELDS = sorted(BASE) + ["promo", "extra"]


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), json_tree, max_size=2),
       st.sets(st.sampled_from(FIELDS), max_size=1), st.booleans(),
       st.sampled_from(["bytes", "str", "dict"]))
def test_arbitrary_json_gives_payment_or_rejected(replace, drop, sign, form):
    payload = {k: v for k, v in {**BASE, **replace}.items() if k not in drop}
    msg = sign_payload(KEY, payload) if sign else payload
    raw = {"bytes": json.dumps(msg).encode(), "str": json.dumps(msg), "dict": msg}[form]
    try:
        p = parse_payment(raw, KEY, MID)
    except Rejected as exc:
        assert exc.reason in ("bad_sig", "wrong_machine", "malformed")
        assert not sign or exc.reason != "bad_sig"
        assert sign or exc.reason == "bad_sig"
        untouched = not drop - {"payer", "promo", "extra"} and all(
            k == "extra" or (k in ("payer", "promo") and (v is None or isinstance(v, str)))
            or BASE.get(k, object()) == v and type(BASE.get(k)) is type(v)
            for k, v in replace.items())
        assert not (sign and untouched), exc.detail
        return
    assert sign
    assert type(p.amount) is int and p.amount >= 0 and type(p.ts) is int
    assert re.fullmatch(r"[A-Z]{3}", p.currency) and is_ident(p.order_id)
    assert isinstance(p.txn_id, str) and p.message == msg


# --- commands and acks -------------------------------------------------------------------------

def command(name: str, args: dict, **extra) -> bytes:
    return signed({"v": 1, "type": "command", "machine_id": MID, "ts": TS, "cmd_id": "c-1",
                   "name": name, "args": args, "expires": TS + 600, **extra})


GOOD_COMMANDS = [
    ("set_prices", {"prices": {"1": 350, "12": 0}}),
    ("set_prices", {"prices": {}}),
    ("set_promo", {"slot": 3, "amount": 200, "start": TS, "end": TS + 3600}),
    ("free_vend", {"slot": 3, "reason": "补偿 jam on order o-1"}),
    ("cancel_session", {}),
    ("ping", {}),
]


@pytest.mark.parametrize("name,args", GOOD_COMMANDS)
def test_good_commands(name, args):
    c = parse_command(command(name, args), KEY, MID)
    assert (c.cmd_id, c.name, c.args, c.expires, c.ts) == ("c-1", name, args, TS + 600, TS)
    assert c.message["sig"]


def test_freshness_is_not_judged_by_the_parser():
    raw = signed({"v": 1, "type": "command", "machine_id": MID, "ts": 1, "cmd_id": "c-old",
                  "name": "ping", "args": {}, "expires": 2})
    c = parse_command(raw, KEY, MID)
    assert c.ts == 1 and not is_fresh(c.ts, now=TS)


BAD_COMMANDS = [
    ("set_prices", {"prices": {"01": 1}}), ("set_prices", {"prices": {"0": 1}}),
    ("set_prices", {"prices": {"a": 1}}), ("set_prices", {"prices": {"1": 1.5}}),
    ("set_prices", {"prices": {"1": -1}}), ("set_prices", {"prices": {"1": True}}),
    ("set_prices", {"prices": [350]}), ("set_prices", {}),
    ("set_prices", {"prices": {}, "currency": "USD"}),
    ("set_promo", {"slot": 3, "amount": 200, "start": TS}),
    ("set_promo", {"slot": 0, "amount": 200, "start": TS, "end": TS + 1}),
    ("set_promo", {"slot": 3, "amount": 2.0, "start": TS, "end": TS + 1}),
    ("set_promo", {"slot": 3, "amount": 200, "start": TS, "end": TS - 1}),
    ("free_vend", {"slot": "3", "reason": "x"}), ("free_vend", {"slot": 3}),
    ("free_vend", {"slot": 3, "reason": ""}), ("free_vend", {"slot": True, "reason": "x"}),
    ("cancel_session", {"now": True}), ("ping", []), ("ping", None),
    ("reboot", {}), ("PING", {}), (None, {}),
]


@pytest.mark.parametrize("name,args", BAD_COMMANDS)
def test_bad_commands_are_malformed_with_cmd_id(name, args):
    rejected(parse_command, command(name, args), "malformed", cmd_id="c-1", order_id=None)


@pytest.mark.parametrize("extra", [{"cmd_id": "c 1"}, {"expires": "soon"}, {"expires": 1.0},
                                   {"type": "payment"}])
def test_bad_command_envelope(extra):
    rejected(parse_command, command("ping", {}, **extra), "malformed")


def test_command_forged_or_for_another_machine():
    raw = json.loads(command("free_vend", {"slot": 1, "reason": "x"}))
    raw["args"]["slot"] = 2
    rejected(parse_command, json.dumps(raw), "bad_sig", cmd_id="c-1")
    other = signed({**json.loads(command("ping", {})), "machine_id": "VM-9"})
    rejected(parse_command, other, "wrong_machine", cmd_id="c-1")


def test_payment_cannot_be_replayed_as_command_or_ack():
    rejected(parse_command, json.dumps(VECTOR_PAYMENT), "malformed")
    rejected(parse_ack, json.dumps(VECTOR_PAYMENT), "malformed")


def test_ack():
    raw = signed({"v": 1, "type": "ack", "machine_id": MID, "ts": TS, "event_id": "e-1"})
    assert parse_ack(raw, KEY, MID) == Ack(event_id="e-1", ts=TS)
    bad = signed({"v": 1, "type": "ack", "machine_id": MID, "ts": TS, "event_id": "e 1"})
    rejected(parse_ack, bad, "malformed")


@pytest.mark.parametrize("ts,now,fresh", [
    (TS, TS, True), (TS, TS + 300, True), (TS, TS - 300, True), (TS, TS + 300.5, False),
    (TS, TS - 301, False), (True, 1.0, False), (float(TS), TS, False), ("1", 1, False),
    (TS, float("nan"), False), (TS, float("inf"), False), (TS, None, False),
])
def test_is_fresh(ts, now, fresh):
    assert is_fresh(ts, now) is fresh
    assert is_fresh(TS, TS + 30, window=10) is False


# --- ids -----------------------------------------------------------------------------------------

def test_vend_id_is_deterministic_and_fits_vlp():
    a = vend_id_for(MID, "o-20261125-0001")
    assert a == vend_id_for(MID, "o-20261125-0001")
    assert a != vend_id_for(MID, "o-20261125-0002") != vend_id_for("VM-0002", "o-20261125-0001")
    assert a.startswith("v") and is_ident(a)
    assert re.fullmatch(r"[\x21-\x7E]{1,64}", a) and "*" not in a and "=" not in a
    longest = vend_id_for("M" * 64, "o" * 64)
    assert len(f"65535 VEND id={longest} slot=65535*FFFF\r\n") <= 200


@pytest.mark.parametrize("args", [("", "o"), (MID, "o|x"), (MID, None), ("m" * 65, "o")])
def test_vend_id_refuses_non_idents(args):
    with pytest.raises(ValueError):
        vend_id_for(*args)


def test_free_vend_ids_live_in_their_own_namespace():
    free = vend_id_for(MID, "x-1", free_vend=True)
    assert free != vend_id_for(MID, "x-1") and is_ident(free)
    assert free == vend_id_for(MID, "x-1", free_vend=True)


def test_event_ids():
    assert m.event_id_for(MID, "vend_result", "4200 0001|x") != m.event_id_for(
        MID, "vend_result", "4200 0001|y")
    with pytest.raises(ValueError):
        m.event_id_for(MID, "vend_result", "")
    assert m.event_id_for(MID, "vend_result", "t1") == m.event_id_for(MID, "vend_result", "t1")
    assert m.event_id_for(MID, "vend_result", "t1") != m.event_id_for(MID, "alert", "t1")
    assert is_ident(m.new_event_id()) and m.new_event_id() != m.new_event_id()


# --- outbound --------------------------------------------------------------------------------

def vr(**over):
    base = dict(event_id="e-1", order_id="o-1", vend_id=vend_id_for(MID, "o-1"), slot=3,
                amount=350, currency="CNY", txn_id="t-1", result="ok", dispensed=True,
                refund=False)
    return m.vend_result(**{**base, **over})


def test_vend_result_fields_and_roundtrip():
    fields = vr()
    assert set(fields) == {"event_id", "order_id", "vend_id", "slot", "amount", "currency",
                           "txn_id", "result", "dispensed", "refund"}
    event = build_event(KEY, MID, "vend_result", fields, TS)
    assert set(event) == set(fields) | {"v", "type", "machine_id", "ts", "sig"}
    assert parse_signed(json.dumps(event), KEY, MID, m.EVENT_TYPES) == event
    again = build_event(KEY, MID, "vend_result", fields, TS + 60)  # republish: new ts, same id
    assert again["event_id"] == event["event_id"] and again["sig"] != event["sig"]


@pytest.mark.parametrize("over", [
    dict(result="jam", dispensed=False, refund=True),
    dict(result="uncertain", dispensed=False, refund=False),
    dict(result="uncertain", dispensed=False, refund=True),
    dict(result="late", dispensed=False, refund=True, slot=None, vend_id=None),
    dict(result="duplicate", dispensed=False, refund=True, txn_id="t-2"),
    dict(order_id="c-9", amount=0, txn_id=None),  # free vend
    dict(order_id="c-9", amount=0, txn_id=None, result="jam", dispensed=False),
])
def test_vend_result_legal_combinations(over):
    assert vr(**over)["result"] == over.get("result", "ok")


@pytest.mark.parametrize("over", [
    dict(dispensed=True, refund=True), dict(result="jam"), dict(dispensed=False, refund=True),
    dict(result="jam", dispensed=False, refund=False), dict(txn_id=None),
    dict(amount=0, txn_id=None, result="jam", dispensed=False, refund=True),
    dict(amount=350.0), dict(amount=True), dict(slot=0), dict(result="eaten"),
    dict(dispensed=1), dict(currency="cny"), dict(vend_id="v 1"),
])
def test_vend_result_illegal_combinations(over):
    with pytest.raises(EventFieldError):
        vr(**over)


def test_other_event_builders():
    assert m.payment_rejected(event_id="e-2", order_id=None, reason="bad_sig") == {
        "event_id": "e-2", "order_id": None, "reason": "bad_sig"}
    assert m.command_result(event_id="e-3", cmd_id="c-1", ok=False, error="stale")["error"] \
        == "stale"
    assert m.command_result(event_id="e-3", cmd_id="c-1", ok=True)["error"] is None
    assert "slot" not in m.alert(event_id="e-4", code="board_rebooted", detail="Board reset.")
    assert m.alert(event_id="e-4", code="jam", detail="Slot 3 jammed.", slot=3)["slot"] == 3
    assert m.status(state="offline", version="0.1.0", started=TS) == {
        "state": "offline", "version": "0.1.0", "started": TS}
    t = m.telemetry(temp=45, door="closed", link="up", stock={1: 5, "2": None}, uptime=10)
    assert t == {"temp": 45, "door": "closed", "link": "up", "stock": {"1": 5, "2": None},
                 "uptime": 10}
    for bad in [lambda: m.payment_rejected(event_id="e", order_id=None, reason="nope"),
                lambda: m.command_result(event_id="e", cmd_id="c", ok=False),
                lambda: m.command_result(event_id="e", cmd_id="c", ok=True, error="x"),
                lambda: m.alert(event_id="e", code="Jam!", detail="x"),
                lambda: m.status(state="asleep", version="1", started=0),
                lambda: m.telemetry(temp=1.5, door=None, link="up", stock={}, uptime=0),
                lambda: m.telemetry(temp=None, door=None, link="up", stock={0: 1}, uptime=0),
                lambda: build_event(KEY, MID, "vend_result", {"ts": 1}, TS),
                lambda: build_event(KEY, MID, "gossip", {}, TS),
                lambda: build_event(KEY, MID, "status", {}, 1.0)]:
        with pytest.raises(EventFieldError):
            bad()


def test_cloud_side_builders_roundtrip():
    payment = build_event(KEY, MID, "payment", m.payment_fields(
        order_id="o-9", amount=100, currency="USD", provider="sandbox", txn_id="t-9"), TS)
    p = parse_payment(json.dumps(payment), KEY, MID)
    assert (p.order_id, p.amount, p.payer, p.promo) == ("o-9", 100, None, None)
    cmd = build_event(KEY, MID, "command", m.command_fields(
        cmd_id="c-9", name="ping", args={}, expires=TS), TS)
    assert parse_command(cmd, KEY, MID) == Command("c-9", "ping", {}, TS, TS, cmd)
    ack = build_event(KEY, MID, "ack", m.ack_fields(event_id="e-9"), TS)
    assert parse_ack(ack, KEY, MID).event_id == "e-9"


def test_module_has_no_mutable_globals():
    import vending.messages as module
    for name, value in vars(module).items():
        if not name.startswith("__"):
            assert not isinstance(value, (list, dict, set, bytearray)), name
