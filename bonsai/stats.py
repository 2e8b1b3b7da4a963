"""Binomial intervals shared by the sweep ratings, the promotion gate and the evaluations."""

from __future__ import annotations

import math
import statistics

#: the normal quantile of a two-sided 95% interval
Z95 = statistics.NormalDist().inv_cdf(0.975)


def wilson_interval(wins: float, n: int, *, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial rate; unlike the normal one it stays inside [0, 1] and is
    sensible at 0/n and n/n, which small samples hit often. ``wins`` may count ties as halves (as the
    score-based Wilson interval does for Chatbot Arena's win rates). With no trials: (0, 1), which
    says nothing."""
    if n <= 0:
        return 0.0, 1.0
    p = wins / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact ends at 0/n and n/n, where rounding would otherwise leave 1e-17 or 0.9999999999999999
    low = 0.0 if wins == 0 else max(0.0, centre - half)
    high = 1.0 if wins == n else min(1.0, centre + half)
    return low, high
