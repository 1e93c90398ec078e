"""The wire log: what a running daemon says about the serial line at DEBUG."""
from __future__ import annotations

import logging

from firmware_bridge import vlp
from firmware_bridge.board import Board
from firmware_bridge.link import HostLink
from firmware_bridge.trace import WireLog


def _encode(body: str) -> bytes:
    return body.encode() + b"*" + f"{_crc(body)}".encode() + b"\n"


def _crc(body: str) -> str:
    return f"{vlp.crc16(body.encode()):04X}"


def feed(wire: WireLog, direction: str, raw: bytes, note: str = "") -> None:
    try:
        decoded: object = vlp.decode(raw)
    except vlp.VlpError as err:
        decoded = err
    wire(0.0, direction, raw, decoded, note)


def logged(caplog) -> list[str]:
    return [r.getMessage().split(" ", 1)[1] for r in caplog.records]


def test_idle_polls_are_left_out_and_everything_else_is_logged(caplog):
    caplog.set_level(logging.DEBUG, logger="t.wire")
    wire = WireLog(logging.getLogger("t.wire"))
    feed(wire, "tx", _encode("5 POLL boot=9 ack=0"))
    feed(wire, "rx", _encode("5 OK boot=9 ev=none"))                      # idle: nothing
    feed(wire, "tx", _encode("6 POLL boot=9 ack=0"))
    feed(wire, "rx", _encode("6 OK boot=9 ev=1 kind=key slot=3"))          # an event: both
    feed(wire, "tx", _encode("7 VEND id=v1 slot=3"))
    feed(wire, "rx", _encode("7 OK state=running"))
    assert logged(caplog) == [
        ">> 6 POLL boot=9 ack=0*" + _crc("6 POLL boot=9 ack=0"),
        "<< 6 OK boot=9 ev=1 kind=key slot=3*" + _crc("6 OK boot=9 ev=1 kind=key slot=3"),
        ">> 7 VEND id=v1 slot=3*" + _crc("7 VEND id=v1 slot=3"),
        "<< 7 OK state=running*" + _crc("7 OK state=running"),
    ]


def test_a_troubled_poll_is_logged_with_its_marks(caplog):
    caplog.set_level(logging.DEBUG, logger="t.wire")
    wire = WireLog(logging.getLogger("t.wire"))
    poll = _encode("8 POLL boot=9 ack=1")
    feed(wire, "tx", poll)
    feed(wire, "rx", b"8 OK boot=9 ev=none*0000\n", note="crc error")     # a corrupt reply
    feed(wire, "tx", poll, note="retransmit 1/5")
    feed(wire, "rx", _encode("8 OK boot=9 ev=none"))                       # clean, but not idle any more
    out = logged(caplog)
    assert len(out) == 4
    assert out[1].endswith("[crc error]") and out[2].endswith("[retransmit 1/5]")
    assert out[0].startswith(">> 8 POLL") and out[3].startswith("<< 8 OK boot=9 ev=none")


def test_a_poll_whose_reply_never_came_is_still_logged(caplog):
    caplog.set_level(logging.DEBUG, logger="t.wire")
    wire = WireLog(logging.getLogger("t.wire"))
    feed(wire, "tx", _encode("9 POLL boot=9 ack=1"))
    feed(wire, "tx", _encode("10 STATUS"))
    assert [m[:12] for m in logged(caplog)] == [">> 9 POLL bo", ">> 10 STATUS"]


def test_a_link_to_the_emulator_logs_its_vend_both_ways(make_emulator, caplog):
    caplog.set_level(logging.DEBUG, logger="t.wire")
    emu = make_emulator(board=Board(vend_duration=0.0))
    link = HostLink(emu.path, trace=WireLog(logging.getLogger("t.wire")))
    link.open()
    try:
        for _ in range(5):
            link.poll()
        link.vend("vtrace1", 2)
    finally:
        link.close()
    out = logged(caplog)
    assert any(m.startswith(">> ") and " HELLO*" in m for m in out)
    assert any(m.startswith(">> ") and " VEND id=vtrace1 slot=2*" in m for m in out)
    assert any(m.startswith("<< ") and " OK state=" in m for m in out)
    assert not any(" POLL " in m for m in out)  # five idle polls, none logged
