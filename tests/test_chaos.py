"""The short chaos soak (issue #5): the real daemon selling 300 times on one machine while the
serial line is noisy, the daemon is SIGKILLed (at random and at crash points), the board loses
power mid-vend, the broker restarts and goes away, the orders API fails (offline QRs), the service
door opens mid-sale, and customers pay twice, late, wrongly, with forgeries or while pressing
cancel. Afterwards every money invariant of CONTRACT §5 is checked
against the board's ledger, the cloud's books and the journal (vending/sandbox/invariants.py).

`pytest -s tests/test_chaos.py` prints the tables; a failure prints them too, with every violation
and its evidence. The long run is bench/soak.py. VENDING_CHAOS_SEED / VENDING_CHAOS_SALES
reproduce or stretch a run.
"""
from __future__ import annotations

import os

import pytest

from tests.fixtures.broker import require_mosquitto
from vending.sandbox.chaos import FAULTS, Chaos, ChaosOptions, arm_brownout
from vending.sandbox.invariants import CheckReport, Evidence, check

SEED = int(os.environ.get("VENDING_CHAOS_SEED", "20260501"))
SALES = int(os.environ.get("VENDING_CHAOS_SALES", "300"))


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.timeout(900)       # a hang guard for the whole soak, not a performance bound
def test_short_chaos_soak_keeps_every_money_invariant(tmp_path):
    require_mosquitto()
    opts = ChaosOptions(sales=SALES, seed=SEED, workdir=str(tmp_path / "rig"))
    result = Chaos(opts).run()
    summary = result.summary()
    print(f"\nchaos soak seed={SEED}\n{summary}")
    f = result.faults
    kills = (f["kills: SIGKILL at a random moment"] + f["kills: crash point fired"]
             + f["kills: daemon down while paying"])
    assert result.report.ok, f"money invariants violated (seed {SEED}):\n{summary}"
    assert not any(result.outstanding.values()), f"the books never settled:\n{summary}"
    assert f["sales"] >= SALES
    assert kills >= opts.min_kills and f["power cycles"] >= opts.min_power_cycles
    assert f["broker restarts"] >= opts.min_broker_restarts, summary
    c = result.report.counts
    assert c["I3: payments checked"] >= SALES and c["ledger: motor starts"] > 0
    missing = [name for name, weight in FAULTS.items()
               if weight and name != "none" and not f[f"fault: {name}"]]
    assert not missing, f"faults never injected: {missing}\n{summary}"


@pytest.mark.broker
@pytest.mark.parametrize("product_fell", [False, True])
def test_brownout_between_vend_and_its_reply_never_starts_the_motor_twice(tmp_path, product_fell):
    require_mosquitto()
    from vending.sandbox.rig import Rig, RigOptions
    with Rig(tmp_path / "rig", RigOptions(vend_seconds=0.2)) as rig:
        fired = arm_brownout(rig.emulator, product_fell=product_fell)
        view, payment = rig.buy(1)
        result = rig.wait_result(payment["txn_id"], timeout=30)
        rig.emulator.trace = None
        assert fired.get("fired")
        report = check(Evidence.from_rig(rig))
        starts = [e for e in rig.emulator.ledger() if e.kind == "vend"]
        assert len(starts) == 1, f"{len(starts)} motor starts for one payment: {starts}; " \
                                 f"reported {result['result']}\n{report.summary()}"
        assert result["result"] == "uncertain" and report.ok, report.summary()


# ---- the checker itself: each invariant is caught when broken -------------------------------

class _Entry:
    def __init__(self, vend_id, result, kind="vend"):
        self.kind, self.vend_id, self.slot, self.result, self.boot = kind, vend_id, 1, result, 1


def _evidence(**over) -> Evidence:
    from vending import signing
    from vending.messages import vend_id_for
    key, mid = bytes(32), "VM-0001"
    pay = signing.sign_payload(key, {"v": 1, "type": "payment", "machine_id": mid, "ts": 1,
                                     "order_id": "o-1", "amount": 350, "currency": "CNY",
                                     "provider": "sandbox", "txn_id": "t-1"})
    vid = vend_id_for(mid, "o-1")
    result = {"type": "vend_result", "event_id": "e-1", "order_id": "o-1", "vend_id": vid,
              "slot": 1, "amount": 350, "currency": "CNY", "txn_id": "t-1", "result": "ok",
              "dispensed": True, "refund": False}
    base = dict(
        machine_id=mid, key=key, ledger=[_Entry(vid, "ok")], cloud_payments=[pay],
        cloud_orders=[{"order_id": "o-1", "slot": 1, "amount": 350, "currency": "CNY"}],
        cloud_commands=[], cloud_events=[result], acked={"e-1"},
        journal_payments=[{"txn_id": "t-1", "order_id": "o-1", "amount": 350,
                           "disposition": "dispense"}],
        journal_vends=[{"vend_id": vid, "order_id": "o-1", "txn_id": "t-1", "state": "finished"}],
        journal_outbox=[{"event_id": "e-1", "type": "vend_result", "acked_at": 1.0}])
    base.update(over)
    return Evidence(**base)


def _invariants(rep: CheckReport) -> set[str]:
    return {v.invariant for v in rep.violations}


def test_checker_passes_a_clean_sale():
    rep = check(_evidence())
    assert rep.ok, rep.summary()
    assert rep.counts["I3: payments checked"] == 1


def test_checker_catches_each_kind_of_violation():
    ev = _evidence()
    vid = ev.ledger[0].vend_id
    assert "I2" in _invariants(check(_evidence(ledger=[_Entry(vid, "ok"), _Entry(vid, "ok")])))
    assert "I1" in _invariants(check(_evidence(ledger=[_Entry(vid, "ok"), _Entry("vX", "ok")])))
    assert "I1" in _invariants(check(_evidence(cloud_orders=[
        {"order_id": "o-1", "slot": 1, "amount": 351, "currency": "CNY"}])))
    assert "I3" in _invariants(check(_evidence(cloud_events=[])))
    assert "I3" in _invariants(check(_evidence(acked=set())))
    refunded = {**ev.cloud_events[0], "result": "jam", "dispensed": False, "refund": True}
    assert "I4" in _invariants(check(_evidence(cloud_events=[refunded])))
    assert "I3" in _invariants(check(_evidence(ledger=[_Entry(vid, "interrupted")])))
    forged = {**ev.cloud_payments[0], "txn_id": "t-forged", "amount": 1}  # sig now wrong
    rep = check(_evidence(cloud_payments=[*ev.cloud_payments, forged],
                          journal_payments=[*ev.journal_payments, {
                              "txn_id": "t-forged", "order_id": "o-1", "amount": 1,
                              "disposition": "mismatch"}]))
    assert "I5" in _invariants(rep)
    assert "I6" in _invariants(check(_evidence(journal_outbox=[
        {"event_id": "e-9", "type": "alert", "acked_at": None}])))


def test_checker_counts_uncertain_with_a_fallen_product_as_policy_not_violation():
    ev = _evidence()
    uncertain = {**ev.cloud_events[0], "result": "uncertain", "dispensed": False, "refund": True}
    rep = check(_evidence(cloud_events=[uncertain]))
    assert rep.ok, rep.summary()
    assert rep.counts["policy: uncertain refunded although the product fell"] == 1
