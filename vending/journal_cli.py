"""`vending journal`: what a machine owes, read from its journal while the daemon runs.

The question an operator asks of a machine that misbehaved is "does it hold anybody's money?".
The journal knows: a verified payment whose `vend_result` the cloud has not acked yet is money
still in flight. This command answers from the journal alone, read-only (WAL lets it read beside
the running daemon), so it works with the board unplugged and the 4G link dead.

Exit codes: 0 nothing owed, 5 something is still owed (a payment without its acked result, or a
vend the board may still be running), 1 the journal cannot be read, 2 usage, 78 a bad config.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path

from vending.config import ConfigError, load_config
from vending.journal import Journal

EXIT_OK, EXIT_OWED, EXIT_UNREADABLE, EXIT_USAGE, EXIT_CONFIG = 0, 5, 1, 2, 78


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", metavar="FILE", help="machine config; its `journal` is read")
    where.add_argument("--journal", metavar="PATH", help="the journal database itself")
    parser.add_argument("--last", type=int, default=5, metavar="N",
                        help="also list the last N dispenses (default 5; 0 for none)")
    parser.add_argument("--json", action="store_true", help="one JSON object, for scripts")


def run(args: argparse.Namespace) -> int:
    if args.last < 0:
        return _fail(EXIT_USAGE, f"--last must be 0 or more, not {args.last}")
    if args.config:
        try:
            path = load_config(args.config).journal
        except ConfigError as e:
            for p in e.problems:
                print(p, file=sys.stderr)
            return EXIT_CONFIG
    else:
        path = Path(args.journal)
    if not path.is_file():
        return _fail(EXIT_UNREADABLE, f"no journal at {path}")
    try:
        report = read(path, now=time.time(), last=args.last)
    except sqlite3.DatabaseError as e:
        return _fail(EXIT_UNREADABLE, f"cannot read the journal at {path}: {e}")
    print(json.dumps(report, ensure_ascii=False, sort_keys=True) if args.json else render(report))
    return EXIT_OWED if report["owed"] else EXIT_OK


def read(path: Path, *, now: float, last: int = 5) -> dict:
    """The journal's open money, as plain data. Opened read-only: never a write, never a lock
    the daemon would wait on."""
    journal = Journal(path, read_only=True)
    db = journal.db
    try:
        db.row_factory = sqlite3.Row

        def q(sql: str, *args: object) -> list[dict]:
            return [dict(r) for r in db.execute(sql, args)]

        # A payment is settled once the cloud acked the vend_result carrying its txn_id.
        unsettled = q(
            "SELECT p.txn_id, p.order_id, p.amount, p.currency, p.provider, p.disposition,"
            " p.received_at, v.vend_id, v.slot, v.state AS vend_state, v.result AS vend_result"
            " FROM payments p LEFT JOIN vends v ON v.txn_id = p.txn_id"
            # NOT IN materialises the acked set once: a correlated json_extract per payment
            # would be payments x outbox, seconds on a journal of a few thousand sales.
            " WHERE p.txn_id NOT IN (SELECT json_extract(o.fields, '$.txn_id') FROM outbox o"
            "   WHERE o.type = 'vend_result' AND o.acked_at IS NOT NULL"
            "   AND json_extract(o.fields, '$.txn_id') IS NOT NULL)"
            " ORDER BY p.received_at")
        running = q("SELECT vend_id, order_id, kind, slot, state, boot, sent_at, created_at"
                    " FROM vends WHERE state != 'finished' ORDER BY created_at")
        outbox = q("SELECT event_id, type, created_at FROM outbox WHERE acked_at IS NULL"
                   " ORDER BY created_at, rowid")
        open_orders = journal.open_orders()
        recent = q("SELECT vend_id, order_id, kind, slot, amount, currency, state, result, finished_at"
                   " FROM vends ORDER BY created_at DESC, rowid DESC LIMIT ?", last) if last else []
        totals = q("SELECT (SELECT count(*) FROM payments) AS payments,"
                   " (SELECT count(*) FROM vends WHERE result = 'ok') AS dispensed,"
                   " (SELECT count(*) FROM outbox WHERE type = 'vend_result'"
                   "   AND json_extract(fields, '$.refund')) AS refunds")[0]
    finally:
        journal.close()
    for row in unsettled:
        row["age"] = round(now - row["received_at"], 1)
    for row in running:
        row["age"] = round(now - (row["sent_at"] or row["created_at"]), 1)
    return {
        "journal": str(path),
        "owed": bool(unsettled or running),
        "unsettled_payments": unsettled,
        "unfinished_vends": running,
        "unacked_events": {"count": len(outbox),
                           "oldest_age": round(now - outbox[0]["created_at"], 1) if outbox else None,
                           "types": dict(Counter(e["type"] for e in outbox))},
        "open_orders": open_orders,
        "recent_vends": recent,
        "totals": totals,
    }


def render(r: dict) -> str:
    lines = [f"journal {r['journal']}"]
    t = r["totals"]
    lines.append(f"  {t['payments']} payments, {t['dispensed']} dispensed, {t['refunds']} refunded")
    pays = r["unsettled_payments"]
    lines.append(f"payments not yet settled with the cloud: {len(pays) or 'none'}")
    for p in pays:
        vend = (f"vend {p['vend_id']} slot {p['slot']} {p['vend_state']}"
                + (f" {p['vend_result']}" if p["vend_result"] else "")) if p["vend_id"] else "no vend"
        lines.append(f"  txn {p['txn_id']} order {p['order_id']} {_money(p)} {p['disposition']},"
                     f" {vend}, {p['age']:g} s ago")
    vends = r["unfinished_vends"]
    lines.append(f"vends not finished: {len(vends) or 'none'}")
    for v in vends:
        boot = f" (boot {v['boot']})" if v["boot"] is not None else ""
        lines.append(f"  {v['vend_id']} {v['kind']} slot {v['slot']} {v['state']}{boot}, {v['age']:g} s")
    ev = r["unacked_events"]
    if ev["count"]:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(ev["types"].items()))
        lines.append(f"events the cloud has not acked: {ev['count']} (oldest {ev['oldest_age']:g} s): {kinds}")
    else:
        lines.append("events the cloud has not acked: none")
    if r["open_orders"]:
        lines.append(f"open orders: {', '.join(r['open_orders'])}")
    if r["recent_vends"]:
        lines.append("last dispenses:")
        for v in r["recent_vends"]:
            when = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v["finished_at"]))
                    if v["finished_at"] else "not finished")
            lines.append(f"  {when} {v['vend_id']} {v['kind']} slot {v['slot']} {_money(v)}"
                         f" {v['result'] or v['state']}")
    lines.append("OWES: see above" if r["owed"] else "owes nothing")
    return "\n".join(lines)


def _money(row: dict) -> str:
    return f"{row['amount']} {row['currency']}"


def _fail(code: int, message: str) -> int:
    print(f"vending journal: {message}", file=sys.stderr)
    return code
