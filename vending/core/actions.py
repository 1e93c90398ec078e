"""Outputs of the sans-I/O core, carried out by the shell strictly in order.

`Persist` is a barrier: the shell commits it (fsync) before it runs anything listed after it.
That ordering is what keeps invariant 4 of the contract: the state that decides a dispense or a
refund is on disk before the action it guards.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vending.display.view import View


# ---- journal operations, applied together in one transaction by a Persist ----

@dataclass(frozen=True)
class SaveOrder:
    order_id: str
    session_id: str
    slot: int
    product_id: str
    amount: int
    currency: str
    qr_url: str
    expires_at: int
    offline: bool
    created_at: float


@dataclass(frozen=True)
class CloseOrder:
    order_id: str
    closed_at: float
    reason: str                 # cancel | timeout | board_offline | door_open | restart | command


@dataclass(frozen=True)
class SavePayment:
    """Every authentic payment, whatever became of it: the txn_id is never processed twice."""
    txn_id: str
    order_id: str
    amount: int
    currency: str
    provider: str
    payer: str | None
    message: dict
    disposition: str            # dispense | duplicate | mismatch | late
    received_at: float


@dataclass(frozen=True)
class SaveVend:
    vend_id: str
    order_id: str               # the order id, or the cmd_id of a free vend
    kind: str                   # paid | free
    slot: int
    txn_id: str | None
    amount: int
    currency: str
    payer_new: bool
    created_at: float
    expires: int | None = None  # free vends: the command's expiry, judged at the motor start


@dataclass(frozen=True)
class VendSent:
    """Written before the VEND line: from here on the board may have acted."""
    vend_id: str
    boot: int
    sent_at: float


@dataclass(frozen=True)
class VendFinished:
    vend_id: str
    result: str                 # a §1 dispense result, uncertain, board_offline, expired
    finished_at: float


@dataclass(frozen=True)
class SaveEvent:
    """An `events` message into the durable outbox; it is republished until acked."""
    event_id: str
    type: str
    fields: dict


@dataclass(frozen=True)
class EventAcked:
    event_id: str
    acked_at: float


@dataclass(frozen=True)
class SaveCommand:
    cmd_id: str
    name: str
    ok: bool | None             # None while a free vend is still to run
    error: str | None
    event_id: str | None
    at: float


@dataclass(frozen=True)
class SaveSetting:
    key: str                    # prices | promos | disabled_slots
    value: Any


@dataclass(frozen=True)
class Persist:
    ops: tuple


# ---- effects on the outside world ----

@dataclass(frozen=True)
class AckMessage:
    """PUBACK an MQTT message; only ever listed after the Persist that journaled it."""
    token: Any


@dataclass(frozen=True)
class Publish:
    event_id: str
    type: str
    fields: dict


@dataclass(frozen=True)
class PublishStatus:
    state: str                  # online | out_of_service


@dataclass(frozen=True)
class PublishTelemetry:
    fields: dict


@dataclass(frozen=True)
class CreateOrder:
    session_id: str
    slot: int
    product_id: str
    amount: int
    currency: str


@dataclass(frozen=True)
class MintOfflineOrder:
    session_id: str
    slot: int
    amount: int
    currency: str


@dataclass(frozen=True)
class CancelOrder:
    order_id: str


@dataclass(frozen=True)
class FetchOrder:
    order_id: str


@dataclass(frozen=True)
class SendVend:
    vend_id: str
    slot: int
    boot: int | None = None     # the boot it was journaled for: the link refuses it after a reboot


@dataclass(frozen=True)
class QueryVend:
    vend_id: str


@dataclass(frozen=True)
class RefreshSlots:
    pass


@dataclass(frozen=True)
class Show:
    view: View


@dataclass(frozen=True)
class Log:
    level: str
    msg: str
    fields: dict
