"""``bonsai adapters list|show|evaluate|promote|rollback``: the adapter registry from the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from bonsai.cli.common import add_engine_arguments, engine_options, home_from, json_text, judge_options, starting
from bonsai.errors import BonsaiError, ConfigError, describe_validation


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapters", help="list, evaluate, promote and roll back persona adapter versions", description="The adapter registry under $BONSAI_HOME/adapters.")
    cmds = p.add_subparsers(dest="adapters_command", metavar="ACTION")
    cmds.required = True

    ls = cmds.add_parser("list", help="versions of every persona (or one)")
    ls.add_argument("persona", nargs="?", help="only this persona")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=run_list)

    show = cmds.add_parser("show", help="one version's metadata, metrics and gate result")
    show.add_argument("persona")
    show.add_argument("version", nargs="?", default="current", help="version name or unique prefix (default: current)")
    show.add_argument("--json", action="store_true", help="the full manifest as JSON")
    show.set_defaults(func=run_show)

    ev = cmds.add_parser(
        "evaluate",
        help="the promotion gate: debate the candidate against the current version and a fixed opponent",
        description=(
            "A mini-sweep on held-out motions: the candidate against the current version and against a fixed "
            "opponent, on both sides, judged by one fixed judge. Reports the win rate with a Wilson 95% interval "
            "and saves it for `promote`."
        ),
    )
    ev.add_argument("persona")
    ev.add_argument("--candidate", required=True, help="the version to evaluate (name or unique prefix)")
    ev.add_argument("--motions", type=Path, default=None, help="held-out motions, one per line (default: the test motions of the candidate's dataset)")
    ev.add_argument("--dataset", type=Path, default=None, help="take the held-out motions from this dataset's test split")
    ev.add_argument("--opponent", default="base", help="the fixed opponent: base (default), a version of the persona, or an adapter folder")
    ev.add_argument("--opponent-persona", default=None, help="who sits opposite (default: the other team's default debater)")
    ev.add_argument("--judge", default="judge", help="the judge persona (default judge)")
    ev.add_argument("--threshold", type=float, default=0.5, help="the lower bound of the 95%% interval must be above this to pass (default 0.5)")
    ev.add_argument("--seeds", default="0", help="comma-separated seeds; each motion is debated once per seed (default 0)")
    ev.add_argument("--max-motions", type=int, default=8, help="use at most N motions (default 8)")
    ev.add_argument("--format", default="quick", help="debate format (default quick)")
    ev.add_argument("--rounds", type=int, default=1, help="rebuttal rounds (default 1)")
    ev.add_argument("--max-tokens", type=int, default=48, help="cap on every debater turn (default 48)")
    ev.add_argument("--store", type=Path, default=None, help="store for the evaluation debates (default: $BONSAI_HOME/evaluations.sqlite, apart from training data)")
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    add_engine_arguments(ev)
    ev.set_defaults(func=run_evaluate)

    pr = cmds.add_parser("promote", help="make a version current (if it passed the gate), here and on running servers")
    pr.add_argument("persona")
    pr.add_argument("version", help="version name or unique prefix")
    pr.add_argument("--force", action="store_true", help="promote even without a passing evaluation")
    pr.add_argument("--threshold", type=float, default=None, help="override the threshold the evaluation used")
    pr.add_argument("--endpoint", action="append", default=[], metavar="URL", help="a running `bonsai serve` to load the version on first; repeatable")
    pr.add_argument("--api-key", default=None, metavar="KEY", help="API key of the --endpoint servers (default: $BONSAI_API_KEY)")
    pr.add_argument("--base", help="base model folder, to check the adapter before a server loads it")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=run_promote)

    rb = cmds.add_parser("rollback", help="make the previously promoted version current again")
    rb.add_argument("persona")
    rb.add_argument("--to", default=None, help="roll back to this version instead")
    rb.add_argument("--endpoint", action="append", default=[], metavar="URL", help="a running `bonsai serve` to load the version on first; repeatable")
    rb.add_argument("--api-key", default=None, metavar="KEY", help="API key of the --endpoint servers (default: $BONSAI_API_KEY)")
    rb.add_argument("--json", action="store_true")
    rb.set_defaults(func=run_rollback)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def run_list(args: argparse.Namespace) -> int:
    from bonsai.registry import load_evaluation, versions

    home = home_from(args)
    infos = versions(home, args.persona)
    if args.json:
        for info in infos:
            row = info.summary()
            ev = load_evaluation(home, info.persona, info.version)
            row["gate"] = None if ev is None else {k: ev.get(k) for k in ("win_rate", "ci_low", "ci_high", "n", "passed")}
            print(json.dumps(row))
        return 0
    if not infos:
        print(f"no adapter versions{' for ' + args.persona if args.persona else ''} in {home / 'adapters'}")
        return 0
    print(f"{'persona':<12} {'version':<14} {'cur':<3} {'created':<16} {'recipe':<14} {'parent':<14} gate")
    for info in infos:
        s = info.summary()
        ev = load_evaluation(home, info.persona, info.version)
        gate = "-" if ev is None else f"{ev['win_rate']:.2f} [{ev['ci_low']:.2f},{ev['ci_high']:.2f}] n={ev['n']} {'pass' if ev['passed'] else 'fail'}"
        flag = "*" if info.current else ""
        bad = "  TAMPERED: " + info.problem if info.problem else ""
        print(f"{info.persona:<12} {info.version:<14} {flag:<3} {_when(info.created_at):<16} {str(s['recipe'] or '-'):<14} {str(s['parent'] or '-'):<14} {gate}{bad}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from training.evaluation.report import load_reports
    from bonsai.registry import load_evaluation, resolve_version, version_info

    home = home_from(args)
    version = resolve_version(home, args.persona, args.version)
    info = version_info(home, args.persona, version)
    evaluation = load_evaluation(home, args.persona, version)
    reports = [{k: v for k, v in r.items() if k != "samples"} for r in load_reports(home, args.persona, version)]
    if args.json:
        print(json_text({**info.summary(), "manifest": info.manifest.as_dict(), "evaluation": evaluation, "evals": reports}))
        return 0 if info.problem is None else 2
    s = info.summary()
    print(f"{args.persona}@{version}{'  (current)' if info.current else ''}")
    for key in ("path", "adapter_name", "parent", "recipe", "base_model", "dataset_hash"):
        print(f"  {key:<13} {s[key]}")
    m = info.manifest
    logic = m.extra("logic_set")
    if isinstance(logic, dict):
        print(f"  {'trained on':<13} {logic.get('n')} generated logic problems ({','.join(logic.get('kinds', []))}; {','.join(logic.get('languages', []))}; seed {logic.get('seed')})")
    training = m.extra("training") or {}
    if training:
        print(f"  {'trained':<13} {_when(info.created_at)} on {training.get('device')} ({training.get('backend')}) in {training.get('seconds')}s")
    for i, stage in enumerate((m.extra("metrics") or {}).get("stages", []), 1):
        first, last = stage.get("first", {}), stage.get("last", {})
        print(f"  stage {i} {stage['method']:<5} {stage['steps']} steps, loss {first.get('loss', float('nan')):.4f} -> {last.get('loss', float('nan')):.4f}")
    if evaluation:
        print(f"  {'gate':<13} won {evaluation['wins']:g}/{evaluation['n']} ({evaluation['win_rate']:.2f}, 95% CI {evaluation['ci_low']:.2f}-{evaluation['ci_high']:.2f}) "
              f"against {evaluation.get('current') or 'base'}: {'passed' if evaluation['passed'] else 'failed'} (threshold {evaluation['threshold']})")
    for report in reports:
        print(f"  {'eval vs ' + report['reference']:<13} on {len(report['motions'])} held-out motions (95% intervals):")
        for name, row in report["metrics"].items():
            if name.startswith("rubric.") or row["candidate"].get("mean") is None:
                continue
            c, r, d = row["candidate"], row["reference"], row["delta"]
            change = "" if d.get("mean") is None else f", change {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
            print(f"    {name:<20} {c['mean']:.3f} [{c['low']:.3f}, {c['high']:.3f}] vs {r['mean']:.3f}{change}")
    if info.problem:
        print(f"error: {info.problem}", file=sys.stderr)
        return 2
    return 0


def _gate_config(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from training.gate import GateConfig

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds!r} is not a comma-separated list of integers", "for example: --seeds 0,1,2") from None
    try:
        return GateConfig(
            threshold=args.threshold, format=args.format, rounds=args.rounds, max_tokens=args.max_tokens, seeds=seeds,
            opponent=args.opponent, opponent_persona=args.opponent_persona, judge=args.judge, max_motions=args.max_motions,
        )
    except ValidationError as exc:
        msg = "; ".join(describe_validation(exc))
        raise ConfigError(f"invalid evaluation settings: {msg}", "see `bonsai adapters evaluate --help`") from None


async def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from bonsai.registry import persona_dir
    from bonsai.registry.identity import inspect_adapter
    from bonsai.engine.session import open_engine
    from bonsai.paths import checkpoints_path
    from bonsai.personas import PersonaBook
    from training.gate import evaluate_candidate, held_out_motions, opponents
    from bonsai.registry import resolve_version

    home = home_from(args)
    engine = engine_options(args)
    judge = judge_options(args)
    config = _gate_config(args)
    book = PersonaBook.load(args.personas_dir)
    candidate = resolve_version(home, args.persona, args.candidate)
    motions = held_out_motions(home, args.persona, candidate, dataset=args.dataset, motions_file=args.motions)
    folders = [persona_dir(home, args.persona) / candidate, *(o.path for o in opponents(home, args.persona, config) if o.path)]
    refs = [inspect_adapter(f) for f in folders]
    async with open_engine(engine, home, refs, judge=judge, starting=starting(enabled=not args.json)) as session:
        n = len(motions[: config.max_motions]) * len(config.seeds) * 2 * len(opponents(home, args.persona, config))
        if not args.json:
            print(f"evaluating {args.persona}@{candidate}: {n} debates on {min(len(motions), config.max_motions)} held-out motions...", file=sys.stderr, flush=True)

        def on_match(m: Any) -> None:
            if not args.json:
                print(f"  {'won ' if m.won else 'tie ' if m.winner == 'tie' else 'lost'} {m.opponent:<7} seat {m.candidate_seat:<10} {m.motion[:60]}", file=sys.stderr, flush=True)

        return await evaluate_candidate(
            session.engine, home=home, book=book, base_model=session.base_name, persona=args.persona,
            candidate=candidate, motions=motions, store_path=args.store or home / "evaluations.sqlite",
            checkpoints=checkpoints_path(home), config=config, on_match=on_match, judge_engine=session.judge,
        )


def run_evaluate(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(_evaluate(args))
    except BonsaiError:
        raise
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json_text({k: v for k, v in result.items() if k != "matches"} | {"matches": result["matches"]}))
        return 0
    print(f"{result['persona']}@{result['candidate']}: won {result['wins']:g}/{result['n']} = {result['win_rate']:.2f} (95% CI {result['ci_low']:.2f}-{result['ci_high']:.2f})")
    for label, r in result["by_opponent"].items():
        print(f"  vs {label} ({result['opponents'][label]}): {r['wins']:g}/{r['n']} = {r['win_rate']:.2f} (95% CI {r['ci_low']:.2f}-{r['ci_high']:.2f})")
    verdict = "passes" if result["passed"] else "does not pass"
    print(f"gate: {verdict} (lower bound {result['ci_low']:.2f} {'>' if result['passed'] else '<='} threshold {result['threshold']:.2f})")
    if result["passed"]:
        print(f"next: bonsai adapters promote {result['persona']} {result['candidate']}")
    return 0


def run_promote(args: argparse.Namespace) -> int:
    from bonsai.model.prepare import resolve_base
    from training.hotload import promote_version

    home = home_from(args)
    base = resolve_base(args.base, home, prepare=False) if args.base else None
    promotion = asyncio.run(
        promote_version(home, args.persona, args.version, force=args.force, threshold=args.threshold, endpoints=args.endpoint, base_model=base.path if base else None,
                        api_key=args.api_key)
    )
    if args.json:
        print(json.dumps({"persona": promotion.persona, "version": promotion.version, "previous": promotion.previous,
                          "adapter_name": promotion.adapter_name, "endpoints": list(promotion.endpoints), "forced": promotion.forced,
                          "threshold_override": promotion.threshold_override}))
        return 0
    how = " (forced past the gate)" if promotion.forced else ""
    if promotion.threshold_override is not None:
        how = f" (gate threshold overridden to {promotion.threshold_override:g}; logged as an override)"
    print(f"{promotion.persona}: current is now {promotion.version}{how} (was {promotion.previous or 'none'}); new debates use it")
    for url in promotion.endpoints:
        print(f"  loaded on {url} as {promotion.adapter_name}")
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from training.hotload import rollback_version

    home = home_from(args)
    previous, target = asyncio.run(rollback_version(home, args.persona, to=args.to, endpoints=args.endpoint, api_key=args.api_key))
    if args.json:
        print(json.dumps({"persona": args.persona, "version": target, "previous": previous}))
        return 0
    print(f"{args.persona}: current is now {target} (was {previous or 'none'}); new debates use it")
    return 0
