"""Everything a sweep reports, in one JSON-able object, and its plain-text table."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bonsai.errors import ConfigError
from bonsai.stats import wilson_interval
from bonsai.sweep.ratings.outcome import Outcome
from bonsai.sweep.ratings.statistics import bootstrap_intervals, bradley_terry, to_elo

CONFIDENCE_BINS = 10  # histogram bins over [0.5, 1.0]
_TIE = 1e-9  # log-strengths closer than this share a rank


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
    low, high = wilson_interval(wins_a, len(outcomes))
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

