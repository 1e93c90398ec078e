"""What the daemon sends (CONTRACT §2): the signed envelope and the fields of each event, and
the cloud-side payloads the cloud double and tests sign with it.

Every builder checks its fields against the contract and raises `EventFieldError` on a breach,
which is a bug on our side. Callers know these as `messages.vend_result(...)` etc.; messages.py
re-exports them.
"""
from __future__ import annotations

import re
from typing import Any

from .message_fields import (AMOUNT, CURRENCY, MESSAGE_TYPES, SLOT, SLOT_KEY_RE, STATUS_STATES,
                             TXN_ID, UNIX, VEND_RESULTS, Reason, is_ident)
from .signing import sign_payload

_ENVELOPE = ("v", "type", "machine_id", "ts", "sig")


class EventFieldError(ValueError):
    """An outbound event would break the field rules of CONTRACT §2 (a bug on our side)."""


def _need(cond: Any, detail: str) -> None:
    if not cond:
        raise EventFieldError(detail)


def build_event(key: bytes, machine_id: str, type_: str, fields: dict, ts: int) -> dict:
    """The signed envelope v=1 around `fields`. Re-signing a republished event is calling this
    again with the same fields (same event_id) and a new ts."""
    _need(is_ident(machine_id), "machine_id must match [A-Za-z0-9_-]{1,64}")
    _need(type_ in MESSAGE_TYPES, f"type must be one of {', '.join(MESSAGE_TYPES)}")
    _need(type(ts) is int and ts >= 0, "ts must be Unix seconds as an integer")
    _need(isinstance(fields, dict), "fields must be a dict")
    clash = [k for k in _ENVELOPE if k in fields]
    _need(not clash, f"fields must not set envelope key {clash[0] if clash else ''!r}")
    return sign_payload(key, {"v": 1, "type": type_, "machine_id": machine_id, "ts": ts,
                              **fields})


def _id_or_none(value: Any, name: str) -> None:
    _need(value is None or is_ident(value), f"{name} must be an identifier or None")


def vend_result(*, event_id: str, order_id: str, vend_id: str | None, slot: int | None,
                amount: int, currency: str, txn_id: str | None, result: str, dispensed: bool,
                refund: bool) -> dict:
    """Fields of `vend_result`. vend_id and slot are None for an order the machine never had;
    txn_id is None (and amount 0) for a free vend, which has nothing to refund."""
    _need(is_ident(event_id) and is_ident(order_id), "event_id and order_id must be identifiers")
    _id_or_none(vend_id, "vend_id")
    _need(slot is None or SLOT[0](slot), "slot must be an integer >= 1 or None")
    _need(AMOUNT[0](amount) and CURRENCY[0](currency), "amount/currency must be int >= 0 / ABC")
    _need(txn_id is None or TXN_ID[0](txn_id), "txn_id must be a printable string or None")
    _need(result in VEND_RESULTS, f"result must be one of {', '.join(VEND_RESULTS)}")
    _need(type(dispensed) is bool and type(refund) is bool, "dispensed and refund must be bool")
    _need(dispensed == (result == "ok"), "dispensed is true exactly when result is ok")
    _need(not (dispensed and refund), "at most one of dispensed and refund is true")
    if txn_id is None:
        _need(amount == 0 and not refund, "without a txn_id amount is 0 and nothing is refunded")
    else:
        _need(dispensed or refund or result == "uncertain",
              "a paid vend that was not dispensed is refunded unless it is uncertain")
    return {"event_id": event_id, "order_id": order_id, "vend_id": vend_id, "slot": slot,
            "amount": amount, "currency": currency, "txn_id": txn_id, "result": result,
            "dispensed": dispensed, "refund": refund}


def payment_rejected(*, event_id: str, order_id: str | None, reason: str) -> dict:
    _need(is_ident(event_id), "event_id must be an identifier")
    _id_or_none(order_id, "order_id")
    _need(reason in tuple(Reason), "reason must be bad_sig, wrong_machine or malformed")
    return {"event_id": event_id, "order_id": order_id, "reason": str(reason)}


def command_result(*, event_id: str, cmd_id: str, ok: bool, error: str | None = None) -> dict:
    _need(is_ident(event_id) and is_ident(cmd_id), "event_id and cmd_id must be identifiers")
    _need(type(ok) is bool, "ok must be a bool")
    _need((error is None) if ok else (isinstance(error, str) and error != ""),
          "error is None when ok, else a non-empty string such as 'stale' or 'expired'")
    return {"event_id": event_id, "cmd_id": cmd_id, "ok": ok, "error": error}


def alert(*, event_id: str, code: str, detail: str, slot: int | None = None) -> dict:
    """`slot` is optional in the contract: left out of the payload when None."""
    _need(is_ident(event_id), "event_id must be an identifier")
    _need(isinstance(code, str) and re.fullmatch(r"[a-z][a-z0-9_]{0,63}", code),
          "code must be a lower-case word such as 'jam'")
    _need(isinstance(detail, str) and detail.strip(), "detail must be a human sentence")
    _need(slot is None or SLOT[0](slot), "slot must be an integer >= 1 or None")
    out = {"event_id": event_id, "code": code, "detail": detail}
    if slot is not None:
        out["slot"] = slot
    return out


def status(*, state: str, version: str, started: int) -> dict:
    _need(state in STATUS_STATES, f"state must be one of {', '.join(STATUS_STATES)}")
    _need(isinstance(version, str) and version, "version must be a non-empty string")
    _need(UNIX[0](started), "started must be Unix seconds as an integer")
    return {"state": state, "version": version, "started": started}


def telemetry(*, temp: int | None, door: str | None, link: str,
              stock: dict[int | str, int | None], uptime: int) -> dict:
    """temp (deci-degC) and door are None while the board cannot be read."""
    _need(temp is None or type(temp) is int, "temp must be an integer (deci-degC) or None")
    _need(door in ("open", "closed", None), "door must be 'open', 'closed' or None")
    _need(link in ("up", "down"), "link must be 'up' or 'down'")
    _need(isinstance(stock, dict), "stock must be a dict {slot: count or None}")
    out_stock: dict[str, int | None] = {}
    for slot, count in stock.items():
        name = str(slot) if type(slot) is int else slot
        _need(isinstance(name, str) and SLOT_KEY_RE.fullmatch(name), "stock keys must be slots")
        _need(count is None or AMOUNT[0](count), "stock counts must be integers >= 0 or None")
        out_stock[name] = count
    _need(UNIX[0](uptime), "uptime must be seconds as an integer >= 0")
    return {"temp": temp, "door": door, "link": link, "stock": out_stock, "uptime": uptime}


# Cloud-side payloads, for the cloud double and tests.
def payment_fields(*, order_id: str, amount: int, currency: str, provider: str, txn_id: str,
                   payer: str | None = None, promo: str | None = None) -> dict:
    out = {"order_id": order_id, "amount": amount, "currency": currency, "provider": provider,
           "txn_id": txn_id}
    out.update({k: v for k, v in (("payer", payer), ("promo", promo)) if v is not None})
    return out


def command_fields(*, cmd_id: str, name: str, args: dict, expires: int) -> dict:
    return {"cmd_id": cmd_id, "name": name, "args": args, "expires": expires}


def ack_fields(*, event_id: str) -> dict:
    return {"event_id": event_id}
