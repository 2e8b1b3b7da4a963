"""A sweep report's files: results.csv, ratings.json and three plots, each replaced atomically."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from bonsai import atomic
from bonsai.sweep.ratings import plots
from bonsai.sweep.ratings.outcome import Outcome
from bonsai.sweep.ratings.report import RatingsReport

log = logging.getLogger(__name__)

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
