"""The core's state records: phases, settings and what a session or a board is known to be."""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Phase(enum.Enum):
    IDLE = "idle"
    ORDERING = "ordering"
    AWAITING = "awaiting_payment"
    CANCELLING = "cancelling"
    DISPENSING = "dispensing"
    REPORTING = "reporting"


LIVE = (Phase.ORDERING, Phase.AWAITING, Phase.CANCELLING)


@dataclass(frozen=True)
class Settings:
    machine_id: str
    currency: str
    planogram: dict
    session_timeout: float = 120
    late_payment_grace: float = 60
    refund_uncertain: bool = True
    slot_failure_limit: int = 3
    telemetry_interval: float = 60
    offline_qr: bool = True
    follow_qr_url: str | None = None
    started: float = 0.0
    report_seconds: float = 6       # thank-you / refund screen
    ordering_limit: float = 30      # bounded by the orders client; a guard if an answer never comes
    offline_after: float = 3        # with offline QR on: how long a customer waits for the API
    cancel_wait: float = 10         # how long the CANCELLING screen waits for the cloud's answer
    vstat_interval: float = 5       # belt and braces behind the board's `kind=vend` event
    reconcile_interval: float = 5   # GET the live order this often while MQTT is down
    retry_refused: float = 1        # a VEND refused as busy / door_open / fault is tried again


@dataclass
class Session:
    session_id: str
    slot: int
    product_id: str
    amount: int
    currency: str
    deadline: float
    order_id: str | None = None
    qr_url: str | None = None
    expires_at: int | None = None
    offline: bool = False
    paid_elsewhere: bool = False    # the cloud said "paid" to our cancel: the payment is coming
    minting: bool = False           # an offline order was asked for; the API's answer is now a stray
    last_fetch: float = 0.0


@dataclass
class Report:
    result: str
    amount: int
    currency: str
    slot: int
    refunded: bool
    follow: bool
    until: float


@dataclass
class Board:
    online: bool = False
    boot: int | None = None
    door_open: bool = False
    temp: int | None = None
    fault: str | None = None
    alerted_down: bool = False
