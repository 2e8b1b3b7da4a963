"""PNG figures of a sweep's ratings report, returned as bytes so the caller can write them atomically.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot: pyplot
keeps a global registry of open figures and a global backend, neither of which belongs in a library
whose sweeps run concurrently. matplotlib is imported inside each function so that importing bonsai
(and rating without plotting) does not pay for it.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from bonsai.sweep.ratings.report import RatingsReport

DPI = 110


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def ratings_png(report: RatingsReport) -> bytes:
    """Elo per competitor with its bootstrap interval, best at the top."""
    competitors = report.competitors
    fig = _figure(7.5, 1.2 + 0.4 * len(competitors))
    ax = fig.add_subplot()
    ys = list(range(len(competitors) - 1, -1, -1))
    elos = [c.elo for c in competitors]
    below = [c.elo - c.elo_low if c.elo_low is not None else 0.0 for c in competitors]
    above = [c.elo_high - c.elo if c.elo_high is not None else 0.0 for c in competitors]
    ax.errorbar(elos, ys, xerr=[below, above], fmt="o", color="tab:blue", ecolor="tab:blue", capsize=4)
    ax.axvline(1000, color="grey", linestyle=":", linewidth=1)
    ax.set_yticks(ys, [f"{c.rank}. {c.label}" for c in competitors])
    ax.set_xlabel(f"Elo (Bradley-Terry), {report.level:.0%} bootstrap interval" if report.bootstrap else "Elo")
    ax.set_title(f"ratings from {report.totals.rated} debates")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def winrate_png(report: RatingsReport) -> bytes:
    """Head-to-head win rate of each row competitor against each column; grey where they never met."""
    import matplotlib
    import numpy as np

    labels = report.matrix.labels
    size = len(labels)
    rates = np.array(
        [[math.nan if cell is None else cell.rate for cell in row] for row in report.matrix.cells], dtype=float
    )
    side = max(4.0, 1.6 + 0.75 * size)
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(rates), cmap=cmap, vmin=0.0, vmax=1.0)
    fontsize = max(5.0, min(10.0, 64.0 / size))
    for i, row in enumerate(report.matrix.cells):
        for j, cell in enumerate(row):
            if cell is None or cell.rate is None:
                continue
            colour = "white" if abs(cell.rate - 0.5) > 0.3 else "black"
            ax.text(j, i, f"{cell.rate:.0%}\n{cell.wins:g}/{cell.games}", ha="center", va="center",
                    fontsize=fontsize, color=colour)
    ax.set_xticks(range(size), labels, rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticks(range(size), labels, fontsize=fontsize)
    ax.set_xlabel("opponent")
    ax.set_title("win rate of row against column")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _png(fig)


def confidence_png(report: RatingsReport) -> bytes:
    """Histogram of the judge's confidence, max(P(A), 1 - P(A)): near 0.5 means coin flips."""
    conf = report.confidence
    fig = _figure(6.5, 3.6)
    ax = fig.add_subplot()
    widths = [hi - lo for lo, hi in zip(conf.edges, conf.edges[1:])]
    ax.bar(conf.edges[:-1], conf.counts, width=widths, align="edge", color="tab:blue", edgecolor="white")
    if conf.mean is not None:
        ax.axvline(conf.mean, color="tab:red", linestyle="--", linewidth=1, label=f"mean {conf.mean:.2f}")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no judge confidences recorded", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlim(0.5, 1.0)
    ax.set_xlabel("judge confidence")
    ax.set_ylabel("debates")
    ax.set_title(f"judge confidence over {conf.count} debates")
    return _png(fig)
