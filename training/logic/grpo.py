"""``bonsai train logician --recipe grpo``: GRPO on generated logic problems, a registry version out.

No transcripts and no preference pairs: the training set is drawn from the logic generator with a
seed, each prompt is sampled ``num_generations`` times by TRL's ``GRPOTrainer``, and the completions
are scored by the format and correctness rewards of :mod:`training.logic.rewards`. The model, LoRA,
backend (Unsloth on CUDA, TRL+PEFT elsewhere), metrics and the staged registry version are the same
as every other recipe's (:mod:`training.train`); the version's manifest carries a card of the logic
set instead of a dataset card, so the version says what it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bonsai.registry import current_version, persona_dir
from bonsai.model.prepare import BaseModel as PreparedBase
from bonsai.personas import Persona
from training.config import Recipe
from training.logic.problems import GENERATOR_VERSION, KINDS, LANGUAGES, Problem, generate, parse_choices
from training.logic.prompts import messages, require_tag_format
from training.logic.rewards import REWARD_FUNCS
from bonsai.registry import new_version

log = logging.getLogger(__name__)

#: prompt + completion budget for Unsloth's sequence length (the prompts are ~150 tokens)
MAX_LENGTH = 1024


class LogicSet(BaseModel):
    """Which generated problems GRPO trains on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(256, ge=1, le=1_000_000, description="Training problems.")
    languages: tuple[str, ...] = Field(LANGUAGES, description="Languages of the problems (en, ja, zh).")
    kinds: tuple[str, ...] = Field(KINDS, description="arithmetic, syllogism, ordering.")
    seed: int = Field(0, description="Seeds the generator (the train/test split does not depend on it).")

    @field_validator("languages", mode="before")
    @classmethod
    def _languages(cls, value: Any) -> tuple[str, ...]:
        return parse_choices(value, LANGUAGES, "--langs")

    @field_validator("kinds", mode="before")
    @classmethod
    def _kinds(cls, value: Any) -> tuple[str, ...]:
        return parse_choices(value, KINDS, "--kinds")

    def problems(self, split: str = "train", n: int | None = None) -> list[Problem]:
        return generate(n or self.n, seed=self.seed, split=split, languages=self.languages, kinds=self.kinds)  # type: ignore[arg-type]


def set_card(spec: LogicSet, problems: Sequence[Problem]) -> dict[str, Any]:
    """What the version was trained on: the generator's settings, counts and a hash of the problems."""
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps(p.to_json(), sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return {
        "source": "training.logic",
        "generator_version": GENERATOR_VERSION,
        "split": "train",
        "n": len(problems),
        "languages": list(spec.languages),
        "kinds": list(spec.kinds),
        "seed": spec.seed,
        "by_kind": dict(Counter(p.kind for p in problems)),
        "by_lang": dict(Counter(p.lang for p in problems)),
        "content_hash": h.hexdigest(),
    }


def grpo_dataset(problems: Sequence[Problem], persona: Persona) -> Any:
    """TRL's conversational prompt column, plus ``check`` (what the correctness reward reads)."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": messages(p, persona),
                "check": json.dumps({"answer_type": p.answer_type, "expected": p.expected, "names": list(p.names)}, ensure_ascii=False),
                "kind": p.kind,
                "lang": p.lang,
            }
            for p in problems
        ]
    )


def train_logician(
    persona: Persona,
    *,
    home: Path,
    base: PreparedBase,
    recipe: Recipe,
    logic: LogicSet,
    progress: bool = False,
    callbacks: Sequence[Any] = (),
) -> Any:
    """GRPO on ``logic``'s training problems; returns :class:`training.train.TrainResult`."""
    from training.backend import preload_backend
    from training.metrics import MetricsLog, plot_metrics, read_metrics, summarize
    from training.train import METRICS_FILE, PLOT_FILE, TrainResult, kernels_for, load_model, pick_backend, start_from_parent, training_device, trl_args

    require_tag_format(persona)
    t0 = time.monotonic()
    problems = logic.problems("train")
    card = set_card(logic, problems)
    device = training_device()
    backend = pick_backend(recipe.backend, device)
    if backend == "unsloth":
        preload_backend("unsloth")
    parent = current_version(home, persona.name)
    (stage,) = recipe.stages
    dataset = grpo_dataset(problems, persona)

    with new_version(home, persona.name) as draft, tempfile.TemporaryDirectory(prefix="bonsai-grpo-") as scratch:
        model, tokenizer = load_model(base, recipe, device=device, backend=backend, max_length=MAX_LENGTH)
        from_parent = False
        if parent is not None and recipe.init == "parent":
            from_parent = start_from_parent(model, persona_dir(home, persona.name) / parent, recipe)
        metrics_path = draft.path / METRICS_FILE
        args = trl_args(stage, device=device, output_dir=Path(scratch) / "grpo", progress=progress, seed=recipe.seed, max_length=MAX_LENGTH)
        from trl import GRPOTrainer

        trainer = GRPOTrainer(
            model=model,
            reward_funcs=list(REWARD_FUNCS),
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[MetricsLog(metrics_path, stage=1, method="grpo"), *callbacks],
        )
        if not progress:
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout
        log.info("grpo on %d logic problems (%s, %s)", len(problems), backend, device)
        with kernels_for("grpo", device):
            trainer.train()
        steps = int(trainer.state.global_step)
        trainer.model.save_pretrained(str(draft.path), selected_adapters=["default"])
        records = read_metrics(metrics_path)
        summary = summarize(records)
        plot_metrics(records, draft.path / PLOT_FILE, title=f"{persona.name}: {recipe.name} on {len(problems)} logic problems ({card['content_hash'][:12]})")
        seconds = time.monotonic() - t0
        resolved = [{"method": "grpo", "trainer": dict(stage.trainer), "steps": steps}]
        draft.manifest.update(
            {
                "base_model": base.name,
                "base_hash": base.content_hash,
                "dataset_hash": card["content_hash"],
                "dataset": "generated logic problems (training.logic)",
                "dataset_format": "conversational",
                "logic_set": card,
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
        persona=persona.name,
        version=draft.version,
        path=persona_dir(home, persona.name) / draft.version,
        parent=parent,
        dataset_hash=card["content_hash"],
        metrics=summary,
        seconds=seconds,
        backend=backend,
        device=device,
        records=records,
    )
