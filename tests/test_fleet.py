"""Many controllers in one process, as fleet simulations run them: each `Daemon` has its own
board, cloud, journal and screen, they share one broker and one interpreter, and nothing of one
machine leaks into another (no module-level state anywhere on the path)."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from vending.config import load_config
from vending.daemon import Daemon
from vending.keyfile import load_key
from vending.sandbox.rig import Rig, RigOptions

pytestmark = pytest.mark.broker

MACHINES = ("VM-A1", "VM-B2", "VM-C3")


@pytest.fixture
def fleet(mosquitto, tmp_path) -> Iterator[Callable[[int], list[Rig]]]:
    """fleet(n): n machines on one broker, each daemon built here and run in its own thread."""
    rigs: list[Rig] = []
    daemons: list[Daemon] = []
    threads: list[threading.Thread] = []

    def start(n: int) -> list[Rig]:
        for mid in MACHINES[:n]:
            rig = Rig(tmp_path / mid, RigOptions(machine_id=mid, vend_seconds=0.05), broker=mosquitto)
            rigs.append(rig.start(daemon=False))
            daemons.append(Daemon(load_config(rig.config_path), load_key(rig.dir / "machine.key")))
            threads.append(threading.Thread(target=daemons[-1].run, name=f"daemon-{mid}"))
            threads[-1].start()
        return rigs

    yield start
    for d in daemons:
        d.stop()
    for t in threads:
        t.join(10)
    for rig in rigs:
        rig.stop()
    assert not any(t.is_alive() for t in threads), "a daemon did not stop"


def test_three_daemons_in_one_process_sell_without_crossing(fleet):
    rigs = fleet(3)
    assert len({r.key for r in rigs}) == 3               # each machine its own key
    # Interleaved: every machine has a QR up before any of them is paid.
    views = [rig.select(i + 1) for i, rig in enumerate(rigs)]
    payments = [rig.cloud.pay(v["order_id"]) for rig, v in zip(rigs, views)]
    for i, (rig, payment) in enumerate(zip(rigs, payments)):
        result = rig.wait_result(payment["txn_id"])
        assert (result["result"], result["slot"], result["machine_id"]) == ("ok", i + 1, MACHINES[i])
    for i, rig in enumerate(rigs):
        # One dispense per board, from its own slot; each cloud heard only its own machine.
        assert [(e.slot, e.result) for e in rig.emulator.ledger() if e.kind == "vend"] == [(i + 1, "ok")]
        assert {e["machine_id"] for e in rig.cloud.events()} == {MACHINES[i]}
        assert len(rig.journal_rows("payments")) == 1


def test_a_payment_published_to_one_machine_is_never_acted_on_by_another(fleet):
    a, b = fleet(2)
    view = a.select(1)
    # B's cloud (B's key) publishes to B's topic a payment naming A's order: B must refund it
    # as an order it never had, and A, which never saw it, must go on waiting.
    b_pay = b.cloud.pay(view["order_id"], amount=view["amount"], currency="CNY")
    result = b.wait_result(b_pay["txn_id"])
    assert result["dispensed"] is False and result["refund"] is True
    assert a.screen()["order_id"] == view["order_id"] and a.emulator.ledger() == []
    a_pay = a.cloud.pay(view["order_id"])
    assert a.wait_result(a_pay["txn_id"])["result"] == "ok"
    assert b.emulator.ledger() == []
