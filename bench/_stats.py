"""Percentiles and ratios shared by the benches in bench/ (plain functions, no state).

Every bench prints a measured path next to a baseline taken in the same run and the ratio of
the two, never an absolute threshold: a slow CI box slows both sides, the ratio stays put.
"""

from __future__ import annotations

from collections.abc import Sequence


def pct(samples: Sequence[float], q: float) -> float:
    """The nearest-rank q-quantile (0 <= q <= 1) of `samples`: an observed value, never an
    interpolation, so a p99 of 200 samples is the second-largest one."""
    if not samples:
        raise ValueError("pct() of no samples")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in 0..1, got {q!r}")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def p50_p99(samples: Sequence[float]) -> tuple[float, float]:
    return pct(samples, 0.50), pct(samples, 0.99)


def ratio(measured: float, baseline: float) -> float:
    """measured / baseline; inf when the baseline is zero (a clock too coarse to see it)."""
    return measured / baseline if baseline > 0 else float("inf")


def paired_sum(*series: Sequence[float]) -> list[float]:
    """Element-wise sum of equally long series taken in the same iterations: the baseline of a
    path made of several legs, each leg's sample taken next to the others."""
    lengths = {len(s) for s in series}
    if len(lengths) != 1:
        raise ValueError(f"paired_sum() of series of different lengths {sorted(lengths)}")
    return [sum(xs) for xs in zip(*series)]


def ms(seconds: float) -> str:
    """Seconds as a right-aligned millisecond column, 3 decimals (µs resolution)."""
    return f"{seconds * 1e3:8.3f}ms"


def times(x: float) -> str:
    """A ratio column: ``   3.21x``."""
    return f"{x:8.2f}x"
