"""VLP/1 codec: CONTRACT.md section 1 "Framing", rule by rule, plus the shared vectors."""

from __future__ import annotations


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.vectors import VECTORS
from firmware_bridge import vlp
from firmware_bridge.vlp import BadRequest, DroppedLine, EncodeError, Frame, LineReader



def line_of(body: str) -> bytes:
    """A line with a correct CRC around any body (even an ungrammatical one)."""
    raw = body.encode("latin-1")
    return raw + b"*%04X\n" % vlp.crc16(raw)


# ---- vectors -------------------------------------------------------------------------

@pytest.mark.parametrize("text,crc", sorted(VECTORS["crc16_ccitt_false"].items()))
def test_crc_check_values(text, crc):
    assert f"{vlp.crc16(text.encode()):04X}" == crc


@pytest.mark.parametrize("vec", VECTORS["vlp_lines"], ids=lambda v: v["body"])
def test_vector_lines_decode_and_reencode(vec):
    frame = vlp.decode(vec["line"].encode())
    assert frame.body == vec["body"]
    assert frame.raw == vec["line"].encode()
    assert vlp.encode(frame.seq, frame.verb, frame.args) == vec["line"].encode()


def test_vector_vend_fields():
    frame = vlp.decode(b"42 VEND id=v1a2b3c4d slot=3*C9B6\n")
    assert (frame.seq, frame.verb, frame.args) == (42, "VEND", (("id", "v1a2b3c4d"), ("slot", "3")))
    assert frame["slot"] == "3" and frame.get("id") == "v1a2b3c4d"
    assert frame.get("nope") is None and frame.get("nope", "x") == "x"
    assert not frame.is_reply
    with pytest.raises(KeyError):
        frame["nope"]


def test_reply_flags():
    assert vlp.decode(line_of("9 OK n=10 empty=14 disabled=0")).is_reply
    assert vlp.decode(line_of("9 ERR code=busy")).is_reply


# ---- encode --------------------------------------------------------------------------

def test_encode_mapping_and_pairs_and_ints():
    assert vlp.encode(42, "VEND", {"id": "v1a2b3c4d", "slot": 3}) == b"42 VEND id=v1a2b3c4d slot=3*C9B6\n"
    assert vlp.encode(42, "VEND", [("id", "v1a2b3c4d"), ("slot", 3)]) == b"42 VEND id=v1a2b3c4d slot=3*C9B6\n"
    assert vlp.encode(1, "HELLO") == b"1 HELLO*7DF0\n"
    assert vlp.decode(vlp.encode(1, "OK", {"temp": -35}))["temp"] == "-35"


@pytest.mark.parametrize("seq,verb,args,needle", [
    (0, "HELLO", (), "seq"),
    (65536, "HELLO", (), "seq"),
    (True, "HELLO", (), "seq"),
    ("1", "HELLO", (), "seq"),
    (1, "hello", (), "verb"),
    (1, "H", (), "verb"),
    (1, "ABCDEFGHIJK", (), "verb"),
    (1, "HEL LO", (), "verb"),
    (1, "VEND", {"Id": "x"}, "key"),
    (1, "VEND", {"1d": "x"}, "key"),
    (1, "VEND", {"k" * 17: "x"}, "key"),
    (1, "VEND", [("id", "a"), ("id", "b")], "twice"),
    (1, "VEND", {"id": ""}, "'id'"),
    (1, "VEND", {"id": "a b"}, "'id'"),
    (1, "VEND", {"id": "a*b"}, "'id'"),
    (1, "VEND", {"id": "a=b"}, "'id'"),
    (1, "VEND", {"id": "x" * 65}, "'id'"),
    (1, "VEND", {"id": "caf\u00e9"}, "'id'"),
    (1, "VEND", {"id": True}, "'id'"),
    (1, "VEND", {"id": None}, "'id'"),
    (1, "VEND", {"id": 1.5}, "'id'"),
    (1, "VEND", [("id",)], "pair"),
    (1, "VEND", {f"k{i}": "x" * 60 for i in range(4)}, "more than 200"),
])
def test_encode_rejects_illegal_lines(seq, verb, args, needle):
    with pytest.raises(EncodeError) as exc:
        vlp.encode(seq, verb, args)
    assert needle in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_encode_allows_exactly_max_line():
    # 4 + 3 * 3 + 64 + 64 + 53 + 6 ("*XXXX\n") = 200 bytes.
    args = [("a", "x" * 64), ("b", "y" * 64), ("c", "z" * 53)]
    line = vlp.encode(1, "OK", args)
    assert len(line) == vlp.MAX_LINE
    assert vlp.decode(line).args == tuple(args)
    with pytest.raises(EncodeError):
        vlp.encode(1, "OK", [("a", "x" * 64), ("b", "y" * 64), ("c", "z" * 54)])


# ---- decode: drops -------------------------------------------------------------------

@pytest.mark.parametrize("line,reason", [
    (b"1 HELLO*7DF1\n", "bad CRC"),
    (b"1 HELLO*7df0\n", "bad CRC"),         # lower-case hex is not a CRC
    (b"1 HELLO*7DF\n", "bad CRC"),
    (b"1 HELLO*7DF00\n", "bad CRC"),
    (b"1 HELLO\n", "missing CRC"),
    (b"\n", "missing CRC"),
    (b"1 HEL\tLO*7DF0\n", "byte outside"),
    (b"1 HELLO*7DF0\r\r\n", "byte outside"),
    (b"1 H\xc3\xa9LLO*7DF0\n", "byte outside"),
    (b"1 HELLO*7DF0\n1 HELLO*7DF0\n", "byte outside"),  # decode() takes one line
    (line_of("0 HELLO"), "unreadable seq"),
    (line_of("01 HELLO"), "unreadable seq"),
    (line_of("65536 HELLO"), "unreadable seq"),
    (line_of("-1 HELLO"), "unreadable seq"),
    (line_of(" 1 HELLO"), "unreadable seq"),
    (line_of("HELLO"), "unreadable seq"),
    (line_of(""), "unreadable seq"),
    (line_of("1 OK a=" + "x" * 190), "too long"),
])
def test_decode_drops(line, reason):
    with pytest.raises(DroppedLine) as exc:
        vlp.decode(line)
    assert reason in exc.value.reason
    assert exc.value.line == line


def test_length_limit_counts_cr_and_lf():
    line = vlp.encode(1, "OK", [("a", "x" * 64), ("b", "y" * 64), ("c", "z" * 53)])
    assert len(line) == 200
    assert vlp.decode(line).raw == line
    assert vlp.decode(line[:-1]).raw == line  # without "\n": still the same line
    with pytest.raises(DroppedLine, match="too long"):
        vlp.decode(line[:-1] + b"\r\n")  # 201 bytes with the "\r"


def test_crlf_and_bare_line_accepted():
    assert vlp.decode(b"1 HELLO*7DF0\r\n").body == "1 HELLO"
    assert vlp.decode(b"1 HELLO*7DF0").raw == b"1 HELLO*7DF0\n"


# ---- decode: bad requests (good CRC, bad body) -----------------------------------------

@pytest.mark.parametrize("body,needle", [
    ("7", "verb"),
    ("7 ", "verb"),
    ("7 hello", "verb"),
    ("7 H", "verb"),
    ("7 ABCDEFGHIJK", "verb"),
    ("7 HELLO ", "argument 1"),
    ("7  HELLO", "verb"),
    ("7 VEND id=a  slot=3", "argument 2"),
    ("7 VEND id", "not key=value"),
    ("7 VEND id=", "garbled"),
    ("7 VEND id=a=b", "garbled"),
    ("7 VEND Id=a", "bad key"),
    ("7 VEND =a", "bad key"),
    ("7 VEND " + "k" * 17 + "=a", "bad key"),
    ("7 VEND id=" + "x" * 65, "garbled"),
    ("7 VEND id=a id=a", "twice"),
    ("7 VEND id=a*b", "garbled"),
])
def test_decode_bad_request(body, needle):
    line = line_of(body)
    with pytest.raises(BadRequest) as exc:
        vlp.decode(line)
    assert exc.value.seq == 7
    assert needle in exc.value.reason
    assert exc.value.line == line


def test_unknown_verb_and_extra_keys_are_not_codec_errors():
    frame = vlp.decode(line_of("5 FROB x=1 future_key=y"))
    assert frame.verb == "FROB" and frame.args == (("x", "1"), ("future_key", "y"))


def test_seq_bounds():
    assert vlp.decode(line_of("65535 OK")).seq == 65535
    assert vlp.decode(line_of("1 OK")).seq == 1


# ---- LineReader ----------------------------------------------------------------------

def test_reader_splits_chunks_and_resyncs():
    r = LineReader()
    assert r.feed(b"1 HEL") == []
    assert r.pending == 5
    out = r.feed(b"LO*7DF0\ngarbage\n9 SLOTS*F5B8\r\n")
    assert [type(x) for x in out] == [Frame, DroppedLine, Frame]
    assert out[0].body == "1 HELLO" and out[2].verb == "SLOTS"


def test_reader_overlong_partial_reported_once_then_recovers():
    r = LineReader()
    out = r.feed(b"x" * 150)
    out += r.feed(b"x" * 150)
    out += r.feed(b"y" * 1000)
    assert len(out) == 1 and isinstance(out[0], DroppedLine) and out[0].reason == "too long"
    assert len(out[0].line) <= vlp.MAX_LINE
    assert r.pending == 0
    out = r.feed(b"zzz\n1 HELLO*7DF0\n")
    assert [f.body for f in out] == ["1 HELLO"]


def test_reader_reports_bad_request():
    out = LineReader().feed(line_of("3 VEND id=a id=b"))
    assert isinstance(out[0], BadRequest) and out[0].seq == 3


def test_reader_reset_forgets_partial():
    r = LineReader()
    r.feed(b"1 HELLO*7D")
    r.reset()
    assert [type(x) for x in r.feed(b"F0\n1 HELLO*7DF0\n")] == [DroppedLine, Frame]


# ---- properties ----------------------------------------------------------------------

_value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                        blacklist_characters="*="), min_size=1, max_size=64)
_key = st.from_regex(r"\A[a-z][a-z0-9_]{0,15}\Z")
_verb = st.from_regex(r"\A[A-Z]{2,10}\Z")


@settings(max_examples=300, deadline=None)
@given(seq=st.integers(1, 65535), verb=_verb,
       args=st.dictionaries(_key, st.one_of(_value, st.integers(-10**9, 10**9)), max_size=4))
def test_roundtrip(seq, verb, args):
    try:
        line = vlp.encode(seq, verb, args)
    except EncodeError as err:
        assert "more than 200" in str(err)
        return
    frame = vlp.decode(line)
    assert (frame.seq, frame.verb) == (seq, verb)
    assert frame.args == tuple((k, str(v)) for k, v in args.items())
    assert frame.raw == line and len(line) <= vlp.MAX_LINE


def _crc_ok(raw: bytes) -> bool:
    body, _, crc = raw.rstrip(b"\r\n").rpartition(b"*")
    return crc == b"%04X" % vlp.crc16(body)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=8))
def test_reader_never_raises_and_never_trusts_bad_crc(data, cuts):
    r = LineReader()
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for a, b in zip(bounds, bounds[1:]):
        for item in r.feed(data[a:b]):
            assert isinstance(item, (Frame, DroppedLine, BadRequest))
            if isinstance(item, Frame):
                assert _crc_ok(item.raw) and len(item.raw) <= vlp.MAX_LINE


@settings(max_examples=300, deadline=None)
@given(before=st.binary(max_size=400), after=st.binary(max_size=50),
       chunk=st.integers(1, 64), seq=st.integers(1, 65535))
def test_valid_line_recovered_after_garbage(before, after, chunk, seq):
    good = vlp.encode(seq, "VEND", {"id": "v1", "slot": 3})
    stream = before + b"\n" + good + after
    r = LineReader()
    got = []
    for i in range(0, len(stream), chunk):
        got += r.feed(stream[i:i + chunk])
    assert any(isinstance(x, Frame) and x.raw == good for x in got)


@settings(max_examples=200, deadline=None)
@given(line=st.binary(max_size=250))
def test_decode_only_raises_codec_errors(line):
    try:
        frame = vlp.decode(line)
    except (DroppedLine, BadRequest):
        return
    assert _crc_ok(frame.raw)
