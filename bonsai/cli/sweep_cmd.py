"""``bonsai sweep SWEEP.yaml``: run a grid of debates at engine speed, resumable, then rate them."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bonsai.cli.common import add_engine_arguments, engine_options, home_from, json_text, judge_options, starting
from bonsai.debate.runner import DebateRunner
from bonsai.engine import Engine
from bonsai.registry.identity import AdapterInspector
from bonsai.engine.session import plan_engine, plan_judge, start_engine
from bonsai.errors import ConfigError, StoreError, SweepIncomplete
from bonsai.locks import sweep_lock
from bonsai.paths import checkpoints_path, store_path
from bonsai.personas import PersonaBook
from bonsai.store.records import SweepRecord, SweepStatus
from bonsai.store.transcripts import TranscriptStore
from bonsai.sweep.config import GRID_CAP, ResolvedSweep, load_sweep
from bonsai.sweep.executor import SweepExecutor
from bonsai.sweep.ledger import SweepProgress, SweepResult
from bonsai.sweep.plan import SweepPlan, estimate, plan_sweep


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a grid of debates from a sweep file (resumable), then rate the competitors",
        description="Run every debate of a sweep file concurrently against one engine, several servers (--endpoint) or a Ray cluster (--ray).",
    )
    p.add_argument("file", nargs="?", type=Path, help="the sweep YAML (see examples/sweep-quick.yaml)")
    p.add_argument("--dry-run", action="store_true", help="print the number of debates and an estimate of tokens and time; run nothing")
    p.add_argument("--resume", action="store_true", help="continue a sweep of the same name: skip finished debates, resume the rest from their checkpoints")
    p.add_argument("--yes", action="store_true", help=f"run (or plan) a grid larger than {GRID_CAP:,} debates")
    p.add_argument("--list", action="store_true", help="list the sweeps in the store and their progress")
    p.add_argument("--concurrency", type=int, default=None, help="debates in flight at once (overrides the file)")
    p.add_argument("--retries", type=int, default=None, help="engine errors a debate may hit before it is marked failed (overrides the file)")
    p.add_argument("--budget-tokens", type=int, default=None, help="stop once the sweep's debates have generated this many tokens")
    p.add_argument("--budget-time", type=float, default=None, metavar="SECONDS", help="stop this run after this many seconds")
    p.add_argument("--tokens-per-s", type=float, default=None, help="throughput to base --dry-run's time estimate on (default: measured on earlier sweeps)")
    p.add_argument("--kv-cache-gib", type=float, default=2.0, help="KV cache of the in-process engine (more fits more debates at once; default 2)")
    p.add_argument("--max-num-seqs", type=int, default=None, metavar="N",
                   help="requests the in-process engine batches at once (default: vLLM's throughput default for the device, 1024 on an H100)")
    p.add_argument("--ray", metavar="ADDRESS", default=None, help="run shards on a Ray cluster (e.g. auto, or ray://host:10001); each worker has its own engine")
    p.add_argument("--ray-workers", type=int, default=None, help="Ray workers (default: one per GPU, or 1 without GPUs)")
    p.add_argument("--store", type=Path, default=None, help="transcript store (default: $BONSAI_HOME/transcripts.sqlite)")
    p.add_argument("--json", action="store_true", help="print one JSON summary at the end (and for --dry-run / --list)")
    add_engine_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run_async(args))
    except KeyboardInterrupt:
        print("\ninterrupted: finished debates are stored; continue with `bonsai sweep FILE --resume`", file=sys.stderr)
        return 130


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"concurrency": args.concurrency, "retries": args.retries}
    if args.budget_tokens is not None or args.budget_time is not None:
        out["budget"] = {"tokens": args.budget_tokens, "wall_s": args.budget_time}
    return out


async def _run_async(args: argparse.Namespace) -> int:
    home = home_from(args)
    store_file = args.store or store_path(home)
    console = Console(highlight=False, soft_wrap=True)
    if args.list:
        return _list(store_file, console, as_json=args.json)
    if args.file is None:
        raise ConfigError("no sweep file given", "pass one: bonsai sweep SWEEP.yaml (see examples/sweep-quick.yaml)")
    engine = engine_options(args)
    judge = judge_options(args)
    if args.max_num_seqs is not None and args.max_num_seqs < 1:
        raise ConfigError(f"--max-num-seqs must be at least 1, not {args.max_num_seqs}", "leave it out to take vLLM's default for the device")
    if args.ray and engine.endpoints:
        raise ConfigError("--ray and --endpoint do not go together", "Ray workers run their own engines; drop one of them")
    if args.ray and judge.separate:
        raise ConfigError("--ray does not take a judge engine yet", "each Ray worker judges on its own engine; drop --judge-endpoint/--judge-base")
    book = PersonaBook.load(args.personas_dir)
    sweep = load_sweep(args.file, overrides=_overrides(args))
    _check_grid_size(sweep, args)
    stored = _stored_sweep(store_file, sweep, resume=args.resume)
    plan = plan_sweep(sweep, book, home, resolved=(stored.config.get("resolved") if stored else None))
    if args.dry_run:
        return _dry_run(plan, book, store_file, args, console)
    # one run of a sweep at a time: a second `--resume` (or a `debate --resume` of one of its debates)
    # would run the same debates twice over
    with sweep_lock(home, plan.name):
        if stored is None:
            stored = _stored_sweep(store_file, sweep, resume=args.resume)  # another run may have started it meanwhile
        return await _run_locked(args, home, store_file, console, engine, judge, book, plan, stored)


async def _run_locked(args: argparse.Namespace, home: Path, store_file: Path, console: Console, engine: EngineOptions, judge: JudgeEngineOptions,
                      book: PersonaBook, plan: SweepPlan, stored: SweepRecord | None) -> int:
    inspector = AdapterInspector()
    refs = [inspector.inspect(c.adapter) for c in plan.competitors.values() if c.adapter is not None]
    setup = plan_engine(engine, home, refs, kv_cache_gib=args.kv_cache_gib, max_loras=max(1, min(16, len(refs))), max_num_seqs=args.max_num_seqs)
    base, engine_config = setup.base, setup.config
    if args.ray:
        from bonsai.sweep.ray.driver import run_on_ray

        with TranscriptStore(store_file) as store:
            reporter = _Reporter(console, total=len(plan.jobs), quiet=args.json)
            recorded = False

            def on_ready() -> None:  # workers started and every set-up checked, as the local path does first
                nonlocal recorded
                _record_sweep(store, plan, stored)
                recorded = True

            try:
                with reporter:
                    result = await run_on_ray(plan, store, engine_config, address=args.ray, workers=args.ray_workers, home=home,
                                              personas_dir=args.personas_dir, on_progress=reporter.update,
                                              base_name=base.name if base else None, on_ready=on_ready)
            except (KeyboardInterrupt, asyncio.CancelledError):
                if recorded:
                    store.set_sweep_status(plan.name, SweepStatus.INTERRUPTED)
                raise
            return _finish(store, plan, result, console, args)

    async with start_engine(setup, plan_judge(judge, engine, home), starting=starting(enabled=not args.json)) as session:
        with TranscriptStore(store_file) as store:
            async with DebateRunner(session.engine, store, checkpoints_path(home), book, home, session.base_name, inspector,
                                    judge_engine=session.judge, queue_checkpoints=True) as runner:
                cfg = plan.sweep.config
                reporter = _Reporter(console, total=len(plan.jobs), quiet=args.json, engine=session.engine)
                executor = SweepExecutor(runner, store, plan, concurrency=cfg.concurrency, retries=cfg.retries, backoff_s=cfg.backoff_s,
                                         budget=cfg.budget, on_progress=reporter.update)
                await executor.check()  # every set-up valid before the sweep is recorded
                _record_sweep(store, plan, stored)
                try:
                    with reporter:
                        result = await executor.run()
                except (KeyboardInterrupt, asyncio.CancelledError):
                    store.set_sweep_status(plan.name, SweepStatus.INTERRUPTED)
                    raise
                return _finish(store, plan, result, console, args)


def _check_grid_size(sweep: ResolvedSweep, args: argparse.Namespace) -> None:
    """A grid past GRID_CAP debates needs --yes, asked before the grid is built (counted, not listed)."""
    size = sweep.grid_size()
    if size > GRID_CAP and not args.yes and not args.resume:  # a resumed sweep was accepted when it started
        c = sweep.config
        axes = (f"{len(sweep.motions)} motions x {len(c.pairings)} pairings x {2 if c.sides == 'both' else 1} sides x {len(c.seeds)} seeds"
                f" x {len(c.judges)} judges x {len(c.formats)} formats x {len(c.candidates)} candidate counts")
        raise ConfigError(
            f"sweep {c.name} is a grid of {size:,} debates ({axes}), more than {GRID_CAP:,}",
            "pass --yes if you mean it (check the time with --dry-run --yes first), or take fewer motions (`limit:`), seeds or pairings",
        )


def _stored_sweep(store_file: Path, sweep: ResolvedSweep, *, resume: bool) -> SweepRecord | None:
    """The stored sweep of this name, checked against the file: a name runs one grid, once."""
    name = sweep.config.name
    record = None
    if store_file.exists():
        with TranscriptStore(store_file, read_only=True) as store:
            record = store.get_sweep(name)
    if record is None:
        if resume:
            raise ConfigError(f"there is no sweep named {name!r} in {store_file} to resume", "run it without --resume to start it")
        return None
    if not resume:
        raise StoreError(
            f"a sweep named {name!r} already exists in {store_file} ({record.status}, {record.total} debates)",
            "continue it with --resume, or give this sweep another `name:`",
        )
    if record.grid_hash != sweep.grid_hash():
        raise ConfigError(
            f"the sweep file no longer matches the sweep {name!r} that was started (its motions or grid changed)",
            "resume with the file as it was, or run the new grid under another `name:`",
        )
    return record


def _record_sweep(store: TranscriptStore, plan: SweepPlan, stored: SweepRecord | None) -> None:
    if stored is not None:
        store.set_sweep_status(plan.name, SweepStatus.RUNNING)
        return
    now = time.time()
    store.create_sweep(
        SweepRecord(
            name=plan.name, grid_hash=plan.sweep.grid_hash(),
            config={"sweep": plan.sweep.model_dump(mode="json"), "resolved": plan.resolved_json()},
            total=len(plan.jobs), status=SweepStatus.RUNNING, created_at=now, updated_at=now,
        )
    )


def _finish(store: TranscriptStore, plan: SweepPlan, result: SweepResult, console: Console, args: argparse.Namespace) -> int:
    status = SweepStatus.FINISHED if result.complete else SweepStatus.INCOMPLETE
    store.set_sweep_status(plan.name, status)
    summary = {
        "sweep": plan.name, "store": str(store.path), "status": status, "debates": result.total, "finished": result.finished,
        "finished_before": result.skipped, "failed": [f.__dict__ for f in result.failures], "stopped": result.stopped,
        "tokens": result.tokens, "seconds": round(result.seconds, 2),
        "tokens_per_s": round(result.tokens / result.seconds, 2) if result.seconds > 0 else None,
    }
    if args.json:
        print(json_text(summary))
    else:
        rate = f", {summary['tokens_per_s']} tok/s" if summary["tokens_per_s"] else ""
        console.print(f"sweep {plan.name}: {result.finished} of {result.total} debates finished "
                      f"({result.finished - result.skipped} this run, {result.tokens} tokens in {result.seconds:.0f} s{rate})")
        for f in result.failures[:10]:
            console.print(f"  failed: {f.debate_id}: {f.message}", style="red")
        if len(result.failures) > 10:
            console.print(f"  ... and {len(result.failures) - 10} more failures", style="red")
    if not result.complete:
        why = result.stopped or f"{len(result.failures)} debates failed"
        raise SweepIncomplete(
            f"sweep {plan.name} stopped with {result.total - result.finished} of {result.total} debates unfinished: {why}",
            f"continue it with `bonsai sweep {args.file} --resume` (finished debates are kept, the others resume)",
        )
    if not args.json:
        console.print(f"rate it with `bonsai ratings {plan.name}`", style="dim")
    return 0


def _dry_run(plan: SweepPlan, book: PersonaBook, store_file: Path, args: argparse.Namespace, console: Console) -> int:
    rate, basis = args.tokens_per_s, "--tokens-per-s"
    done = 0
    if store_file.exists():
        with TranscriptStore(store_file, read_only=True) as store:
            statuses = store.debate_statuses(j.debate_id for j in plan.jobs)
            done = sum(1 for s in statuses.values() if s == "finished")
            if rate is None:
                rate, basis = _measured_rate(store)
    est = estimate(plan, book, tokens_per_s=rate, basis=basis)
    cfg = plan.sweep.config
    todo = est.debates - done
    seconds = est.seconds * todo / est.debates if est.seconds is not None and est.debates else None
    out = {
        "sweep": cfg.name, "debates": est.debates, "already_finished": done,
        "axes": {"motions": len(plan.sweep.motions), "pairings": len(cfg.pairings), "sides": 2 if cfg.sides == "both" else 1,
                 "seeds": len(cfg.seeds), "judges": len(cfg.judges), "formats": len(cfg.formats), "candidates": len(cfg.candidates)},
        "competitors": sorted(plan.competitors), "max_tokens": est.tokens, "tokens_per_s": rate, "estimate_basis": basis if rate else None,
        "estimated_seconds": round(seconds, 1) if seconds is not None else None, "concurrency": cfg.concurrency,
    }
    if args.json:
        print(json_text(out))
        return 0
    axes = " x ".join(f"{v} {k}" for k, v in out["axes"].items())
    console.print(f"sweep {cfg.name}: {est.debates} debates ({axes}){f', {done} already finished' if done else ''}")
    console.print(f"competitors: {', '.join(out['competitors'])}")
    console.print(f"tokens: at most {est.tokens:,} (every turn at its cap, both judge readings included)")
    if seconds is not None:
        console.print(f"time: about {_duration(seconds)} at {rate:,.1f} tok/s ({basis}); an upper bound, since turns often stop early")
    else:
        console.print("time: no throughput known yet; pass --tokens-per-s, or run a small sweep first and its rate is used")
    return 0


def _measured_rate(store: TranscriptStore) -> tuple[float | None, str]:
    """Aggregate tokens/s of the latest finished sweep in this store (its wall span, all debates at once)."""
    for record in reversed(store.list_sweeps()):
        rows = store.sweep_results(record.name)
        if not rows:
            continue
        start = min(d.created_at for d, _, _ in rows)
        end = max(d.finished_at or d.created_at for d, _, _ in rows)
        tokens = sum(t for _, _, t in rows)
        if end > start and tokens:
            return tokens / (end - start), f"measured on sweep {record.name}"
    return None, "none"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _list(store_file: Path, console: Console, *, as_json: bool) -> int:
    if not store_file.exists():
        raise StoreError(f"there is no transcript store at {store_file}", "run a sweep first, or pass --store")
    with TranscriptStore(store_file, read_only=True) as store:
        rows = [{**{k: v for k, v in s.to_dict().items() if k != "config"}, "counts": store.sweep_status_counts(s.name)} for s in store.list_sweeps()]
    if as_json:
        print(json_text(rows))
        return 0
    if not rows:
        console.print(f"no sweeps in {store_file}")
    for r in rows:
        c = r["counts"]
        console.print(f"{r['name']:<24} {r['status']:<11} {c['finished']:>5}/{r['total']:<5} finished  {c['failed']} failed  "
                      f"{c['running'] + c['interrupted']} to resume")
    return 0


class _Reporter:
    """Progress on stderr: a live bar at a terminal, a line every 15 s otherwise (logs, CI, batch scripts)."""

    def __init__(self, console: Console, *, total: int, quiet: bool, engine: Engine | None = None) -> None:
        self.total = total
        self.quiet = quiet
        self.engine = engine
        self.tty = sys.stderr.isatty()
        self._last_line = 0.0
        self._bar: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> _Reporter:
        if self.tty and not self.quiet:
            self._bar = Progress(
                TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                console=Console(stderr=True), transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("sweep", total=self.total, stats="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def update(self, p: SweepProgress) -> None:
        eta = p.eta_s
        health = ""
        load = getattr(self.engine, "endpoint_health", None)
        if callable(load):
            down = [u for u, state in load().items() if state != "up"]
            health = f" · down: {', '.join(down)}" if down else ""
        stats = (f"{p.running} running · {p.failed} failed · {p.tokens_per_s:,.1f} tok/s · "
                 f"ETA {_duration(eta) if eta is not None else '?'}{health}")
        if self._bar is not None:
            self._bar.update(self._task, completed=p.done + p.failed, stats=stats)
        elif not self.quiet:
            now = time.monotonic()
            if now - self._last_line >= 15 or p.done + p.failed == self.total:
                self._last_line = now
                print(f"sweep: {p.done + p.failed}/{self.total} done · {stats}", file=sys.stderr, flush=True)
