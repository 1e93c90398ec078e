"""vending.signing against contract-vectors.json, and against everything a network peer can send."""
from __future__ import annotations


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.vectors import VECTORS
from vending import signing
from vending.signing import (
    SigningError,
    b64url,
    b64url_decode,
    canonical,
    http_signature,
    key_from_hex,
    offline_qr_sig,
    offline_qr_url,
    order_sig,
    parse_offline_qr_url,
    sign_payload,
    verify_http_signature,
    verify_offline_qr_url,
    verify_order_sig,
    verify_payload,
)

KEY = bytes.fromhex(VECTORS["machine_key_hex"])
OTHER_KEY = bytes(32)
PAY = VECTORS["mqtt_payment"]
HTTP = VECTORS["http_signature"]
ORDER = VECTORS["order_response_sig"]
OFFLINE = VECTORS["offline_qr"]


def _order_args():
    oid, url, amount, cur, exp = ORDER["fields"].split("|")
    return oid, url, int(amount), cur, int(exp)


def _offline_args():
    mid, oid, amount, cur, slot, exp = OFFLINE["fields"].split("|")
    return mid, oid, int(amount), cur, int(slot), int(exp)


# --- vectors ---------------------------------------------------------------------------------

def test_canonical_reproduces_vector_bytes():
    assert canonical(PAY["payload_without_sig"]) == PAY["canonical_utf8"].encode("utf-8")


def test_payment_vector_signs_and_verifies():
    signed = sign_payload(KEY, PAY["payload_without_sig"])
    assert signed["sig"] == PAY["sig"]
    assert verify_payload(KEY, {**PAY["payload_without_sig"], "sig": PAY["sig"]})
    assert not verify_payload(OTHER_KEY, signed)


def test_http_signature_vector():
    sig = http_signature(KEY, HTTP["method"], HTTP["target"], HTTP["timestamp"],
                         HTTP["body"].encode("utf-8"))
    assert sig == HTTP["x_signature"]
    # The same request given as str body and int timestamp signs the same bytes.
    assert http_signature(KEY, HTTP["method"], HTTP["target"], int(HTTP["timestamp"]),
                          HTTP["body"]) == sig
    assert verify_http_signature(KEY, HTTP["method"], HTTP["target"], HTTP["timestamp"],
                                 HTTP["body"], sig)


def test_order_response_vector():
    args = _order_args()
    assert order_sig(KEY, *args) == ORDER["sig"]
    assert verify_order_sig(KEY, *args, ORDER["sig"])


def test_offline_qr_vector():
    args = _offline_args()
    assert offline_qr_sig(KEY, *args) == OFFLINE["sig"]
    url = offline_qr_url("https://pay.example.test", KEY, *args)
    assert url == OFFLINE["url"]
    assert offline_qr_url("https://pay.example.test/", KEY, *args) == url
    assert verify_offline_qr_url(KEY, url)
    assert not verify_offline_qr_url(OTHER_KEY, url)
    mid, oid, amount, cur, slot, exp = args
    assert parse_offline_qr_url(url) == {
        "base_url": "https://pay.example.test", "machine_id": mid, "order_id": oid,
        "amount": amount, "currency": cur, "slot": slot, "expires_at": exp,
        "sig": OFFLINE["sig"],
    }


# --- base64url and canonical ---------------------------------------------------------------

@given(st.binary(max_size=80))
def test_b64url_roundtrip_and_unpadded(data):
    text = b64url(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64url_decode(text) == data


@pytest.mark.parametrize("bad", [
    "IJhc=",          # padding
    "IJhcLTr3k2DoFq1gf3gwMTpL2UtUhHGyfN9Zlr4V_V8=",
    "ab+/",           # standard alphabet
    "ab cd",          # whitespace
    "abcd\n",
    "a",              # length 1 mod 4 cannot be produced by any input
    "QR",             # stray low bits: canonical is "QQ"
    "IJhcLTr3k2DoFq1gf3gwMTpL2UtUhHGyfN9Zlr4V_V9",  # same, on a 32-byte value
    "é",
])
def test_b64url_decode_is_strict(bad):
    with pytest.raises(ValueError):
        b64url_decode(bad)


@pytest.mark.parametrize("bad", [None, b"QQ", 12])
def test_b64url_decode_rejects_non_str(bad):
    with pytest.raises(ValueError):
        b64url_decode(bad)


def test_canonical_keeps_non_ascii_as_utf8():
    assert canonical({"b": 1, "a": "售货机"}) == '{"a":"售货机","b":1}'.encode("utf-8")


@pytest.mark.parametrize("bad", [{"x": float("nan")}, {"x": float("inf")}, {"x": "\ud800"},
                                 {"x": object()}, {1: 1, "a": 2}])
def test_canonical_refuses_what_is_not_json(bad):
    with pytest.raises((ValueError, TypeError)):
        canonical(bad)


def test_key_from_hex():
    assert key_from_hex(VECTORS["machine_key_hex"] + "\n") == KEY
    for bad in ["", "00" * 31, "zz" * 32, "00" * 33, None]:
        with pytest.raises(SigningError):
            key_from_hex(bad)


# --- payload signatures --------------------------------------------------------------------

def test_sign_payload_copies_and_replaces_sig():
    original = {**PAY["payload_without_sig"], "sig": "stale"}
    snapshot = dict(original)
    signed = sign_payload(KEY, original)
    assert original == snapshot
    assert signed["sig"] == PAY["sig"]


@pytest.mark.parametrize("key", [b"", "not-bytes", None])
def test_signing_with_no_key_is_loud(key):
    with pytest.raises(SigningError):
        sign_payload(key, {"a": 1})
    assert verify_payload(key, sign_payload(KEY, {"a": 1})) is False


TAMPERS = [
    ("amount", 351), ("amount", 350.0), ("amount", "350"), ("amount", True),
    ("currency", "USD"), ("order_id", "o-20261125-0002"), ("machine_id", "VM-0002"),
    ("txn_id", "4200001234202611250002"), ("payer", None), ("ts", 1764050401),
    ("v", True), ("v", 2), ("type", "command"), ("promo", "x"), ("provider", "alipay"),
]


@pytest.mark.parametrize("field,value", TAMPERS)
def test_every_tampered_field_fails(field, value):
    message = {**PAY["payload_without_sig"], field: value, "sig": PAY["sig"]}
    assert verify_payload(KEY, message) is False


def test_removed_field_fails():
    for field in PAY["payload_without_sig"]:
        message = {k: v for k, v in PAY["payload_without_sig"].items() if k != field}
        assert verify_payload(KEY, {**message, "sig": PAY["sig"]}) is False


@pytest.mark.parametrize("sig", [
    None, 0, "", PAY["sig"] + "=", PAY["sig"][:-1], PAY["sig"] + "A",
    PAY["sig"].replace("_", "/"), PAY["sig"].upper(), b"x", [PAY["sig"]],
])
def test_odd_sigs_fail_without_raising(sig):
    assert verify_payload(KEY, {**PAY["payload_without_sig"], "sig": sig}) is False


@pytest.mark.parametrize("payload", [None, [], "x", b"{}", {1: 2, "a": 1},
                                     {"x": float("nan"), "sig": PAY["sig"]}])
def test_verify_payload_never_raises(payload):
    assert verify_payload(KEY, payload) is False


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=6))
def test_verify_payload_is_total(payload):
    assert verify_payload(KEY, payload) is False or "sig" in payload
    try:
        signed = sign_payload(KEY, payload)
    except SigningError:
        return  # NaN, lone surrogates: nothing to sign
    assert verify_payload(KEY, signed) is True
    assert verify_payload(OTHER_KEY, signed) is False


# --- HTTP, order and offline QR signatures ---------------------------------------------------

def test_http_signature_covers_every_part():
    base = (HTTP["method"], HTTP["target"], HTTP["timestamp"], HTTP["body"])
    sig = http_signature(KEY, *base)
    variants = [
        ("GET", *base[1:]),
        (base[0], "/v1/orders", *base[2:]),
        (base[0], base[1] + "?x=1", *base[2:]),
        (*base[:2], "1764050401", base[3]),
        (*base[:3], base[3] + " "),
    ]
    for v in variants:
        assert http_signature(KEY, *v) != sig
        assert not verify_http_signature(KEY, *v, sig)


def test_http_signature_get_has_empty_body():
    sig = http_signature(KEY, "GET", "/v1/orders/o-1", "1764050400")
    assert sig == b64url(__import__("hmac").new(
        KEY, b"GET\n/v1/orders/o-1\n1764050400\n", "sha256").digest())


@pytest.mark.parametrize("args", [
    ("post", "/v1/orders", "1", b""), ("POST", "v1/orders", "1", b""),
    ("POST", "/v1/orders", "1.5", b""), ("POST", "/v1/orders", True, b""),
    ("POST", "/v1/orders", "1", None),
])
def test_http_signature_rejects_bad_arguments(args):
    with pytest.raises(SigningError):
        http_signature(KEY, *args)
    assert verify_http_signature(KEY, *args, "x") is False


@pytest.mark.parametrize("index,value", [
    (0, "o-20261125-0002"), (1, "https://evil.example.test/q/o-20261125-0001"),
    (2, 349), (2, 350.0), (2, "350"), (2, True), (3, "USD"), (4, 1764050521), (4, 1764050520.0),
    (0, "o|1"), (1, ""), (1, "https://pay.example.test/q\n"),
])
def test_order_sig_tampered_or_mistyped_fields_fail(index, value):
    args = list(_order_args())
    args[index] = value
    assert verify_order_sig(KEY, *args, ORDER["sig"]) is False


def test_order_sig_refuses_float_amount_when_signing():
    oid, url, _, cur, exp = _order_args()
    with pytest.raises(SigningError, match="amount"):
        order_sig(KEY, oid, url, 350.0, cur, exp)


def test_offline_url_with_base_path_prefix_roundtrips():
    args = _offline_args()
    url = offline_qr_url("https://pay.example.test/p/x/shop/", KEY, *args)
    assert url.startswith("https://pay.example.test/p/x/shop/p/VM-0001/o-20261125-0002?")
    parsed = parse_offline_qr_url(url)
    assert parsed["base_url"] == "https://pay.example.test/p/x/shop"
    assert parsed["machine_id"] == "VM-0001" and parsed["order_id"] == "o-20261125-0002"
    assert verify_offline_qr_url(KEY, url)


@pytest.mark.parametrize("mutate", [
    lambda u: u.replace("a=350", "a=351"),
    lambda u: u.replace("c=CNY", "c=USD"),
    lambda u: u.replace("s=3", "s=4"),
    lambda u: u.replace("e=1764050520", "e=1764050521"),
    lambda u: u.replace("VM-0001", "VM-0002"),
    lambda u: u.replace("o-20261125-0002", "o-20261125-0003"),
])
def test_offline_url_tampering_fails(mutate):
    url = mutate(OFFLINE["url"])
    parse_offline_qr_url(url)  # still well formed
    assert verify_offline_qr_url(KEY, url) is False


@pytest.mark.parametrize("url", [
    OFFLINE["url"].replace("a=350", "a=0350"),            # non-canonical amount
    OFFLINE["url"].replace("a=350", "a=%33%35%30"),       # escaped spelling
    OFFLINE["url"].replace("s=3", "s=0"),
    OFFLINE["url"].replace("c=CNY", "c=cny"),
    OFFLINE["url"].replace("&e=1764050520", ""),
    OFFLINE["url"] + "&a=1",
    OFFLINE["url"] + "&x=1",
    OFFLINE["url"] + "#frag",
    OFFLINE["url"].replace("/p/", "/q/"),
    OFFLINE["url"].replace("?", "/?"),
    OFFLINE["url"].replace("https://", "ftp://"),
    OFFLINE["url"][:-1],
    OFFLINE["url"].replace("sig=", "sig=A"),
    "",
    "https://pay.example.test/p/VM-0001/o-1",
    None,
])
def test_parse_offline_url_rejects(url):
    with pytest.raises(ValueError):
        parse_offline_qr_url(url)
    assert verify_offline_qr_url(KEY, url) is False


@pytest.mark.parametrize("kwargs", [
    {"machine_id": "VM 1"}, {"order_id": ""}, {"amount": -1}, {"amount": 1.0},
    {"currency": "CN"}, {"slot": 0}, {"slot": True}, {"expires_at": "1"},
])
def test_offline_url_refuses_bad_fields(kwargs):
    mid, oid, amount, cur, slot, exp = _offline_args()
    fields = dict(machine_id=mid, order_id=oid, amount=amount, currency=cur, slot=slot,
                  expires_at=exp, **{})
    fields.update(kwargs)
    with pytest.raises(SigningError):
        offline_qr_url("https://pay.example.test", KEY, **fields)


def test_offline_url_refuses_bad_base():
    for base in ["pay.example.test", "https://pay.example.test?x=1", "https://a b", None]:
        with pytest.raises(SigningError):
            offline_qr_url(base, KEY, *_offline_args())


def test_module_has_no_mutable_globals():
    for name, value in vars(signing).items():
        if not name.startswith("__"):
            assert not isinstance(value, (list, dict, set, bytearray)), name
