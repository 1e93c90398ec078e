"""Builds the customer's view from the core's state; the display only renders it."""
from __future__ import annotations

from typing import TYPE_CHECKING

from vending.core import actions as A
from vending.core.catalog import Catalog
from vending.core.state import Phase
from vending.display.view import ProductView, Screen, View

if TYPE_CHECKING:
    from vending.core.machine import Machine


def products(catalog: Catalog, currency: str, wall_now: float) -> tuple[ProductView, ...]:
    """`wall_now`: the cloud's time (Machine.wall), which promo windows are written in."""
    out = []
    for slot, p in sorted(catalog.planogram.items()):
        reason = catalog.unavailable_reason(slot)
        out.append(ProductView(
            slot=slot, product_id=p.product_id, name_zh=p.name_zh, name_en=p.name_en,
            price=catalog.base_price(slot), promo_price=catalog.promo_price(slot, wall_now),
            currency=currency, available=reason is None, reason=reason))
    return tuple(out)


def product(items: tuple[ProductView, ...], slot: int | None) -> ProductView | None:
    return next((p for p in items if p.slot == slot), None)


def out_of_service_reason(*, board_online: bool, door_open: bool, stopping: bool,
                          items: tuple[ProductView, ...]) -> str | None:
    if stopping:
        return "stopping"
    if not board_online:
        return "board_offline"
    if door_open:
        return "door_open"
    if not any(p.available for p in items):
        return "no_products"
    return None


def make_view(screen: Screen, items, now: float, seq: int, **fields) -> View:
    return View(screen=screen, products=items, now=int(now), seq=seq,
                product=product(items, fields.get("slot")), **fields)


def out_of_service(m: "Machine", now: float, items=None) -> str | None:
    return out_of_service_reason(
        board_online=m.board.online, door_open=m.board.door_open, stopping=m.stopping,
        items=items if items is not None else products(m.catalog, m.s.currency, m.wall(now)))


def refresh(m: "Machine", now: float, out: list) -> None:
    """Publish status and show a new view when, and only when, they changed."""
    items = products(m.catalog, m.s.currency, m.wall(now))
    oos = out_of_service(m, now, items)
    status = "online" if oos is None else "out_of_service"
    if status != m._status and m.mqtt_up and not m.stopping:
        m._status = status
        out.append(A.PublishStatus(status))
    screen, fields = screen_of(m, oos)
    key = (screen, items, tuple(sorted(fields.items())))
    if key != m._shown:
        m._shown = key
        m._seq += 1
        out.append(A.Show(make_view(screen, items, now, m._seq, **fields)))


def screen_of(m: "Machine", oos: str | None) -> tuple[Screen, dict]:
    s, r = m.session, m.report
    if m.phase == Phase.ORDERING:
        return Screen.ORDERING, {"slot": s.slot, "amount": s.amount, "currency": s.currency}
    if m.phase == Phase.AWAITING and s.paid_elsewhere:
        return Screen.DISPENSING, {"slot": s.slot, "amount": s.amount, "currency": s.currency}
    if m.phase == Phase.AWAITING:
        return Screen.QR, {"slot": s.slot, "amount": s.amount, "currency": s.currency,
                           "qr_url": s.qr_url, "expires_at": int(s.deadline),
                           "order_id": s.order_id, "offline": s.offline}
    if m.phase == Phase.DISPENSING:
        live = next((v for v in m.vends.values() if v.live), None)
        return Screen.DISPENSING, ({"slot": live.slot, "amount": live.amount,
                                    "currency": live.currency} if live else {})
    if m.phase == Phase.REPORTING and r is not None:
        base = {"slot": r.slot, "amount": r.amount, "currency": r.currency}
        if r.result == "ok":
            return Screen.THANKS, {**base, "follow_qr_url": m.s.follow_qr_url if r.follow else None}
        return Screen.REFUND, {**base, "refund_reason": r.result, "refunded": r.refunded}
    if oos is not None:
        return Screen.OUT_OF_SERVICE, {"reason": oos}
    return Screen.GRID, {}
