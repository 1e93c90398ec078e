"""The durable journal: sqlite in WAL mode with synchronous=FULL, owned by one thread.

Everything that decides a dispense or a refund is here before the action it guards (the core's
`Persist` barrier). The schema itself refuses the two worst mistakes: a txn_id can be recorded
only once, and an order can be accepted for dispensing only once (one vend per order or per
free-vend cmd_id).
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from vending.core import actions as A
from vending.core.events import OrderFacts
from vending.core.vends import Vend

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY, session_id TEXT NOT NULL, slot INTEGER NOT NULL,
    product_id TEXT NOT NULL, amount INTEGER NOT NULL, currency TEXT NOT NULL, qr_url TEXT NOT NULL,
    expires_at INTEGER NOT NULL, offline INTEGER NOT NULL, created_at REAL NOT NULL,
    closed_at REAL, close_reason TEXT);
CREATE TABLE IF NOT EXISTS payments (
    txn_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, amount INTEGER NOT NULL, currency TEXT NOT NULL,
    provider TEXT NOT NULL, payer TEXT, message TEXT NOT NULL, disposition TEXT NOT NULL,
    received_at REAL NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS one_accepted_payment_per_order
    ON payments(order_id) WHERE disposition = 'dispense';
CREATE INDEX IF NOT EXISTS payments_by_payer ON payments(payer);
CREATE TABLE IF NOT EXISTS vends (
    vend_id TEXT PRIMARY KEY, order_id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    slot INTEGER NOT NULL, txn_id TEXT, amount INTEGER NOT NULL, currency TEXT NOT NULL,
    payer_new INTEGER NOT NULL, expires INTEGER, created_at REAL NOT NULL,
    state TEXT NOT NULL, boot INTEGER, sent_at REAL, result TEXT, finished_at REAL);
CREATE TABLE IF NOT EXISTS outbox (
    event_id TEXT PRIMARY KEY, type TEXT NOT NULL, fields TEXT NOT NULL, created_at REAL NOT NULL,
    acked_at REAL);
CREATE INDEX IF NOT EXISTS outbox_unacked ON outbox(acked_at) WHERE acked_at IS NULL;
CREATE TABLE IF NOT EXISTS commands (
    cmd_id TEXT PRIMARY KEY, name TEXT NOT NULL, ok INTEGER, error TEXT, event_id TEXT,
    at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class JournalError(Exception):
    pass


class Journal:
    def __init__(self, path: str | Path, *, read_only: bool = False):
        self.path = Path(path)
        self._now = 0.0
        if read_only:
            # For operators' tools beside the running daemon: no schema, no pragmas, no writes.
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so one Persist is one transaction.
        # check_same_thread=False: a Daemon is built in one thread (start-up recovery reads the
        # journal) and run in another, as fleet simulations do. Use is never concurrent: only
        # the owner thread touches the journal once the daemon runs.
        self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=10,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # ---- writes --------------------------------------------------------------------------

    def apply(self, ops: tuple) -> None:
        """Commit all ops atomically; returns only once they are on disk (WAL + FULL sync)."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                _APPLY[type(op)](self, op)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _save_order(self, o: A.SaveOrder) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO orders (order_id, session_id, slot, product_id, amount, currency,"
            " qr_url, expires_at, offline, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (o.order_id, o.session_id, o.slot, o.product_id, o.amount, o.currency, o.qr_url,
             o.expires_at, int(o.offline), o.created_at))

    def _close_order(self, o: A.CloseOrder) -> None:
        self.db.execute("UPDATE orders SET closed_at = ?, close_reason = ? WHERE order_id = ?"
                        " AND closed_at IS NULL", (o.closed_at, o.reason, o.order_id))

    def _save_payment(self, p: A.SavePayment) -> None:
        self.db.execute(
            "INSERT INTO payments (txn_id, order_id, amount, currency, provider, payer, message,"
            " disposition, received_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (p.txn_id, p.order_id, p.amount, p.currency, p.provider, p.payer,
             json.dumps(p.message, ensure_ascii=False), p.disposition, p.received_at))

    def _save_vend(self, v: A.SaveVend) -> None:
        self.db.execute(
            "INSERT INTO vends (vend_id, order_id, kind, slot, txn_id, amount, currency, payer_new,"
            " expires, created_at, state) VALUES (?,?,?,?,?,?,?,?,?,?, 'pending')",
            (v.vend_id, v.order_id, v.kind, v.slot, v.txn_id, v.amount, v.currency,
             int(v.payer_new), v.expires, v.created_at))

    def _vend_sent(self, v: A.VendSent) -> None:
        self._update_vend(v.vend_id, "UPDATE vends SET state = 'sent', boot = ?, sent_at = ?"
                          " WHERE vend_id = ? AND state IN ('pending', 'sent')", (v.boot, v.sent_at))

    def _vend_finished(self, v: A.VendFinished) -> None:
        self._update_vend(v.vend_id, "UPDATE vends SET state = 'finished', result = ?, finished_at = ?"
                          " WHERE vend_id = ? AND state != 'finished'", (v.result, v.finished_at))

    def _update_vend(self, vend_id: str, sql: str, args: tuple) -> None:
        if self.db.execute(sql, (*args, vend_id)).rowcount != 1:
            raise JournalError(f"vend {vend_id} is not in a state that allows this change")

    def _save_event(self, e: A.SaveEvent) -> None:
        self.db.execute("INSERT INTO outbox (event_id, type, fields, created_at) VALUES (?,?,?,?)",
                        (e.event_id, e.type, json.dumps(e.fields, ensure_ascii=False), self._clock()))

    def _event_acked(self, e: A.EventAcked) -> None:
        self.db.execute("UPDATE outbox SET acked_at = ? WHERE event_id = ? AND acked_at IS NULL",
                        (e.acked_at, e.event_id))

    def _save_command(self, c: A.SaveCommand) -> None:
        self.db.execute(
            "INSERT INTO commands (cmd_id, name, ok, error, event_id, at) VALUES (?,?,?,?,?,?)"
            " ON CONFLICT(cmd_id) DO UPDATE SET ok = excluded.ok, error = excluded.error,"
            " event_id = excluded.event_id, at = excluded.at",
            (c.cmd_id, c.name, None if c.ok is None else int(c.ok), c.error, c.event_id, c.at))

    def _save_setting(self, s: A.SaveSetting) -> None:
        self.db.execute("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key)"
                        " DO UPDATE SET value = excluded.value", (s.key, json.dumps(s.value)))

    def _clock(self) -> float:
        return self._now

    def set_clock(self, now: float) -> None:
        """The shell's time for rows whose op carries none (the outbox's created_at)."""
        self._now = now

    # ---- reads for the core's decisions ------------------------------------------------

    def order_facts(self, order_id: str) -> OrderFacts | None:
        row = self.db.execute(
            "SELECT order_id, session_id, slot, product_id, amount, currency, closed_at FROM orders"
            " WHERE order_id = ?", (order_id,)).fetchone()
        if row is None:
            return None
        paid = self.db.execute("SELECT txn_id FROM payments WHERE order_id = ? AND"
                               " disposition = 'dispense'", (order_id,)).fetchone()
        return OrderFacts(*row, paid_txn=paid[0] if paid else None)

    def txn_seen(self, txn_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM payments WHERE txn_id = ?", (txn_id,)).fetchone() is not None

    def payer_seen(self, payer: str | None) -> bool:
        if payer is None:
            return True
        return self.db.execute("SELECT 1 FROM payments WHERE payer = ? AND disposition = 'dispense'",
                               (payer,)).fetchone() is not None

    def command_outcome(self, cmd_id: str) -> tuple[bool | None, str | None] | None:
        row = self.db.execute("SELECT ok, error FROM commands WHERE cmd_id = ?", (cmd_id,)).fetchone()
        if row is None:
            return None
        return (None if row[0] is None else bool(row[0])), row[1]

    def unfinished_vends(self) -> list[Vend]:
        rows = self.db.execute(
            "SELECT vend_id, order_id, kind, slot, txn_id, amount, currency, payer_new, created_at,"
            " expires, state, boot FROM vends WHERE state != 'finished' ORDER BY created_at").fetchall()
        return [Vend(vend_id=r[0], order_id=r[1], kind=r[2], slot=r[3], txn_id=r[4], amount=r[5],
                     currency=r[6], payer_new=bool(r[7]), created_at=r[8], expires=r[9],
                     state=r[10], boot=r[11]) for r in rows]

    def open_orders(self) -> list[str]:
        """Orders whose session was live when the daemon stopped: neither closed nor paid."""
        rows = self.db.execute(
            "SELECT order_id FROM orders o WHERE closed_at IS NULL AND NOT EXISTS (SELECT 1 FROM"
            " payments p WHERE p.order_id = o.order_id AND p.disposition = 'dispense')").fetchall()
        return [r[0] for r in rows]

    def settings(self) -> dict:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM settings")}

    def unacked_events(self) -> list[tuple[str, str, dict]]:
        rows = self.db.execute("SELECT event_id, type, fields FROM outbox WHERE acked_at IS NULL"
                               " ORDER BY created_at, rowid").fetchall()
        return [(r[0], r[1], json.loads(r[2])) for r in rows]

    # ---- reads for operators, tests and the invariant checker --------------------------

    def rows(self, table: str) -> list[dict]:
        if table not in ("orders", "payments", "vends", "outbox", "commands", "settings"):
            raise JournalError(f"no table {table!r} in the journal")
        cur = self.db.execute(f"SELECT * FROM {table} ORDER BY rowid")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


_APPLY = {
    A.SaveOrder: Journal._save_order,
    A.CloseOrder: Journal._close_order,
    A.SavePayment: Journal._save_payment,
    A.SaveVend: Journal._save_vend,
    A.VendSent: Journal._vend_sent,
    A.VendFinished: Journal._vend_finished,
    A.SaveEvent: Journal._save_event,
    A.EventAcked: Journal._event_acked,
    A.SaveCommand: Journal._save_command,
    A.SaveSetting: Journal._save_setting,
}
