"""Sweep throughput: debates/hour and tokens/s by concurrency, against the raw engine, and the prefix cache.

    python bench/sweep_bench.py                                   # CPU: the embedded SmolLM2-135M, fp32
    python bench/sweep_bench.py --shape 8b --levels 1,4,16,64,256 # GPU: a Llama-8B-shaped model, random weights

Everything runs on one in-process vLLM engine (``VLLMEngine``) through bonsai's own sweep executor
(``SweepExecutor``: LangGraph graph, judge, SQLite store and checkpoints), so the figures are what
``bonsai sweep`` gets. Competitors are ``--adapters`` random rank-16 LoRA adapters on all seven
projections (half for each team's persona, every A adapter paired with every B adapter, both sides).

Figures, each from vLLM's own counters (``Engine.stats()``, deltas around the measured part):
- for each concurrency level: debates finished, wall time, debates/hour, generated tokens/s (every
  request: debater turns and judge readings), and the speed-up over concurrency 1;
- sweep vs raw engine: every request the sweep sent at the top level (debater turns, judge verdicts and
  probes, same adapters and sampling), replayed straight into the engine all at once, no graph in
  between; ratio = sweep tokens/s / raw tokens/s;
- prefix-cache hit rate of a multi-round sweep (standard format): hit tokens / looked-up prompt tokens.

Random weights (``--shape 8b``) generate random tokens up to every cap, which is the point for speed
and says nothing about quality. Prints a table and one ``BENCH_JSON {...}`` line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: Llama-3-8B's shape, with SmolLM2's vocabulary (its tokenizer travels; the weights are random)
SHAPE_8B = {
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "max_position_embeddings": 8192, "rope_theta": 500000.0, "tie_word_embeddings": False,
}
MOTIONS = [
    "ban private cars from city centres", "make voting compulsory", "replace exams with coursework", "tax sugary drinks",
    "abolish daylight saving time", "make public transport free", "ban homework in primary schools", "require a licence to own a cat",
    "cap the pay of chief executives", "lower the voting age to sixteen", "ban advertising aimed at children", "make the first year of university free",
]


def motions(n: int) -> list[str]:
    return [f"This house would {MOTIONS[i % len(MOTIONS)]} (case {i})" for i in range(n)]


def make_lora(base: Path, out: Path, *, seed: int, rank: int = 16, scale: float = 0.02, dtype: str = "float32") -> Path:
    """A PEFT-format LoRA adapter written straight from the base's config (no model in memory, so an 8B
    shape costs seconds): random A, small random B, on every projection of every layer."""
    import torch
    from safetensors.torch import save_file

    cfg = json.loads((base / "config.json").read_text())
    hidden, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim") or hidden // heads
    dims = {  # module -> (in, out)
        "self_attn.q_proj": (hidden, heads * head_dim), "self_attn.k_proj": (hidden, kv * head_dim),
        "self_attn.v_proj": (hidden, kv * head_dim), "self_attn.o_proj": (heads * head_dim, hidden),
        "mlp.gate_proj": (hidden, inter), "mlp.up_proj": (hidden, inter), "mlp.down_proj": (inter, hidden),
    }
    gen = torch.Generator().manual_seed(seed)
    tdtype = getattr(torch, dtype)
    tensors = {}
    for i in range(layers):
        for module, (fan_in, fan_out) in dims.items():
            key = f"base_model.model.model.layers.{i}.{module}"
            tensors[f"{key}.lora_A.weight"] = (torch.randn(rank, fan_in, generator=gen) / fan_in**0.5).to(tdtype)
            tensors[f"{key}.lora_B.weight"] = (torch.randn(fan_out, rank, generator=gen) * scale).to(tdtype)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 16, "lora_dropout": 0.0, "bias": "none",
        "target_modules": TARGETS, "base_model_name_or_path": str(base), "fan_in_fan_out": False,
    }, indent=2))
    return out


def shaped_base(tiny: Path, out: Path) -> Path:
    """A folder vLLM can load with ``load_format="dummy"``: the 8B config and the tiny model's tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    for f in tiny.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name not in ("config.json", "bonsai_model.json"):
            shutil.copy(f, out / f.name)
    cfg = json.loads((tiny / "config.json").read_text())
    cfg.update(SHAPE_8B)
    cfg.pop("head_dim", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def write_sweep(folder: Path, name: str, n_motions: int, a: list[str], b: list[str], args: argparse.Namespace, *,
                concurrency: int, fmt: str, rounds: int) -> Path:
    import yaml

    data = {
        "name": name, "motions": motions(n_motions), "pairings": [{"a": x, "b": y} for x in a for y in b], "sides": "both",
        "formats": [fmt], "rounds": rounds, "max_tokens": args.max_tokens, "concurrency": concurrency, "retries": 0,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


class Sampler:
    """Every 20 ms: requests in flight at the engine, and how late the event loop woke this task (lag).

    Mean in-flight below the engine's batch size means the debates, not the engine, set the pace; a large
    lag means the one event loop that runs every debate (and vLLM's output handling) is saturated."""

    def __init__(self, engine: Any, period: float = 0.02) -> None:
        self.engine, self.period = engine, period
        self.inflight: list[int] = []
        self.lag: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(self.period)
            self.lag.append(time.perf_counter() - t0 - self.period)
            self.inflight.append(self.engine.inflight)

    def __enter__(self) -> Sampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    def figures(self) -> dict[str, Any]:
        if not self.lag:
            return {}
        lag = sorted(self.lag)
        return {"mean_inflight": round(sum(self.inflight) / len(self.inflight), 1), "max_inflight": max(self.inflight),
                "loop_lag_ms_p50": round(1000 * lag[len(lag) // 2], 2), "loop_lag_ms_p99": round(1000 * lag[int(len(lag) * 0.99)], 2),
                "loop_lag_ms_max": round(1000 * lag[-1], 1)}


async def run_sweep(engine: Any, store: Any, home: Path, book: Any, path: Path, base_name: str, *, profile: Path | None = None) -> dict[str, Any]:
    from bonsai.debate.runner import DebateRunner
    from bonsai.sweep.config import load_sweep
    from bonsai.sweep.executor import SweepExecutor
    from bonsai.sweep.plan import plan_sweep

    sweep = load_sweep(path)
    plan = plan_sweep(sweep, book, home)
    async with DebateRunner(engine, store, home / f"ck-{sweep.config.name}.sqlite", book, home, base_name, queue_checkpoints=True) as runner:
        ex = SweepExecutor(runner, store, plan, concurrency=sweep.config.concurrency, retries=0, backoff_s=0)
        before, counted = await engine.stats(), engine.generated
        prof = None
        if profile is not None:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        t0 = time.perf_counter()
        with Sampler(engine) as sampler:
            result = await ex.run()
        wall = time.perf_counter() - t0
        if prof is not None:
            import io
            import pstats

            prof.disable()
            text = io.StringIO()
            stats = pstats.Stats(prof, stream=text)
            stats.sort_stats("tottime").print_stats(40)
            stats.sort_stats("cumulative").print_stats(80)
            profile.write_text(text.getvalue())
        delta = (await engine.stats()).since(before)
    if result.failures:
        raise RuntimeError(f"{len(result.failures)} debates failed, e.g. {result.failures[0].message}")
    completions = engine.generated - counted
    gen = delta.generation_tokens if delta.generation_tokens is not None else completions
    return {
        "debates": result.finished - result.skipped, "wall_s": round(wall, 2),
        "debates_per_hour": round(3600 * (result.finished - result.skipped) / wall, 1),
        "generated_tokens": gen, "completion_tokens": completions, "tokens_per_s": round(gen / wall, 1), "prompt_tokens": delta.prompt_tokens,
        "prefix_cache_queries": delta.prefix_cache_queries, "prefix_cache_hits": delta.prefix_cache_hits,
        "prefix_cache_hit_rate": round(delta.hit_rate, 4) if delta.hit_rate is not None else None,
        **sampler.figures(),
        "plan": plan,
    }


def recording_engine_class() -> type:
    from bonsai.engine.vllm_local import VLLMEngine

    class RecordingVLLMEngine(VLLMEngine):
        """Keeps every request while ``recording`` is on, so the raw replay sends exactly what the sweep sent
        (debater turns, judge verdicts and probes, with their adapters and sampling)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.recording = False
            self.recorded: list[Any] = []
            #: output tokens of every Completion: a cross-check of vLLM's generation-token counter
            self.generated = 0
            self.inflight = 0

        async def stream(self, request: Any) -> Any:  # type: ignore[override]
            from bonsai.engine import Completion

            if self.recording:
                self.recorded.append(request)
            self.inflight += 1
            try:
                async for ev in super().stream(request):
                    if isinstance(ev, Completion):
                        self.generated += ev.output_tokens
                    yield ev
            finally:
                self.inflight -= 1

        async def generate(self, request: Any) -> Any:  # type: ignore[override]
            # sweeps use generate() (no token events): recorded and counted the same way
            if self.recording:
                self.recorded.append(request)
            self.inflight += 1
            try:
                completion = await super().generate(request)
            finally:
                self.inflight -= 1
            self.generated += completion.output_tokens
            return completion

    return RecordingVLLMEngine


async def cold_cache(engine: Any) -> bool:
    """Empty vLLM's prefix cache before a measurement. The raw replay sends the very prompts the sweep just
    sent, so with the sweep's blocks still cached it prefilled almost nothing (runs 1-9 measured it that
    way: raw was flattered); each level and the prefix sweep likewise start from what a new sweep finds."""
    llm = getattr(engine, "_llm", None)
    if llm is None:
        return False
    return await llm.reset_prefix_cache() is not False


async def replay_raw(engine: Any, requests: list[Any], limit: int | None = None) -> dict[str, Any]:
    """The sweep's requests straight into the engine, no graph, no waiting between turns: all at once, or
    at most ``limit`` in flight (as many as the sweep's debates, each of which has one turn out at a time)."""
    import dataclasses

    gate = asyncio.Semaphore(limit) if limit else None

    async def send(i: int, r: Any) -> Any:
        r = dataclasses.replace(r, request_id=f"raw{limit or ''}-{i}-{r.request_id}")
        if gate is None:
            return await engine.generate(r)
        async with gate:
            return await engine.generate(r)

    before, counted = await engine.stats(), engine.generated
    t0 = time.perf_counter()
    with Sampler(engine) as sampler:
        await asyncio.gather(*(send(i, r) for i, r in enumerate(requests)))
    wall = time.perf_counter() - t0
    delta = (await engine.stats()).since(before)
    gen = delta.generation_tokens if delta.generation_tokens is not None else engine.generated - counted
    return {"requests": len(requests), "limit": limit, "wall_s": round(wall, 2), "generated_tokens": gen, "tokens_per_s": round(gen / wall, 1),
            "prefix_cache_hit_rate": round(delta.hit_rate, 4) if delta.hit_rate is not None else None, **sampler.figures()}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from gpu_debate import vllm_version  # bench/ is the script's folder, so on the path

    from bonsai.model.prepare import prepare_embedded
    from bonsai.paths import bonsai_home
    from bonsai.personas import PersonaBook
    from bonsai.store.transcripts import TranscriptStore

    on_gpu = torch.cuda.is_available()
    if on_gpu:
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    figures: dict[str, Any] = {"vllm": vllm_version(), "python": platform.python_version(), "shape": args.shape, "levels": {},
                               "max_tokens": args.max_tokens, "adapters": args.adapters, "max_num_seqs": args.max_num_seqs}
    home = Path(tempfile.mkdtemp(prefix="bonsai-sweep-bench-"))
    try:
        tiny = prepare_embedded(bonsai_home(args.model_home) if args.model_home else home)
        base_dir = shaped_base(tiny.path, home / "base-8b") if args.shape == "8b" else tiny.path
        dtype = "bfloat16" if on_gpu else "float32"
        t0 = time.perf_counter()
        names = {"A": "advocate", "B": "skeptic"}
        labels: dict[str, list[str]] = {"A": [], "B": []}
        for i in range(args.adapters):
            side = "A" if i % 2 == 0 else "B"
            version = f"bench{i:02d}"
            make_lora(base_dir, home / "adapters" / names[side] / version, seed=100 + i, dtype=dtype)
            labels[side].append(f"{names[side]}@{version}")
        figures["make_adapters_s"] = round(time.perf_counter() - t0, 1)
        book = PersonaBook.load()
        extra = {"load_format": "dummy"} if args.shape == "8b" else {}
        engine = recording_engine_class()(base_dir, max_model_len=args.max_model_len, max_loras=max(1, args.adapters), max_lora_rank=16,
                            dtype=dtype, kv_cache_gib=args.kv_cache_gib, seed=0, max_num_seqs=args.max_num_seqs, **extra)
        t0 = time.perf_counter()
        await engine.start()
        figures["engine_start_s"] = round(time.perf_counter() - t0, 1)
        sched = engine._llm.vllm_config.scheduler_config  # what vLLM actually chose for this device
        figures["engine_max_num_seqs"], figures["engine_max_num_batched_tokens"] = sched.max_num_seqs, sched.max_num_batched_tokens
        print(f"engine: max_num_seqs {sched.max_num_seqs}, max_num_batched_tokens {sched.max_num_batched_tokens}", flush=True)
        if args.profile_dir:
            args.profile_dir.mkdir(parents=True, exist_ok=True)
        try:
            with TranscriptStore(home / "transcripts.sqlite") as store:
                # warm-up: one tiny sweep so kernels and every adapter are loaded before timing
                warm = write_sweep(home, "warmup", 1, labels["A"], labels["B"], args, concurrency=args.adapters * 2, fmt="quick", rounds=1)
                await run_sweep(engine, store, home, book, warm, base_dir.name)
                cold: list[bool] = []
                for c in [] if args.prefix_only else levels:
                    n_debates = max(c, args.min_debates)
                    per_motion = 2 * len(labels["A"]) * len(labels["B"])
                    path = write_sweep(home, f"c{c}", -(-n_debates // per_motion), labels["A"], labels["B"], args, concurrency=c, fmt="quick", rounds=1)
                    engine.recording, engine.recorded = c == levels[-1], []
                    cold.append(await cold_cache(engine))
                    profile = args.profile_dir / f"profile-c{c}.txt" if args.profile_dir and c == levels[-1] else None
                    fig = await run_sweep(engine, store, home, book, path, base_dir.name, profile=profile)
                    engine.recording = False
                    fig.pop("plan")
                    figures["levels"][str(c)] = fig
                    print(f"concurrency {c:>4}: {fig['debates']:>4} debates in {fig['wall_s']:>8.1f} s  "
                          f"{fig['debates_per_hour']:>10.1f} debates/h  {fig['tokens_per_s']:>8.1f} tok/s  "
                          f"in flight {fig.get('mean_inflight')} (max {fig.get('max_inflight')})  loop lag p99 {fig.get('loop_lag_ms_p99')} ms", flush=True)
                if levels and not args.prefix_only:
                    first = figures["levels"][str(levels[0])]
                    for fig in figures["levels"].values():
                        fig["speedup_vs_first"] = round(fig["debates_per_hour"] / first["debates_per_hour"], 2)
                    top = levels[-1]
                    cold.append(await cold_cache(engine))
                    raw = await replay_raw(engine, engine.recorded)
                    sweep_fig = figures["levels"][str(top)]
                    figures["raw_engine"] = {**raw, "concurrency": top}
                    figures["sweep_vs_raw"] = round(sweep_fig["tokens_per_s"] / raw["tokens_per_s"], 3) if raw["tokens_per_s"] else None
                    print(f"raw engine replay: {raw['requests']} requests, {raw['tokens_per_s']} tok/s (prefix hit {raw['prefix_cache_hit_rate']}); "
                          f"sweep/raw = {figures['sweep_vs_raw']}", flush=True)
                    cold.append(await cold_cache(engine))
                    same = await replay_raw(engine, engine.recorded, limit=top)
                    figures["raw_engine_same_concurrency"] = same
                    figures["sweep_vs_raw_same_concurrency"] = round(sweep_fig["tokens_per_s"] / same["tokens_per_s"], 3) if same["tokens_per_s"] else None
                    print(f"raw engine replay, at most {top} in flight: {same['tokens_per_s']} tok/s; sweep/raw = {figures['sweep_vs_raw_same_concurrency']}",
                          flush=True)
                ratio_levels = [int(x) for x in args.ratio_levels.split(",")] if args.ratio_levels else []
                if ratio_levels:
                    figures["ratios"] = await sweep_vs_raw_repeated(engine, store, home, book, base_dir.name, labels, args, ratio_levels)
                path = write_sweep(home, "prefix", args.prefix_motions, labels["A"][:1], labels["B"][:1], args,
                                   concurrency=args.prefix_concurrency, fmt="standard", rounds=2)
                cold.append(await cold_cache(engine))
                pre = await run_sweep(engine, store, home, book, path, base_dir.name)
                pre.pop("plan")
                figures["prefix_cache"] = pre
                figures["cold_cache_each_measurement"] = all(cold)
                print(f"prefix cache (standard format, 2 rounds): {pre['prefix_cache_hits']} of {pre['prefix_cache_queries']} prompt tokens hit "
                      f"= {pre['prefix_cache_hit_rate']}", flush=True)
        finally:
            await engine.close()
        figures["device"] = (f"{torch.cuda.get_device_name(0)}" if on_gpu else f"CPU, {os.cpu_count()} cores visible")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return figures


async def sweep_vs_raw_repeated(engine: Any, store: Any, home: Path, book: Any, base_name: str, labels: dict[str, list[str]],
                                args: argparse.Namespace, levels: list[int]) -> dict[str, Any]:
    """sweep/raw at each level, ``--repeat`` times, each measurement from an empty prefix cache: the sweep
    (recording its requests), then the same requests replayed all at once and at the sweep's concurrency.
    Medians over the repetitions; with ``--profile-dir``, one more profiled sweep per level afterwards (a
    profile slows the loop, so it is never one of the measured runs)."""
    import statistics

    out: dict[str, Any] = {}
    per_motion = 2 * len(labels["A"]) * len(labels["B"])
    for c in levels:
        runs: list[dict[str, Any]] = []
        for r in range(args.repeat + (1 if args.profile_dir else 0)):
            profiled = r == args.repeat
            path = write_sweep(home, f"ratio-c{c}-r{r}", -(-max(c, args.min_debates) // per_motion), labels["A"], labels["B"], args,
                               concurrency=c, fmt="quick", rounds=1)
            engine.recording, engine.recorded = True, []
            await cold_cache(engine)
            profile = args.profile_dir / f"profile-ratio-c{c}.txt" if profiled else None
            fig = await run_sweep(engine, store, home, book, path, base_name, profile=profile)
            engine.recording = False
            if profiled:
                out[f"profiled_{c}"] = {k: fig.get(k) for k in ("tokens_per_s", "loop_lag_ms_p99", "wall_s")}
                continue
            await cold_cache(engine)
            raw = await replay_raw(engine, engine.recorded)
            await cold_cache(engine)
            same = await replay_raw(engine, engine.recorded, limit=c)
            run = {"debates": fig["debates"], "sweep_tok_s": fig["tokens_per_s"], "raw_tok_s": raw["tokens_per_s"], "raw_same_tok_s": same["tokens_per_s"],
                   "sweep_vs_raw": round(fig["tokens_per_s"] / raw["tokens_per_s"], 3) if raw["tokens_per_s"] else None,
                   "sweep_vs_raw_same": round(fig["tokens_per_s"] / same["tokens_per_s"], 3) if same["tokens_per_s"] else None,
                   "loop_lag_ms_p99": fig.get("loop_lag_ms_p99"), "mean_inflight": fig.get("mean_inflight")}
            runs.append(run)
            print(f"ratio level {c:>5} run {r + 1}: sweep {run['sweep_tok_s']} tok/s, raw {run['raw_tok_s']} (all at once) / "
                  f"{run['raw_same_tok_s']} (at {c}); sweep/raw {run['sweep_vs_raw']} / {run['sweep_vs_raw_same']}; "
                  f"loop lag p99 {run['loop_lag_ms_p99']} ms", flush=True)
        med = {k: statistics.median(x[k] for x in runs if x[k] is not None) for k in ("sweep_vs_raw", "sweep_vs_raw_same", "sweep_tok_s", "raw_tok_s")}
        out[str(c)] = {"runs": runs, "median": med}
        print(f"ratio level {c:>5}: median sweep/raw {med['sweep_vs_raw']:.3f} (all at once), {med['sweep_vs_raw_same']:.3f} (same concurrency) "
              f"over {len(runs)} runs", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["tiny", "8b"], default="tiny", help="tiny: the embedded model; 8b: Llama-8B shape, random weights (GPU)")
    parser.add_argument("--levels", default="1,4,16,64", help="concurrency levels (comma-separated)")
    parser.add_argument("--min-debates", type=int, default=8, help="debates per level at least (more when the level is higher)")
    parser.add_argument("--adapters", type=int, default=4, help="random LoRA adapters (split between the two teams)")
    parser.add_argument("--max-tokens", type=int, default=32, help="cap on every debater turn")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--kv-cache-gib", type=float, default=4.0)
    parser.add_argument("--prefix-motions", type=int, default=4, help="motions of the prefix-cache sweep (x2 sides)")
    parser.add_argument("--prefix-concurrency", type=int, default=8)
    parser.add_argument("--prefix-only", action="store_true", help="only the prefix-cache sweep (no levels, no raw replay)")
    parser.add_argument("--max-num-seqs", type=int, default=None, help="engine batch size (default: vLLM's throughput default for the device)")
    parser.add_argument("--profile-dir", type=Path, default=None, help="write a cProfile of the top level's sweep (the event loop's thread) here")
    parser.add_argument("--model-home", default=None, help="BONSAI_HOME holding the prepared embedded model (default: a fresh one)")
    parser.add_argument("--ratio-levels", default="", help="sweep/raw at these concurrency levels, --repeat times each (comma-separated)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each --ratio-levels measurement (medians reported)")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("vllm", "httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    figures = asyncio.run(bench(args))
    line = json.dumps(figures)
    print("BENCH_JSON " + line)
    if args.json_out:
        args.json_out.write_text(line)


if __name__ == "__main__":
    main()
