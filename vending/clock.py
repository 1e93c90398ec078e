"""How far the machine's wall clock is off the cloud's, for the comparisons that cross machines.

Vending controllers often have no battery-backed clock and boot hours or years off. The core's
own deadlines do not care (they are durations on the machine's clock), but some of its
comparisons are against other machines' clocks: a command's `ts` and `expires`, an ack's `ts`,
an order's `expires_at`, a promo's window, the `expires_at` the pay page checks on an offline QR.
Off by more than 300 s, commands are refused as stale, acks are ignored forever and QRs expire
at once. Contract §2 lets the machine correct its clock by the offset it learns from the orders
API's `Date` header. This keeps that correction; the core adds it to `now` for exactly those
comparisons and nowhere else, so a correction never makes a running session's deadline jump.
The system clock is left alone: that is the time source's job, and its alert is `clock_offset`.

Offsets of a minute or less are ignored (Date has one-second resolution; NTP handles drift).
When the system clock itself is set (wall and monotonic time part by more than a minute), the
correction is dropped until the next API answer measures it again.

One in the controller (the core's comparisons, our events' ts) and one in the orders client (the
X-Timestamp it signs), both fed by the client's measurements; neither is shared with the other.
"""
from __future__ import annotations

import time
from collections.abc import Callable

CORRECT_ABOVE_S = 60.0


class ClockCorrection:
    def __init__(self, raw: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._raw, self._mono = raw, monotonic
        self.offset = 0.0
        self._last: tuple[float, float] | None = None   # (raw, monotonic) at the last check

    def learn(self, offset: float) -> bool:
        """`offset` = the server's time minus our raw clock, as the orders client measured it.
        Returns True if the correction changed."""
        new = offset if abs(offset) > CORRECT_ABOVE_S else 0.0
        if abs(new - self.offset) <= CORRECT_ABOVE_S and (new == 0.0) == (self.offset == 0.0):
            return False     # the same correction, give or take the Date header's resolution
        self.offset = new
        return True

    def check(self) -> bool:
        """Call now and then: True if the system clock was set since the last call and the
        correction was dropped (it would now be applied twice)."""
        raw, mono = self._raw(), self._mono()
        last, self._last = self._last, (raw, mono)
        if last is None or not self.offset:
            return False
        if abs((raw - last[0]) - (mono - last[1])) <= CORRECT_ABOVE_S:
            return False
        self.offset = 0.0
        return True
