"""ORPO training speed on one GPU: Unsloth's FastLanguageModel + TRL against plain TRL + PEFT, same data.

    python bench/train_gpu_bench.py --tokenizer DIR [--json-out FILE]   # DIR: SmolLM2's tokenizer files

Both runs go through the project's own training path: ``training.train.train_adapter`` with the shipped
``orpo`` recipe (LoRA r=16, alpha=16, dropout 0 on all seven projections, beta 0.1, lr 2e-4), forced to
``backend: unsloth`` or ``backend: peft``, on a dataset folder in ``bonsai data build``'s layout. What
changes from the recipe: ``max_steps`` (warm-up + timed), ``per_device_train_batch_size``, ``init: base``
and ``evaluate: false``. On CUDA the project trains in bf16 with gradient checkpointing (Unsloth's own
checkpointing on the Unsloth backend).

The model is Llama-3-8B-shaped (hidden 4096, 32 layers, 32 query / 8 KV heads, MLP 14336, untied head)
with SmolLM2's 49152-token vocabulary and tokenizer, and RANDOM weights: the figures are speed and memory,
not quality. It is made once on the GPU and saved (bf16 safetensors) to ``--model`` (default under /tmp),
since Unsloth loads from disk.

Every pair has the same length: a prompt of ``--prompt-words`` single-token words (plus the system prompt
and chat template) and chosen / rejected answers of ``--answer-words`` each, so a step of batch B runs
2B sequences of (nearly) one length: 790-791 tokens at the defaults, next to no padding. Tokens/s counts
those real tokens.

Each backend runs in its own process (Unsloth patches transformers and TRL globally), steps are timed by
the host clock after ``torch.cuda.synchronize()`` at every step end, after ``--warmup`` untimed steps. The driver prints one
``BENCH_JSON {...}`` line per backend; ``--json-out`` gets all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = Path(tempfile.gettempdir()) / "bonsai-llama8b-random"
SHAPE = {
    "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "intermediate_size": 14336, "vocab_size": 49152, "tie_word_embeddings": False, "max_position_embeddings": 8192,
    "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
}
SYSTEM = (
    "You are Advocate, a debater on team A. You argue FOR the motion. Make one or two concrete, well-supported points "
    "per turn, answer the other side's strongest point directly, and never argue against the motion."
)
WORDS = (
    "the city car street bus people time year work school home money road law house world plan cost town health "
    "place child water air life week day night state group part case point fact number problem system program question "
    "government company family story power change line end member result reason idea study area market level office "
    "door body face book word business issue side kind head service friend father mother country rate price court "
    "police data team minute force history party land report test voice policy research event view sense field "
    "light rule value energy risk action vote trade food tax safety traffic noise shop park train transport"
).split()
ENV = {
    "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    "UNSLOTH_DISABLE_STATISTICS": "1", "HF_DATASETS_OFFLINE": "1",
}


# --- the random 8B-shaped model ------------------------------------------------------------------


def make_model(tokenizer: Path, out: Path) -> dict[str, Any]:
    """Build the Llama on the GPU in bf16 (random init), save it with the tokenizer files."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    t0 = time.monotonic()
    config = LlamaConfig(**SHAPE)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    model.config.dtype = torch.bfloat16
    params = sum(p.numel() for p in model.parameters())
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    for f in tokenizer.iterdir():
        shutil.copy(f, tmp / f.name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    info = {"model": str(out), "params": params, "seconds": round(time.monotonic() - t0, 1), "weights": "random (transformers' init, std 0.02)"}
    print(json.dumps(info), flush=True)
    return info


# --- the data --------------------------------------------------------------------------------------


def single_token_words(tok: Any) -> list[str]:
    words = [w for w in WORDS if len(tok(" " + w, add_special_tokens=False).input_ids) == 1]
    if len(words) < 20:
        raise SystemExit(f"only {len(words)} single-token words in this tokenizer")
    return words


def text(rng: random.Random, words: list[str], n: int) -> str:
    return " " + " ".join(rng.choice(words) for _ in range(n))


def write_pairs(out: Path, base: Any, tok: Any, *, n: int, prompt_words: int, answer_words: int) -> tuple[Path, dict[str, int]]:
    """``n`` pairs of identical token lengths in ``bonsai data build``'s layout (train split only)."""
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    from training.card import Counts, DatasetCard, Split, StrategyEntry, content_hash, hashed_settings, write_card
    from training.dataset import SPLITS, features

    rng = random.Random(0)
    words = single_token_words(tok)
    motion = "This house believes that cities should ban private cars from their centres"
    rows = []
    for i in range(n):
        user = f'Motion: "{motion}"\nYour turn (Opening):' + text(rng, words, prompt_words)
        rows.append({
            "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
            "chosen": [{"role": "assistant", "content": text(rng, words, answer_words).lstrip()}],
            "rejected": [{"role": "assistant", "content": text(rng, words, answer_words).lstrip()}],
            "motion": motion, "strategy": "best-of-n", "debate_id": f"gpubench{i}", "turn_index": 1, "meta": "{}",
        })
    def n_tokens(messages: list[dict[str, str]], **kw: Any) -> int:
        return len(tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)["input_ids"])

    prompts = [n_tokens(r["prompt"], add_generation_prompt=True) for r in rows]
    seqs = [n_tokens(r["prompt"] + r[k]) for r in rows for k in ("chosen", "rejected")]
    card = DatasetCard(
        persona="advocate", language="en", reasoning="none", format="conversational", base_model=base.name,
        base_hash=base.content_hash, source_store="(gpu bench)", debate_ids=sorted(r["debate_id"] for r in rows),
        strategies=[StrategyEntry(name="best-of-n")], counts=Counts(kept=n, train=n, test=0), max_length=2048, min_room=16,
        split=Split(test_fraction=0.0, seed=0, train_motions=[motion], test_motions=[]), content_hash="", created_at=time.time(),
    )
    card.content_hash = content_hash(hashed_settings(card), rows, [])
    feats = features("conversational")
    dd = DatasetDict({"train": Dataset.from_list(rows, features=feats), "test": Dataset.from_dict({k: [] for k in feats}, features=feats)})
    out.mkdir(parents=True, exist_ok=True)
    dd.save_to_disk(str(out), num_shards={name: 1 for name in SPLITS})
    for name in SPLITS:
        pq.write_table(dd[name].data.table, str(out / f"{name}.parquet"))
    write_card(out, card)
    return out, {
        "prompt_tokens": round(sum(prompts) / len(prompts), 1),
        "seq_tokens_mean": round(sum(seqs) / len(seqs), 1),
        "seq_tokens_min": min(seqs),
        "seq_tokens_max": max(seqs),
    }


# --- one backend (its own process) ---------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    if args.backend == "unsloth":
        # before transformers, peft and trl (training.train imports transformers through training.metrics)
        t_imp = time.monotonic()
        import unsloth  # noqa: F401

        unsloth_import_s = round(time.monotonic() - t_imp, 1)
    import torch
    from transformers import AutoTokenizer, TrainerCallback

    from bonsai.model.prepare import BaseModel
    from training.config import load_recipe, parse_recipe
    from training.train import pick_backend, train_adapter

    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    steps = args.warmup + args.steps

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.begin_alloc = 0

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.begin_alloc = torch.cuda.memory_allocated()
            self.t0 = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

        def on_train_end(self, *a: Any, **k: Any) -> None:
            self.peak_alloc = torch.cuda.max_memory_allocated()
            self.peak_reserved = torch.cuda.max_memory_reserved()

    model_dir = Path(args.model)
    base = BaseModel(path=model_dir, name="llama8b-shape-random", content_hash="random-weights-" + args.backend)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    root = Path(tempfile.mkdtemp(prefix=f"bonsai-gpu-bench-{args.backend}-"))
    dataset, lengths = write_pairs(
        root / "dataset", base, tok, n=args.batch * steps, prompt_words=args.prompt_words, answer_words=args.answer_words
    )
    shipped = load_recipe("orpo").model_dump(mode="json")
    shipped.update({"name": f"gpu-bench-{args.backend}", "backend": args.backend, "init": "base", "evaluate": False})
    shipped["stages"][0]["trainer"].update({"max_steps": steps, "per_device_train_batch_size": args.batch, "num_train_epochs": 1})
    recipe = parse_recipe(shipped, where="gpu bench recipe")
    clock = StepClock()
    t0 = time.monotonic()
    result = train_adapter("advocate", dataset, home=root / "home", base=base, recipe=recipe, callbacks=[clock])
    total_s = time.monotonic() - t0
    assert result.backend == args.backend == pick_backend(args.backend, "cuda"), (result.backend, args.backend)
    ends = clock.ends
    if len(ends) < steps:
        raise SystemExit(f"only {len(ends)} of {steps} steps ran")
    timed = ends[args.warmup - 1 :] if args.warmup > 0 else [clock.t0, *ends]
    window = timed[-1] - timed[0]
    step_s = [round(b - a, 3) for a, b in zip(timed, timed[1:])]
    # a chosen and a rejected sequence per pair; lengths differ by a token or two at most (padding not counted)
    tokens_per_step = round(2 * args.batch * lengths["seq_tokens_mean"])
    out = {
        "backend": args.backend,
        "weights": "RANDOM (speed and memory only, not quality)",
        "model": "Llama-8B shape: hidden 4096, 32 layers, 32 q / 8 kv heads, MLP 14336, vocab 49152 (SmolLM2 tokenizer), untied head, bf16",
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "lora": "r=16 alpha=16 dropout=0 on q,k,v,o,gate,up,down",
        "batch_pairs": args.batch,
        "sequences_per_step": 2 * args.batch,
        **lengths,
        "tokens_per_step": tokens_per_step,
        "warmup_steps": args.warmup,
        "timed_steps": len(step_s),
        "steps_per_s": round(len(step_s) / window, 4),
        "s_per_step_median": sorted(step_s)[len(step_s) // 2],
        "tokens_per_s": round(tokens_per_step * len(step_s) / window, 1),
        "step_s": step_s,
        "first_step_s": round(ends[0] - clock.t0, 2),
        "alloc_at_train_begin_gib": round(clock.begin_alloc / 2**30, 2),
        "peak_alloc_gib": round(clock.peak_alloc / 2**30, 2),
        "peak_reserved_gib": round(clock.peak_reserved / 2**30, 2),
        "train_adapter_s": round(total_s, 1),
        "losses": [round(r["loss"], 4) for r in result.records if "loss" in r],
        "adapter_files": sorted(p.name for p in result.path.iterdir()),
    }
    if args.backend == "unsloth":
        import unsloth as u

        out["unsloth"] = getattr(u, "__version__", "?")
        out["unsloth_import_s"] = unsloth_import_s
    import peft
    import transformers
    import trl

    out.update({"transformers": transformers.__version__, "peft": peft.__version__, "trl": trl.__version__})
    print("BENCH_JSON " + json.dumps(out), flush=True)


# --- driver --------------------------------------------------------------------------------------


def run_backend(backend: str, args: argparse.Namespace, timeout: float) -> dict[str, Any]:
    """One backend in a fresh process, its output passed through; killed after ``timeout`` seconds."""
    import threading

    cmd = [
        sys.executable, __file__, "--worker", backend, "--model", str(args.model), "--batch", str(args.batch),
        "--warmup", str(args.warmup), "--steps", str(args.steps), "--prompt-words", str(args.prompt_words),
        "--answer-words", str(args.answer_words),
    ]
    env = {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)]))}
    if backend == "unsloth":
        env.setdefault("UNSLOTH_COMPILE_LOCATION", str(Path(tempfile.gettempdir()) / "unsloth_compiled_cache"))
    t0 = time.monotonic()
    lines: list[str] = []
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(max(timeout, 1.0), proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(f"[{backend}] {line}", end="", flush=True)
            lines.append(line)
        rc = proc.wait()
    finally:
        timer.cancel()
    found = [json.loads(x.split("BENCH_JSON ", 1)[1]) for x in lines if x.startswith("BENCH_JSON ")]
    if found:
        res = found[-1]
    else:
        why = f"killed after {timeout:.0f} s" if rc == -9 else f"exit {rc}"
        res = {"backend": backend, "error": why, "tail": "".join(lines[-60:])[-6000:]}
    res["process_s"] = round(time.monotonic() - t0, 1)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", type=Path, help="folder with SmolLM2's tokenizer.json, tokenizer_config.json, chat_template.jinja")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="where the random model is saved (made once if missing)")
    p.add_argument("--backends", default="unsloth,peft")
    p.add_argument("--batch", type=int, default=4, help="pairs per step (2x sequences)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="timed steps after the warm-up")
    p.add_argument("--prompt-words", type=int, default=448, help="single-token words in the user turn")
    p.add_argument("--answer-words", type=int, default=256, help="single-token words in each answer")
    p.add_argument("--timeout", type=float, default=900, help="seconds per backend process")
    p.add_argument("--budget", type=float, default=0, help="seconds for the whole run (0: none); a backend gets what is left")
    p.add_argument("--json-out", type=Path)
    p.add_argument("--worker", choices=["unsloth", "peft"], help=argparse.SUPPRESS)
    p.add_argument("--make-model", action="store_true", help="only make the random model at --model")
    args = p.parse_args()
    started = time.monotonic()
    if args.make_model:
        if args.tokenizer is None:
            p.error("--make-model needs --tokenizer")
        make_model(args.tokenizer, args.model)
        return
    if args.worker:
        args.backend = args.worker
        worker(args)
        return
    if not (args.model / "config.json").is_file():
        if args.tokenizer is None:
            p.error(f"no model at {args.model}: give --tokenizer to make one")
        # its own process, so this one never holds a CUDA context while the backends run
        cmd = [sys.executable, __file__, "--make-model", "--tokenizer", str(args.tokenizer), "--model", str(args.model)]
        subprocess.run(cmd, cwd=ROOT, env={**os.environ, **ENV}, check=True)
    results = []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        left = args.budget - (time.monotonic() - started) if args.budget else args.timeout
        res = run_backend(backend, args, min(args.timeout, left))
        results.append(res)
        print("BENCH_JSON " + json.dumps({k: v for k, v in res.items() if k not in ("tail", "step_s", "losses")}), flush=True)
        if args.json_out:
            args.json_out.write_text(json.dumps(results, indent=1))
    print()
    print(f"{'backend':8} {'steps/s':>8} {'tokens/s':>9} {'peak alloc GiB':>15} {'peak reserved GiB':>18}  (RANDOM weights)")
    for r in results:
        if "error" in r:
            print(f"{r['backend']:8} failed: {r['error']}")
        else:
            print(f"{r['backend']:8} {r['steps_per_s']:8.3f} {r['tokens_per_s']:9.0f} {r['peak_alloc_gib']:15.1f} {r['peak_reserved_gib']:18.1f}")


if __name__ == "__main__":
    main()
