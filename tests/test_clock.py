"""vending.clock: how far our clock is off the cloud's, and when that stops being true."""
from __future__ import annotations

from vending.clock import ClockCorrection


class Clocks:
    def __init__(self) -> None:
        self.raw, self.mono = 1_000_000.0, 50.0

    def step(self, seconds: float, *, set_wall_by: float = 0.0) -> None:
        self.raw += seconds + set_wall_by
        self.mono += seconds


def make() -> tuple[Clocks, ClockCorrection]:
    c = Clocks()
    return c, ClockCorrection(raw=lambda: c.raw, monotonic=lambda: c.mono)


def test_small_offsets_are_left_to_the_time_source():
    _, corr = make()
    assert corr.learn(30.0) is False and corr.offset == 0.0
    assert corr.learn(-60.0) is False and corr.offset == 0.0


def test_a_large_offset_corrects_and_a_second_of_jitter_changes_nothing():
    _, corr = make()
    assert corr.learn(86_400.0) is True and corr.offset == 86_400.0
    assert corr.learn(86_401.0) is False and corr.offset == 86_400.0
    assert corr.learn(90_000.0) is True and corr.offset == 90_000.0


def test_the_correction_goes_when_the_time_source_catches_up():
    _, corr = make()
    corr.learn(-7200.0)
    assert corr.learn(1.0) is True and corr.offset == 0.0


def test_a_jump_of_the_system_clock_voids_the_correction_until_measured_again():
    c, corr = make()
    corr.learn(3600.0)
    assert corr.check() is False
    c.step(5.0)
    assert corr.check() is False and corr.offset == 3600.0   # time passing is not a jump
    c.step(1.0, set_wall_by=3600.0)                           # NTP set the system clock
    assert corr.check() is True and corr.offset == 0.0        # not applied twice
    assert corr.learn(0.5) is False                           # and the next measure agrees


def test_a_jump_with_no_correction_in_force_changes_nothing():
    c, corr = make()
    corr.check()
    c.step(1.0, set_wall_by=-86_400.0)
    assert corr.check() is False and corr.offset == 0.0
