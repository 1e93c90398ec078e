"""A display for headless machines and technicians: each screen change as a few lines of text,
with the payment QR drawn in the terminal so a phone can still pay from an SSH session.

Writes happen on a worker thread: a terminal that stops reading (a paused tmux pane, a full pipe)
must not stall the controller.
"""
from __future__ import annotations

import sys
import time
from types import MappingProxyType
from typing import TextIO

from vending.display.view import Screen, View, format_money, view_to_json
from vending.display.worker import LatestViewWorker, WorkerDisplay

REFUND_TEXT = MappingProxyType({
    "jam": "The product got stuck.",
    "no_drop": "The product did not drop.",
    "empty": "The slot was empty.",
    "timeout": "The machine took too long to dispense.",
    "uncertain": "The board rebooted; nobody knows whether the product came out.",
    "late": "The payment arrived after the order had closed.",
    "mismatch": "The amount paid did not match the order.",
    "duplicate": "The order had already been paid.",
    "board_offline": "The board was offline.",
})


class TerminalDisplay(WorkerDisplay):
    def __init__(self, stream: TextIO | None = None, *, invert: bool = False) -> None:
        """`invert=False` suits the usual light-on-dark terminal; True a dark-on-light one
        (see vending.qr.to_terminal)."""
        self._stream = stream if stream is not None else sys.stdout
        self._invert = bool(invert)
        self._worker = LatestViewWorker(self._render, "display-terminal")
        self._last_key: object = None          # touched by the worker thread only

    def _render(self, view: View) -> None:
        key = content_key(view)
        if key == self._last_key:               # only the clock or seq moved: nothing to say
            return
        self._last_key = key
        text = format_view(view, invert=self._invert)
        try:
            self._stream.write(text)
        except UnicodeEncodeError:              # an ASCII-only console: keep the words
            enc = getattr(self._stream, "encoding", None) or "ascii"
            self._stream.write(text.encode(enc, "replace").decode(enc))
        self._stream.flush()


def content_key(view: View) -> tuple:
    """What a person would notice: everything except the clock and the sequence number."""
    data = view_to_json(view)
    data.pop("now")
    data.pop("seq")
    return tuple(sorted((k, repr(v)) for k, v in data.items()))


def format_view(view: View, now: float | None = None, *, invert: bool = False) -> str:
    """The terminal text for one view; pure, so tests can check it directly."""
    label = view.screen.value.replace("_", " ").upper()
    head = f"== {label} =="
    p = view.product
    what = f"slot {view.slot if view.slot is not None else '?'}"
    if p is not None:
        what += f" {p.name_zh} / {p.name_en}"
    paid = format_money(view.amount, view.currency) if (
        view.amount is not None and view.currency) else ""
    lines: list[str] = []
    if view.screen is Screen.GRID:
        lines.append(head)
        lines.extend(_product_line(item) for item in view.products)
    elif view.screen is Screen.ORDERING:
        lines.append(f"{head} {what} {paid} - preparing the QR")
    elif view.screen is Screen.QR:
        lines.append(f"{head} {what} {paid}".rstrip())
        left = "" if view.expires_at is None else _expires(view, now)
        extra = " (minted offline)" if view.offline else ""
        lines.append(f"order {view.order_id or '?'}{extra}{left}")
        lines.append(_draw_qr(view.qr_url or "", invert))
        lines.append(f"pay: {view.qr_url}")
        lines.append("WeChat / Alipay: scan to pay  (微信 / 支付宝 扫码支付)")
    elif view.screen is Screen.DISPENSING:
        lines.append(f"{head} {what} {paid} - payment received, dispensing")
    elif view.screen is Screen.THANKS:
        lines.append(f"{head} {what} - thank you, product delivered")
        if view.follow_qr_url:
            lines.append(f"follow us: {view.follow_qr_url}")
    elif view.screen is Screen.REFUND:
        reason = REFUND_TEXT.get(view.refund_reason or "", "Something went wrong.")
        money = (f"The payment of {paid} will be refunded." if view.refunded and paid else
                 "Not refunded automatically: contact the operator." if not view.refunded else "")
        lines.append(f"{head} {what} [{view.refund_reason}] {reason} {money}".rstrip())
        if view.order_id:
            lines.append(f"order {view.order_id}")
    else:
        lines.append(f"{head} reason: {view.reason or 'unknown'}")
    return "\n".join(lines) + "\n"


def _product_line(p) -> str:
    price = format_money(p.price, p.currency)
    if p.promo_price is not None and p.promo_price != p.price:
        price = f"{format_money(p.promo_price, p.currency)} (was {price})"
    state = "" if p.available else f"  [{p.reason or 'unavailable'}]"
    return f"  {p.slot:>3}  {p.name_zh} / {p.name_en}  {price}{state}"


def _expires(view: View, now: float | None) -> str:
    # The daemon's clock when the view was made, moved on by however long the worker lagged.
    now = view.now if now is None else now
    left = max(0, int(view.expires_at - now))
    stamp = time.strftime("%H:%M:%S", time.localtime(view.expires_at))
    return f", expires {stamp} (in {left} s)"


def _draw_qr(text: str, invert: bool) -> str:
    from vending import qr
    return qr.to_terminal(qr.make_qr(text), invert=invert)
