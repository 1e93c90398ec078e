"""Inputs of the sans-I/O core. Every event is an immutable fact; the shell supplies the time."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vending.messages import Command, Payment


@dataclass(frozen=True)
class BoardUp:
    """The link answered HELLO (first time, or again after a drop or a reboot)."""
    boot: int
    slots: int


@dataclass(frozen=True)
class BoardDown:
    reason: str


@dataclass(frozen=True)
class BoardBoot:
    """The board reported a boot number in a POLL/STATUS reply (a reboot if it changed)."""
    boot: int


@dataclass(frozen=True)
class SlotsSeen:
    empty: frozenset[int]
    disabled: frozenset[int]


@dataclass(frozen=True)
class BoardStatus:
    """A STATUS reply: temperature for telemetry, and door and boot as a cross-check."""
    boot: int
    door_open: bool
    temp: int | None


@dataclass(frozen=True)
class KeyPressed:
    slot: int


@dataclass(frozen=True)
class CancelPressed:
    pass


@dataclass(frozen=True)
class DoorChanged:
    open: bool


@dataclass(frozen=True)
class BoardFault:
    code: str


@dataclass(frozen=True)
class VendReply:
    """A VEND or VSTAT reply, or a `kind=vend` event: what the board says about a dispense."""
    vend_id: str
    state: str                 # running | done | unknown
    result: str | None = None
    boot: int | None = None    # for VSTAT: the boot STATUS reported right after it


@dataclass(frozen=True)
class VendRefused:
    """ERR to a VEND: the board did not act (a known id would have been answered instead)."""
    vend_id: str
    code: str


@dataclass(frozen=True)
class VendLost:
    """The link went down with a VEND or VSTAT in flight: it may or may not have reached the board."""
    vend_id: str


@dataclass(frozen=True)
class OrderCreated:
    session_id: str
    order_id: str
    qr_url: str
    amount: int
    currency: str
    expires_at: int
    offline: bool = False
    slot: int = 0


@dataclass(frozen=True)
class OrderFailed:
    session_id: str
    kind: str                  # unreachable | refused | bad_order
    detail: str = ""


@dataclass(frozen=True)
class CancelAnswered:
    order_id: str
    state: str                 # cancelled | paid | unreachable


@dataclass(frozen=True)
class OrderFetched:
    """A reconciliation GET came back; a payment found there arrives separately as PaymentIn."""
    order_id: str
    state: str                 # pending | paid | cancelled | expired | unreachable


@dataclass(frozen=True)
class OrderFacts:
    """What the journal knows about an order, looked up by the shell for a payment decision."""
    order_id: str
    session_id: str
    slot: int
    product_id: str
    amount: int
    currency: str
    closed_at: float | None     # when its session closed (cancel, timeout, restart); None while open
    paid_txn: str | None        # txn_id of the payment already accepted for it


@dataclass(frozen=True)
class PaymentIn:
    payment: Payment
    token: Any                  # MQTT ack token, or None when it came from a reconciliation GET
    txn_seen: bool              # this txn_id is already in the journal: a redelivery
    order: OrderFacts | None
    payer_seen: bool            # for the operator's "follow us" prompt to first-time payers


@dataclass(frozen=True)
class PaymentRejectedIn:
    token: Any
    order_id: str | None
    reason: str
    detail: str


@dataclass(frozen=True)
class CommandIn:
    command: Command
    token: Any
    prior: tuple[bool, str | None] | None   # the outcome if this cmd_id was handled before


@dataclass(frozen=True)
class CommandRejectedIn:
    token: Any
    detail: str


@dataclass(frozen=True)
class AckIn:
    event_id: str
    ts: int
    token: Any


@dataclass(frozen=True)
class MqttUp:
    pass


@dataclass(frozen=True)
class MqttDown:
    reason: str


@dataclass(frozen=True)
class ClockCorrected:
    """The shell's correction for comparisons with the cloud's times changed (vending.clock)."""
    offset: float


@dataclass(frozen=True)
class ClockSkew:
    """The orders API's Date header says our clock is off by this many seconds (after every
    answer; the core alerts when it is over a minute)."""
    offset: float


@dataclass(frozen=True)
class Tick:
    pass


@dataclass(frozen=True)
class Shutdown:
    """SIGTERM: stop taking sales, let a running vend finish if it can."""
    pass
