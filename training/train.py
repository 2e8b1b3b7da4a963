"""``bonsai train``: a persona's dataset and a recipe in, a new adapter version in the registry out.

Read top to bottom: check the dataset against the base, load the base (fp32 on CPU: bf16 matmuls are
many times slower there), put a LoRA on it (Unsloth's ``FastLanguageModel`` on CUDA when installed,
else PEFT: the same adapter files either way), run the recipe's stages on that one adapter, save it
into a staged registry version with its metrics and plot, and let the registry name it by content.

Everything is written inside the staged version: an exception or Ctrl-C at any point removes it, so
an interrupted training leaves no version behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bonsai.registry import current_version, persona_dir
from bonsai.registry.identity import inspect_adapter
from bonsai.registry.peft import WEIGHTS_FILE
from bonsai.errors import ConfigError
from bonsai.model.prepare import BaseModel as PreparedBase
from bonsai.orphans import TRAIN_SCRATCH_PREFIX
from training.backend import preload_backend, unsloth_available
from training.config import Recipe, Stage, trl_config_class
from training.metrics import MetricsLog, plot_metrics, read_metrics, summarize
from bonsai.registry import new_version

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"
PREFERENCE_COLUMNS = ["prompt", "chosen", "rejected"]


@dataclass(frozen=True)
class TrainResult:
    persona: str
    version: str
    path: Path
    parent: str | None
    dataset_hash: str
    metrics: dict[str, Any]
    seconds: float
    backend: str
    device: str
    records: list[dict[str, Any]] = field(default_factory=list)


# --- device and backend -------------------------------------------------------------------------


def training_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_backend(requested: str, device: str) -> str:
    if requested == "unsloth":
        if device != "cuda":
            raise ConfigError("the unsloth backend needs a CUDA GPU, and none is visible", "use backend: auto or peft on this machine")
        if not unsloth_available():
            raise ConfigError("the recipe asks for the unsloth backend, but unsloth is not installed", "pip install unsloth, or set backend: auto")
        return "unsloth"
    if requested == "auto" and device == "cuda" and unsloth_available():
        return "unsloth"
    return "peft"


# --- checks -------------------------------------------------------------------------------------


def check_card(card: dict[str, Any], persona: str, base: PreparedBase, dataset: Path) -> None:
    if card.get("persona") != persona:
        raise ConfigError(
            f"the dataset at {dataset} was built for persona {card.get('persona')!r}, not {persona!r}",
            f"build one for {persona} with `bonsai data build --persona {persona}`, or train {card.get('persona')}",
        )
    recorded = card.get("base_hash")
    if recorded and recorded != base.content_hash:
        raise ConfigError(
            f"the dataset at {dataset} was built for another base model ({card.get('base_model')}, hash {str(recorded)[:12]}…); "
            f"this base is {base.name} (hash {base.content_hash[:12]}…)",
            "train with --base set to the dataset's base, or rebuild the dataset on this base with `bonsai data build`",
        )


# --- model and tokenizer ------------------------------------------------------------------------


def training_tokenizer(base_dir: Path) -> Any:
    """The base's tokenizer, with the special tokens training needs set the way inference sees them.

    Chat templates that close turns with ``<|im_end|>`` stop generation there, so that is the EOS the
    trainers append; padding gets its own token; a BOS the tokenizer never adds at inference is not
    added by TRL either (it would put a token in front of every Alpaca prompt that vLLM never sees).
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    vocab = tok.get_vocab()
    template = tok.chat_template or ""
    if "<|im_end|>" in vocab and "<|im_end|>" in template:
        tok.eos_token = "<|im_end|>"
    if tok.pad_token is None:
        tok.pad_token = "<|endoftext|>" if "<|endoftext|>" in vocab and tok.eos_token != "<|endoftext|>" else tok.eos_token
    if tok.bos_token_id is not None:
        probe = tok("x").input_ids
        if not probe or probe[0] != tok.bos_token_id:
            tok.bos_token = None
    return tok


def load_model(base: PreparedBase, recipe: Recipe, *, device: str, backend: str, max_length: int) -> tuple[Any, Any]:
    """The base with a fresh LoRA of the recipe's shape, and the training tokenizer."""
    import torch

    lora = recipe.lora
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        model, _ = FastLanguageModel.from_pretrained(
            model_name=str(base.path), max_seq_length=max_length, dtype=None, load_in_4bit=False, local_files_only=True
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            bias="none",
            use_gradient_checkpointing="unsloth",
            random_state=recipe.seed,
        )
        return model, training_tokenizer(base.path)

    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if device == "cpu" else (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    torch.manual_seed(recipe.seed)
    model = AutoModelForCausalLM.from_pretrained(str(base.path), dtype=dtype)
    model.config.use_cache = False
    if device == "cuda":
        model.to("cuda")
    return get_peft_model(model, lora.peft_config()), training_tokenizer(base.path)


def start_from_parent(model: Any, parent_dir: Path, recipe: Recipe) -> bool:
    """Load the parent's LoRA weights into ``model`` when it has the recipe's shape; else keep it fresh."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    ref = inspect_adapter(parent_dir)
    import json

    config = json.loads((parent_dir / "adapter_config.json").read_text(encoding="utf-8"))
    same = (
        ref.rank == recipe.lora.r
        and int(config.get("lora_alpha") or 0) == recipe.lora.alpha
        and sorted(ref.target_modules) == sorted(recipe.lora.target_modules)
    )
    if not same:
        log.warning("parent adapter %s has another shape (r=%s, targets %s): training a fresh LoRA", parent_dir, ref.rank, ",".join(ref.target_modules))
        return False
    result = set_peft_model_state_dict(model, load_file(str(parent_dir / WEIGHTS_FILE)))
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ConfigError(f"the parent adapter {parent_dir} has weights this model has no place for ({unexpected[0]}, ...)", "train from the base with --from base")
    return True


def in_memory(dd: Any) -> Any:
    """A copy held in memory: the trainers' ``map`` calls would otherwise write cache files into the
    dataset's folder, and a dataset is read-only once built."""
    from datasets import Dataset, DatasetDict

    return DatasetDict({name: Dataset.from_dict(split.to_dict(), features=split.features) for name, split in dd.items()})


# --- one stage ----------------------------------------------------------------------------------


def trl_args(stage: Stage, *, device: str, output_dir: Path, progress: bool, seed: int, max_length: int) -> Any:
    """TRL's config for the stage: bonsai's defaults, then the recipe's ``trainer:`` on top."""
    import torch

    cls = trl_config_class(stage.method)
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "seed": seed,
        "data_seed": seed,
        "disable_tqdm": not progress,
        "dataloader_num_workers": 0,
        # ample memory on CPU, and checkpointing costs a fifth of the speed
        "gradient_checkpointing": device == "cuda",
        "use_cpu": device == "cpu",
        "bf16": device == "cuda" and torch.cuda.is_bf16_supported(),
        "fp16": False,
    }
    if "max_length" in {f.name for f in dataclasses.fields(cls)}:
        kwargs["max_length"] = max_length  # GRPO has none: its prompts are short and max_completion_length caps the rest
    if stage.method == "orpo":
        kwargs["remove_unused_columns"] = False  # ORPO's collator needs its own columns
    kwargs.update(stage.trainer)
    if device == "cpu" and kwargs.get("bf16"):
        log.warning("bf16 on CPU trains many times slower than fp32 here; drop bf16 from the recipe")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"TRL refused the {stage.method} settings: {exc}", "fix the recipe's trainer: section") from None


def stage_data(method: str, split: Any) -> Any:
    """The columns each method reads: pairs for ORPO/DPO, prompt + chosen completion for SFT."""
    if method == "sft":
        return split.map(
            lambda row: {"prompt": row["prompt"], "completion": row["chosen"]},
            remove_columns=split.column_names,
            desc="chosen completions for SFT",
        )
    return split.select_columns(PREFERENCE_COLUMNS)


def make_trainer(method: str, model: Any, args: Any, train: Any, test: Any | None, tokenizer: Any, callbacks: Sequence[Any]) -> Any:
    common = {"model": model, "args": args, "train_dataset": train, "eval_dataset": test, "processing_class": tokenizer, "callbacks": list(callbacks)}
    if method == "orpo":
        from training.orpo import ORPOTrainer

        return ORPOTrainer(**common)
    if method == "dpo":
        from trl import DPOTrainer

        # no ref_model: TRL keeps a frozen copy of the starting adapter as the reference
        return DPOTrainer(**common)
    from trl import SFTTrainer

    return SFTTrainer(**common)


def kernels_for(method: str, device: str) -> contextlib.AbstractContextManager[None]:
    """TRL's DPO, SFT and GRPO compute log-probabilities with a Triton kernel that has no CPU driver."""
    if method in ("dpo", "sft", "grpo") and device == "cpu":
        from training.cpu_logprobs import torch_logprobs

        return torch_logprobs()
    return contextlib.nullcontext()


# --- the whole run ------------------------------------------------------------------------------


def train_adapter(
    persona: str,
    dataset: Path,
    *,
    home: Path,
    base: PreparedBase,
    recipe: Recipe,
    progress: bool = False,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train ``recipe`` on the dataset at ``dataset`` and register the adapter as a new version of ``persona``."""
    from training.dataset import load_pairs

    if recipe.is_grpo:
        raise ConfigError(
            f"the {recipe.name} recipe is GRPO: it trains on generated logic problems, not on a preference dataset",
            f"run `bonsai train {persona} --recipe {recipe.name}` without --dataset",
        )
    t0 = time.monotonic()
    dataset = Path(dataset)
    dd, card = load_pairs(dataset)
    check_card(card, persona, base, dataset)
    dd = in_memory(dd)
    if len(dd["train"]) == 0:
        raise ConfigError(f"the dataset at {dataset} has no training pairs", "build it from more debates with `bonsai data build`")
    device = training_device()
    backend = pick_backend(recipe.backend, device)
    if backend == "unsloth":
        preload_backend("unsloth")
    max_length = int(card.get("max_length") or 1024)
    parent = current_version(home, persona)
    test = dd["test"] if recipe.evaluate and len(dd["test"]) > 0 else None

    with new_version(home, persona) as draft, tempfile.TemporaryDirectory(prefix=f"{TRAIN_SCRATCH_PREFIX}{os.getpid()}-") as scratch:
        model, tokenizer = load_model(base, recipe, device=device, backend=backend, max_length=max_length)
        from_parent = False
        if parent is not None and recipe.init == "parent":
            from_parent = start_from_parent(model, persona_dir(home, persona) / parent, recipe)
        metrics_path = draft.path / METRICS_FILE
        resolved: list[dict[str, Any]] = []
        offset = 0
        for i, stage in enumerate(recipe.stages, 1):
            args = trl_args(stage, device=device, output_dir=Path(scratch) / f"stage{i}", progress=progress, seed=recipe.seed, max_length=max_length)
            logger = MetricsLog(metrics_path, stage=i, method=stage.method, step_offset=offset)
            trainer = make_trainer(
                stage.method,
                model,
                args,
                stage_data(stage.method, dd["train"]),
                stage_data(stage.method, test) if test is not None else None,
                tokenizer,
                [logger, *callbacks],
            )
            if not progress:
                from transformers.trainer_callback import PrinterCallback

                trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout
            log.info("stage %d/%d: %s on %d pairs (%s, %s)", i, len(recipe.stages), stage.method, len(dd["train"]), backend, device)
            with kernels_for(stage.method, device):
                trainer.train()
                if test is not None:
                    trainer.evaluate()
            offset += int(trainer.state.global_step)
            resolved.append({"method": stage.method, "trainer": {**stage.trainer, "max_length": args.max_length}, "steps": int(trainer.state.global_step)})
            model = trainer.model
        # only the trained adapter: DPO adds a frozen reference copy named "ref"
        model.save_pretrained(str(draft.path), selected_adapters=["default"])
        records = read_metrics(metrics_path)
        summary = summarize(records)
        plot_metrics(records, draft.path / PLOT_FILE, title=f"{persona}: {recipe.name} on dataset {card['content_hash'][:12]}")
        seconds = time.monotonic() - t0
        draft.manifest.update(
            {
                "base_model": base.name,
                "base_hash": base.content_hash,
                "dataset_hash": card["content_hash"],
                "dataset": str(dataset.resolve()),
                "dataset_format": card.get("format"),
                "parent": parent,
                "initialized_from": parent if from_parent else "base",
                "recipe": recipe.model_dump(mode="json"),
                "training": {"backend": backend, "device": device, "stages": resolved, "seconds": round(seconds, 2)},
                "metrics": summary,
                "created_at": time.time(),
            }
        )
    assert draft.version is not None
    return TrainResult(
        persona=persona,
        version=draft.version,
        path=persona_dir(home, persona) / draft.version,
        parent=parent,
        dataset_hash=card["content_hash"],
        metrics=summary,
        seconds=seconds,
        backend=backend,
        device=device,
        records=records,
    )
