"""``vending board ...`` through real subprocesses against the emulator on a real pty."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

import pytest

from firmware_bridge.board import Board

ROOT = Path(__file__).resolve().parents[1]
GUARD = 20.0  # hang-guard only


def vending(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vending", "board", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


class Live:
    """A long-running ``vending board`` command whose stdout we read line by line."""

    def __init__(self, *argv: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "vending", "board", *argv], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def until(self, pred: Callable[[str], bool]) -> str:
        deadline = time.monotonic() + GUARD
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                pytest.fail(f"no matching line; saw {self.seen[-20:]}")
            self.seen.append(line)
            if pred(line):
                return line

    def seen_or_until(self, pred: Callable[[str], bool]) -> str:
        """Like until(), but a line printed earlier counts too (order does not matter)."""
        return next((line for line in self.seen if pred(line)), None) or self.until(pred)

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=GUARD)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def live():
    started: list[Live] = []

    def start(*argv: str) -> Live:
        started.append(Live(*argv))
        return started[-1]

    yield start
    for lv in started:
        lv.kill()


@pytest.fixture
def board(make_emulator):
    return make_emulator(board=Board(vend_duration=0.0))


def boot_of(emu) -> int:
    return emu.call(lambda b: b.boot)


# -- help and usage -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["hello"], ["status"], ["slots"], ["poll"], ["vstat"],
                                     ["test"], ["reset"], ["raw"], ["monitor"], ["sim"]])
def test_help_everywhere(command):
    r = vending(*command, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout


@pytest.mark.parametrize("argv, says", [
    (["status"], "--port is required"),
    (["--port", "/dev/null", "dance"], "invalid choice"),
    (["--port", "/dev/null", "test"], "--slot"),
    (["--port", "/dev/null", "test", "--slot", "two"], "invalid int"),
    (["--port", "/dev/null", "--baud", "fast", "status"], "invalid int"),
    (["--port", "/dev/null", "--baud", "0", "status"], "--baud must be a positive number"),
    (["--port", "/dev/null", "raw", "STATUS oops"], "is not key=value"),
    (["--port", "/dev/null", "raw", "status"], "verb must match"),
    (["--port", "/dev/null", "raw", ""], "raw needs a request"),
    (["--port", "/dev/null", "vstat"], "ID"),
])
def test_bad_arguments_exit_2_with_one_sentence(argv, says):
    r = vending(*argv)
    assert r.returncode == 2, r.stderr
    assert says in r.stderr
    assert "Traceback" not in r.stderr


def test_an_id_the_wire_cannot_carry_is_a_usage_error(board):
    r = vending("--port", board.path, "vstat", "two words")
    assert r.returncode == 2 and "value of 'id'" in r.stderr


# -- link problems: exit 3 ----------------------------------------------------------------------


def test_a_port_that_does_not_exist_exits_3(tmp_path):
    r = vending("--port", str(tmp_path / "ttyNOPE"), "hello")
    assert r.returncode == 3
    assert r.stderr.count("\n") == 1 and "cannot open port" in r.stderr and "Traceback" not in r.stderr


def test_a_silent_board_exits_3():
    master, slave = os.openpty()  # a cable with nothing at the other end
    tty.setraw(slave)
    try:
        r = vending("--port", os.ttyname(slave), "--reply-timeout", "0.02", "status")
    finally:
        os.close(master)
        os.close(slave)
    assert r.returncode == 3 and "no reply to HELLO" in r.stderr


# -- one-shot commands --------------------------------------------------------------------------


def test_hello_status_slots(board):
    boot = boot_of(board)
    assert vending("--port", board.path, "hello").stdout.split() == [
        "proto=1", "fw=emu-1.0", "board=EMU0001", f"boot={boot}", "slots=10"]
    r = vending("status", "--port", board.path)  # link options also after the command
    assert r.returncode == 0 and r.stdout.strip() == f"boot={boot} state=idle door=closed temp=40"
    board.set_stock(3, 0)
    board.set_stock(5, 0)
    r = vending("--port", board.path, "slots")
    assert r.stdout.strip() == "n=10 empty=3,5 disabled=none"


def test_json_output(board):
    doc = json.loads(vending("--port", board.path, "--json", "slots").stdout)
    assert doc == {"type": "slots", "n": 10, "empty": [], "disabled": []}
    doc = json.loads(vending("--port", board.path, "status", "--json").stdout)
    assert doc["boot"] == boot_of(board) and doc["door"] == "closed"


def test_raw_fills_in_seq_and_crc_and_decodes_the_reply(board):
    r = vending("--port", board.path, "raw", "VEND id=cli-1 slot=2")
    assert r.returncode == 0, r.stderr
    line, *fields = r.stdout.splitlines()
    assert line.split("*")[0].split(" ", 1)[1] in ("OK state=running", "OK state=done result=ok")
    assert "  state=running" in fields or "  state=done" in fields
    r = vending("--port", board.path, "vstat", "cli-1")
    assert r.returncode == 0 and r.stdout.strip() == "state=done result=ok"
    assert board.dispense_count("cli-1") == 1


def test_raw_err_is_printed_and_exits_4(board):
    r = vending("--port", board.path, "raw", "VEND id=cli-2 slot=99")
    assert r.returncode == 4
    assert "ERR code=bad_slot*" in r.stdout and "  code=bad_slot" in r.stdout
    assert "bad_slot" in r.stderr and r.stderr.count("\n") == 1


def test_vstat_of_an_unknown_id(board):
    r = vending("--port", board.path, "vstat", "never-sent")
    assert (r.returncode, r.stdout.strip()) == (0, "state=unknown")


def test_test_is_refused_outside_service_then_runs_with_the_door_open(board):
    r = vending("--port", board.path, "test", "--slot", "4")
    assert r.returncode == 4 and "not_service" in r.stderr
    board.open_door()
    r = vending("--port", board.path, "test", "--slot", "4")
    assert (r.returncode, r.stdout.strip()) == (0, "state=running")
    assert [(e.kind, e.slot) for e in board.ledger()] == [("test", 4)]


def test_reset_reports_the_new_boot(board):
    old = boot_of(board)
    r = vending("--port", board.path, "reset")
    new = boot_of(board)
    assert r.returncode == 0 and new != old
    assert f"board rebooted: boot {old} -> {new}" in r.stdout
    assert f"boot={new}" in r.stdout


# -- live commands ------------------------------------------------------------------------------


def test_poll_follows_and_acknowledges_events_until_ctrl_c(board, live):
    lv = live("--port", board.path, "poll", "--interval", "0.02")
    lv.until(lambda s: s.startswith("link up"))
    board.press_key(3)
    board.open_door()
    assert "slot=3" in lv.until(lambda s: "kind=key" in s)
    lv.until(lambda s: "kind=door" in s and "state=open" in s)
    deadline = time.monotonic() + GUARD
    while board.call(lambda b: b.pending_events()):  # acked by the next POLL
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert lv.interrupt() == 0


def test_poll_json(board, live):
    lv = live("--port", board.path, "--json", "poll", "--interval", "0.02")
    lv.until(lambda s: '"link_up"' in s)
    board.press_cancel()
    doc = json.loads(lv.until(lambda s: '"cancel"' in s))
    assert doc["type"] == "event" and doc["kind"] == "cancel" and doc["id"] == 1
    assert lv.interrupt() == 0


def test_monitor_traces_both_ways_with_status_changes_and_events(board, live):
    lv = live("--port", board.path, "monitor", "--interval", "0.02", "--status-every", "0.05")
    lv.until(lambda s: " >> " in s and "HELLO*" in s)
    lv.until(lambda s: " << " in s and " OK proto=1 " in s)
    lv.until(lambda s: s.startswith("status ") and "door=closed" in s)
    mark = len(lv.seen)
    board.open_door()
    lv.until(lambda s: s.startswith("status ") and "door=open" in s)
    # The door event and the STATUS change may come in either order.
    assert lv.seen_or_until(lambda s: s.startswith("event ") and "kind=door" in s) in (
        lv.seen[mark:])
    assert lv.interrupt() == 0


def test_monitor_marks_crc_errors_and_retransmits(make_emulator, live):
    noisy = make_emulator(corrupt_rate=0.3, drop_rate=0.2, seed=4)
    lv = live("--port", noisy.path, "monitor", "--interval", "0.01")
    lv.until(lambda s: "[crc error]" in s)
    lv.until(lambda s: "[retransmit " in s)
    assert lv.interrupt() == 0


def test_monitor_survives_unplug_and_says_so(board, live):
    lv = live("--port", board.path, "monitor", "--interval", "0.02")
    lv.until(lambda s: s.startswith("link up"))
    board.unplug()
    lv.until(lambda s: s.startswith("link down"))
    board.replug()
    lv.until(lambda s: s.startswith("link up"))
    assert lv.interrupt() == 0


def test_sim_is_a_board_the_other_commands_can_talk_to(live, tmp_path):
    sim = live("sim", "--link", str(tmp_path / "sim.tty"), "--vend-seconds", "0")
    path = sim.until(lambda s: s.strip() != "")
    r = vending("--port", path, "hello")
    assert r.returncode == 0 and r.stdout.startswith("proto=1 ")
    sim.proc.send_signal(signal.SIGINT)
    assert sim.proc.wait(timeout=GUARD) == 0
