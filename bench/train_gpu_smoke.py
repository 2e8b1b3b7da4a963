"""CUDA smoke run of ``training/train.py`` (TRL + PEFT, or Unsloth where installed): ORPO, DPO and ORPO->SFT,
a few steps each, on a tiny random Llama that uses SmolLM2's tokenizer (so nothing large has to travel).

    python bench/train_gpu_smoke.py --tokenizer DIR   # DIR: tokenizer.json, tokenizer_config.json, chat_template.jinja

Prints one JSON line per run: backend, device, seconds, the logged losses and the files of the version.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, required=True, help="folder with SmolLM2's tokenizer files")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    from training.backend import preload_backend

    preload_backend()
    import torch
    from trainkit import write_dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    from bonsai.model.prepare import BaseModel, hash_model_dir
    from training.config import parse_recipe
    from training.train import pick_backend, train_adapter, training_device

    root = Path(tempfile.mkdtemp(prefix="bonsai-gpu-smoke-"))
    base_dir = root / "tiny-llama"
    config = LlamaConfig(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64, intermediate_size=512,
        vocab_size=49152, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(base_dir)
    for f in args.tokenizer.iterdir():
        shutil.copy(f, base_dir / f.name)
    base = BaseModel(path=base_dir, name="tiny-llama", content_hash=hash_model_dir(base_dir))
    device = training_device()
    print(json.dumps({"device": device, "backend": pick_backend("auto", device), "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None}))
    sft = {"method": "sft", "trainer": {"max_steps": 2, "per_device_train_batch_size": 2}}
    for name, method, extra in (("orpo", "orpo", None), ("dpo", "dpo", None), ("orpo-then-sft", "orpo", sft)):
        raw = {
            "name": f"smoke-{name}", "lora": {"r": 16, "alpha": 16}, "init": "base", "evaluate": True,
            "stages": [{"method": method, "trainer": {"max_steps": args.steps, "per_device_train_batch_size": 2, "learning_rate": 1e-3}}],
        }
        if extra:
            raw["stages"].append(extra)
        dataset = write_dataset(root / f"ds-{name}", base=base, per_motion=2)
        t0 = time.monotonic()
        result = train_adapter("advocate", dataset, home=root / f"home-{name}", base=base, recipe=parse_recipe(raw, where=name))
        print(json.dumps({
            "run": name, "backend": result.backend, "device": result.device, "seconds": round(time.monotonic() - t0, 1),
            "losses": [round(r["loss"], 4) for r in result.records if "loss" in r], "files": sorted(p.name for p in result.path.iterdir()),
        }), flush=True)


if __name__ == "__main__":
    main()
