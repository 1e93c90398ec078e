"""vending/journal.py on a real sqlite file: durability settings, atomic Persists, the schema's
refusals, and the reads the shell feeds back into the core."""
from __future__ import annotations

import sqlite3

import pytest

from tests.core_helpers import CUR, A, E, T0
from vending.journal import Journal, JournalError


@pytest.fixture
def j(tmp_path):
    journal = Journal(tmp_path / "sub" / "journal.db")
    journal.set_clock(T0)
    yield journal
    journal.close()


def order(oid="o1", *, slot=1, amount=350, session="s1") -> A.SaveOrder:
    return A.SaveOrder(oid, session, slot, "cola", amount, CUR, f"https://pay.test/{oid}", int(T0) + 300,
                       False, T0)


def pay(txn="t1", oid="o1", disposition="dispense", payer=None, amount=350) -> A.SavePayment:
    return A.SavePayment(txn, oid, amount, CUR, "sandbox", payer, {"txn_id": txn, "note": "支付"},
                         disposition, T0 + 1)


def vend(vid="v1", oid="o1", *, kind="paid", txn="t1", expires=None) -> A.SaveVend:
    return A.SaveVend(vid, oid, kind, 1, txn, 350 if kind == "paid" else 0, CUR, True, T0 + 1, expires)


def event(eid="e1", type_="vend_result") -> A.SaveEvent:
    return A.SaveEvent(eid, type_, {"event_id": eid, "x": 1})


def count(j, table):
    return len(j.rows(table))


# ---- durability ------------------------------------------------------------------------------

def test_wal_and_synchronous_full_are_set(j):
    assert j.db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    assert j.db.execute("PRAGMA synchronous").fetchone()[0] == 2      # FULL


def test_committed_ops_survive_reopening(tmp_path):
    path = tmp_path / "j.db"
    a = Journal(path)
    a.apply((order(), pay(), vend()))
    a.close()
    b = Journal(path)
    try:
        assert b.txn_seen("t1") and [v.vend_id for v in b.unfinished_vends()] == ["v1"]
        assert b.db.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        b.close()


# ---- atomicity ---------------------------------------------------------------------------------

def test_apply_is_atomic_on_constraint_violation(j):
    j.apply((order(), pay("t1")))
    with pytest.raises(sqlite3.IntegrityError):
        j.apply((event("e1"), vend("v1", txn="t2"), pay("t1")))     # last op breaks the PK
    assert count(j, "outbox") == 0 and count(j, "vends") == 0
    assert j.unfinished_vends() == [] and j.unacked_events() == []
    j.apply((event("e1"),))                                            # the connection is usable
    assert count(j, "outbox") == 1


def test_apply_is_atomic_on_journal_error(j):
    with pytest.raises(JournalError):
        j.apply((order(), A.VendSent("v-missing", 3, T0)))
    assert count(j, "orders") == 0


def test_vend_state_changes_are_guarded(j):
    j.apply((order(), pay(), vend()))
    j.apply((A.VendSent("v1", 3, T0 + 2),))
    j.apply((A.VendSent("v1", 4, T0 + 3),))              # re-sent after a refusal: allowed
    j.apply((A.VendFinished("v1", "ok", T0 + 4),))
    with pytest.raises(JournalError):
        j.apply((A.VendFinished("v1", "ok", T0 + 5),))
    with pytest.raises(JournalError):
        j.apply((A.VendSent("v1", 5, T0 + 6),))
    row = j.rows("vends")[0]
    assert (row["state"], row["result"], row["boot"]) == ("finished", "ok", 4)


# ---- the schema's refusals -----------------------------------------------------------------

def test_txn_id_cannot_be_saved_twice(j):
    j.apply((order(), pay("t1", disposition="late")))
    with pytest.raises(sqlite3.IntegrityError):
        j.apply((pay("t1", disposition="duplicate"),))
    assert [p["disposition"] for p in j.rows("payments")] == ["late"]


def test_two_accepted_payments_for_one_order_are_refused(j):
    j.apply((order(), pay("t1")))
    with pytest.raises(sqlite3.IntegrityError):
        j.apply((pay("t2"),))
    j.apply((pay("t3", disposition="duplicate"), pay("t4", disposition="mismatch")))
    assert j.order_facts("o1").paid_txn == "t1"


def test_one_vend_per_order(j):
    j.apply((order(), pay(), vend("v1")))
    with pytest.raises(sqlite3.IntegrityError):
        j.apply((vend("v2", "o1"),))
    with pytest.raises(sqlite3.IntegrityError):
        j.apply((vend("v1", "o2"),))
    assert count(j, "vends") == 1


def test_one_vend_per_free_vend_cmd_id(j):
    j.apply((A.SaveCommand("c1", "free_vend", None, None, None, T0), vend("vf", "c1", kind="free", txn=None,
                                                                          expires=int(T0) + 60)))
    with pytest.raises(sqlite3.IntegrityError):
        j.apply((vend("vf2", "c1", kind="free", txn=None),))


# ---- reads -------------------------------------------------------------------------------------

def test_order_facts(j):
    assert j.order_facts("o1") is None
    j.apply((order("o1", slot=2, amount=500),))
    assert j.order_facts("o1") == E.OrderFacts("o1", "s1", 2, "cola", 500, CUR, None, None)
    j.apply((A.CloseOrder("o1", T0 + 5, "cancel"),))
    j.apply((A.CloseOrder("o1", T0 + 9, "timeout"),))          # the first close wins
    assert j.order_facts("o1").closed_at == T0 + 5
    j.apply((pay("tl", disposition="late", amount=500),))
    assert j.order_facts("o1").paid_txn is None
    j.apply((pay("td", amount=500),))
    assert j.order_facts("o1").paid_txn == "td"


def test_save_order_twice_keeps_the_first(j):
    j.apply((order("o1", amount=350),))
    j.apply((order("o1", amount=1),))
    assert j.order_facts("o1").amount == 350


def test_txn_seen_and_payer_seen(j):
    assert not j.txn_seen("t1")
    assert j.payer_seen(None) is True
    j.apply((order(), pay("t1", disposition="mismatch", payer="alice")))
    assert j.txn_seen("t1") and not j.payer_seen("alice")     # only a dispensed payment counts
    j.apply((pay("t2", payer="alice"),))
    assert j.payer_seen("alice") and not j.payer_seen("bob")


def test_payment_message_is_stored_verbatim(j):
    j.apply((order(), pay("t1")))
    import json
    assert json.loads(j.rows("payments")[0]["message"]) == {"txn_id": "t1", "note": "支付"}


def test_command_outcome(j):
    assert j.command_outcome("c1") is None
    j.apply((A.SaveCommand("c1", "free_vend", None, None, None, T0),))
    assert j.command_outcome("c1") == (None, None)
    j.apply((A.SaveCommand("c1", "free_vend", False, "expired", "e9", T0 + 1),))
    assert j.command_outcome("c1") == (False, "expired")
    j.apply((A.SaveCommand("c2", "ping", True, None, "e10", T0),))
    assert j.command_outcome("c2") == (True, None)


def test_unfinished_vends(j):
    j.apply((order("o1"), pay("t1"), vend("v1", "o1")))
    j.apply((order("o2"), pay("t2", "o2"), vend("v2", "o2", txn="t2"), A.VendSent("v2", 7, T0 + 2)))
    j.apply((order("o3"), pay("t3", "o3"), vend("v3", "o3", txn="t3"), A.VendFinished("v3", "ok", T0 + 3)))
    j.apply((vend("vf", "c1", kind="free", txn=None, expires=int(T0) + 60),))
    got = {v.vend_id: v for v in j.unfinished_vends()}
    assert set(got) == {"v1", "v2", "vf"}
    assert (got["v1"].state, got["v1"].boot, got["v1"].txn_id, got["v1"].payer_new) == ("pending", None, "t1", True)
    assert (got["v2"].state, got["v2"].boot) == ("sent", 7)
    assert (got["vf"].kind, got["vf"].expires, got["vf"].txn_id) == ("free", int(T0) + 60, None)
    assert not any(v.live or v.waiting for v in got.values())


def test_open_orders(j):
    j.apply((order("open"), order("closed"), order("paid"), order("late-only")))
    j.apply((A.CloseOrder("closed", T0, "cancel"), pay("t1", "paid"), pay("t2", "late-only", disposition="late")))
    assert sorted(j.open_orders()) == ["late-only", "open"]


def test_unacked_events_in_order_and_acks(j):
    j.set_clock(T0 + 2)
    j.apply((event("e2"),))
    j.set_clock(T0 + 1)
    j.apply((event("e1"), event("e1b", "alert")))
    assert [e[0] for e in j.unacked_events()] == ["e1", "e1b", "e2"]
    assert j.unacked_events()[1] == ("e1b", "alert", {"event_id": "e1b", "x": 1})
    j.apply((A.EventAcked("e1", T0 + 3), A.EventAcked("nope", T0 + 3)))
    assert [e[0] for e in j.unacked_events()] == ["e1b", "e2"]
    with pytest.raises(sqlite3.IntegrityError):
        j.apply((event("e2"),))


def test_settings_roundtrip(j):
    j.apply((A.SaveSetting("prices", {"1": 300}), A.SaveSetting("disabled_slots", [2])))
    j.apply((A.SaveSetting("disabled_slots", []),))
    assert j.settings() == {"prices": {"1": 300}, "disabled_slots": []}


def test_rows_refuses_unknown_tables(j):
    with pytest.raises(JournalError):
        j.rows("sqlite_master")


def test_core_persists_apply_cleanly_to_the_real_journal(j):
    """A whole sale's Persists, as the core emits them, go through the real schema."""
    from tests.core_helpers import idle_rig, to_dispensing
    r = idle_rig()
    vid = to_dispensing(r)
    r.feed(E.VendReply(vid, "done", "ok"))
    r.pay("ord-1", txn_id="txn-2")                       # duplicate
    r.pay("ord-zz", txn_id="txn-3")                      # unknown order
    for a in r.log:
        if isinstance(a, A.Persist):
            j.apply(a.ops)
    assert j.order_facts("ord-1").paid_txn == "txn-1"
    assert j.unfinished_vends() == []
    assert [p["disposition"] for p in j.rows("payments")] == ["dispense", "duplicate", "late"]
    assert len([e for e in j.unacked_events() if e[1] == "vend_result"]) == 3
