"""Does one generation of the loop make a persona measurably better? Time and metrics of `bonsai loop`.

Runs ``bonsai loop --preset PRESET --personas PERSONA --json`` in a fresh BONSAI_HOME (the prepared
base model is linked in, so nothing is re-prepared), stamps every event as it arrives, and prints each
step's wall time and each metric the gate measured (the new version against its parent, 95% intervals)::

    .venv/bin/python bench/learn_bench.py --preset cpu --persona ronri --json-out learn.json
    .venv/bin/python bench/learn_bench.py --preset cpu --persona ronri -- --debates 4 --max-steps 20

Arguments after ``--`` go to ``bonsai loop`` unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _home(model_home: Path) -> Path:
    home = Path(tempfile.mkdtemp(prefix="bonsai-learn-"))
    (home / "models").mkdir()
    for model in (model_home / "models").iterdir():
        (home / "models" / model.name).symlink_to(model)
    return home


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--persona", default="ronri")
    ap.add_argument("--model-home", type=Path, default=Path(os.environ.get("BONSAI_HOME", "~/.cache/bonsai")).expanduser())
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("loop_args", nargs="*", help="more `bonsai loop` arguments (after --)")
    args = ap.parse_args()

    home = _home(args.model_home)
    cmd = [sys.executable, "-m", "bonsai", "--home", str(home), "loop", "--preset", args.preset, "--personas", args.persona, "--json", *args.loop_args]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    load_at_start = os.getloadavg()
    t0 = time.monotonic()
    events: list[dict[str, Any]] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            ev["_t"] = round(time.monotonic() - t0, 1)
            events.append(ev)
            if ev.get("event") in ("step_start", "evaluated", "trained", "dataset", "promoted", "kept"):
                print(f"{ev['_t']:>7.1f}s {ev['event']} {ev.get('step') or ev.get('persona') or ''}", file=sys.stderr, flush=True)
    total = time.monotonic() - t0
    if proc.returncode != 0:
        print(f"bonsai loop exited {proc.returncode}", file=sys.stderr)
        return proc.returncode
    starts = [ev for ev in events if ev.get("event") == "step_start"]
    end = next((ev["_t"] for ev in reversed(events) if ev.get("event") == "generation_end"), total)
    # each step runs until the next one starts (or its generation ends); the last generation's are kept
    steps = {s["step"]: round((nxt["_t"] if nxt and nxt.get("generation") == s.get("generation") else end) - s["_t"], 1) for s, nxt in zip(starts, [*starts[1:], None], strict=True)}
    generations = []
    for gen in sorted({ev["generation"] for ev in events if ev.get("event") == "generation_end"}):
        evaluated = next((ev for ev in events if ev.get("event") == "evaluated" and ev.get("generation") == gen), {})
        dataset = next((ev for ev in events if ev.get("event") == "dataset" and ev.get("generation") == gen), {})
        gen_starts = [s for s in starts if s.get("generation") == gen]
        gen_end = next(ev["_t"] for ev in events if ev.get("event") == "generation_end" and ev.get("generation") == gen)
        generations.append({
            "generation": gen,
            "seconds": round(gen_end - gen_starts[0]["_t"], 1) if gen_starts else None,
            "pairs": dataset.get("pairs"),
            "version": evaluated.get("version"),
            "against": evaluated.get("against"),
            "metrics": evaluated.get("metrics"),
            "gate": evaluated.get("reasons"),
            "promoted": any(ev.get("event") == "promoted" and ev.get("generation") == gen for ev in events),
        })
    plot = next((ev.get("plot") for ev in reversed(events) if ev.get("event") == "generation_end"), None)
    result = {
        "command": " ".join(cmd[2:]),
        "load_average_at_start": load_at_start,
        "seconds_total": round(total, 1),
        "seconds_by_step": steps,
        "generations": generations,
        "plot": plot,
    }
    fmt = lambda e: "n/a" if e.get("mean") is None else f"{e['mean']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"  # noqa: E731
    print(f"total {total:.0f} s; steps of the last generation: {', '.join(f'{k} {v:.0f} s' for k, v in steps.items())}")
    for g in generations:
        print(f"generation {g['generation']}: {g['seconds']} s, {g['pairs']} pairs, {g['version']} vs {g['against'] or 'base'}, {'promoted' if g['promoted'] else 'kept'}")
        for name, row in (g["metrics"] or {}).items():
            c, r, d = row["candidate"], row["reference"], row["delta"]
            if c.get("mean") is None:
                continue
            print(f"  {name:<28} before {fmt(r):<26} after {fmt(c):<26} change {fmt(d)}")
        for criterion, why in (g["gate"] or {}).items():
            print(f"  gate {criterion}: {why}")
    if plot:
        print(f"plot: {plot}")
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
