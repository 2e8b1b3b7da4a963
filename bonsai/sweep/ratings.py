"""Ratings for a sweep: Bradley-Terry strengths with bootstrap intervals, side bias, head-to-head rates.

A sweep gives a few hundred noisy pairwise outcomes at best, so every number here comes with its
uncertainty: ratings with a percentile bootstrap over debates, the side-A win rate with a Wilson
interval. A tie counts as half a win for each side, as Chatbot Arena counts them: in the
Bradley-Terry fit (half a game won each way), in every win rate and in the side bias. The fit carries a weak prior (a few virtual drawn games against an average opponent) because
small sweeps routinely contain a competitor that won or lost everything, whose plain maximum-likelihood
strength is infinite.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bonsai import atomic
from bonsai.errors import ConfigError
from bonsai.sweep import plots

log = logging.getLogger(__name__)

ELO_BASE = 1000.0
ELO_PER_NAT = 400.0 / math.log(10.0)  # Elo's 400 points per factor of ten in odds
CONFIDENCE_BINS = 10  # histogram bins over [0.5, 1.0]
_TIE = 1e-9  # log-strengths closer than this share a rank

RESULT_COLUMNS = (
    "debate_id",
    "motion",
    "a",
    "b",
    "winner",
    "winner_label",
    "prob_a",
    "confidence",
    "judge",
    "format",
    "seed",
    "candidates",
    "tokens",
)


@dataclass(frozen=True)
class Outcome:
    """One finished debate, as the store knows it."""

    debate_id: str
    motion: str
    a: str  # competitor label on side A
    b: str  # competitor label on side B
    winner: str  # "A", "B" or "tie"
    prob_a: float | None  # judge's P(A wins), averaged over both labellings
    confidence: float | None  # max(prob_a, 1-prob_a)
    judge: str
    format: str
    seed: int | None
    candidates: int
    tokens: int  # output tokens spent on the debate

    def __post_init__(self) -> None:
        # Checked here so a typo such as "a" or "draw" fails loudly instead of counting as a B win.
        if self.winner not in ("A", "B", "tie"):
            raise ValueError(f"debate {self.debate_id}: winner must be 'A', 'B' or 'tie', not {self.winner!r}")

    @property
    def tie(self) -> bool:
        return self.winner == "tie"

    @property
    def points_a(self) -> float:
        """What side A scored: 1 for a win, 0.5 for a tie, 0 for a loss."""
        return 1.0 if self.winner == "A" else 0.5 if self.winner == "tie" else 0.0

    def points(self, label: str) -> float:
        """What competitor ``label`` scored in this debate (it must have played it; self-play: side A's seat)."""
        return self.points_a if label == self.a else 1.0 - self.points_a

    @property
    def winner_label(self) -> str | None:
        """The winning competitor; None for a tie."""
        return None if self.tie else self.a if self.winner == "A" else self.b

    @property
    def loser_label(self) -> str | None:
        return None if self.tie else self.b if self.winner == "A" else self.a

    @property
    def self_play(self) -> bool:
        return self.a == self.b


def to_elo(log_strength: float) -> float:
    """Natural-log BT strength on the Elo scale (mean competitor at 1000)."""
    return ELO_BASE + ELO_PER_NAT * log_strength


def wilson_interval(wins: float, n: int, *, level: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial rate; unlike the normal one it stays inside [0, 1] and is
    sensible at 0/n and n/n, which small sweeps hit often. ``wins`` may count ties as halves (as the
    score-based Wilson interval does for Chatbot Arena's win rates). ``None`` when there are no trials."""
    if n <= 0:
        return None
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    p = wins / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact ends at 0/n and n/n, where rounding would otherwise leave 1e-17 or 0.9999999999999999
    low = 0.0 if wins == 0 else max(0.0, centre - half)
    high = 1.0 if wins == n else min(1.0, centre + half)
    return low, high


# --- Bradley-Terry ----------------------------------------------------------------------------------


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


# --- the report -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompetitorRating:
    label: str
    rank: int
    games: int  # self-play excluded: it is always one win and one loss
    wins: float  # a tie counts half
    win_rate: float | None
    log_strength: float
    elo: float
    elo_low: float | None  # None when the report was made without bootstrap
    elo_high: float | None


@dataclass(frozen=True)
class Record:
    wins: float  # a tie counts half
    games: int
    rate: float | None
    ties: int = 0


@dataclass(frozen=True)
class SideRecords:
    as_a: Record  # wins = debates won while on side A
    as_b: Record


@dataclass(frozen=True)
class SideStats:
    """Side bias: a fair format and judge give side A about half the wins."""

    n: int
    wins_a: float  # a tie counts half
    rate_a: float
    low: float
    high: float
    per_competitor: dict[str, SideRecords]
    ties: int = 0


@dataclass(frozen=True)
class WinMatrix:
    """``cells[i][j]``: how ``labels[i]`` fared against ``labels[j]``; ``None`` where they never met
    (and on the diagonal: self-play is in the side statistics)."""

    labels: list[str]
    cells: list[list[Record | None]]


@dataclass(frozen=True)
class JudgeConfidence:
    count: int
    mean: float


@dataclass(frozen=True)
class ConfidenceStats:
    edges: list[float]  # CONFIDENCE_BINS + 1 edges over [0.5, 1.0]
    counts: list[int]
    count: int  # debates with a recorded confidence
    mean: float | None
    median: float | None
    per_judge: dict[str, JudgeConfidence]


@dataclass(frozen=True)
class Totals:
    debates: int
    rated: int  # debates between different competitors
    self_play: int
    tokens: int


@dataclass(frozen=True)
class RatingsReport:
    competitors: list[CompetitorRating]  # best first
    sides: SideStats
    matrix: WinMatrix
    confidence: ConfidenceStats
    totals: Totals
    prior_games: float
    bootstrap: int
    seed: int
    level: float = 0.95

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _rate(wins: float, games: int) -> float | None:
    return wins / games if games else None


def _ranks(ordered: list[float]) -> list[int]:
    """Competition ranking ("1224") over strengths sorted best first."""
    ranks: list[int] = []
    for k, value in enumerate(ordered):
        ranks.append(ranks[-1] if k and ordered[k - 1] - value < _TIE else k + 1)
    return ranks


def _side_stats(outcomes: Sequence[Outcome], labels: list[str]) -> SideStats:
    wins_a = sum(o.points_a for o in outcomes)
    low, high = wilson_interval(wins_a, len(outcomes)) or (0.0, 1.0)
    per: dict[str, SideRecords] = {}
    for label in labels:
        on_a = [o for o in outcomes if o.a == label]
        on_b = [o for o in outcomes if o.b == label]
        won_a = sum(o.points_a for o in on_a)
        won_b = sum(1.0 - o.points_a for o in on_b)
        per[label] = SideRecords(
            as_a=Record(won_a, len(on_a), _rate(won_a, len(on_a)), sum(o.tie for o in on_a)),
            as_b=Record(won_b, len(on_b), _rate(won_b, len(on_b)), sum(o.tie for o in on_b)),
        )
    return SideStats(len(outcomes), wins_a, wins_a / len(outcomes), low, high, per, sum(o.tie for o in outcomes))


def _win_matrix_report(outcomes: Sequence[Outcome], labels: list[str]) -> WinMatrix:
    index = {label: k for k, label in enumerate(labels)}
    wins = np.zeros((len(labels), len(labels)), dtype=float)
    ties = np.zeros((len(labels), len(labels)), dtype=int)
    for o in outcomes:
        if not o.self_play:
            a, b = index[o.a], index[o.b]
            wins[a, b] += o.points_a
            wins[b, a] += 1.0 - o.points_a
            if o.tie:
                ties[a, b] += 1
                ties[b, a] += 1
    games = np.rint(wins + wins.T).astype(int)
    cells = [
        [
            Record(float(wins[i, j]), int(games[i, j]), float(wins[i, j] / games[i, j]), int(ties[i, j])) if games[i, j] else None
            for j in range(len(labels))
        ]
        for i in range(len(labels))
    ]
    return WinMatrix(list(labels), cells)


def _confidence_stats(outcomes: Sequence[Outcome]) -> ConfidenceStats:
    known = [o for o in outcomes if o.confidence is not None]
    values = np.array([o.confidence for o in known], dtype=float)
    counts, edges = np.histogram(np.clip(values, 0.5, 1.0), bins=CONFIDENCE_BINS, range=(0.5, 1.0))
    per_judge: dict[str, JudgeConfidence] = {}
    for judge in sorted({o.judge for o in known}):
        mine = [float(o.confidence) for o in known if o.judge == judge]  # type: ignore[arg-type]
        per_judge[judge] = JudgeConfidence(len(mine), statistics.fmean(mine))
    return ConfidenceStats(
        edges=[round(float(e), 6) for e in edges],
        counts=[int(c) for c in counts],
        count=len(known),
        mean=float(values.mean()) if len(known) else None,
        median=float(np.median(values)) if len(known) else None,
        per_judge=per_judge,
    )


def summarize(
    outcomes: Sequence[Outcome], *, bootstrap: int = 1000, seed: int = 0, prior_games: float = 1.0
) -> RatingsReport:
    """Everything the sweep reports, in one JSON-able object; ``bootstrap=0`` skips the intervals."""
    if not outcomes:
        raise ConfigError(
            "no finished debates to rate",
            hint="run the sweep first (or resume it); ratings need at least one finished debate",
        )
    strengths = bradley_terry(outcomes, prior_games=prior_games)
    intervals = bootstrap_intervals(outcomes, n=bootstrap, seed=seed, prior_games=prior_games) if bootstrap else {}
    order = sorted(strengths, key=lambda label: (-strengths[label], label))
    ranks = _ranks([strengths[label] for label in order])
    competitors = []
    for label, rank in zip(order, ranks, strict=True):
        games = sum(1 for o in outcomes if not o.self_play and label in (o.a, o.b))
        wins = sum(o.points(label) for o in outcomes if not o.self_play and label in (o.a, o.b))
        interval = intervals.get(label)
        competitors.append(
            CompetitorRating(
                label=label,
                rank=rank,
                games=games,
                wins=wins,
                win_rate=_rate(wins, games),
                log_strength=strengths[label],
                elo=to_elo(strengths[label]),
                elo_low=to_elo(interval[0]) if interval else None,
                elo_high=to_elo(interval[1]) if interval else None,
            )
        )
    self_play = sum(o.self_play for o in outcomes)
    return RatingsReport(
        competitors=competitors,
        sides=_side_stats(outcomes, order),
        matrix=_win_matrix_report(outcomes, order),
        confidence=_confidence_stats(outcomes),
        totals=Totals(len(outcomes), len(outcomes) - self_play, self_play, sum(o.tokens for o in outcomes)),
        prior_games=float(prior_games),
        bootstrap=bootstrap,
        seed=seed,
    )


# --- output -----------------------------------------------------------------------------------------


def _count(wins: float) -> str:
    """7, or 7.5 when ties made a half."""
    return f"{wins:g}"


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


def format_table(report: RatingsReport) -> str:
    """The ratings as an aligned plain-text table, then side bias and the number of debates."""
    ci_head = f"{report.level:.0%} CI"
    rows = [("rank", "competitor", "elo", ci_head, "games", "win rate")]
    for c in report.competitors:
        ci = "-" if c.elo_low is None or c.elo_high is None else f"[{c.elo_low:.0f}, {c.elo_high:.0f}]"
        rows.append((str(c.rank), c.label, f"{c.elo:.0f}", ci, str(c.games), _pct(c.win_rate)))
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    left = {1, 3}  # competitor and interval read better left-aligned
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[k]) if k in left else cell.rjust(widths[k]) for k, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    s = report.sides
    lines.append("")
    ties = f", {s.ties} ties counted as half" if s.ties else ""
    lines.append(f"side A won {_count(s.wins_a)}/{s.n} = {s.rate_a:.1%} (95% CI {s.low:.1%} to {s.high:.1%}; fair is 50%{ties})")
    t = report.totals
    extra = f", {t.self_play} self-play" if t.self_play else ""
    lines.append(f"{t.debates} debates{extra}, {t.tokens} output tokens")
    return "\n".join(lines)


def _cell(value: object) -> object:
    return "" if value is None else value


def results_csv(outcomes: Sequence[Outcome]) -> str:
    """One row per debate, for spreadsheets and pandas."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(RESULT_COLUMNS)
    for o in outcomes:
        writer.writerow(
            [
                o.debate_id,
                o.motion,
                o.a,
                o.b,
                o.winner,
                o.winner_label or "",
                _cell(o.prob_a),
                _cell(o.confidence),
                o.judge,
                o.format,
                _cell(o.seed),
                o.candidates,
                o.tokens,
            ]
        )
    return buf.getvalue()


def write_report(report: RatingsReport, outcomes: Sequence[Outcome], out_dir: Path) -> list[Path]:
    """Write results.csv, ratings.json and three PNGs into ``out_dir``; return their paths.

    Everything is rendered in memory first, so a failure there (a plot, say) leaves ``out_dir`` as it
    was; then each file is replaced atomically, so a crash mid-way leaves whole files only, old or new.
    """
    rendered: list[tuple[str, bytes]] = [
        ("results.csv", results_csv(outcomes).encode("utf-8")),
        ("ratings.json", (json.dumps(report.to_json(), ensure_ascii=False, indent=2) + "\n").encode("utf-8")),
        ("ratings.png", plots.ratings_png(report)),
        ("winrate.png", plots.winrate_png(report)),
        ("confidence.png", plots.confidence_png(report)),
    ]
    paths = []
    for name, data in rendered:
        path = out_dir / name
        atomic.write_bytes(path, data)
        paths.append(path)
    log.info("wrote sweep report (%d files) to %s", len(paths), out_dir)
    return paths
