"""Runs orders-API calls off the owner thread and posts their outcomes back as core events.

The customer waits on these calls, and a dead 4G link makes them slow; the owner thread must go
on polling the board and taking payments meanwhile, so every call runs on a small pool.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from vending import orders as O
from vending.core import actions as A
from vending.core import events as E

log = logging.getLogger("vending.orders")

@dataclass(frozen=True)
class FetchedPayment:
    """A payment message found by a reconciliation GET; verified by the owner like any other."""
    order_id: str
    message: dict


class OrdersWorker:
    def __init__(self, client: O.OrdersClient | None, post: Callable[[object], None], *,
                 machine_id: str, key: bytes, pay_base_url: str | None, offline_ttl: int):
        self._client, self._post = client, post
        self._mid, self._key = machine_id, key
        self._pay_base_url, self._ttl = pay_base_url, offline_ttl
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="orders")

    def submit(self, a: object, now: float) -> None:
        if isinstance(a, A.MintOfflineOrder):
            # Pure and fast: no need for the pool, but it still re-enters through the inbox
            # so the core sees it as an ordinary event.
            self._post(self._mint(a, now))
            return
        self._pool.submit(self._run, a)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()

    def _mint(self, a: A.MintOfflineOrder, now: float) -> object:
        try:
            o = O.offline_order(self._mid, self._key, self._pay_base_url, a.slot, a.amount,
                                a.currency, a.session_id, int(now), self._ttl)
        except (ValueError, TypeError) as e:
            return E.OrderFailed(a.session_id, "refused", f"offline order: {e}")
        return E.OrderCreated(a.session_id, o.order_id, o.qr_url, o.amount, o.currency,
                              o.expires_at, offline=True, slot=a.slot)

    def _run(self, a: object) -> None:
        try:
            result = self._call(a)
        except Exception:  # a bug here must not kill the pool thread silently
            log.exception("orders call failed unexpectedly: %s", type(a).__name__)
            result = None
        offset = self._client.clock_offset if self._client is not None else None
        if offset is not None:
            # Every time, small ones too: the owner corrects by it (or stops once the time
            # source has caught up), and the core decides whether it is news. Before the
            # result, so the order's expires_at is already read in the right time.
            self._post(E.ClockSkew(offset))
        if result is not None:
            self._post(result)

    def _call(self, a: object) -> object:
        c = self._client
        if isinstance(a, A.CreateOrder):
            if c is None:
                return E.OrderFailed(a.session_id, "unreachable", "no orders API configured")
            try:
                o = c.create_order(a.slot, a.product_id, a.amount, a.currency, a.session_id)
            except O.BadOrder as e:
                return E.OrderFailed(a.session_id, "bad_order", str(e))
            except O.Refused as e:
                return E.OrderFailed(a.session_id, "refused", str(e))
            except O.OrdersError as e:
                return E.OrderFailed(a.session_id, "unreachable", str(e))
            return E.OrderCreated(a.session_id, o.order_id, o.qr_url, o.amount, o.currency,
                                  o.expires_at, offline=False, slot=a.slot)
        if isinstance(a, A.CancelOrder):
            try:
                state = c.cancel_order(a.order_id) if c else "unreachable"
            except O.OrdersError as e:
                log.warning("cancel failed order_id=%s: %s", a.order_id, e)
                state = "unreachable"
            return E.CancelAnswered(a.order_id, state)
        if isinstance(a, A.FetchOrder):
            try:
                state, payment = c.get_order(a.order_id) if c else ("unreachable", None)
            except O.OrdersError as e:
                log.info("reconciliation failed order_id=%s: %s", a.order_id, e)
                return E.OrderFetched(a.order_id, "unreachable")
            if payment is not None:
                self._post(FetchedPayment(a.order_id, payment))
            return E.OrderFetched(a.order_id, state)
        raise TypeError(f"not an orders action: {a!r}")
