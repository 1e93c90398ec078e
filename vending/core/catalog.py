"""What the machine can sell right now: planogram, price overrides, promos and slot health."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Promo:
    slot: int
    amount: int
    start: int
    end: int


@dataclass
class Catalog:
    """Mutable, but owned by the core alone. Board facts (`empty`, `board_disabled`) come from
    SLOTS; `auto_disabled` is ours: slots switched off after repeated failed vends."""
    planogram: dict                     # slot -> Product (config)
    prices: dict = field(default_factory=dict)          # slot -> amount, from set_prices
    promos: list = field(default_factory=list)          # [Promo]
    auto_disabled: set = field(default_factory=set)
    empty: frozenset = frozenset()
    board_disabled: frozenset = frozenset()
    failures: dict = field(default_factory=dict)        # slot -> consecutive failed vends

    def base_price(self, slot: int) -> int:
        return self.prices.get(slot, self.planogram[slot].price)

    def promo_price(self, slot: int, now: float) -> int | None:
        active = [p for p in self.promos if p.slot == slot and p.start <= now < p.end]
        # The newest promo wins when windows overlap: the operator's latest word.
        return active[-1].amount if active else None

    def price(self, slot: int, now: float) -> int:
        promo = self.promo_price(slot, now)
        return self.base_price(slot) if promo is None else promo

    def unavailable_reason(self, slot: int) -> str | None:
        if slot not in self.planogram:
            return "unknown"
        if slot in self.auto_disabled or slot in self.board_disabled:
            return "disabled"
        if slot in self.empty:
            return "sold_out"
        return None

    def record_outcome(self, slot: int, result: str, limit: int) -> bool:
        """Count consecutive mechanical failures; True when this one disables the slot."""
        if result == "ok":
            self.failures.pop(slot, None)
            return False
        if result not in ("jam", "no_drop", "timeout"):
            return False
        self.failures[slot] = self.failures.get(slot, 0) + 1
        if self.failures[slot] >= limit and slot not in self.auto_disabled:
            self.auto_disabled.add(slot)
            return True
        return False

    def reenable_all(self) -> bool:
        changed = bool(self.auto_disabled or self.failures)
        self.auto_disabled.clear()
        self.failures.clear()
        return changed

    def prune_promos(self, now: float) -> None:
        self.promos = [p for p in self.promos if p.end > now]

    def settings(self) -> dict:
        return {
            "prices": {str(k): v for k, v in sorted(self.prices.items())},
            "promos": [[p.slot, p.amount, p.start, p.end] for p in self.promos],
            "disabled_slots": sorted(self.auto_disabled),
        }

    def load_settings(self, saved: dict) -> None:
        self.prices = {int(k): int(v) for k, v in saved.get("prices", {}).items()}
        self.promos = [Promo(*map(int, p)) for p in saved.get("promos", [])]
        self.auto_disabled = set(saved.get("disabled_slots", []))
