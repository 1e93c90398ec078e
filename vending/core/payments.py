"""The money decision for one authentic payment: a pure function of journaled facts.

Order of the checks matters. A redelivery is recognised before anything else so that it never
produces a second event; a wrong amount is refunded before we look at whether the order was
already paid, so a mismatching second payment is still refunded in full.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from vending import messages as msg
from vending.core import actions as A
from vending.core import events as E
from vending.core.events import PaymentIn
from vending.core.state import Phase
from vending.core.vends import Vend

if TYPE_CHECKING:
    from vending.core.machine import Machine

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


def on_payment(m: "Machine", ev: E.PaymentIn, now: float, out: list) -> None:
    pay, order = ev.payment, ev.order
    slot_ok = (order is not None and m.board.online and not m.board.door_open
               and m.catalog.unavailable_reason(order.slot) is None)
    decision = decide(
        ev, live_order_id=m.live_order_id, now=now, grace=m.s.late_payment_grace,
        machine_free=m.phase in (Phase.IDLE, Phase.REPORTING) and not m.stopping,
        slot_ok=slot_ok)
    if decision == REDELIVERY:
        if ev.token is not None:
            out.append(A.AckMessage(ev.token))
        return
    ops: list = [A.SavePayment(pay.txn_id, pay.order_id, pay.amount, pay.currency, pay.provider,
                               pay.payer, pay.message, decision, now)]
    publish: list = []
    if decision == DISPENSE:
        vend = Vend(vend_id=msg.vend_id_for(m.s.machine_id, order.order_id),
                    order_id=order.order_id, kind="paid", slot=order.slot, txn_id=pay.txn_id,
                    amount=pay.amount, currency=pay.currency,
                    payer_new=pay.payer is not None and not ev.payer_seen,
                    created_at=now, live=True)
        ops.append(A.SaveVend(vend.vend_id, vend.order_id, "paid", vend.slot, vend.txn_id,
                              vend.amount, vend.currency, vend.payer_new, now))
        m.vends[vend.vend_id] = vend
        m.session, m.report = None, None
        m.phase = Phase.DISPENSING
    else:
        fields = msg.vend_result(
            event_id=m._new_id("e"), order_id=pay.order_id, vend_id=None,
            slot=order.slot if order else None, amount=pay.amount, currency=pay.currency,
            txn_id=pay.txn_id, result=decision, dispensed=False, refund=True)
        ops.append(A.SaveEvent(fields["event_id"], "vend_result", fields))
        publish.append(A.Publish(fields["event_id"], "vend_result", fields))
    out.append(A.Persist(tuple(ops)))
    if ev.token is not None:
        out.append(A.AckMessage(ev.token))
    out.extend(publish)


def on_payment_rejected(m: "Machine", ev: E.PaymentRejectedIn, now: float, out: list) -> None:
    fields = msg.payment_rejected(event_id=m._new_id("e"), order_id=ev.order_id,
                                         reason=ev.reason)
    m._emit(out, "payment_rejected", fields, token=ev.token)
