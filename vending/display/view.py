"""What the customer display shows, as immutable values the controller hands to a display.

The controller builds a `View` on its owner thread and calls `display.show(view)`. Every display
(kiosk page, terminal, PNG file) renders only what a view says: none of them decides anything, so
a QR reaches the screen only if the controller put a verified one into a view.

Inputs flow the other way as `Select` and `Cancel`, passed to the `on_input` callback a display is
built with. The callback runs on a display thread, never the owner's: it must be thread-safe
(typically a queue put).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from enum import Enum
from types import MappingProxyType

_CURRENCY_RE = re.compile(r"[A-Z]{3}")

# ISO 4217 exponents that are not 2. Read-only on purpose: no module-level mutable state.
_EXPONENTS = MappingProxyType({
    "JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "XAF": 0, "XOF": 0, "TWD": 2,
    "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3,
})
_SYMBOLS = MappingProxyType({
    "CNY": "¥", "JPY": "¥", "USD": "$", "EUR": "€", "GBP": "£", "HKD": "HK$", "TWD": "NT$",
    "KRW": "₩", "SGD": "S$", "MOP": "MOP$",
})


class Screen(str, Enum):
    GRID = "grid"
    ORDERING = "ordering"              # order being created: a calm "preparing your QR" state
    QR = "qr"
    DISPENSING = "dispensing"          # payment received, motor running
    THANKS = "thanks"
    REFUND = "refund"
    OUT_OF_SERVICE = "out_of_service"


@dataclass(frozen=True)
class ProductView:
    slot: int
    product_id: str
    name_zh: str
    name_en: str
    price: int                         # regular price, minor units
    promo_price: int | None
    currency: str
    available: bool
    reason: str | None                 # "sold_out" | "disabled" | None (other strings shown as unavailable)

    def __post_init__(self) -> None:
        _check_int("ProductView.slot", self.slot, minimum=1)
        _check_int("ProductView.price", self.price)
        if self.promo_price is not None:
            _check_int("ProductView.promo_price", self.promo_price)
        _check_currency("ProductView.currency", self.currency)
        for name in ("product_id", "name_zh", "name_en"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"ProductView.{name} must be a str, got {getattr(self, name)!r}")
        if not isinstance(self.available, bool):
            raise TypeError(f"ProductView.available must be a bool, got {self.available!r}")

    @property
    def pay_price(self) -> int:
        """What the customer pays now: the promo price when there is one."""
        return self.price if self.promo_price is None else self.promo_price


@dataclass(frozen=True)
class View:
    screen: Screen
    products: tuple[ProductView, ...]
    slot: int | None = None
    product: ProductView | None = None
    amount: int | None = None          # what the customer pays (promo applied), minor units
    currency: str | None = None
    qr_url: str | None = None
    expires_at: int | None = None
    order_id: str | None = None
    offline: bool = False              # QR minted offline: deliberately not shown to the customer
    refund_reason: str | None = None   # jam|no_drop|empty|timeout|uncertain|late|mismatch|duplicate|board_offline
    refunded: bool = True              # False only for "uncertain" under a no-refund policy
    follow_qr_url: str | None = None   # thanks screen, first-time payers only
    reason: str | None = None          # out of service: board_offline | door_open | no_products | ...
    now: int = 0                       # daemon clock (unix s) when the view was made
    seq: int = 0                       # rises with every view; clients drop older ones

    def __post_init__(self) -> None:
        # Coerce the two forms a caller naturally writes; reject everything else loudly, so a
        # controller bug surfaces where the view is built, not as a blank kiosk.
        if not isinstance(self.screen, Screen):
            try:
                object.__setattr__(self, "screen", Screen(self.screen))
            except ValueError:
                raise ValueError(f"View.screen must be one of {[s.value for s in Screen]}, "
                                 f"got {self.screen!r}") from None
        if isinstance(self.products, list):
            object.__setattr__(self, "products", tuple(self.products))
        if not isinstance(self.products, tuple) or not all(
                isinstance(p, ProductView) for p in self.products):
            raise TypeError("View.products must be a tuple of ProductView")
        if self.product is not None and not isinstance(self.product, ProductView):
            raise TypeError(f"View.product must be a ProductView or None, got {self.product!r}")
        for name in ("slot", "amount", "expires_at", "seq"):
            if getattr(self, name) is not None:
                _check_int(f"View.{name}", getattr(self, name))
        if isinstance(self.now, bool) or not isinstance(self.now, (int, float)):
            raise TypeError(f"View.now must be unix seconds, got {self.now!r}")
        if self.currency is not None:
            _check_currency("View.currency", self.currency)
        for name in ("qr_url", "follow_qr_url", "order_id", "refund_reason", "reason"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"View.{name} must be a str or None, got {value!r}")
        if self.screen is Screen.QR and not self.qr_url:
            raise ValueError("a QR view needs qr_url")


@dataclass(frozen=True)
class Select:
    """The customer touched a product: the controller treats it exactly like a board key press."""
    slot: int


@dataclass(frozen=True)
class Cancel:
    """The customer touched Cancel."""


def view_to_json(view: View) -> dict:
    """The view as plain JSON types, as the kiosk page and the PNG sidecar receive it."""
    out: dict = {}
    for f in fields(view):
        value = getattr(view, f.name)
        if f.name == "screen":
            value = view.screen.value
        elif f.name == "products":
            value = [product_to_json(p) for p in view.products]
        elif f.name == "product" and value is not None:
            value = product_to_json(value)
        out[f.name] = value
    return out


def product_to_json(product: ProductView) -> dict:
    return {f.name: getattr(product, f.name) for f in fields(product)}


def format_money(amount: int, currency: str) -> str:
    """Minor units to text without floats: (350, "CNY") -> "¥3.50", (120, "JPY") -> "¥120".

    The kiosk page has the same rules in JavaScript (static/kiosk.js `formatMoney`)."""
    exp = _EXPONENTS.get(currency, 2)
    sign = "-" if amount < 0 else ""
    major, minor = divmod(abs(amount), 10 ** exp)
    number = f"{major}.{minor:0{exp}d}" if exp else str(major)
    symbol = _SYMBOLS.get(currency)
    return f"{sign}{symbol}{number}" if symbol else f"{sign}{number} {currency}"


def _check_int(name: str, value: object, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_currency(name: str, value: object) -> None:
    if not isinstance(value, str) or not _CURRENCY_RE.fullmatch(value):
        raise ValueError(f"{name} must be an ISO 4217 code like 'CNY', got {value!r}")
