"""The sale state machine: one customer session at a time, plus the dispenses it owes.

    IDLE --key--> ORDERING --order--> AWAITING --payment--> DISPENSING --result--> REPORTING --> IDLE
                     |                   |--cancel/timeout--> CANCELLING --cancelled--> IDLE
                     |                                             |--paid--> AWAITING (paid elsewhere)
                     |                                             `--key--> ORDERING (a new customer)
                     |--no answer in offline_after--> (offline QR minted) --order--> AWAITING
                     `--cancel / board offline / door open--> IDLE

Customer-facing transitions are in `SESSION_TABLE`; money (payments, vends, commands) is handled
whatever the phase, because a payment never waits for a screen. `handle(event, now)` returns the
actions for the shell, in the order they must happen.
"""
from __future__ import annotations

from vending import messages as msg
from vending.core import actions as A
from vending.core import events as E
from vending.core import payments, screens, vends as dispensing
from vending.core.catalog import Catalog
from vending.core.state import LIVE, Board, Phase, Report, Session, Settings
from vending.core.vends import Vend

__all__ = ["Machine", "Phase", "Settings", "LIVE", "SESSION_TABLE", "GLOBAL_HANDLERS"]


class Machine:
    def __init__(self, settings: Settings, id_prefix: str, now: float):
        self.s = settings
        self.catalog = Catalog(dict(settings.planogram))
        self.board = Board()
        self.phase = Phase.IDLE
        self.session: Session | None = None
        self.report: Report | None = None
        self.vends: dict[str, Vend] = {}
        self.mqtt_up = False
        self.stopping = False
        self._prefix = id_prefix
        self._counter = 0
        self._seq = 0
        self._shown: tuple | None = None
        self._status: str | None = None
        self._skew_alerted: float | None = None
        self.wall_offset = 0.0      # vending.clock: our clock to the cloud's, for its times only
        self._next_telemetry = now

    # ---- restore after a restart -------------------------------------------------------

    def restore(self, vends: list[Vend], saved_settings: dict) -> None:
        """Dispenses the journal says were not finished, and the operator's settings."""
        self.catalog.load_settings(saved_settings)
        for v in vends:
            v.waiting, v.live = False, False
            self.vends[v.vend_id] = v

    # ---- entry point ---------------------------------------------------------------------

    def handle(self, event: object, now: float) -> list:
        out: list = []
        key = (self.phase, type(event))
        if key in SESSION_TABLE:
            SESSION_TABLE[key](self, event, now, out)
        else:
            handler = GLOBAL_HANDLERS.get(type(event))
            if handler is not None:
                handler(self, event, now, out)
        dispensing.pump(self, now, out)
        screens.refresh(self, now, out)
        return out

    @property
    def busy_on_board(self) -> bool:
        """A dispense the board may be running: shutdown waits for it."""
        return any(v.on_board for v in self.vends.values())

    @property
    def live_order_id(self) -> str | None:
        return self.session.order_id if self.session and self.phase in LIVE else None

    # ---- ids -----------------------------------------------------------------------------

    def _new_id(self, kind: str) -> str:
        self._counter += 1
        return f"{kind}{self._prefix}-{self._counter}"

    # ---- sessions --------------------------------------------------------------------------

    def _start_session(self, ev: E.KeyPressed, now: float, out: list) -> None:
        self.report = None
        self.phase = Phase.IDLE
        if screens.out_of_service(self, now) or self.catalog.unavailable_reason(ev.slot) is not None:
            return
        product = self.catalog.planogram[ev.slot]
        self.session = Session(
            session_id=self._new_id("s"), slot=ev.slot, product_id=product.product_id,
            amount=self.catalog.price(ev.slot, self.wall(now)), currency=self.s.currency,
            deadline=now + (self.s.offline_after if self.s.offline_qr else self.s.ordering_limit))
        self.phase = Phase.ORDERING
        s = self.session
        out.append(A.CreateOrder(s.session_id, s.slot, s.product_id, s.amount, s.currency))

    def _order_created(self, ev: E.OrderCreated, now: float, out: list) -> None:
        s = self.session
        if s is None or ev.session_id != s.session_id:
            return self._stray_order(ev, now, out)
        if ev.amount != s.amount or ev.currency != s.currency:
            # The orders client checks this too; a QR for another amount must never show.
            out.append(A.Log("error", "order amount differs from the sale; no QR shown",
                             {"order_id": ev.order_id}))
            return self._end_session(now, out)
        out.append(A.Persist((self._save_order(s, ev, now),)))
        s.order_id, s.qr_url, s.expires_at, s.offline = ev.order_id, ev.qr_url, ev.expires_at, ev.offline
        s.deadline = min(float(ev.expires_at) - self.wall_offset, now + self.s.session_timeout)
        self.phase = Phase.AWAITING

    def _stray_order(self, ev: E.OrderCreated, now: float, out: list) -> None:
        """An order for a session the customer already left: keep it on record, then cancel it."""
        out.append(A.Persist((
            A.SaveOrder(ev.order_id, ev.session_id, ev.slot, "", ev.amount, ev.currency, ev.qr_url,
                        ev.expires_at, ev.offline, now),
            A.CloseOrder(ev.order_id, now, "abandoned"))))
        if not ev.offline:
            out.append(A.CancelOrder(ev.order_id))

    def _save_order(self, s: Session, ev: E.OrderCreated, now: float) -> A.SaveOrder:
        return A.SaveOrder(ev.order_id, s.session_id, s.slot, s.product_id, ev.amount, ev.currency,
                           ev.qr_url, ev.expires_at, ev.offline, now)

    def _order_failed(self, ev: E.OrderFailed, now: float, out: list) -> None:
        s = self.session
        if s is None or ev.session_id != s.session_id:
            return self._late_order_failure(ev, now, out)
        if ev.kind == "unreachable" and self.s.offline_qr:
            self._mint_offline(s, now, out)
            return
        self._late_order_failure(ev, now, out)
        self._end_session(now, out)

    def _late_order_failure(self, ev: E.OrderFailed, now: float, out: list) -> None:
        """Also for an answer that comes after its session moved on (an offline QR is up, or
        the customer left): a forged order response is news to the operator whenever it comes."""
        if ev.kind == "bad_order":
            self._alert(out, "inauthentic_message",
                        "The orders API answered with an order that failed verification; no QR was shown.")
        out.append(A.Log("warning", "order not created", {"kind": ev.kind, "detail": ev.detail}))

    def _mint_offline(self, s: Session, now: float, out: list) -> None:
        """Show an offline QR (contract §4) instead of the API's. An API order that still
        arrives for this session then comes as a stray once the QR is up, and is cancelled."""
        if s.minting:
            return
        s.minting = True
        s.deadline = now + self.s.ordering_limit
        out.append(A.MintOfflineOrder(s.session_id, s.slot, s.amount, s.currency))

    def _abandon_ordering(self, ev: object, now: float, out: list) -> None:
        # The order, if it is ever created, arrives as a stray and gets cancelled.
        self._end_session(now, out)

    def _begin_cancel(self, ev: object, now: float, out: list, reason: str = "cancel") -> None:
        s = self.session
        assert s is not None and s.order_id is not None
        out.append(A.Persist((A.CloseOrder(s.order_id, now, reason),)))
        if s.offline:
            # Nobody to ask: a payment that still comes is judged by the late-payment rule.
            return self._end_session(now, out)
        out.append(A.CancelOrder(s.order_id))
        s.deadline = now + self.s.cancel_wait
        self.phase = Phase.CANCELLING

    def _key_while_cancelling(self, ev: E.KeyPressed, now: float, out: list) -> None:
        """The cloud has not answered our cancel yet (a slow link) and the screen shows the
        grid: a new customer must not meet a machine that ignores them for seconds. The old
        order is already closed and its cancel sent; if the answer is "paid" after all, it
        comes as a late answer and its payment is judged by the late-payment rule."""
        self._end_session(now, out)
        self._start_session(ev, now, out)

    def _cancel_answered(self, ev: E.CancelAnswered, now: float, out: list) -> None:
        s = self.session
        if s is None or ev.order_id != s.order_id:
            return self._late_cancel_answer(ev, now, out)
        if ev.state == "paid":
            # The customer paid before the cancel landed: wait for (or fetch) the payment.
            s.paid_elsewhere = True
            s.deadline = now + self.s.late_payment_grace
            self.phase = Phase.AWAITING
            out.append(A.FetchOrder(s.order_id))
            s.last_fetch = now
            return
        self._end_session(now, out)

    def _late_cancel_answer(self, ev: E.CancelAnswered, now: float, out: list) -> None:
        """A cancel for an order no longer on screen (restart, stray): if the customer paid,
        go and get the payment rather than wait for MQTT to bring it."""
        if ev.state == "paid":
            out.append(A.FetchOrder(ev.order_id))

    def _cancel_session(self, now: float, out: list, reason: str) -> bool:
        """Close whatever session is live (board gone, door opened, command, shutdown)."""
        if self.phase == Phase.ORDERING:
            self._end_session(now, out)
            return True
        if self.phase == Phase.AWAITING and self.session and not self.session.paid_elsewhere:
            self._begin_cancel(None, now, out, reason)
            return True
        return False

    def _end_session(self, now: float, out: list) -> None:
        self.session = None
        self.phase = Phase.IDLE

    def _end_report(self, ev: object, now: float, out: list) -> None:
        self.report = None
        self.phase = Phase.IDLE

    # ---- payments --------------------------------------------------------------------------

    # ---- vends -------------------------------------------------------------------------------

    # ---- board ---------------------------------------------------------------------------

    def _on_board_up(self, ev: E.BoardUp, now: float, out: list) -> None:
        self.board.online, self.board.alerted_down = True, False
        self._next_telemetry = now     # link up: tell the operator without waiting a period
        self._learn_boot(ev.boot, now, out)
        out.append(A.RefreshSlots())

    def _on_board_boot(self, ev: E.BoardBoot, now: float, out: list) -> None:
        self._learn_boot(ev.boot, now, out)

    def _learn_boot(self, boot: int, now: float, out: list) -> None:
        old = self.board.boot
        self.board.boot = boot
        if old is not None and old != boot:
            self._alert(out, "board_rebooted", f"The board rebooted (boot {old} -> {boot}).")
        for v in self.vends.values():
            if v.on_board and v.boot != boot:
                v.waiting = False   # ask VSTAT afresh; `unknown` will now mean uncertain
                v.last_query = 0.0

    def _on_board_down(self, ev: E.BoardDown, now: float, out: list) -> None:
        self.board.online = False
        self._next_telemetry = now
        self._cancel_session(now, out, "board_offline")
        for v in self.vends.values():
            v.waiting = False
        if not self.board.alerted_down:
            self.board.alerted_down = True
            self._alert(out, "board_link_down", f"The board stopped answering ({ev.reason}).")

    def _on_slots(self, ev: E.SlotsSeen, now: float, out: list) -> None:
        newly_empty = ev.empty - self.catalog.empty
        self.catalog.empty, self.catalog.board_disabled = ev.empty, ev.disabled
        for slot in sorted(newly_empty & set(self.catalog.planogram)):
            self._alert(out, "low_stock", f"Slot {slot} is empty.", slot=slot)
        if newly_empty:
            self._next_telemetry = now

    def _on_door(self, ev: E.DoorChanged, now: float, out: list) -> None:
        was_open, self.board.door_open = self.board.door_open, ev.open
        if was_open != ev.open:
            self._next_telemetry = now
        if ev.open and not was_open:
            if self._cancel_session(now, out, "door_open") or self.busy_on_board:
                self._alert(out, "door_open_during_sale", "The service door was opened during a sale.")
        if was_open and not ev.open:
            # A technician has serviced the machine: give auto-disabled slots another chance.
            if self.catalog.reenable_all():
                out.append(A.Persist((A.SaveSetting("disabled_slots", []),)))
            out.append(A.RefreshSlots())

    def _on_fault(self, ev: E.BoardFault, now: float, out: list) -> None:
        self.board.fault = ev.code
        self._alert(out, "board_fault", f"The board reported fault {ev.code}.")

    def _on_status(self, ev: E.BoardStatus, now: float, out: list) -> None:
        self.board.temp = ev.temp
        self._learn_boot(ev.boot, now, out)
        if ev.door_open != self.board.door_open:
            self._on_door(E.DoorChanged(ev.door_open), now, out)

    def _on_key(self, ev: E.KeyPressed, now: float, out: list) -> None:
        pass  # a key during a sale is ignored: one customer at a time

    # ---- commands ------------------------------------------------------------------------

    def _on_command(self, ev: E.CommandIn, now: float, out: list) -> None:
        from vending.core.commands import execute
        execute(self, ev, now, out)

    def _on_command_rejected(self, ev: E.CommandRejectedIn, now: float, out: list) -> None:
        self._alert(out, "inauthentic_message", f"A command was rejected: {ev.detail}", token=ev.token)

    def _on_ack(self, ev: E.AckIn, now: float, out: list) -> None:
        if msg.is_fresh(ev.ts, self.wall(now)):
            out.append(A.Persist((A.EventAcked(ev.event_id, now),)))
        # A stale ack is ignored (the event is republished later), but the message is consumed.
        out.append(A.AckMessage(ev.token))

    def _on_mqtt_up(self, ev: E.MqttUp, now: float, out: list) -> None:
        self.mqtt_up = True
        self._status = None   # the adapter announced `online`; say what we really are

    def _on_mqtt_down(self, ev: E.MqttDown, now: float, out: list) -> None:
        self.mqtt_up = False

    def wall(self, now: float) -> float:
        """`now` as the cloud counts time: for comparisons with its `ts`, `expires`,
        `expires_at` and promo windows, never for the machine's own deadlines."""
        return now + self.wall_offset

    def _on_clock_corrected(self, ev: E.ClockCorrected, now: float, out: list) -> None:
        self.wall_offset = ev.offset

    def _on_clock_skew(self, ev: E.ClockSkew, now: float, out: list) -> None:
        # Once, and again only when it moves by another minute: not an alert per request.
        if abs(ev.offset) <= 60:          # contract §2: offsets above 60 s are logged
            return
        last = self._skew_alerted
        if last is None or abs(ev.offset - last) > 60:
            self._skew_alerted = ev.offset
            self._alert(out, "clock_offset", f"The machine's clock is {ev.offset:+.0f} s off the "
                        "orders API's. The controller allows for it when it compares the cloud's "
                        "times; check the time source (no battery-backed clock?).")

    def _on_shutdown(self, ev: E.Shutdown, now: float, out: list) -> None:
        self.stopping = True
        self._cancel_session(now, out, "shutdown")

    # ---- time ----------------------------------------------------------------------------

    def _on_tick(self, ev: E.Tick, now: float, out: list) -> None:
        s = self.session
        if self.phase == Phase.ORDERING and now >= s.deadline:
            if self.s.offline_qr and not s.minting:
                # A dead 4G link makes the API slow, not absent: the QR must still come at once.
                out.append(A.Log("warning", "orders API too slow; showing an offline QR",
                                 {"session_id": s.session_id}))
                self._mint_offline(s, now, out)
            else:
                self._end_session(now, out)
        elif self.phase == Phase.AWAITING and now >= s.deadline:
            if s.paid_elsewhere:
                self._end_session(now, out)   # its payment, when it comes, is judged as late
            else:
                self._begin_cancel(None, now, out, "timeout")
        elif self.phase == Phase.CANCELLING and now >= s.deadline:
            self._end_session(now, out)
        elif self.phase == Phase.REPORTING and self.report and now >= self.report.until:
            self._end_report(ev, now, out)
        if (self.phase == Phase.AWAITING and (not self.mqtt_up or s.paid_elsewhere)
                and not s.offline and now - s.last_fetch >= self.s.reconcile_interval):
            s.last_fetch = now
            out.append(A.FetchOrder(s.order_id))
        dispensing.give_up_waiting(self, now, out)
        if now >= self._next_telemetry:
            self._next_telemetry = now + self.s.telemetry_interval
            self.catalog.prune_promos(self.wall(now))
            out.append(A.PublishTelemetry(self._telemetry(now)))

    def _telemetry(self, now: float) -> dict:
        stock = {str(slot): (0 if slot in self.catalog.empty else None) for slot in self.catalog.planogram}
        return msg.telemetry(temp=self.board.temp,
                                    door="open" if self.board.door_open else "closed",
                                    link="up" if self.board.online else "down", stock=stock,
                                    uptime=int(now - self.s.started))

    # ---- outputs shared by handlers --------------------------------------------------------

    def _emit(self, out: list, type_: str, fields: dict, token=None, extra_ops=()) -> None:
        out.append(A.Persist((*extra_ops, A.SaveEvent(fields["event_id"], type_, fields))))
        if token is not None:
            out.append(A.AckMessage(token))
        out.append(A.Publish(fields["event_id"], type_, fields))

    def _alert(self, out: list, code: str, detail: str, slot: int | None = None, token=None) -> None:
        fields = msg.alert(event_id=self._new_id("e"), code=code, slot=slot, detail=detail)
        self._emit(out, "alert", fields, token=token)


def _ignore(m: Machine, ev: object, now: float, out: list) -> None:
    pass


SESSION_TABLE = {
    (Phase.IDLE, E.KeyPressed): Machine._start_session,
    (Phase.REPORTING, E.KeyPressed): Machine._start_session,
    (Phase.ORDERING, E.OrderCreated): Machine._order_created,
    (Phase.ORDERING, E.OrderFailed): Machine._order_failed,
    (Phase.ORDERING, E.CancelPressed): Machine._abandon_ordering,
    (Phase.AWAITING, E.CancelPressed): Machine._begin_cancel,
    (Phase.CANCELLING, E.CancelAnswered): Machine._cancel_answered,
    (Phase.CANCELLING, E.KeyPressed): Machine._key_while_cancelling,
    (Phase.REPORTING, E.CancelPressed): Machine._end_report,
}

GLOBAL_HANDLERS = {
    E.KeyPressed: Machine._on_key,
    E.CancelPressed: _ignore,
    E.OrderCreated: Machine._stray_order,
    E.OrderFailed: Machine._late_order_failure,
    E.CancelAnswered: Machine._late_cancel_answer,
    E.OrderFetched: _ignore,
    E.PaymentIn: payments.on_payment,
    E.PaymentRejectedIn: payments.on_payment_rejected,
    E.VendReply: dispensing.on_reply,
    E.VendRefused: dispensing.on_refused,
    E.VendLost: dispensing.on_lost,
    E.BoardUp: Machine._on_board_up,
    E.BoardBoot: Machine._on_board_boot,
    E.BoardDown: Machine._on_board_down,
    E.SlotsSeen: Machine._on_slots,
    E.DoorChanged: Machine._on_door,
    E.BoardFault: Machine._on_fault,
    E.BoardStatus: Machine._on_status,
    E.CommandIn: Machine._on_command,
    E.CommandRejectedIn: Machine._on_command_rejected,
    E.AckIn: Machine._on_ack,
    E.MqttUp: Machine._on_mqtt_up,
    E.MqttDown: Machine._on_mqtt_down,
    E.Shutdown: Machine._on_shutdown,
    E.ClockSkew: Machine._on_clock_skew,
    E.ClockCorrected: Machine._on_clock_corrected,
    E.Tick: Machine._on_tick,
}
