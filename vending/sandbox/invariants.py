"""The money-safety checker (CONTRACT §5): the board's dispense ledger, the cloud's records and the
journal, read side by side after a chaos run.

Three independent witnesses, on purpose:
- the emulator's ledger is the physics (every motor start and whether a product fell);
- the sandbox cloud's records are the money (every payment it published, every event it stored
  and acked);
- the daemon's journal says why it did what it did, and is used for evidence and attribution.

A motor start is attributed to its order without asking the daemon: a paid vend's id is
`vend_id_for(machine_id, order_id)` and a free vend's `vend_id_for(..., cmd_id, free_vend=True)`
(CONTRACT §1 "derived from the paid order"), so it can be recomputed from the cloud's orders and
commands. A payment is "verified" when its HMAC verifies under the machine key, it names this
machine and its amount is an integer: the checker decides that itself (not with the daemon's
parser), so a parser that let a forgery through would be caught, not agreed with.

Physics, not violations: a power cycle during a vend leaves an `interrupted` ledger entry (or an
`ok` one when the product fell anyway, `power_cycle(product_fell=True)`); the daemon then
reports `uncertain`, refunded under the default policy. Those are counted on their own.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from vending import signing
from vending.messages import vend_id_for

INVARIANTS = {
    "I1": "no dispense without a verified payment (exact amount) or a free_vend command",
    "I2": "at most one motor start per order / per free_vend cmd_id / per vend_id",
    "I3": "every verified payment ends in exactly one acked vend_result, dispensed or refunded",
    "I4": "no refund for a product that fell (uncertain excepted, per policy)",
    "I5": "an inauthentic payment never leads to a dispense or a vend_result, and is reported",
    "I6": "every journaled event reaches the cloud and is acked (the outbox drains)",
}


@dataclass(frozen=True)
class Violation:
    invariant: str          # a key of INVARIANTS
    message: str
    evidence: dict = field(default_factory=dict)

    def __str__(self) -> str:
        ev = "; ".join(f"{k}={v!r}" for k, v in self.evidence.items())
        return f"[{self.invariant}] {self.message} | {ev}"


@dataclass
class CheckReport:
    counts: Counter = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def table(self, title: str = "invariants checked") -> str:
        return format_table(title, self.counts)

    def summary(self, limit: int = 20) -> str:
        lines = [self.table()]
        by_inv = Counter(v.invariant for v in self.violations)
        lines.append(f"violations: {len(self.violations)} "
                     + " ".join(f"{k}={n}" for k, n in sorted(by_inv.items())))
        lines += [f"  {v}" for v in self.violations[:limit]]
        if len(self.violations) > limit:
            lines.append(f"  ... {len(self.violations) - limit} more")
        return "\n".join(lines)


def format_table(title: str, counts: dict) -> str:
    if not counts:
        return f"{title}: (none)"
    width = max(len(k) for k in counts)
    rows = [f"{title}", f"  {'-' * (width + 10)}"]
    rows += [f"  {k:<{width}}  {counts[k]:>8}" for k in sorted(counts)]
    return "\n".join(rows)


@dataclass
class Evidence:
    """Everything the checker reads; `from_rig` gathers it from a running (quiesced) Rig."""
    machine_id: str
    key: bytes
    ledger: list                    # firmware_bridge.board.LedgerEntry
    cloud_payments: list[dict]      # every payment published, forged ones included
    cloud_orders: list[dict]
    cloud_commands: list[dict]
    cloud_events: list[dict]        # distinct events (first delivery of each event_id)
    acked: set[str]
    journal_payments: list[dict]
    journal_vends: list[dict]
    journal_outbox: list[dict]
    refund_uncertain: bool = True

    @classmethod
    def from_rig(cls, rig: Any) -> "Evidence":
        return cls(
            machine_id=rig.o.machine_id, key=rig.key, ledger=rig.emulator.ledger(),
            cloud_payments=rig.cloud.payments(), cloud_orders=rig.cloud.orders(),
            cloud_commands=rig.cloud.commands(), cloud_events=rig.cloud.events(),
            acked=set(rig.cloud.acked_event_ids()),
            journal_payments=rig.journal_rows("payments"), journal_vends=rig.journal_rows("vends"),
            journal_outbox=rig.journal_rows("outbox"), refund_uncertain=rig.o.refund_uncertain)


def verified_payment(key: bytes, machine_id: str, m: Any) -> bool:
    """The checker's own notion of an authentic payment (see module doc)."""
    return (isinstance(m, dict) and "raw" not in m and signing.verify_payload(key, m)
            and m.get("machine_id") == machine_id and m.get("type") == "payment"
            and type(m.get("amount")) is int and isinstance(m.get("currency"), str)
            and isinstance(m.get("txn_id"), str) and isinstance(m.get("order_id"), str))


def check(ev: Evidence) -> CheckReport:
    rep = CheckReport()
    c, bad = rep.counts, rep.violations.append
    mid = ev.machine_id

    # ---- who is who ----------------------------------------------------------------------
    verified: dict[str, dict] = {}
    forged: list[dict] = []
    for m in ev.cloud_payments:
        if verified_payment(ev.key, mid, m):
            if m["txn_id"] in verified:
                c["payments: redeliveries published (same txn_id)"] += 1
            verified.setdefault(m["txn_id"], m)
        else:
            forged.append(m)
    orders = {o["order_id"]: o for o in ev.cloud_orders}
    free_cmds = {cm["cmd_id"]: cm for cm in ev.cloud_commands if cm.get("name") == "free_vend"}
    vend_owner: dict[str, tuple[str, str]] = {}        # vend_id -> ("paid"|"free", order/cmd id)
    for oid in set(orders) | {p["order_id"] for p in verified.values()}:
        vend_owner[vend_id_for(mid, oid)] = ("paid", oid)
    for cid in free_cmds:
        vend_owner[vend_id_for(mid, cid, free_vend=True)] = ("free", cid)
    paid_by_order: dict[str, list[dict]] = defaultdict(list)
    for p in verified.values():
        paid_by_order[p["order_id"]].append(p)
    jvends = {v["vend_id"]: v for v in ev.journal_vends}
    jpay = {p["txn_id"]: p for p in ev.journal_payments}
    results = [e for e in ev.cloud_events if e.get("type") == "vend_result"]
    results_by_txn: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        results_by_txn[r.get("txn_id")].append(r)
    c["payments: verified (distinct txn_id)"] = len(verified)
    c["payments: inauthentic published"] = len(forged)

    # ---- the ledger: I1 and I2 ---------------------------------------------------------
    starts: dict[str, list] = defaultdict(list)
    fell: dict[str, int] = Counter()
    for e in ev.ledger:
        if e.kind != "vend":
            c["ledger: technician tests"] += 1
            continue
        c["ledger: motor starts"] += 1
        c[f"ledger: result {e.result}"] += 1
        starts[e.vend_id].append(e)
        if e.result == "ok":
            fell[e.vend_id] += 1
    for vend_id, entries in starts.items():
        c["I2: vend_ids checked"] += 1
        if len(entries) > 1:
            bad(Violation("I2", "more than one motor start for one vend_id", {
                "vend_id": vend_id, "owner": vend_owner.get(vend_id),
                "ledger": [_le(e) for e in entries], "journal_vend": jvends.get(vend_id)}))
        owner = vend_owner.get(vend_id)
        c["I1: motor starts attributed"] += 1
        if owner is None:
            bad(Violation("I1", "motor start for a vend_id no order or free_vend explains", {
                "vend_id": vend_id, "ledger": [_le(e) for e in entries],
                "journal_vend": jvends.get(vend_id)}))
            continue
        kind, oid = owner
        if kind == "free":
            c["I1: free vends started"] += 1
            continue
        order = orders.get(oid)
        exact = [p for p in paid_by_order.get(oid, ())
                 if order is not None and order.get("amount") is not None
                 and (p["amount"], p["currency"]) == (order["amount"], order["currency"])]
        if not exact:
            bad(Violation("I1", "motor start for an order without a verified exact payment", {
                "order_id": oid, "vend_id": vend_id, "order": _brief_order(order),
                "payments": [_brief_pay(p) for p in paid_by_order.get(oid, ())],
                "ledger": [_le(e) for e in entries], "journal_vend": jvends.get(vend_id)}))
            continue
        jv = jvends.get(vend_id)
        if jv is None or jv.get("txn_id") not in {p["txn_id"] for p in exact}:
            bad(Violation("I1", "the journal does not tie this motor start to a verified payment", {
                "order_id": oid, "vend_id": vend_id, "journal_vend": jv,
                "verified_txns": [p["txn_id"] for p in exact]}))
        elif (jpay.get(jv["txn_id"]) or {}).get("disposition") != "dispense":
            bad(Violation("I1", "motor start for a payment the journal did not accept", {
                "vend_id": vend_id, "journal_payment": jpay.get(jv["txn_id"])}))
    # (per order / cmd_id is the same check: a vend_id is a pure function of its owner)

    # ---- every verified payment: I3 and I4 ----------------------------------------------
    dispensed_per_order = Counter()
    for txn, p in verified.items():
        c["I3: payments checked"] += 1
        rs = results_by_txn.get(txn, [])
        ev_ids = {r["event_id"] for r in rs}
        evidence = {"txn_id": txn, "order_id": p["order_id"], "amount": p["amount"],
                    "journal_payment": _brief_jpay(jpay.get(txn)), "results": rs}
        if not ev_ids:
            bad(Violation("I3", "verified payment has no vend_result (dropped)", evidence))
            continue
        if len(ev_ids) > 1:
            bad(Violation("I3", "verified payment has more than one vend_result", evidence))
        r = rs[0]
        c[f"results: {r['result']}"] += 1
        if not ev_ids & ev.acked:
            bad(Violation("I3", "vend_result never acked by the cloud", evidence))
        if (r.get("order_id"), r.get("amount"), r.get("currency")) != (
                p["order_id"], p["amount"], p["currency"]):
            bad(Violation("I3", "vend_result names another order or amount than the payment",
                          evidence))
        dispensed, refund = r.get("dispensed") is True, r.get("refund") is True
        if dispensed and refund:
            bad(Violation("I3", "vend_result both dispensed and refunded", evidence))
        elif not dispensed and not refund:
            if r["result"] == "uncertain" and not ev.refund_uncertain:
                c["policy: uncertain, not refunded"] += 1
            else:
                bad(Violation("I3", "payment neither dispensed nor refunded", evidence))
        vend_id = r.get("vend_id")
        fell_n = fell.get(vend_id, 0) if vend_id else 0
        if dispensed:
            dispensed_per_order[p["order_id"]] += 1
            if vend_id != vend_id_for(mid, p["order_id"]) or fell_n == 0:
                bad(Violation("I3", "reported dispensed but no product fell (paid, no product, "
                              "no refund)", {**evidence, "ledger": _entries(starts, vend_id)}))
        if refund:
            c["I4: refunds checked"] += 1
            if fell_n:
                if r["result"] == "uncertain":
                    c["policy: uncertain refunded although the product fell"] += 1
                else:
                    bad(Violation("I4", "refund for a product that fell", {
                        **evidence, "ledger": _entries(starts, vend_id)}))
        if r["result"] == "uncertain":
            c["physics: uncertain outcomes"] += 1
            if any(e.result == "interrupted" for e in starts.get(vend_id, ())):
                c["physics: uncertain after an interrupted motor run"] += 1
        if not dispensed and not refund and fell_n == 0 and r["result"] == "uncertain":
            c["policy: uncertain, customer neither served nor refunded"] += 1
        if not dispensed and r["result"] != "uncertain" and fell_n:
            bad(Violation("I4", "a product fell but the result says it did not",
                          {**evidence, "ledger": _entries(starts, vend_id)}))
    for oid, n in dispensed_per_order.items():
        if n > 1:
            bad(Violation("I2", "more than one vend_result dispensed=true for one order",
                          {"order_id": oid, "results": n}))
    for r in results:
        t = r.get("txn_id")
        if t is None:
            c["results: free vends"] += 1
            if r.get("amount") != 0 or r.get("refund"):
                bad(Violation("I3", "a free vend result carries money", {"result": r}))
        elif t not in verified:
            bad(Violation("I5", "vend_result for a payment the cloud never made (forged?)",
                          {"result": r, "journal_payment": _brief_jpay(jpay.get(t))}))

    # ---- forgeries: I5 -----------------------------------------------------------------------
    for m in forged:
        c["I5: inauthentic payments checked"] += 1
        t = m.get("txn_id") if isinstance(m, dict) else None
        if t is not None and t not in verified and t in jpay:
            bad(Violation("I5", "an inauthentic payment was journaled as a payment",
                          {"txn_id": t, "journal_payment": _brief_jpay(jpay[t])}))
    rejected = [e for e in ev.cloud_events if e.get("type") == "payment_rejected"]
    c["I5: payment_rejected events"] = len(rejected)
    if len(rejected) < len(forged):
        bad(Violation("I5", "fewer payment_rejected events than inauthentic payments published",
                      {"forged": len(forged), "payment_rejected": len(rejected)}))

    # ---- the outbox: I6 ----------------------------------------------------------------------
    stored = {e["event_id"] for e in ev.cloud_events}
    for row in ev.journal_outbox:
        c["I6: outbox events checked"] += 1
        if row["event_id"] not in stored or row["event_id"] not in ev.acked:
            bad(Violation("I6", "journaled event never stored and acked by the cloud", {
                "event_id": row["event_id"], "type": row["type"], "acked_at": row["acked_at"],
                "stored": row["event_id"] in stored}))
    unfinished = [v for v in ev.journal_vends if v["state"] != "finished"]
    c["journal: vends"] = len(ev.journal_vends)
    if unfinished:
        bad(Violation("I3", "vends still unfinished in the journal after quiescing",
                      {"vends": unfinished}))
    return rep


def _le(e: Any) -> dict:
    return {"vend_id": e.vend_id, "slot": e.slot, "result": e.result, "boot": e.boot}


def _entries(starts: dict, vend_id: str | None) -> list[dict]:
    return [_le(e) for e in starts.get(vend_id, ())] if vend_id else []


def _brief_order(o: dict | None) -> dict | None:
    if o is None:
        return None
    return {k: o.get(k) for k in ("order_id", "slot", "amount", "currency", "state", "offline")}


def _brief_pay(p: dict) -> dict:
    return {k: p.get(k) for k in ("txn_id", "order_id", "amount", "currency", "ts")}


def _brief_jpay(p: dict | None) -> dict | None:
    if p is None:
        return None
    return {k: p.get(k) for k in ("txn_id", "order_id", "amount", "disposition", "received_at")}


def outstanding(ev: Evidence) -> dict[str, list]:
    """What quiescing still waits for: verified payments without an acked vend_result, unacked
    outbox rows and unfinished vends. Empty lists everywhere = settled."""
    acked_txns = {e.get("txn_id") for e in ev.cloud_events
                  if e.get("type") == "vend_result" and e["event_id"] in ev.acked}
    txns = {m["txn_id"] for m in ev.cloud_payments if verified_payment(ev.key, ev.machine_id, m)}
    return {"payments": sorted(txns - acked_txns),
            "outbox": [r["event_id"] for r in ev.journal_outbox if r["acked_at"] is None],
            "vends": [v["vend_id"] for v in ev.journal_vends if v["state"] != "finished"]}

