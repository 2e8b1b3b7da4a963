"""Engine start time, then wall time and tokens/s of a two-round debate with judge, on this machine.

    .venv/bin/python bench/debate_bench.py [--engine vllm|hf] [--loras] [--repeat N] [--timeline] [--no-stream] [--reserved-cpus N] [--worker bonsai|vllm]

vLLM's CPU settings come from the environment as usual (VLLM_CPU_NUM_OF_RESERVED_CPU, VLLM_CPU_OMP_THREADS_BIND,
an allocator or OpenMP runtime in LD_PRELOAD); the first line printed says which were in effect, with the
load average, so a figure can be told apart from one taken on a busier machine.

Uses the embedded SmolLM2-135M-Instruct and the shipped personas (bare base unless --loras, which gives
advocate and skeptic each a random rank-16 LoRA so the figure includes multi-LoRA serving). Prints one
JSON line per debate and a summary line; the target on a 2-core CPU is <= 60 s per debate after engine start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bonsai.debate.runner import DebateRunner, DebateSpec
from bonsai.model.prepare import resolve_base
from bonsai.paths import bonsai_home
from bonsai.personas import PersonaBook
from bonsai.store.transcripts import TranscriptStore

MOTION = "This house believes that cities should ban private cars from their centres"


def make_random_lora(base: Path, out: Path, seed: int, scale: float = 0.01) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    peft_model.save_pretrained(str(out))
    return out


def use_worker(which: str) -> None:
    """The CPU worker class of the in-process engine: bonsai's (``bonsai/engine/cpu_lora.py``, what every bonsai
    command uses) or, for comparison, vLLM's own. bonsai names its worker in ``_cpu_workarounds``; for vLLM's,
    this bench leaves ``worker_cls`` out of those arguments."""
    import bonsai.engine.vllm_local as vllm_local

    original = getattr(vllm_local._cpu_workarounds, "original", vllm_local._cpu_workarounds)

    def workarounds(on_cpu: bool, max_model_len: int) -> dict:
        args = original(on_cpu, max_model_len)
        return args if which == "bonsai" else {k: v for k, v in args.items() if k != "worker_cls"}

    workarounds.original = original  # type: ignore[attr-defined]
    vllm_local._cpu_workarounds = workarounds


ENV_SHOWN = ("VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CPU_OMP_THREADS_BIND", "LD_PRELOAD", "OMP_NUM_THREADS")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def main(args: argparse.Namespace) -> None:
    if args.reserved_cpus is not None:
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(args.reserved_cpus)
    use_worker(args.worker)
    print(json.dumps({"cpus": os.cpu_count(), "load_average": load_average(), "worker": args.worker, "env": {k: os.environ.get(k) for k in ENV_SHOWN}}), flush=True)
    base = resolve_base(None, bonsai_home())
    work = Path(tempfile.mkdtemp(prefix="bonsai-bench-"))
    adapters = None
    if args.loras:
        adapters = {"advocate": str(make_random_lora(base.path, work / "lora-a", 1)), "skeptic": str(make_random_lora(base.path, work / "lora-b", 2))}
    t0 = time.monotonic()
    if args.engine == "vllm":
        from bonsai.engine.vllm_local import VLLMEngine

        engine = VLLMEngine(base.path, base_hash=base.content_hash, max_loras=2, max_lora_rank=16)
    else:
        from bonsai.engine.hf_peft import HFEngine

        engine = HFEngine(base.path, base_hash=base.content_hash)
    await engine.start()
    start_s = time.monotonic() - t0
    print(json.dumps({"engine": args.engine, "engine_start_s": round(start_s, 1)}), flush=True)
    walls, rates = [], []
    with TranscriptStore(work / "t.sqlite") as store:
        async with DebateRunner(engine, store, work / "ck.sqlite", PersonaBook.load(), work, base.name) as runner:
            for i in range(args.repeat):
                spec = DebateSpec(motion=MOTION, format="standard", rounds=2, seed=i + 1, adapters=adapters)
                t1 = time.monotonic()
                events, judging_at = [], None
                async for ev in runner.run(spec, stream_tokens=not args.no_stream):
                    events.append(ev)
                    if ev.name == "judging" and judging_at is None:
                        judging_at = time.monotonic()
                wall = time.monotonic() - t1
                judge_s = time.monotonic() - judging_at if judging_at is not None else None
                debate_id = events[0].debate_id
                turns = store.turns(debate_id)
                out_tokens = sum(t.output_tokens for t in turns)
                generated = store.debate_tokens(debate_id)  # the one count: judge readings and probes included
                verdict = store.verdicts(debate_id)[0]
                row = {
                    "debate": i, "wall_s": round(wall, 1), "judge_s": round(judge_s, 1) if judge_s is not None else None, "turns": len(turns),
                    "debater_and_moderator_tokens": out_tokens, "tokens_per_s": round(out_tokens / wall, 1), "generated_tokens": generated,
                    "generated_tokens_per_s": round(generated / wall, 1), "winner": verdict.winner, "prob_a": round(verdict.prob_a, 3),
                    "judge_json_parsed": verdict.parsed, "load_average": load_average(),
                }
                walls.append(wall)
                rates.append(out_tokens / wall)
                print(json.dumps(row), flush=True)
                if args.timeline:
                    between = wall - sum(t.latency_s for t in turns) - (judge_s or 0.0)
                    for t in turns:  # prefill shows as the first token's time, decode as the rest per token
                        decode_ms = (t.latency_s - (t.first_token_s or 0.0)) / max(t.output_tokens - 1, 1) * 1000
                        print(json.dumps({"debate": i, "turn": t.turn_index, "speaker": t.speaker, "prompt_tokens": t.prompt_tokens,
                                          "output_tokens": t.output_tokens, "first_token_s": round(t.first_token_s or 0.0, 2),
                                          "latency_s": round(t.latency_s, 2), "decode_ms_per_token": round(decode_ms, 1)}), flush=True)
                    print(json.dumps({"debate": i, "outside_turns_and_judge_s": round(between, 2)}), flush=True)
    await engine.close()
    print(json.dumps({"summary": True, "engine": args.engine, "loras": args.loras, "stream_tokens": not args.no_stream, "engine_start_s": round(start_s, 1),
                      "median_debate_wall_s": round(statistics.median(walls), 1), "median_tokens_per_s": round(statistics.median(rates), 1),
                      "target_s": 60, "met": statistics.median(walls) <= 60}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("--loras", action="store_true", help="give the two debaters random rank-16 adapters")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-stream", action="store_true", help="no token events (as in a sweep): one output per turn instead of a stream")
    parser.add_argument("--timeline", action="store_true", help="also print each turn's prompt and output tokens, first-token time and decode time")
    parser.add_argument("--reserved-cpus", type=int, default=None,
                        help="cores vLLM's CPU worker leaves to the front end (VLLM_CPU_NUM_OF_RESERVED_CPU); default: bonsai's choice")
    parser.add_argument("--worker", choices=["bonsai", "vllm"], default="bonsai",
                        help="the in-process engine's CPU worker: bonsai's (the default of every command) or vLLM's own, to compare")
    asyncio.run(main(parser.parse_args()))
    sys.exit(0)
