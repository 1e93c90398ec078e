"""The money decision for one authentic payment: a pure function of journaled facts.

Order of the checks matters. A redelivery is recognised before anything else so that it never
produces a second event; a wrong amount is refunded before we look at whether the order was
already paid, so a mismatching second payment is still refunded in full.
"""
from __future__ import annotations

from vending.core.events import PaymentIn

REDELIVERY = "redelivery"
DISPENSE = "dispense"
LATE = "late"
MISMATCH = "mismatch"
DUPLICATE = "duplicate"


def decide(p: PaymentIn, *, live_order_id: str | None, machine_free: bool, slot_ok: bool,
           now: float, grace: float) -> str:
    pay, order = p.payment, p.order
    if p.txn_seen:
        return REDELIVERY
    if order is None:
        return LATE
    if pay.amount != order.amount or pay.currency != order.currency:
        return MISMATCH
    if order.paid_txn is not None:
        return DUPLICATE
    if order.order_id == live_order_id:
        return DISPENSE
    # The session closed (timeout, cancel, restart) but the customer may still be standing
    # there: serve it if nothing else is going on and it is recent, otherwise refund.
    closed_at = order.closed_at if order.closed_at is not None else now
    if machine_free and slot_ok and now - closed_at <= grace:
        return DISPENSE
    return LATE
