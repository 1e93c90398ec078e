"""`vending journal`: what a machine owes, read from the journal of a real daemon."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.broker


def vending_journal(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-m", "vending", "journal", *args], capture_output=True,
                          text=True, timeout=30, env=env)


def test_a_settled_machine_owes_nothing(rig):
    view, payment = rig.buy(1)
    rig.wait_result(payment["txn_id"])
    done = vending_journal("--config", str(rig.config_path))      # beside the running daemon
    assert done.returncode == 0, done.stderr
    assert "owes nothing" in done.stdout and "1 payments, 1 dispensed, 0 refunded" in done.stdout
    assert "slot 1 350 CNY ok" in done.stdout
    report = json.loads(vending_journal("--journal", str(rig.journal_path), "--json").stdout)
    assert report["owed"] is False and report["unsettled_payments"] == []
    assert report["recent_vends"][0]["result"] == "ok"


def test_a_payment_caught_by_a_crash_shows_as_owed_until_the_restart_settles_it(rig):
    rig.restart_daemon(crash_at="VendSent")     # killed between journaling the VEND and sending it
    view = rig.select(2)
    payment = rig.cloud.pay(view["order_id"])
    rig.wait_exit()
    owed = vending_journal("--journal", str(rig.journal_path))
    assert owed.returncode == 5, owed.stdout + owed.stderr
    assert f"txn {payment['txn_id']} order {view['order_id']} {view['amount']} CNY dispense" in owed.stdout
    assert "vends not finished: 1" in owed.stdout and "OWES" in owed.stdout
    rig.start_daemon()
    rig.wait_result(payment["txn_id"])
    rig.wait(lambda: vending_journal("--journal", str(rig.journal_path)).returncode == 0,
             what="the journal settled")


def test_bad_arguments_and_missing_journals_are_plain_errors(tmp_path):
    assert vending_journal().returncode == 2
    gone = vending_journal("--journal", str(tmp_path / "nope.db"))
    assert gone.returncode == 1 and "no journal at" in gone.stderr
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    bad = vending_journal("--journal", str(junk))
    assert bad.returncode == 1 and "cannot read the journal" in bad.stderr
    assert "Traceback" not in bad.stderr
    cfg = tmp_path / "machine.toml"
    cfg.write_text("machine_id = 'x y'\n")
    bad_cfg = vending_journal("--config", str(cfg))
    assert bad_cfg.returncode == 78 and "machine.toml" in bad_cfg.stderr
    assert vending_journal("--journal", str(junk), "--last", "-1").returncode == 2
