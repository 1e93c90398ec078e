"""`vending demo` as a person runs it: a real subprocess, real signals, nothing left behind."""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.fixtures.broker import require_mosquitto
from vending.sandbox import pybroker

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent
GUARD = 60.0        # hang-guard only


def _demo(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "vending", "demo", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.parametrize("broker", ["mosquitto", "python"])
def test_headless_demo_sells_one_product_and_cleans_up(broker):
    if broker == "mosquitto":
        require_mosquitto()
    elif not pybroker.available():
        pytest.skip("amqtt is not installed (pip install amqtt)")
    proc = _demo("--headless", "--broker", broker)
    out, _ = proc.communicate(timeout=GUARD)
    assert proc.returncode == 0, out
    for words in ("chose slot 1", "order o-", "QR http://127.0.0.1:", "paid via sandbox WeChat",
                  "VEND on the wire:", "slot=1", "dispensed: vend_result ok",
                  "acked by the cloud", "board ledger: 1 dispense", "sale OK"):
        assert words in out, out
    workdir = re.search(r"workdir (\S+)\)", out).group(1)
    assert not Path(workdir).exists(), "the temp workdir must be removed without --keep"


def _children(pid: int) -> set[int]:
    """Direct children of pid, from /proc (no psutil)."""
    kids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.add(int(entry.name))
    return kids


def _in_group(pgid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_running_demo_stops_cleanly_on_a_signal(tmp_path, how):
    require_mosquitto()
    # its own process group, as a shell gives a foreground job: Ctrl-C is SIGINT to the group
    proc = _demo("--port", "0", "--workdir", str(tmp_path), stdin=subprocess.PIPE,
                 start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    seen: list[str] = []

    def wait_line(pattern: str) -> re.Match:
        while True:
            try:
                line = lines.get(timeout=GUARD)
            except queue.Empty:
                proc.kill()
                pytest.fail(f"no line matching {pattern!r}; output:\n{''.join(seen)}")
            seen.append(line)
            if m := re.search(pattern, line):
                return m

    try:
        wait_line(r"kiosk \(the touch screen\): http://127\.0\.0\.1:\d+/")
        children = _children(proc.pid)
        assert len(children) == 2, "expected the daemon and mosquitto as children"
        proc.stdin.write("key 2\n")
        proc.stdin.flush()
        wait_line(r"order o-\w+ slot 2 .*: pending")       # stdin reaches the board
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait(GUARD)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert rc == 0, "".join(seen)
    assert not [p for p in children if _alive(p)], "children left running"
    assert _in_group(proc.pid) == set(), "processes left in the demo's process group"
    log = (tmp_path / "daemon.log").read_text()
    # SIGTERM from the demo, not the terminal's SIGINT, stopped the daemon: it parked and said so
    assert 'msg="stopped"' in log
    assert "Traceback" not in log
