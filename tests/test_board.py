"""Board (sans-I/O) against CONTRACT.md section 1, driven through the codec."""

from __future__ import annotations

import pytest

from firmware_bridge import vlp
from firmware_bridge.board import Board, BoardControlError, BoardState


class Host:
    """A minimal honest host: new seq per request, decodes every reply."""

    def __init__(self, board: Board, now: float = 100.0) -> None:
        self.board, self.now, self.seq = board, now, 0

    def line(self, verb: str, **args: object) -> bytes:
        self.seq += 1
        return vlp.encode(self.seq, verb, args)

    def send(self, line: bytes) -> vlp.Frame | None:
        reply = self.board.handle_line(line, self.now)
        if reply is None:
            return None
        frame = vlp.decode(reply)
        assert frame.is_reply and frame.seq == vlp.decode(line).seq
        return frame

    def req(self, verb: str, **args: object) -> vlp.Frame:
        frame = self.send(self.line(verb, **args))
        assert frame is not None and frame.seq == self.seq
        return frame

    def advance(self, dt: float) -> None:
        self.now += dt
        self.board.tick(self.now)

    def poll_all(self) -> list[dict[str, str]]:
        """Drain events the way the daemon does: ack what it processed."""
        events, ack = [], 0
        while True:
            r = self.req("POLL", boot=self.board.boot, ack=ack)
            if r["ev"] == "none":
                return events
            ack = int(r["ev"])
            events.append(r.as_dict())


def raw(board: Board, body: str, now: float = 0.0) -> bytes | None:
    data = body.encode()
    return board.handle_line(data + b"*%04X\n" % vlp.crc16(data), now)


@pytest.fixture
def board() -> Board:
    return Board(seed=7)


@pytest.fixture
def host(board) -> Host:
    return Host(board)


def test_hello(host, board):
    r = host.req("HELLO")
    assert r.verb == "OK"
    assert r.as_dict() == {"proto": "1", "fw": board.fw, "board": board.board_id,
                           "boot": str(board.boot), "slots": "10"}
    assert board.boot != 0


def test_boot_changes_at_every_power_up_and_reset(board, host):
    seen = {board.boot}
    for _ in range(20):
        board.power_cycle(0.0)
        assert board.boot != 0 and board.boot not in seen
        seen.add(board.boot)
    before = board.boot
    assert host.req("RESET").verb == "OK"
    assert host.req("HELLO")["boot"] != str(before)


def test_status(host, board):
    assert host.req("STATUS").as_dict() == {"boot": str(board.boot), "state": "idle",
                                            "door": "closed", "temp": "40"}
    board.temp = -15
    host.req("VEND", id="a", slot=1)
    assert host.req("STATUS")["state"] == "vending"
    assert host.req("STATUS")["temp"] == "-15"
    board.open_door()
    assert host.req("STATUS").get("door") == "open"
    assert board.state is BoardState.SERVICE
    board.raise_fault("motor_psu")
    assert host.req("STATUS")["state"] == "fault"


@pytest.mark.parametrize("body", [
    "FROB", "OK", "ERR code=x", "VEND", "VEND id=a", "VEND slot=1", "VEND id=a slot=x",
    "VEND id=a slot=01", "VEND id=a! slot=1", "VSTAT", "VSTAT id=a.b", "POLL", "POLL boot=1",
    "POLL ack=0", "POLL boot=x ack=0", "TEST", "TEST slot=-1", "VEND id=a id=b slot=1",
    "VEND  id=a slot=1", "hello",
])
def test_bad_request(board, body):
    reply = vlp.decode(raw(board, "77 " + body))
    assert (reply.seq, reply.verb, reply.args) == (77, "ERR", (("code", "bad_request"),))
    assert board.ledger == []


@pytest.mark.parametrize("line", [
    b"1 HELLO*7DF1\n", b"1 HELLO\n", b"1 HEL\x01LO*7DF0\n", b"0 HELLO*ABCD\n",
    vlp.encode(1, "OK", [("a", "x" * 64), ("b", "y" * 64), ("c", "z" * 53)])[:-1] + b"\r\n",
])
def test_dropped_lines_get_no_reply(board, line):
    assert board.handle_line(line, 0.0) is None


def test_unreadable_seq_with_good_crc_is_dropped(board):
    assert raw(board, "0 HELLO") is None
    assert raw(board, "x HELLO") is None


def test_unknown_extra_keys_ignored(host):
    assert host.req("HELLO", future=1)["proto"] == "1"
    assert host.req("VEND", id="a", slot=2, colour="red")["state"] == "running"


def test_reply_echoes_seq_and_crlf_request_ok(board):
    reply = board.handle_line(b"1 HELLO*7DF0\r\n", 0.0)
    assert vlp.decode(reply).seq == 1 and reply.endswith(b"*" + reply[-5:-1] + b"\n")
    assert vlp.decode(raw(board, "65535 STATUS")).seq == 65535


def test_vend_ok_lifecycle(host, board):
    assert host.req("VEND", id="v1", slot=3).as_dict() == {"state": "running"}
    assert host.req("VSTAT", id="v1").as_dict() == {"state": "running"}
    host.advance(board.vend_duration / 2)
    assert host.req("VSTAT", id="v1")["state"] == "running"
    host.advance(board.vend_duration)
    assert host.req("VSTAT", id="v1").as_dict() == {"state": "done", "result": "ok"}
    assert host.poll_all() == [{"boot": str(board.boot), "ev": "1", "kind": "vend",
                                "id": "v1", "result": "ok"}]
    assert board.stock[3] == 4
    assert board.dispense_count() == 1 == board.dispense_count("v1")
    (entry,) = board.ledger
    assert (entry.kind, entry.vend_id, entry.slot, entry.result, entry.boot) == \
        ("vend", "v1", 3, "ok", board.boot)


def test_vstat_unknown(host):
    assert host.req("VSTAT", id="never").as_dict() == {"state": "unknown"}


@pytest.mark.parametrize("outcome", ["jam", "no_drop", "timeout"])
def test_injected_failures(host, board, outcome):
    board.inject(2, outcome)
    assert host.req("VEND", id="f", slot=2)["state"] == "running"
    host.advance(board.vend_duration + 0.001)
    expected_running = outcome == "timeout"  # a timeout takes the board's limit, not a vend's time
    assert (host.req("VSTAT", id="f")["state"] == "running") == expected_running
    host.advance(board.vend_limit)
    assert host.req("VSTAT", id="f").as_dict() == {"state": "done", "result": outcome}
    assert board.stock[2] == 5 and board.dispense_count() == 0
    assert len(board.ledger) == 1 and board.ledger[0].result == outcome
    # one-shot: the next vend on the slot is normal again
    host.req("VEND", id="g", slot=2)
    host.advance(board.vend_limit)
    assert host.req("VSTAT", id="g")["result"] == "ok"


def test_injection_times_and_persistent(host, board):
    board.inject(1, "jam", times=2)
    board.inject(4, "no_drop", persistent=True)
    results = []
    for i, slot in enumerate([1, 1, 1, 4, 4]):
        host.req("VEND", id=f"v{i}", slot=slot)
        host.advance(board.vend_limit)
        results.append(host.req("VSTAT", id=f"v{i}")["result"])
    assert results == ["jam", "jam", "ok", "no_drop", "no_drop"]
    board.clear_injections()
    host.req("VEND", id="w", slot=4)
    host.advance(board.vend_limit)
    assert host.req("VSTAT", id="w")["result"] == "ok"


@pytest.mark.parametrize("how", ["stock", "inject"])
def test_empty_answers_done_without_motor(host, board, how):
    if how == "stock":
        board.set_stock(5, 0)
    else:
        board.inject(5, "empty")
    assert host.req("VEND", id="e", slot=5).as_dict() == {"state": "done", "result": "empty"}
    assert board.ledger == [] and not board.running
    assert host.req("VSTAT", id="e").as_dict() == {"state": "done", "result": "empty"}
    assert host.req("VEND", id="e", slot=5).as_dict() == {"state": "done", "result": "empty"}
    assert [e["result"] for e in host.poll_all()] == ["empty"]


def test_slots_bitmaps(host, board):
    assert host.req("SLOTS").as_dict() == {"n": "10", "empty": "0", "disabled": "0"}
    board.set_stock(3, 0)
    board.set_stock(5, 0)
    board.disable_slot(10)
    board.disable_slot(1)
    assert host.req("SLOTS").as_dict() == {"n": "10", "empty": "14", "disabled": "201"}
    board.enable_slot(10)
    assert host.req("SLOTS")["disabled"] == "1"


def test_slots_uses_upper_case_hex():
    b = Board(16, stock=0)
    assert Host(b).req("SLOTS")["empty"] == "FFFF"


@pytest.mark.parametrize("setup,slot,code", [
    (lambda b: None, 0, "bad_slot"),
    (lambda b: None, 11, "bad_slot"),
    (lambda b: b.disable_slot(4), 4, "bad_slot"),
    (lambda b: b.open_door(), 1, "door_open"),
    (lambda b: b.raise_fault("psu"), 1, "fault"),
])
def test_vend_refusals(host, board, setup, slot, code):
    setup(board)
    assert host.req("VEND", id="r", slot=slot).as_dict() == {"code": code}
    assert board.ledger == []
    # a refused vend is not remembered: it can be tried again once the cause is gone
    assert host.req("VSTAT", id="r")["state"] == "unknown"


def test_busy_then_ok(host, board):
    host.req("VEND", id="a", slot=1)
    assert host.req("VEND", id="b", slot=2).as_dict() == {"code": "busy"}
    host.advance(board.vend_duration)
    assert host.req("VEND", id="b", slot=2)["state"] == "running"


REFUSALS = {
    "door_open": lambda b: b.open_door(),
    "fault": lambda b: b.raise_fault("x"),
    "bad_slot": lambda b: b.disable_slot(2),
}


@pytest.mark.parametrize("refusal", ["busy", *REFUSALS])
def test_known_id_beats_every_refusal(host, board, refusal):
    host.req("VEND", id="k", slot=2)
    expected = {"state": "running"}  # while it runs, a second VEND would be "busy"
    if refusal in REFUSALS:
        host.advance(board.vend_duration)
        REFUSALS[refusal](board)
        assert host.req("VEND", id="other", slot=2)["code"] == refusal
        expected = {"state": "done", "result": "ok"}
    else:
        assert host.req("VEND", id="other", slot=3)["code"] == "busy"
    assert host.req("VEND", id="k", slot=2).as_dict() == expected
    assert host.req("VEND", id="k", slot=7).as_dict() == expected  # even naming another slot
    assert len(board.ledger) == 1


def test_vend_memory_keeps_last_32(host, board):
    ids = [f"id{i}" for i in range(40)]
    for vid in ids:
        host.req("VEND", id=vid, slot=1 + len(board.ledger) % 10)
        host.advance(board.vend_duration)
    assert len(board.ledger) == 40
    for vid in ids[-32:]:
        assert host.req("VEND", id=vid, slot=1)["state"] == "done"
    assert len(board.ledger) == 40  # none dispensed again
    assert host.req("VSTAT", id=ids[0])["state"] == "unknown"


def test_retransmit_answered_identically_without_acting(host, board):
    line = host.line("VEND", id="rt", slot=6)
    first = board.handle_line(line, host.now)
    host.advance(board.vend_duration * 2)  # the vend finished meanwhile
    assert board.handle_line(line, host.now) == first  # byte for byte: "running"
    assert board.handle_line(line.replace(b"\n", b"\r\n"), host.now) == first
    assert len(board.ledger) == 1
    # POLL retransmit: same event again, ack not re-applied as new state
    poll = host.line("POLL", boot=board.boot, ack=0)
    r1 = board.handle_line(poll, host.now)
    board.press_key(2)
    assert board.handle_line(poll, host.now) == r1


def test_same_seq_different_body_is_acted_on(board):
    a = vlp.encode(9, "VEND", {"id": "a", "slot": 1})
    b = vlp.encode(9, "VEND", {"id": "b", "slot": 2})
    board.handle_line(a, 0.0)
    assert vlp.decode(board.handle_line(b, 0.0)).as_dict() == {"code": "busy"}


def test_only_the_last_request_is_remembered(host, board):
    hello = host.line("HELLO")
    status = host.line("STATUS")
    h1 = board.handle_line(hello, 0.0)
    board.handle_line(status, 0.0)
    board.power_cycle(0.0)
    board.handle_line(status, 0.0)
    assert board.handle_line(hello, 0.0) != h1  # acted on again: new boot in it


def test_bad_request_retransmit_identical(board):
    assert raw(board, "5 FROB") == raw(board, "5 FROB")


def test_dropped_line_does_not_clobber_memory(board):
    line = vlp.encode(3, "VEND", {"id": "m", "slot": 1})
    first = board.handle_line(line, 0.0)
    assert board.handle_line(b"garbage\n", 0.0) is None
    assert board.handle_line(line, 0.0) == first and len(board.ledger) == 1


def test_poll_events_and_acks(host, board):
    board.press_key(3)
    board.press_cancel()
    board.open_door()
    board.close_door()
    board.raise_fault("temp_high")
    boot = board.boot
    r = host.req("POLL", boot=boot, ack=0)
    assert r.as_dict() == {"boot": str(boot), "ev": "1", "kind": "key", "slot": "3"}
    assert host.req("POLL", boot=boot, ack=0)["ev"] == "1"  # not acked: same again
    assert host.req("POLL", boot=boot, ack=1).as_dict() == {"boot": str(boot), "ev": "2", "kind": "cancel"}
    assert host.req("POLL", boot=boot, ack=2)["state"] == "open"
    assert host.req("POLL", boot=boot, ack=3)["state"] == "closed"
    assert host.req("POLL", boot=boot, ack=4).as_dict() == {
        "boot": str(boot), "ev": "5", "kind": "fault", "code": "temp_high"}
    assert host.req("POLL", boot=boot, ack=5).as_dict() == {"boot": str(boot), "ev": "none"}
    assert board.pending_events() == 0


def test_poll_boot_mismatch_treats_ack_as_zero(host, board):
    board.press_key(1)
    board.press_key(2)
    r = host.req("POLL", boot=0, ack=2)  # before HELLO: the host knows no boot
    assert (r["ev"], r["slot"], r["boot"]) == ("1", "1", str(board.boot))
    assert host.req("POLL", boot=board.boot + 1, ack=5)["ev"] == "1"
    assert board.pending_events() == 2


def test_event_ids_restart_after_power_cycle(host, board):
    board.press_key(1)
    board.press_key(1)
    old = board.boot
    board.power_cycle(0.0)
    board.press_key(9)
    r = host.req("POLL", boot=old, ack=1)
    assert r.as_dict() == {"boot": str(board.boot), "ev": "1", "kind": "key", "slot": "9"}


def test_event_queue_drops_oldest_when_full(host, board):
    for i in range(20):
        board.press_key(1 + i % 10)
    events = host.poll_all()
    assert len(events) == 16
    assert [e["ev"] for e in events] == [str(i) for i in range(5, 21)]


def test_test_only_in_service(host, board):
    assert host.req("TEST", slot=1).as_dict() == {"code": "not_service"}
    board.open_door()
    assert host.req("TEST", slot=1).as_dict() == {"state": "running"}
    assert host.req("TEST", slot=2).as_dict() == {"code": "busy"}
    host.advance(board.vend_duration)
    assert host.req("TEST", slot=11).as_dict() == {"code": "bad_slot"}
    (entry,) = board.ledger
    assert (entry.kind, entry.vend_id, entry.result) == ("test", None, "ok")
    assert [e["kind"] for e in host.poll_all()] == ["door"]  # a test makes no vend event


def test_power_cycle_during_vend(host, board):
    host.req("VEND", id="pc", slot=2)
    old = board.boot
    board.power_cycle(host.now + 0.01)
    hello = host.req("HELLO")
    assert hello["boot"] != str(old)
    assert host.req("VSTAT", id="pc").as_dict() == {"state": "unknown"}
    assert board.ledger[0].result == "interrupted" and board.ledger[0].boot == old
    assert board.dispense_count() == 0 and board.stock[2] == 5
    assert host.req("STATUS")["state"] == "idle"
    host.advance(10)
    assert host.poll_all() == []  # the lost vend never reports


def test_power_cycle_product_fell(host, board):
    host.req("VEND", id="pf", slot=2)
    board.power_cycle(host.now, product_fell=True)
    assert board.dispense_count("pf") == 1 and board.stock[2] == 4
    assert host.req("VSTAT", id="pf")["state"] == "unknown"
    # the board forgot the id: a blind resend would dispense again (the host must not)
    assert host.req("VEND", id="pf", slot=2)["state"] == "running"


def test_reset_replies_ok_then_reboots(host, board):
    host.req("VEND", id="rs", slot=1)
    old = board.boot
    line = host.line("RESET")
    assert vlp.decode(board.handle_line(line, host.now)).args == ()
    assert board.boot != old and not board.running
    assert board.ledger[0].result == "interrupted"
    # a resent RESET is acted on again (why the host never resends it)
    mid = board.boot
    board.handle_line(line, host.now)
    assert board.boot != mid


def test_injected_ok_on_empty_slot_drops_nothing(host, board):
    board.set_stock(1, 0)
    board.inject(1, "ok")
    host.req("VEND", id="z", slot=1)
    host.advance(board.vend_duration)
    assert host.req("VSTAT", id="z")["result"] == "no_drop"
    assert board.dispense_count() == 0


def test_stock_runs_out():
    b = Board(2, stock=1)
    h = Host(b)
    h.req("VEND", id="one", slot=1)
    h.advance(b.vend_duration)
    assert h.req("VEND", id="two", slot=1).as_dict() == {"state": "done", "result": "empty"}
    assert h.req("SLOTS")["empty"] == "1"


@pytest.mark.parametrize("call", [
    lambda b: b.press_key(0), lambda b: b.press_key(11), lambda b: b.set_stock(1, -1),
    lambda b: b.inject(1, "explode"), lambda b: b.inject(True, "jam"), lambda b: b.disable_slot("3"),
    lambda b: Board(0), lambda b: Board(event_capacity=8), lambda b: Board(vend_memory=4),
])
def test_controls_reject_bad_arguments(board, call):
    with pytest.raises(BoardControlError):
        call(board)


def test_raise_fault_rejects_unsendable_code(board):
    with pytest.raises(vlp.EncodeError):
        board.raise_fault("has space")


def test_boards_are_independent():
    a, b = Board(seed=1), Board(seed=1)
    a.press_key(1)
    a.set_stock(1, 0)
    assert b.pending_events() == 0 and b.stock[1] == 5
