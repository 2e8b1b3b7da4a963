"""``bonsai ratings SWEEP``: Bradley-Terry ratings with bootstrap intervals, side bias, plots."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from bonsai.cli.common import home_from, json_text
from bonsai.errors import ConfigError, StoreError
from bonsai.paths import store_path
from bonsai.store.transcripts import TranscriptStore
from bonsai.sweep.config import NAME_PATTERN
from bonsai.sweep.ratings.files import write_report
from bonsai.sweep.ratings.report import format_table, summarize
from bonsai.sweep.results import sweep_outcomes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ratings",
        help="rate a sweep's competitors (Bradley-Terry, 95%% bootstrap intervals) and plot them",
        description="Print the ratings table of a sweep and write results.csv, ratings.json and PNG plots.",
    )
    p.add_argument("sweep", help="the sweep's name (see `bonsai sweep --list`)")
    p.add_argument("--out", type=Path, default=None, help="folder for results.csv, ratings.json and the plots (default: $BONSAI_HOME/sweeps/NAME)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (same seed, same intervals)")
    p.add_argument("--store", type=Path, default=None, help="transcript store (default: $BONSAI_HOME/transcripts.sqlite)")
    p.add_argument("--json", action="store_true", help="print ratings.json instead of the table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    home = home_from(args)
    if not re.fullmatch(NAME_PATTERN, args.sweep):  # it names a folder under $BONSAI_HOME/sweeps
        raise ConfigError(f"{args.sweep!r} is not a sweep name", "see the names with `bonsai sweep --list`")
    store_file = args.store or store_path(home)
    if not store_file.exists():
        raise StoreError(f"there is no transcript store at {store_file}", "run a sweep first (`bonsai sweep FILE`), or pass --store")
    if args.bootstrap < 1:
        raise ConfigError(f"--bootstrap must be at least 1, not {args.bootstrap}", "1000 is a good default")
    with TranscriptStore(store_file, read_only=True) as store:
        outcomes = sweep_outcomes(store, args.sweep)
        record = store.get_sweep(args.sweep)
    report = summarize(outcomes, bootstrap=args.bootstrap, seed=args.seed)
    out = args.out or home / "sweeps" / args.sweep
    written = write_report(report, outcomes, out)
    if args.json:
        print(json_text(report.to_json()))
        return 0
    print(format_table(report))
    if record is not None and len(outcomes) < record.total:
        print(f"note: {len(outcomes)} of the sweep's {record.total} debates have finished; resume it to rate the rest")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
