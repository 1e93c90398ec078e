"""Dispenses in flight, and the rules that decide when a VEND may (again) go on the wire.

A vend moves pending -> sent -> running -> finished. `pending` means journaled but never
written to the serial line, so giving up on it (board offline, expired free vend) is safe.
From `sent` on, the board may have acted, and the only ways out are the board's own answer or
`uncertain`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vending import messages as msg
from vending.core import actions as A
from vending.core import events as E
from vending.core.state import Phase, Report

if TYPE_CHECKING:
    from vending.core.machine import Machine

PENDING = "pending"
SENT = "sent"
RUNNING = "running"


@dataclass
class Vend:
    vend_id: str
    order_id: str               # order id, or the cmd_id of a free vend
    kind: str                   # paid | free
    slot: int
    txn_id: str | None
    amount: int
    currency: str
    payer_new: bool
    created_at: float
    expires: int | None = None
    state: str = PENDING
    boot: int | None = None     # the board's boot when the VEND was journaled as sent
    live: bool = False          # a customer is at the machine waiting for it
    waiting: bool = False       # a VEND/VSTAT for it is with the board link now
    last_query: float = 0.0
    retry_at: float = 0.0       # after a refusal (busy, door open, fault), not before this

    @property
    def on_board(self) -> bool:
        return self.state in (SENT, RUNNING)


def after_unknown(vend: Vend, confirmed_boot: int | None) -> str:
    """The board answered `unknown` for this vend. Decide between resending and `uncertain`.

    `confirmed_boot` is the boot the board reported *after* the VSTAT (the shell sends STATUS
    right behind it). If it is the boot we journaled before sending, the board has not rebooted
    since, so `unknown` means our VEND never arrived and sending it now is the first dispense.
    Anything else, including not knowing, means the outcome may have been lost in a reboot.
    """
    if vend.state == SENT and confirmed_boot is not None and confirmed_boot == vend.boot:
        return "resend"
    return "uncertain"


def refund_due(kind: str, result: str, refund_uncertain: bool) -> tuple[bool, bool]:
    """(dispensed, refund) for a finished vend, per contract §2 `vend_result`."""
    dispensed = result == "ok"
    if kind == "free" or dispensed:
        return dispensed, False
    if result == "uncertain":
        return False, refund_uncertain
    return False, True


# ---- the shell-facing side: what the core does with vends --------------------------------

def pump(m: "Machine", now: float, out: list) -> None:
    if not m.board.online or m.board.boot is None:
        return
    for v in m.vends.values():
        if v.on_board:
            if not v.waiting and (v.state == SENT or now - v.last_query >= m.s.vstat_interval):
                query(m, v, now, out)
            return  # one dispense on the board at a time
    if m.board.door_open or m.stopping:
        return
    # A paying customer's dispense goes first; the operator's gift waits until nobody is
    # in the middle of a sale, so it never drops into a paying customer's tray.
    queue = sorted(m.vends.values(), key=lambda v: (v.kind != "paid", v.created_at))
    for v in queue:
        if v.retry_at > now:
            continue
        if v.kind == "free":
            if v.expires is not None and m.wall(now) > v.expires:
                finish(m, v, "expired", now, out)   # judged at the motor start (§2)
                continue
            if not v.live and m.phase not in (Phase.IDLE, Phase.REPORTING):
                continue
        v.state, v.boot, v.waiting = SENT, m.board.boot, True
        if v.kind == "free" and m.phase in (Phase.IDLE, Phase.REPORTING):
            v.live, m.report, m.phase = True, None, Phase.DISPENSING
        out.append(A.Persist((A.VendSent(v.vend_id, v.boot, now),)))
        out.append(A.SendVend(v.vend_id, v.slot, v.boot))
        return


def query(m: "Machine", v: Vend, now: float, out: list) -> None:
    v.waiting, v.last_query = True, now
    out.append(A.QueryVend(v.vend_id))


def on_reply(m: "Machine", ev: E.VendReply, now: float, out: list) -> None:
    v = m.vends.get(ev.vend_id)
    if v is None:
        return
    v.waiting = False
    if ev.state == "unknown" and v.state == PENDING:
        return  # refused earlier, so never on the board: it is sent again in turn
    if ev.state == "running":
        v.state, v.last_query = RUNNING, now
    elif ev.state == "done":
        finish(m, v, ev.result or "timeout", now, out)
    elif ev.state == "unknown":
        if after_unknown(v, ev.boot) == "resend":
            v.waiting = True
            out.append(A.SendVend(v.vend_id, v.slot, v.boot))
        else:
            finish(m, v, "uncertain", now, out)


def on_refused(m: "Machine", ev: E.VendRefused, now: float, out: list) -> None:
    v = m.vends.get(ev.vend_id)
    if v is None:
        return
    v.waiting = False
    # A refusal means the board did not act (a known id is answered, never refused), so
    # the vend is back to pending and may be given up safely.
    # `rebooted`: the link refused to write it because the board rebooted since we
    # journaled it; no VEND with this id ever reached a board, so it is simply resent.
    if ev.code in ("busy", "door_open", "fault", "rebooted"):
        v.state, v.retry_at = PENDING, now + m.s.retry_refused
        return
    finish(m, v, "empty" if ev.code == "bad_slot" else "board_offline", now, out)


def on_lost(m: "Machine", ev: E.VendLost, now: float, out: list) -> None:
    v = m.vends.get(ev.vend_id)
    if v is not None:
        v.waiting = False     # asked again by VSTAT when the link is back


def finish(m: "Machine", v: Vend, result: str, now: float, out: list) -> None:
    del m.vends[v.vend_id]
    ops: list = [A.VendFinished(v.vend_id, result, now)]
    events: list = []
    dispensed, refund = refund_due(v.kind, result, m.s.refund_uncertain)
    if result != "expired":
        fields = msg.vend_result(
            event_id=m._new_id("e"), order_id=v.order_id, vend_id=v.vend_id, slot=v.slot,
            amount=v.amount if v.kind == "paid" else 0, currency=v.currency,
            txn_id=v.txn_id, result=result, dispensed=dispensed, refund=refund)
        events.append(("vend_result", fields))
    if v.kind == "free":
        ok = result == "ok"
        fields = msg.command_result(event_id=m._new_id("e"), cmd_id=v.order_id,
                                           ok=ok, error=None if ok else result)
        ops.append(A.SaveCommand(v.order_id, "free_vend", ok, fields["error"], fields["event_id"], now))
        events.append(("command_result", fields))
    if result == "empty":
        m.catalog.empty = m.catalog.empty | {v.slot}
    if result in ("jam", "no_drop", "timeout"):
        events.append(("alert", msg.alert(
            event_id=m._new_id("e"), code="jam" if result == "jam" else "vend_failed",
            slot=v.slot, detail=f"Slot {v.slot} failed to dispense ({result}).")))
        out.append(A.RefreshSlots())
    if m.catalog.record_outcome(v.slot, result, m.s.slot_failure_limit):
        ops.append(A.SaveSetting("disabled_slots", sorted(m.catalog.auto_disabled)))
        events.append(("alert", msg.alert(
            event_id=m._new_id("e"), code="slot_disabled", slot=v.slot,
            detail=f"Slot {v.slot} disabled after {m.s.slot_failure_limit} failed vends in a row.")))
    for type_, fields in events:
        ops.append(A.SaveEvent(fields["event_id"], type_, fields))
    out.append(A.Persist(tuple(ops)))
    out.extend(A.Publish(f["event_id"], t, f) for t, f in events)
    if v.live and result == "expired":
        m.phase = Phase.IDLE
    elif v.live:
        m.phase = Phase.REPORTING
        m.report = Report(result, v.amount, v.currency, v.slot, refunded=refund,
                             follow=v.payer_new and result == "ok", until=now + m.s.report_seconds)


def give_up_waiting(m: "Machine", now: float, out: list) -> None:
    """A paid vend that could never reach the board in time is refunded: it was never sent."""
    for v in list(m.vends.values()):
        if v.state == PENDING and v.kind == "paid" and now - v.created_at > m.s.late_payment_grace:
            # `late`: a payment from before a restart whose customer has surely gone;
            # `board_offline`: the board could not take it in time.
            usable = m.board.online and not m.board.door_open
            finish(m, v, "late" if usable and not v.live else "board_offline", now, out)
