"""The one owner of the sale state: a thread that turns adapter messages into core events and
carries out the core's actions in order.

Adapters (board pump, MQTT, orders worker, display) run in their own threads and only ever put
immutable messages into `inbox`. Only this thread touches the core, the journal and the outbox.
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from vending import messages as msg
from vending.core import actions as A
from vending.core import events as E
from vending.core.machine import Machine
from vending.display.view import Cancel, Select
from vending.journal import Journal
from vending.mqtt import Connected, Disconnected, Inbound
from vending import board_adapter, orders_adapter
from vending.clock import ClockCorrection

log = logging.getLogger("vending.controller")


@dataclass(frozen=True)
class Stop:
    """Posted by the signal handler: park safely and leave."""


class Controller:
    def __init__(self, *, machine: Machine, journal: Journal, key: bytes, machine_id: str,
                 board: Any, mqtt: Any, orders: "orders_adapter.OrdersWorker", display: Any,
                 inbox: "queue.Queue[object]", clock: Callable[[], float] = time.time,
                 tick_interval: float = 0.1, republish_interval: float = 15.0,
                 crash_at: str | None = None):
        self.machine, self.journal = machine, journal
        self._key, self._mid = key, machine_id
        self.board, self.mqtt, self.orders, self.display = board, mqtt, orders, display
        self.inbox = inbox
        self._clock = clock
        # How far our clock is off the cloud's, for the core's cross-machine comparisons.
        self._correction = ClockCorrection(clock)
        self._tick_interval = tick_interval
        self._republish_interval = republish_interval
        self._published: dict[str, float] = {}   # event_id -> when we last sent it
        self._last_tick = 0.0
        self._last_republish = 0.0
        self._board_tr = board_adapter.Translator()
        self.stopping_since: float | None = None
        self.done = threading.Event()
        self._crash_at = crash_at

    # ---- the loop ----------------------------------------------------------------------

    def run(self, stop_grace: float = 3.5) -> None:
        try:
            self._feed(E.Tick())
            while True:
                try:
                    item = self.inbox.get(timeout=self._tick_interval)
                except queue.Empty:
                    item = None
                if item is not None:
                    self._dispatch(item)
                now = self._clock()
                if self._correction.check():
                    log.warning("clock: the system clock was set; the correction is dropped")
                    self._feed(E.ClockCorrected(0.0))
                if now - self._last_tick >= self._tick_interval:
                    self._last_tick = now
                    self._feed(E.Tick())
                if now - self._last_republish >= self._republish_interval:
                    self._last_republish = now
                    self._republish(now, only_older_than=self._republish_interval)
                if self.stopping_since is not None and (
                        not self.machine.busy_on_board or now - self.stopping_since > stop_grace):
                    if self.machine.busy_on_board:
                        log.warning("stopping with a vend still running on the board; it is "
                                    "journaled as sent and will be resolved at the next start")
                    return
        finally:
            self.done.set()

    def _dispatch(self, item: object) -> None:
        if isinstance(item, Stop):
            if self.stopping_since is None:
                self.stopping_since = self._clock()
                self._feed(E.Shutdown())
            return
        for ev in self._translate(item):
            self._feed(ev)

    def _feed(self, ev: object) -> None:
        now = self._clock()
        self.journal.set_clock(now)
        for action in self.machine.handle(ev, now):
            self._execute(action, now)
            self._maybe_crash(action)
        self._maybe_crash(ev)

    def _maybe_crash(self, what: object) -> None:
        """Fault injection for the crash tests and the chaos soak (VENDING_CRASH_AT): die by
        SIGKILL right after a named action or event, e.g. `VendSent` (journaled, VEND not yet
        written) or `SendVend` (VEND handed to the board link). Off unless configured."""
        if self._crash_at is None:
            return
        names = {type(what).__name__}
        if isinstance(what, A.Persist):
            names |= {type(op).__name__ for op in what.ops}
        if self._crash_at in names:
            log.warning("crash point %s reached: killing the process", self._crash_at)
            os.kill(os.getpid(), signal.SIGKILL)

    # ---- adapter messages -> core events -------------------------------------------------

    def _translate(self, item: object) -> list:
        if isinstance(item, Inbound):
            return self._inbound(item)
        if isinstance(item, Connected):
            self._published.clear()
            self._republish(self._clock(), only_older_than=None)
            return [E.MqttUp()]
        if isinstance(item, Disconnected):
            return [E.MqttDown(item.reason)]
        if isinstance(item, Select):
            return [E.KeyPressed(item.slot)]
        if isinstance(item, Cancel):
            return [E.CancelPressed()]
        if isinstance(item, orders_adapter.FetchedPayment):
            return [self._payment_event(item.message, token=None)]
        if isinstance(item, E.ClockSkew):
            if self._correction.learn(item.offset):
                log.warning("clock: correcting comparisons with the cloud's times by %+.0f s",
                            self._correction.offset)
                return [item, E.ClockCorrected(self._correction.offset)]
            return [item]
        if isinstance(item, (E.OrderCreated, E.OrderFailed, E.CancelAnswered, E.OrderFetched)):
            return [item]
        return self._board_tr.translate(item)

    def _inbound(self, m: Inbound) -> list:
        if m.kind == "payments":
            return [self._payment_event(m.payload, m.token)]
        if m.kind == "commands":
            try:
                cmd = msg.parse_command(m.payload, self._key, self._mid)
            except msg.Rejected as r:
                return [E.CommandRejectedIn(m.token, r.detail)]
            return [E.CommandIn(cmd, m.token, self.journal.command_outcome(cmd.cmd_id))]
        try:
            ack = msg.parse_ack(m.payload, self._key, self._mid)
        except msg.Rejected as r:
            return [E.CommandRejectedIn(m.token, f"ack: {r.detail}")]
        return [E.AckIn(ack.event_id, ack.ts, m.token)]

    def _payment_event(self, raw: Any, token: Any) -> object:
        try:
            p = msg.parse_payment(raw, self._key, self._mid)
        except msg.Rejected as r:
            log.warning("payment rejected reason=%s order_id=%s detail=%s", r.reason, r.order_id, r.detail)
            return E.PaymentRejectedIn(token, r.order_id, str(r.reason), r.detail)
        j = self.journal
        return E.PaymentIn(payment=p, token=token, txn_seen=j.txn_seen(p.txn_id),
                           order=j.order_facts(p.order_id), payer_seen=j.payer_seen(p.payer))

    # ---- core actions -> effects --------------------------------------------------------

    def _execute(self, a: object, now: float) -> None:
        if isinstance(a, A.Persist):
            self.journal.apply(a.ops)          # returns after the fsync; nothing runs before
            for op in a.ops:
                _log_op(op)
        elif isinstance(a, A.AckMessage):
            self.mqtt.ack(a.token)
        elif isinstance(a, A.Publish):
            self._publish(a.event_id, a.type, a.fields, now)
        elif isinstance(a, A.PublishStatus):
            self.mqtt.publish_status(a.state)
        elif isinstance(a, A.PublishTelemetry):
            self.mqtt.publish_telemetry(msg.build_event(self._key, self._mid, "telemetry", a.fields,
                                                        int(now + self._correction.offset)))
        elif isinstance(a, A.Show):
            self.display.show(a.view)
        elif isinstance(a, A.Log):
            log.log(logging.getLevelName(a.level.upper()), "%s %s", a.msg,
                    " ".join(f"{k}={v}" for k, v in a.fields.items()))
        elif isinstance(a, (A.CreateOrder, A.MintOfflineOrder, A.CancelOrder, A.FetchOrder)):
            self.orders.submit(a, now + self._correction.offset)   # the cloud's time: QR expiry
        elif isinstance(a, (A.SendVend, A.QueryVend, A.RefreshSlots)):
            self._board_tr.submit(self.board, a)
        else:
            raise TypeError(f"the controller has no way to carry out {a!r}")

    def _publish(self, event_id: str, type_: str, fields: dict, now: float) -> None:
        # Re-signed with a fresh ts on every (re)publish, keeping the event_id (contract §2).
        self._published[event_id] = now
        # ts in the cloud's time, as far as we know it: the cloud reads it, the core never does
        self.mqtt.publish_event(msg.build_event(self._key, self._mid, type_, fields,
                                                int(now + self._correction.offset)))

    def _republish(self, now: float, only_older_than: float | None) -> None:
        for event_id, type_, fields in self.journal.unacked_events():
            last = self._published.get(event_id)
            if only_older_than is None or last is None or now - last >= only_older_than:
                self._publish(event_id, type_, fields, now)


def _log_op(op: object) -> None:
    """One line per money decision, after it is durable: what a technician greps for."""
    if isinstance(op, A.SavePayment):
        log.info("payment order_id=%s txn_id=%s amount=%d currency=%s decision=%s",
                 op.order_id, op.txn_id, op.amount, op.currency, op.disposition)
    elif isinstance(op, A.SaveVend):
        log.info("vend queued vend_id=%s order_id=%s slot=%d kind=%s", op.vend_id, op.order_id,
                 op.slot, op.kind)
    elif isinstance(op, A.VendSent):
        log.info("vend sent vend_id=%s boot=%d", op.vend_id, op.boot)
    elif isinstance(op, A.VendFinished):
        log.info("vend finished vend_id=%s result=%s", op.vend_id, op.result)
    elif isinstance(op, A.SaveEvent) and op.type in ("alert", "payment_rejected"):
        log.warning("%s %s", op.type, " ".join(f"{k}={v}" for k, v in op.fields.items()))
    elif isinstance(op, A.SaveCommand) and op.ok is not None:
        log.info("command cmd_id=%s name=%s ok=%s error=%s", op.cmd_id, op.name, op.ok, op.error)
