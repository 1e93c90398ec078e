"""Builds the customer's view from the core's state; the display only renders it."""
from __future__ import annotations

from vending.core.catalog import Catalog
from vending.display.view import ProductView, Screen, View


def products(catalog: Catalog, currency: str, now: float) -> tuple[ProductView, ...]:
    out = []
    for slot, p in sorted(catalog.planogram.items()):
        reason = catalog.unavailable_reason(slot)
        out.append(ProductView(
            slot=slot, product_id=p.product_id, name_zh=p.name_zh, name_en=p.name_en,
            price=catalog.base_price(slot), promo_price=catalog.promo_price(slot, now),
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
