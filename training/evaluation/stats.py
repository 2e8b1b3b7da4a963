"""Point estimates with 95% intervals, the only statistics ``bonsai eval`` reports.

Samples of one motion are not independent (the same prompt, the same adapter), so intervals on a
difference resample whole motions (a cluster bootstrap), not single speeches: a lucky motion cannot
make an adapter look better than the motions support.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from bonsai.stats import Z95, wilson_interval

BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval; ``n`` is the number of observations it rests on."""

    mean: float | None
    low: float | None
    high: float | None
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)

    @classmethod
    def empty(cls) -> Estimate:
        return cls(None, None, None, 0)

    def __str__(self) -> str:
        if self.mean is None:
            return "n/a"
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def mean_interval(values: Sequence[float]) -> Estimate:
    """The mean with a normal-approximation 95% interval (a single value gets a zero-width one)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return Estimate.empty()
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return Estimate(mean, mean, mean, 1)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    half = Z95 * sd / math.sqrt(len(xs))
    return Estimate(mean, mean - half, mean + half, len(xs))


def proportion(successes: float, n: int) -> Estimate:
    """A rate with its Wilson 95% interval (``successes`` may hold halves: ties)."""
    if n <= 0:
        return Estimate.empty()
    low, high = wilson_interval(successes, n)
    return Estimate(successes / n, low, high, n)


def clustered_delta(
    candidate: Sequence[tuple[str, float]], reference: Sequence[tuple[str, float]], *, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES
) -> Estimate:
    """mean(candidate) - mean(reference), with a 95% percentile interval from resampling clusters.

    Each observation is (cluster, value); a cluster (a motion) is drawn with all of its observations
    on both sides, so the two means always cover the same motions.
    """
    clusters = sorted({c for c, _ in candidate} | {c for c, _ in reference})
    if not clusters:
        return Estimate.empty()
    by_cluster = {c: ([v for k, v in candidate if k == c], [v for k, v in reference if k == c]) for c in clusters}
    if not any(a for a, _ in by_cluster.values()) or not any(b for _, b in by_cluster.values()):
        return Estimate.empty()

    def delta(chosen: Sequence[str]) -> float | None:
        a = [v for c in chosen for v in by_cluster[c][0]]
        b = [v for c in chosen for v in by_cluster[c][1]]
        if not a or not b:
            return None
        return sum(a) / len(a) - sum(b) / len(b)

    point = delta(clusters)
    assert point is not None
    n = len(candidate) + len(reference)
    if len(clusters) < 2:
        return Estimate(point, point, point, n)
    rng = np.random.default_rng(seed)
    draws = [delta([clusters[i] for i in rng.integers(0, len(clusters), len(clusters))]) for _ in range(resamples)]
    finite = np.array([d for d in draws if d is not None])
    low, high = np.percentile(finite, [2.5, 97.5])
    return Estimate(point, float(low), float(high), n)
