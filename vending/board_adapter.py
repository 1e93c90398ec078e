"""Between the board pump (firmware_bridge.link) and the core: translation only, no decisions.

One rule lives here because it is about the wire, not about money: a VSTAT is always followed
by a STATUS, and the two answers reach the core as one `VendReply` carrying the boot the board
reported *after* the VSTAT. That is what lets the core tell "never arrived" from "lost in a
reboot" when the board says `unknown`.
"""
from __future__ import annotations

from firmware_bridge import pump as P
from firmware_bridge import replies as R
from firmware_bridge.link import BoardRebooted, BoardRebootedError, LinkUp
from vending.core import actions as A
from vending.core import events as E


class Translator:
    def __init__(self) -> None:
        self._vstat: dict[str, R.VendState] = {}   # VSTAT answers waiting for their STATUS

    # ---- actions -> pump commands ----------------------------------------------------------

    def submit(self, pump: P.BoardPump, a: object) -> None:
        if isinstance(a, A.SendVend):
            # With the boot it was journaled for, the pump checks the board has not rebooted
            # since and refuses to send otherwise (BoardRebootedError): a rebooted board has
            # forgotten the id and would dispense it again.
            pump.submit(P.Vend(a.vend_id, a.slot, boot=a.boot))
        elif isinstance(a, A.QueryVend):
            pump.submit(P.VStat(a.vend_id))
            pump.submit(P.Status(tag=a.vend_id))
        elif isinstance(a, A.RefreshSlots):
            pump.submit(P.Slots())
            pump.submit(P.Status())

    # ---- pump events -> core events ------------------------------------------------------

    def translate(self, item: object) -> list:
        if isinstance(item, LinkUp):
            return [E.BoardUp(item.hello.boot, item.hello.slots)]
        if isinstance(item, R.LinkDown):
            self._vstat.clear()
            return [E.BoardDown(str(item))]
        if isinstance(item, BoardRebooted):
            return [E.BoardBoot(item.new_boot)]
        if isinstance(item, P.BoardEvent):
            return self._event(item.event)
        if isinstance(item, P.CommandDone):
            return self._done(item.cmd, item.reply, item.error)
        return []

    def _event(self, ev) -> list:
        if ev.kind == "key":
            return [E.KeyPressed(ev.slot)]
        if ev.kind == "cancel":
            return [E.CancelPressed()]
        if ev.kind == "door":
            return [E.DoorChanged(ev.state == "open")]
        if ev.kind == "fault":
            return [E.BoardFault(ev.code or "unknown")]
        if ev.kind == "vend":
            return [E.VendReply(ev.vend_id, "done", ev.result)]
        return []

    def _done(self, cmd, reply, error) -> list:
        if isinstance(cmd, P.Vend):
            if isinstance(error, R.BoardError):
                return [E.VendRefused(cmd.vend_id, error.code)]
            if isinstance(error, BoardRebootedError):
                return [E.VendRefused(cmd.vend_id, "rebooted")]
            if error is not None:
                return [E.VendLost(cmd.vend_id)]
            return [E.VendReply(cmd.vend_id, reply.state, reply.result)]
        if isinstance(cmd, P.VStat):
            if error is not None:
                return [E.VendLost(cmd.vend_id)]
            self._vstat[cmd.vend_id] = reply
            return []
        if isinstance(cmd, P.Status):
            out = []
            pending = self._vstat.pop(cmd.tag, None) if cmd.tag else None
            if error is not None or not isinstance(reply, R.Status):
                return [E.VendLost(cmd.tag)] if pending is not None else []
            out.append(E.BoardStatus(reply.boot, reply.door_open, reply.temp))
            if pending is not None:
                out.append(E.VendReply(cmd.tag, pending.state, pending.result, boot=reply.boot))
            return out
        if isinstance(cmd, P.Slots) and isinstance(reply, R.Slots):
            return [E.SlotsSeen(reply.empty, reply.disabled)]
        return []

