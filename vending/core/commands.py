"""Cloud commands (§2 `command`): each cmd_id takes effect at most once, ever.

The journal remembers every cmd_id with its outcome, so a redelivery is answered with the same
outcome and nothing runs twice. Freshness and expiry are judged here with the shell's clock.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from vending import messages as msg
from vending.core import actions as A
from vending.core import events as E
from vending.core.catalog import Promo
from vending.core.vends import Vend

if TYPE_CHECKING:
    from vending.core.machine import Machine


def execute(m: "Machine", ev: E.CommandIn, now: float, out: list) -> None:
    cmd = ev.command
    if ev.prior is not None:
        ok, error = ev.prior
        if ok is None:
            # A free vend still under way: its command_result follows when the board answers.
            out.append(A.AckMessage(ev.token))
            return
        return _answer(m, cmd, ok, error, now, out, ev.token, ())
    if not msg.is_fresh(cmd.ts, m.wall(now)):
        return _answer(m, cmd, False, "stale", now, out, ev.token, ())
    if cmd.expires < m.wall(now):
        return _answer(m, cmd, False, "expired", now, out, ev.token, ())
    handler = HANDLERS[cmd.name]
    ok, error, ops = handler(m, cmd, now, out)
    if ok is None:
        # Deferred (free vend): journal the command with the vend, answer after the motor.
        out.append(A.Persist((A.SaveCommand(cmd.cmd_id, cmd.name, None, None, None, now), *ops)))
        out.append(A.AckMessage(ev.token))
        return
    _answer(m, cmd, ok, error, now, out, ev.token, ops)


def _answer(m, cmd, ok, error, now, out, token, ops) -> None:
    fields = msg.command_result(event_id=m._new_id("e"), cmd_id=cmd.cmd_id, ok=ok, error=error)
    record = A.SaveCommand(cmd.cmd_id, cmd.name, ok, error, fields["event_id"], now)
    m._emit(out, "command_result", fields, token=token, extra_ops=(*ops, record))


def _slot_error(m: "Machine", slot) -> str | None:
    if slot not in m.catalog.planogram:
        return f"slot {slot} is not in this machine's planogram"
    return None


def _set_prices(m: "Machine", cmd, now, out):
    prices = {int(k): v for k, v in cmd.args["prices"].items()}
    bad = next((s for s in prices if s not in m.catalog.planogram), None)
    if bad is not None:
        return False, f"bad_args: {_slot_error(m, bad)}", ()
    m.catalog.prices.update(prices)
    m.catalog.reenable_all()   # the operator has looked at the machine: slots get a new chance
    saved = m.catalog.settings()
    return True, None, (A.SaveSetting("prices", saved["prices"]), A.SaveSetting("disabled_slots", []))


def _set_promo(m: "Machine", cmd, now, out):
    a = cmd.args
    err = _slot_error(m, a["slot"])
    if err:
        return False, f"bad_args: {err}", ()
    if a["end"] <= a["start"]:
        return False, "bad_args: the promo ends before it starts", ()
    m.catalog.promos.append(Promo(a["slot"], a["amount"], a["start"], a["end"]))
    return True, None, (A.SaveSetting("promos", m.catalog.settings()["promos"]),)


def _free_vend(m: "Machine", cmd, now, out):
    slot = cmd.args["slot"]
    err = _slot_error(m, slot)
    if err:
        return False, f"bad_args: {err}", ()
    vend = Vend(vend_id=msg.vend_id_for(m.s.machine_id, cmd.cmd_id, free_vend=True), order_id=cmd.cmd_id,
                kind="free", slot=slot, txn_id=None, amount=0, currency=m.s.currency,
                payer_new=False, created_at=now, expires=cmd.expires)
    m.vends[vend.vend_id] = vend
    return None, None, (A.SaveVend(vend.vend_id, vend.order_id, "free", slot, None, 0, m.s.currency,
                                   False, now, cmd.expires),)


def _cancel_session(m: "Machine", cmd, now, out):
    m._cancel_session(now, out, "command")
    return True, None, ()


def _ping(m: "Machine", cmd, now, out):
    return True, None, ()


HANDLERS = {
    "set_prices": _set_prices,
    "set_promo": _set_promo,
    "free_vend": _free_vend,
    "cancel_session": _cancel_session,
    "ping": _ping,
}
