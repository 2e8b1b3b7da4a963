"""How big the transcript store and the checkpoint file get: N debates through bonsai's own sweep executor.

    .venv/bin/python bench/store_growth.py                      # 1,000 standard (2-round) debates
    .venv/bin/python bench/store_growth.py --debates 200 --format quick

Runs a sweep of ``--debates`` debates (motions x both sides of one pairing) on the scripted engine of
``tests/fakes.py``: the graph, the judge's four readings, the SQLite store and the LangGraph checkpoints
are bonsai's own, only the model's words are canned (short answers, so the store's size is the floor a
real model's longer turns add their text to). Reports, after the run: the store's and the checkpoint
file's bytes (WAL included), per debate, the row counts, and the same after ``bonsai transcripts vacuum
--older-than 0``; also the wall time. Prints one ``BENCH_JSON {...}`` line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "tests"):
    sys.path.insert(0, str(p))
from fakes import FakeEngine  # noqa: E402

from bonsai.debate.checkpoints import vacuum  # noqa: E402
from bonsai.debate.runner import DebateRunner  # noqa: E402
from bonsai.personas import PersonaBook  # noqa: E402
from bonsai.store.transcripts import TranscriptStore  # noqa: E402
from bonsai.sweep.config import load_sweep  # noqa: E402
from bonsai.sweep.executor import SweepExecutor  # noqa: E402
from bonsai.sweep.plan import plan_sweep  # noqa: E402


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def wal(path: Path) -> int:
    p = path.with_name(path.name + "-wal")
    return p.stat().st_size if p.exists() else 0


def rows(path: Path, tables: list[str]) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}


async def run(args: argparse.Namespace, work: Path) -> dict[str, object]:
    os.environ["BONSAI_HOME"] = str(work / "home")
    sweep_file = work / "growth.yaml"
    motions = [f"Motion number {i}: this house would measure before it guesses" for i in range(args.debates // 2)]
    sweep_file.write_text(json.dumps({"name": "growth", "motions": motions, "pairings": [{"a": "advocate", "b": "skeptic"}],
                                      "formats": [args.format], "concurrency": args.concurrency}), encoding="utf-8")
    sweep = load_sweep(sweep_file)
    book = PersonaBook.load()
    plan = plan_sweep(sweep, book, work / "home")
    store_file, ck_file = work / "transcripts.sqlite", work / "checkpoints.sqlite"
    t0 = time.monotonic()
    with TranscriptStore(store_file) as store:
        async with DebateRunner(FakeEngine(p_a=0.7), store, ck_file, book, work / "home", "fake") as runner:
            result = await SweepExecutor(runner, store, plan, concurrency=args.concurrency, retries=0, backoff_s=0).run()
        tokens = store.sweep_tokens("growth")
    wall = time.monotonic() - t0
    after_run = {"store_bytes": size(store_file), "checkpoint_bytes": size(ck_file), "store_wal_bytes": wal(store_file),
                 "checkpoint_wal_bytes": wal(ck_file)}
    counts = {**rows(store_file, ["debates", "turns", "verdicts"]), **rows(ck_file, ["checkpoints", "writes"])}
    report = vacuum(store_file, ck_file, older_than_days=0)
    after_vacuum = {"store_bytes": size(store_file), "checkpoint_bytes": size(ck_file)}
    n = result.finished
    return {
        "debates": n, "format": args.format, "concurrency": args.concurrency, "wall_s": round(wall, 1), "generated_tokens": tokens,
        "after_run": after_run, "per_debate_after_run": {k: round(v / n) for k, v in after_run.items()},
        "rows": counts, "vacuum_dropped_debates": report.debates_dropped, "after_vacuum": after_vacuum,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--debates", type=int, default=1000)
    ap.add_argument("--format", default="standard")
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = asyncio.run(run(args, Path(tmp)))
    for key in ("after_run", "after_vacuum"):
        s = out[key]
        print(f"{key:>12}: store {s['store_bytes']:>12,} B   checkpoints {s['checkpoint_bytes']:>12,} B (WAL files included)")  # type: ignore[index]
    print(f"{out['debates']} debates in {out['wall_s']} s; rows {out['rows']}")
    print("BENCH_JSON " + json.dumps(out))


if __name__ == "__main__":
    main()
