"""The Bradley-Terry fit of a sweep's outcomes, and its percentile bootstrap over debates.

A tie counts as half a game won each way. The fit carries a weak prior (a few virtual drawn games
against an average opponent) because small sweeps routinely contain a competitor that won or lost
everything, whose plain maximum-likelihood strength is infinite.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from bonsai.errors import ConfigError
from bonsai.sweep.ratings.outcome import Outcome

log = logging.getLogger(__name__)

ELO_BASE = 1000.0
ELO_PER_NAT = 400.0 / math.log(10.0)  # Elo's 400 points per factor of ten in odds


def to_elo(log_strength: float) -> float:
    """Natural-log BT strength on the Elo scale (mean competitor at 1000)."""
    return ELO_BASE + ELO_PER_NAT * log_strength



def _labels(outcomes: Sequence[Outcome]) -> list[str]:
    labels = sorted({o.a for o in outcomes} | {o.b for o in outcomes})
    if len(labels) < 2:
        raise ConfigError(
            f"cannot rate a single competitor ({labels[0] if labels else 'none'})",
            hint="a sweep needs at least two different persona@version competitors to rate",
        )
    return labels


def _pairs(outcomes: Sequence[Outcome], index: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(winner, loser, points, debate) rows for each debate that carries rating information (self-play
    says nothing about relative strength): a win is one row worth 1, a tie two rows worth 0.5, one each
    way."""
    rows: list[tuple[int, int, float, int]] = []
    for k, o in enumerate(outcomes):
        if o.self_play:
            continue
        a, b = index[o.a], index[o.b]
        if o.tie:
            rows += [(a, b, 0.5, k), (b, a, 0.5, k)]
        else:
            rows.append((a, b, 1.0, k) if o.winner == "A" else (b, a, 1.0, k))
    winners, losers, points, debates = (np.array(col) for col in zip(*rows, strict=True)) if rows else (np.zeros(0),) * 4
    return winners.astype(np.int64), losers.astype(np.int64), points.astype(float), debates.astype(np.int64)


def _win_matrix(
    winners: np.ndarray, losers: np.ndarray, size: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """``W[i, j]`` = how often i beat j (ties as halves, given as ``weights``)."""
    flat = np.bincount(winners * size + losers, weights=weights, minlength=size * size)
    return flat.astype(float).reshape(size, size)


def _reachable(adjacent: np.ndarray) -> np.ndarray:
    seen = np.zeros(len(adjacent), dtype=bool)
    seen[0] = True
    frontier = seen.copy()
    while frontier.any():
        frontier = adjacent[frontier].any(axis=0) & ~seen
        seen |= frontier
    return seen


def _connected(games: np.ndarray) -> bool:
    return bool(_reachable(games > 0).all())


def _mle_exists(wins: np.ndarray) -> bool:
    """Without a prior the MLE is finite only if, for every split of the competitors in two groups, each
    group beat the other at least once (Hunter 2004, assumption 1): the "beat" graph is strongly
    connected."""
    beat = wins > 0
    return bool(_reachable(beat).all() and _reachable(beat.T).all())


def _log_likelihood(theta: np.ndarray, wins: np.ndarray, prior: float) -> float:
    diff = theta[:, None] - theta[None, :]
    value = float(np.sum(wins * -np.logaddexp(0.0, -diff)))
    if prior:
        # prior/2 wins and prior/2 losses against a virtual opponent of strength 0
        value += prior * float(np.sum(0.5 * theta - np.logaddexp(0.0, theta)))
    return value


def _fit(wins: np.ndarray, prior: float, *, tol: float = 1e-9, max_iter: int = 200) -> np.ndarray:
    """Centred log-strengths maximising the (regularised) BT likelihood, by Newton with step halving.

    Newton rather than MM because the bootstrap refits a thousand times and Newton needs ~10 steps
    where MM needs hundreds once strengths spread out. The objective is concave, so halving until it
    stops decreasing is enough for global convergence. With ``prior == 0`` the strengths are defined up
    to a constant; adding ``11ᵀ`` to the negative Hessian removes that direction from each step.
    """
    size = len(wins)
    games = wins + wins.T
    won = wins.sum(axis=1) + prior / 2
    theta = np.zeros(size)
    current = _log_likelihood(theta, wins, prior)
    for iteration in range(1, max_iter + 1):
        p = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))
        s = 1.0 / (1.0 + np.exp(-theta))
        grad = won - (games * p).sum(axis=1) - prior * s
        v = games * p * (1.0 - p)
        neg_hessian = np.diag(v.sum(axis=1) + prior * s * (1.0 - s)) - v
        if prior == 0:
            neg_hessian += 1.0
        step = np.linalg.solve(neg_hessian, grad)
        scale = 1.0
        while True:
            candidate = theta + scale * step
            value = _log_likelihood(candidate, wins, prior)
            if value >= current - 1e-12 * max(1.0, abs(current)) or scale < 1e-8:
                break
            scale /= 2
        theta, current = candidate, value
        if float(np.max(np.abs(step))) < tol:
            log.debug("Bradley-Terry converged in %d Newton steps", iteration)
            return theta - theta.mean()
    raise RuntimeError(f"Bradley-Terry fit did not converge in {max_iter} Newton steps")


def _check_prior(prior_games: float) -> None:
    if not math.isfinite(prior_games) or prior_games < 0:
        raise ConfigError(
            f"prior_games must be a finite number >= 0, not {prior_games}",
            hint="1 (the default) is a weak prior that keeps unbeaten competitors finite",
        )


def bradley_terry(outcomes: Sequence[Outcome], *, prior_games: float = 1.0) -> dict[str, float]:
    """Bradley-Terry log-strengths (natural log, mean 0): P(i beats j) = 1 / (1 + exp(s_j - s_i)).

    ``prior_games`` virtual games per competitor, half won and half lost, against a virtual opponent of
    strength 0 keep every rating finite and make competitors from unconnected groups comparable (only
    through the prior, hence the warning). ``prior_games=0`` gives the plain MLE, which exists only when
    every group of competitors beat the rest at least once.
    """
    _check_prior(prior_games)
    labels = _labels(outcomes)
    index = {label: k for k, label in enumerate(labels)}
    winners, losers, points, _ = _pairs(outcomes, index)
    wins = _win_matrix(winners, losers, len(labels), weights=points)
    if not _connected(wins + wins.T):
        log.warning(
            "the competitors do not all meet, directly or through others: ratings of unconnected groups "
            "are compared only through the prior"
        )
    if prior_games == 0 and not _mle_exists(wins):
        raise ConfigError(
            "without a prior these ratings are infinite: some group of competitors never beat, or never "
            "lost to, the others",
            hint="use prior_games > 0 (1 is the default)",
        )
    theta = _fit(wins, prior_games)
    return {label: float(theta[k]) for k, label in enumerate(labels)}


def bootstrap_intervals(
    outcomes: Sequence[Outcome],
    *,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    prior_games: float = 1.0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of the log-strengths: resample debates with replacement, refit.

    Debates (self-play included) are the resampling unit because that is what the sweep draws. A
    competitor missing from a resample keeps its prior-only strength, so the set being centred stays
    the same across resamples. Same ``seed``, same intervals.
    """
    _check_prior(prior_games)
    if n < 1:
        raise ConfigError(f"bootstrap needs at least one resample, not {n}", hint="use n >= 100 for intervals")
    if not 0 < level < 1:
        raise ConfigError(f"interval level must be between 0 and 1, not {level}", hint="0.95 is usual")
    labels = _labels(outcomes)
    index = {label: k for k, label in enumerate(labels)}
    winners, losers, points, rated = _pairs(outcomes, index)
    rng = np.random.default_rng(seed)
    samples: list[np.ndarray] = []
    for _ in range(n):
        counts = np.bincount(rng.integers(0, len(outcomes), size=len(outcomes)), minlength=len(outcomes))
        wins = _win_matrix(winners, losers, len(labels), weights=points * counts[rated])
        if prior_games == 0 and not _mle_exists(wins):
            continue
        samples.append(_fit(wins, prior_games))
    if not samples:
        raise ConfigError(
            "no bootstrap resample has finite ratings without a prior",
            hint="use prior_games > 0 (1 is the default)",
        )
    if len(samples) < n:
        log.warning("%d of %d bootstrap resamples had no finite ratings and were dropped", n - len(samples), n)
    low, high = np.quantile(np.stack(samples), [(1 - level) / 2, (1 + level) / 2], axis=0)
    return {label: (float(low[k]), float(high[k])) for k, label in enumerate(labels)}

