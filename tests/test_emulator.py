"""The emulator over a real pty (pyserial on the host side), and ``vending board sim``."""

from __future__ import annotations

import os
import queue
import random
import select
import signal
import subprocess
import sys
import time
import tty

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import vlp
from firmware_bridge.board import Board, BoardControlError
from firmware_bridge.emulator import Emulator, corrupt_line

HANG_GUARD = 10.0  # seconds; only ever reached when something is broken


class Port:
    """A tiny host on a real serial port: one request line, one reply line."""

    def __init__(self, path: str) -> None:
        self.ser = serial.Serial(path, 115200, timeout=HANG_GUARD)
        self.seq = 0

    def line(self, verb: str, **args: object) -> bytes:
        self.seq += 1
        return vlp.encode(self.seq, verb, args)

    def send(self, line: bytes) -> bytes:
        self.ser.write(line)
        reply = self.ser.readline()
        assert reply.endswith(b"\n"), f"no reply to {line!r}"
        return reply

    def req(self, verb: str, **args: object) -> vlp.Frame:
        line = self.line(verb, **args)
        frame = vlp.decode(self.send(line))
        assert frame.seq == self.seq
        return frame

    def close(self) -> None:
        self.ser.close()


@pytest.fixture
def port(emulator):
    p = Port(emulator.path)
    yield p
    p.close()


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not predicate():
        assert time.monotonic() < deadline, f"hang guard: {what}"
        time.sleep(0.01)


def test_hello_over_pty(emulator, port):
    assert os.path.islink(emulator.path)
    assert os.readlink(emulator.path).startswith("/dev/pts/")
    r = port.req("HELLO")
    assert r["proto"] == "1" and r["boot"] == str(emulator.call(lambda b: b.boot))
    assert (emulator.lines_in, emulator.lines_out) == (1, 1)


def test_raw_mode_no_echo_and_crlf_passthrough(emulator):
    fd = os.open(emulator.path, os.O_RDWR | os.O_NOCTTY)
    try:
        tty.setraw(fd)  # the host's side; the emulator already made its side raw
        os.write(fd, b"1 HELLO*7DF0\r\n")
        got = b""
        while not got.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], HANG_GUARD)
            assert ready, "hang guard: no reply"
            got += os.read(fd, 256)
        assert got.startswith(b"1 OK proto=1 ") and b"HELLO" not in got
    finally:
        os.close(fd)


def test_retransmit_byte_identical_without_second_dispense(emulator, port):
    line = port.line("VEND", id="order-1", slot=3)
    first = port.send(line)
    assert vlp.decode(first).as_dict() == {"state": "running"}
    wait_until(lambda: not emulator.call(lambda b: b.running), "vend to finish")
    assert port.send(line) == first  # the remembered reply, though the vend is done now
    assert port.req("VEND", id="order-1", slot=3).as_dict() == {"state": "done", "result": "ok"}
    assert emulator.dispense_count() == 1 == emulator.dispense_count("order-1")
    assert len(emulator.ledger()) == 1


def test_garbage_and_overlong_then_resync(emulator, port):
    port.ser.write(b"\x00\xff junk\n" + b"x" * 500 + b"\n1 HELLO*7DF1\n")
    assert port.req("STATUS")["state"] == "idle"
    assert emulator.lines_in == 4 and emulator.lines_out == 1


def test_unplug_and_replug_same_path(emulator, port):
    boot = port.req("HELLO")["boot"]
    emulator.unplug()
    assert not os.path.lexists(emulator.path)
    assert not emulator.plugged
    with pytest.raises(serial.SerialException):
        port.ser.timeout = HANG_GUARD
        port.ser.read(1)  # EIO / "returned no data": the cable is gone
    port.close()
    with pytest.raises(serial.SerialException):
        serial.Serial(emulator.path)
    assert emulator.replug() == emulator.path
    assert emulator.plugged and os.readlink(emulator.path).startswith("/dev/pts/")
    again = Port(emulator.path)
    try:
        assert again.req("HELLO")["boot"] == boot  # the cable, not the board's power
    finally:
        again.close()


def test_host_reopen_without_unplug(emulator):
    for _ in range(3):
        p = Port(emulator.path)
        assert p.req("STATUS")["door"] == "closed"
        p.close()


def test_power_cycle_during_vend(emulator, port):
    emulator.call(lambda b: setattr(b, "vend_duration", HANG_GUARD * 3))  # still running at the cut
    old = port.req("HELLO")["boot"]
    assert port.req("VEND", id="pc-1", slot=2)["state"] == "running"
    new = emulator.power_cycle()
    assert port.req("HELLO")["boot"] == str(new) != old
    assert port.req("VSTAT", id="pc-1").as_dict() == {"state": "unknown"}
    (entry,) = emulator.ledger()
    assert (entry.vend_id, entry.result, str(entry.boot)) == ("pc-1", "interrupted", old)
    assert emulator.dispense_count() == 0


def test_events_from_controls_reach_host(emulator, port):
    boot = port.req("HELLO")["boot"]
    emulator.press_key(4)
    emulator.press_cancel()
    emulator.open_door()
    assert port.req("VEND", id="d", slot=1)["code"] == "door_open"
    emulator.close_door()
    kinds = []
    ack = 0
    while (r := port.req("POLL", boot=boot, ack=ack))["ev"] != "none":
        ack = int(r["ev"])
        kinds.append(r["kind"])
    assert kinds == ["key", "cancel", "door", "door"]


def test_call_runs_on_emulator_thread_and_propagates_errors(emulator):
    import threading
    assert emulator.call(lambda b: threading.current_thread().name) == "vlp-emulator"
    with pytest.raises(BoardControlError):
        emulator.inject(99, "jam")
    with pytest.raises(ZeroDivisionError):
        emulator.call(lambda b: 1 / 0)
    assert emulator.call(lambda b: b.slots) == 10  # still serving


def test_two_emulators_in_one_process(make_emulator):
    a = make_emulator(board=Board(3, seed=1))
    b = make_emulator(board=Board(7, seed=2))
    pa, pb = Port(a.path), Port(b.path)
    try:
        assert (pa.req("HELLO")["slots"], pb.req("HELLO")["slots"]) == ("3", "7")
        a.press_key(1)
        assert pb.req("POLL", boot=0, ack=0)["ev"] == "none"
    finally:
        pa.close()
        pb.close()


def test_noise_rates_are_observable_and_honest(make_emulator):
    """Every line the host gets is either intact or fails its CRC; counters match the trace."""
    notes: queue.SimpleQueue = queue.SimpleQueue()
    emu = make_emulator(corrupt_rate=0.25, drop_rate=0.2, seed=42,
                        trace=lambda d, line, note: notes.put((d, note)))
    port = Port(emu.path)
    port.ser.timeout = 0
    tally = {"good": 0, "bad_crc": 0, "dropped": 0, "corrupted": 0}
    try:
        for _ in range(150):
            port.ser.write(port.line("STATUS"))
            direction, note = notes.get(timeout=HANG_GUARD)
            assert direction == "<"
            if note in ("dropped", "corrupted"):
                tally[note] += 1
            if note == "dropped":
                continue  # the board never saw it
            direction, reply_note = notes.get(timeout=HANG_GUARD)
            assert direction == ">"
            if reply_note in ("dropped", "corrupted"):
                tally[reply_note] += 1
            if reply_note in ("dropped", "no reply"):
                continue
            # A reply is on its way: wait for it (the timeout is only a hang guard).
            port.ser.timeout = HANG_GUARD
            got = port.ser.readline()
            port.ser.timeout = 0
            try:
                frame = vlp.decode(got)
            except vlp.DroppedLine:
                assert reply_note == "corrupted"
                tally["bad_crc"] += 1
            else:
                assert reply_note == "" and frame.seq == port.seq
                tally["good"] += 1
        assert port.ser.read(4096) == b""  # nothing unaccounted for on the wire
    finally:
        port.close()
    stats = emu.stats()
    assert stats.lines_in == 150
    assert (stats.corrupted, stats.dropped) == (tally["corrupted"], tally["dropped"])
    assert stats.corrupted > 0 and stats.dropped > 0 and tally["good"] > 0 and tally["bad_crc"] > 0


@settings(max_examples=300, deadline=None)
@given(seq=st.integers(1, 65535), slot=st.integers(1, 64), seed=st.integers(0, 2**32),
       vid=st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z"), crlf=st.booleans())
def test_corrupt_line_always_breaks_crc_and_keeps_one_line(seq, slot, seed, vid, crlf):
    line = vlp.encode(seq, "VEND", {"id": vid, "slot": slot})
    if crlf:
        line = line[:-1] + b"\r\n"
    bad = corrupt_line(line, random.Random(seed))
    assert bad != line and len(bad) == len(line) and bad.count(b"\n") == 1
    assert bad.endswith(b"\r\n" if crlf else b"\n")
    with pytest.raises(vlp.DroppedLine):
        vlp.decode(bad)


def test_rates_validated():
    with pytest.raises(ValueError, match="drop_rate"):
        Emulator(drop_rate=1.5)


# ---- vending board sim --------------------------------------------------------------

@pytest.mark.timeout(60)
def test_sim_cli_end_to_end(tmp_path):
    link = str(tmp_path / "sim.tty")
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware_bridge.sim_cli", "--link", link, "--slots", "4",
         "--seed", "5", "--jam", "2", "--empty", "3", "--disable", "4", "--vend-seconds", "0.05"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
    )
    try:
        assert proc.stdout.readline().strip() == link
        port = Port(link)
        hello = port.req("HELLO")
        assert hello["slots"] == "4"
        assert proc.stdout.readline().startswith("< 1 HELLO*")
        assert proc.stdout.readline().startswith("> 1 OK proto=1")
        assert port.req("SLOTS").as_dict() == {"n": "4", "empty": "4", "disabled": "8"}
        proc.stdin.write("key 3\n")
        proc.stdin.flush()
        proc.stdin.write("bogus\n")
        proc.stdin.flush()
        lines = [proc.stdout.readline() for _ in range(3)]  # SLOTS traced, then the complaint
        assert lines[0].startswith("< 2 SLOTS") and lines[1].startswith("> 2 OK n=4")
        assert lines[2].startswith("! unknown command: 'bogus'")
        r = port.req("POLL", boot=hello["boot"], ack=0)
        assert (r["kind"], r["slot"]) == ("key", "3")
        assert port.req("VEND", id="j", slot=2)["state"] == "running"
        port.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=HANG_GUARD) == 0
        assert not os.path.lexists(link)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(60)
def test_sim_cli_sigint_exits_zero_and_cleans_up(tmp_path):
    link = str(tmp_path / "int.tty")
    proc = subprocess.Popen([sys.executable, "-m", "firmware_bridge.sim_cli", "--link", link],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == link and os.path.islink(link)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=HANG_GUARD) == 0
        assert not os.path.lexists(link)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sim_cli_rejects_bad_options(tmp_path, capsys):
    from firmware_bridge import sim_cli
    assert sim_cli.main(["--slots", "3", "--jam", "9", "--link", str(tmp_path / "x")]) == 2
    assert "slot must be an int in 1..3: 9" in capsys.readouterr().err


@pytest.mark.parametrize("text,check", [
    ("key 3", lambda b: b.pending_events() == 1),
    ("cancel", lambda b: b.pending_events() == 1),
    ("door open", lambda b: b.door_open),
    ("stock 2 0", lambda b: b.stock[2] == 0),
    ("disable 4", lambda b: 4 in b.disabled),
    ("fault psu", lambda b: b.fault == "psu"),
    ("power", lambda b: b.boot != 1),
])
def test_sim_cli_commands(text, check):
    from firmware_bridge.sim_cli import parse_command
    board = Board(seed=0)
    board.boot = 1
    parse_command(text, lambda: 0.0)(board)
    assert check(board)


@pytest.mark.parametrize("text", ["key", "key x", "door ajar", "stock 1", "frobnicate", "cancel 2"])
def test_sim_cli_command_errors(text):
    from firmware_bridge.sim_cli import CommandError, parse_command
    with pytest.raises(CommandError):
        parse_command(text, lambda: 0.0)
