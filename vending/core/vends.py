"""Dispenses in flight, and the rules that decide when a VEND may (again) go on the wire.

A vend moves pending -> sent -> running -> finished. `pending` means journaled but never
written to the serial line, so giving up on it (board offline, expired free vend) is safe.
From `sent` on, the board may have acted, and the only ways out are the board's own answer or
`uncertain`.
"""
from __future__ import annotations

from dataclasses import dataclass

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
