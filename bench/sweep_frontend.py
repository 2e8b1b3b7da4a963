"""The sweep front end's share of a GPU sweep, measured on a CPU: debates in lockstep on a timed engine.

    python bench/sweep_frontend.py                               # 256 debates (3 s turns) and 1,024 (12 s turns)
    python bench/sweep_frontend.py --debates 256 --turn-s 2 --repeat 5 --checkpoints queued

Why this stands in for part of the GPU figure (docs/benchmarks.md, "Sweeps"): on a GPU every request of a
sweep takes about the same time (every turn is capped at the same ``max_tokens``, random weights never stop
early), so the debates move in lockstep: at the end of each turn hundreds of them finish together, and the
engine's batch stays part empty until the one event loop has taken each of them through the graph, the
store and the checkpoint and sent its next turn. The held raw replay has no such gap. Here the engine is a
stand-in whose every request takes ``--turn-s`` seconds (no model, no tokens), so the only thing between
turns is bonsai's own work, and

    efficiency = wall time of the same debates with nothing in the way / wall time of the sweep

where "nothing in the way" is the time a sweep of 8 debates takes on the same engine (its front end costs
milliseconds). ``--turn-s`` should be a GPU turn's length at that many debates in flight: about 3 s at 256
and 12 s at 1,024 for the 8B shape in runs 12-16 (a level's wall time over the quick format's 6 rounds of
requests). The efficiency then approximates sweep/raw against the held replay, without a GPU and without the
engine's own per-request work on the loop (vLLM's output handling in-process), which the GPU figure has too.

``--checkpoints``: how the runner saves each turn's checkpoint, "waited" (LangGraph's ``durability="sync"``:
the next turn waits for the save; interactive debates) and "queued" (``queue_checkpoints=True``: saved
behind the next turn, in batches; what ``bonsai sweep`` uses, see ``bonsai/debate/checkpoint_queue.py``).
Each repetition measures its own "nothing in the way" sweep, then the big sweep once per mode, so all see
the same machine state; medians over ``--repeat``. Also reported: the front end's CPU time per request (the
sweep's process, every thread). Prints a table and one ``BENCH_JSON {...}`` line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bonsai.engine import (  # noqa: E402
    AdapterRef,
    ChatPrompt,
    Completion,
    Engine,
    EngineInfo,
    GenerationRequest,
    Prompt,
    StreamEvent,
    TextDelta,
    TextPrompt,
    TokenLogprob,
)

#: the debates of the GPU bench's ratio levels: quick format, one rebuttal round (6 rounds of requests)
FORMAT, ROUNDS = "quick", 1
#: the bench's own "nothing in the way" sweep
SMALL = 8


class TimedEngine(Engine):
    """Every request takes ``turn_s`` seconds and answers what the debate needs (a turn, a verdict, a probe)."""

    def __init__(self, turn_s: float) -> None:
        self.turn_s = turn_s
        self.info = EngineInfo(kind="vllm", base_model="timed", max_model_len=8192, supports_json_schema=True, max_lora_rank=16)
        self.requests = 0

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def add_adapter(self, adapter: AdapterRef) -> None:
        pass

    def count_tokens(self, prompt: Prompt) -> int:
        text = prompt.text if isinstance(prompt, TextPrompt) else " ".join(m.content for m in prompt.messages)
        return len(text.split())

    def _answer(self, request: GenerationRequest) -> tuple[str, tuple[TokenLogprob, ...] | None]:
        prompt = request.prompt
        if request.sampling.max_tokens == 1 and isinstance(prompt, ChatPrompt) and prompt.continue_final_message:
            top = {"A": -0.6, "B": -0.8, "The": -5.0}
            return "A", (TokenLogprob("A", top["A"], top),)
        if request.sampling.json_schema is not None:
            return json.dumps({"winner": "A", "scores": {"A": {"logic": 7, "rebuttal": 6}, "B": {"logic": 5, "rebuttal": 6}},
                               "rationale": "A answered the objection."}), None
        if isinstance(prompt, TextPrompt):
            return "### Reasoning\nbecause\n### Answer\nan argument of sixty-four tokens or so", None
        if "<reasoning>" in prompt.messages[-1].content:
            return "<reasoning>because</reasoning><answer>an argument of sixty-four tokens or so</answer>", None
        return "an argument of sixty-four tokens or so", None

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        self.requests += 1
        text, logprobs = self._answer(request)
        await asyncio.sleep(self.turn_s)
        yield TextDelta(request.request_id, text)
        yield Completion(request.request_id, text, self.count_tokens(request.prompt), len(text.split()), "stop", 0.0, self.turn_s, logprobs,
                         request.adapter.name if request.adapter else None)


def write_sweep(folder: Path, name: str, debates: int) -> Path:
    import yaml

    motions = [f"This house would make public transport free (case {i})" for i in range(-(-debates // 2))]
    data = {"name": name, "motions": motions, "pairings": [{"a": "advocate@base", "b": "skeptic@base"}], "sides": "both",
            "formats": [FORMAT], "rounds": ROUNDS, "max_tokens": 64, "concurrency": debates, "retries": 0}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def one_sweep(home: Path, name: str, debates: int, turn_s: float, checkpoints: str) -> dict[str, Any]:
    from bonsai.debate.runner import DebateRunner
    from bonsai.personas import PersonaBook
    from bonsai.store.transcripts import TranscriptStore
    from bonsai.sweep.config import load_sweep
    from bonsai.sweep.executor import SweepExecutor
    from bonsai.sweep.plan import plan_sweep

    book = PersonaBook.load()
    plan = plan_sweep(load_sweep(write_sweep(home, name, debates)), book, home)
    engine = TimedEngine(turn_s)
    with TranscriptStore(home / f"{name}.sqlite") as store:
        async with DebateRunner(engine, store, home / f"{name}-ck.sqlite", book, home, "timed", queue_checkpoints=checkpoints == "queued") as runner:
            ex = SweepExecutor(runner, store, plan, concurrency=debates, retries=0, backoff_s=0)
            cpu0, t0 = time.process_time(), time.perf_counter()
            result = await ex.run()
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if result.failures or result.finished != len(plan.jobs):
        raise RuntimeError(f"sweep {name}: {len(result.failures)} debates failed, e.g. {result.failures[0].message if result.failures else '?'}")
    return {"debates": len(plan.jobs), "requests": engine.requests, "wall_s": round(wall, 3), "cpu_s": round(cpu, 2)}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    levels = [int(x) for x in args.debates.split(",") if x.strip()]
    turns = [float(x) for x in args.turn_s.split(",")] if args.turn_s else [max(1.0, 3.0 * n / 256) for n in levels]
    modes = [m.strip() for m in args.checkpoints.split(",") if m.strip()]
    if len(turns) == 1:
        turns *= len(levels)
    if len(turns) != len(levels):
        raise SystemExit("--turn-s: one value, or one per --debates level")
    figures: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(), "format": FORMAT, "rounds": ROUNDS, "levels": {}}
    home = Path(tempfile.mkdtemp(prefix="bonsai-frontend-bench-"))
    os.environ["BONSAI_HOME"] = str(home)  # the timed engine needs no model; the registry and stores go here
    try:
        await one_sweep(home, "warmup", SMALL, 0.01, modes[0])  # imports, graph compilation
        for n, turn_s in zip(levels, turns, strict=True):
            runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
            for r in range(args.repeat):
                ideal = await one_sweep(home, f"ideal-{n}-{r}", SMALL, turn_s, "waited")
                for mode in modes:
                    fig = await one_sweep(home, f"s{n}-{mode}-{r}", n, turn_s, mode)
                    fig["efficiency"] = round(ideal["wall_s"] / fig["wall_s"], 3)
                    fig["ideal_wall_s"] = ideal["wall_s"]
                    runs[mode].append(fig)
                    print(f"{n:>5} debates, turn {turn_s:g} s, {mode:>6}, run {r + 1}: wall {fig['wall_s']:7.2f} s (ideal {ideal['wall_s']:.2f}), "
                          f"efficiency {fig['efficiency']:.3f}, front-end CPU {fig['cpu_s']:.1f} s", flush=True)
            med = {m: {"efficiency": statistics.median(x["efficiency"] for x in rs), "cpu_s": statistics.median(x["cpu_s"] for x in rs),
                       "cpu_ms_per_request": round(1000 * statistics.median(x["cpu_s"] / x["requests"] for x in rs), 3)} for m, rs in runs.items()}
            figures["levels"][str(n)] = {"turn_s": turn_s, "runs": runs, "median": med}
            print(f"{n:>5} debates: median efficiency " + ", ".join(f"{m} {v['efficiency']:.3f}" for m, v in med.items())
                  + " | front-end CPU per request " + ", ".join(f"{m} {v['cpu_ms_per_request']} ms" for m, v in med.items())
                  + f" | {args.repeat} runs", flush=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--debates", default="256,1024", help="debates in flight (all at once; comma-separated levels)")
    parser.add_argument("--turn-s", default="", help="seconds every request takes, one value or one per level (default: 3 s per 256 debates)")
    parser.add_argument("--checkpoints", default="waited,queued", help="checkpoint saving to compare: waited, queued (comma-separated)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (medians reported)")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be 1 or more")
    bad = {m.strip() for m in args.checkpoints.split(",")} - {"waited", "queued"}
    if bad or not args.checkpoints.strip():
        parser.error(f"--checkpoints: {', '.join(sorted(bad)) or 'nothing'} is not a mode; use waited and/or queued")
    logging.basicConfig(level=logging.WARNING)
    figures = asyncio.run(bench(args))
    line = json.dumps(figures)
    print("BENCH_JSON " + line)
    if args.json_out:
        args.json_out.write_text(line)


if __name__ == "__main__":
    main()
