"""Training recipes: a LoRA shape plus one or more stages, each a method and the TRL config it runs with.

A recipe does not copy TRL's options: a stage's ``trainer:`` mapping is handed to TRL's own config class
(``ORPOConfig``, ``DPOConfig``, ``SFTConfig``, ``GRPOConfig``), so every TRL option works and its defaults stay TRL's.
What bonsai checks here is that each key is a field of that class (a typo fails at start-up with the
name of the key, not after the model has loaded), and that the few keys bonsai sets itself are left to it.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bonsai.errors import ConfigError, describe_validation

Method = Literal["orpo", "dpo", "sft", "grpo"]

#: every projection of a Llama-style block (what vLLM's punica kernels serve)
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

#: trainer keys bonsai owns: where checkpoints go is a temp folder, the adapter goes to the registry
MANAGED_KEYS = {
    "output_dir": "bonsai trains in a temp folder and writes the adapter to the registry",
    "logging_dir": "bonsai writes metrics.jsonl and metrics.png into the adapter version",
    "push_to_hub": "bonsai keeps adapters in $BONSAI_HOME/adapters",
    "trust_remote_code": "bonsai never runs code shipped with a model",
}


class LoraSettings(BaseModel):
    """The adapter's shape. vLLM serves LoRA on linear layers only: no DoRA, no modules_to_save."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(16, ge=1, le=512, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout.")
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS), min_length=1, description="Linear layers that get a LoRA.")

    def peft_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )


class Stage(BaseModel):
    """One training pass. ``sft`` trains on the chosen completions only (the format, not the preference);
    ``grpo`` trains on generated logic problems with verifiable rewards (no preference dataset)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method = Field(description="orpo | dpo | sft | grpo")
    trainer: dict[str, Any] = Field(default_factory=dict, description="Fields of TRL's config for this method.")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    description: str = ""
    lora: LoraSettings = Field(default_factory=LoraSettings)
    backend: Literal["auto", "unsloth", "peft"] = Field(
        "auto", description="auto: Unsloth's FastLanguageModel on CUDA when it is installed, else transformers+PEFT."
    )
    init: Literal["parent", "base"] = Field(
        "parent", description="parent: start from the persona's current adapter when its shape matches; base: a fresh LoRA."
    )
    evaluate: bool = Field(True, description="Evaluate on the dataset's test split after training (metrics only).")
    seed: int = 0
    stages: list[Stage] = Field(min_length=1)

    @field_validator("stages")
    @classmethod
    def _preference_first(cls, stages: list[Stage]) -> list[Stage]:
        if len(stages) > 1 and any(s.method == "grpo" for s in stages):
            raise ValueError("grpo trains on generated logic problems, not on a preference dataset: it must be the recipe's only stage")
        if len(stages) > 1 and any(s.method != "sft" for s in stages[1:]):
            raise ValueError("only sft may follow the first stage (it teaches the format on the chosen answers)")
        return stages

    @property
    def methods(self) -> list[str]:
        return [s.method for s in self.stages]

    @property
    def is_grpo(self) -> bool:
        return self.methods == ["grpo"]


# --- TRL config classes -------------------------------------------------------------------------


def trl_config_class(method: str) -> type:
    """TRL's config dataclass for ``method`` (imports trl: only ``training`` may)."""
    if method == "orpo":
        from training.orpo import ORPOConfig

        return ORPOConfig
    if method == "dpo":
        from trl import DPOConfig

        return DPOConfig
    if method == "sft":
        from trl import SFTConfig

        return SFTConfig
    if method == "grpo":
        from trl import GRPOConfig

        return GRPOConfig
    raise ConfigError(f"unknown training method {method!r}", "use orpo, dpo, sft or grpo")


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def check_trainer_keys(method: str, trainer: dict[str, Any], *, where: str) -> None:
    """Refuse keys that are not fields of TRL's config for ``method``, naming each one."""
    cls = trl_config_class(method)
    fields = _fields(cls)
    managed = sorted(k for k in trainer if k in MANAGED_KEYS)
    if managed:
        raise ConfigError(f"{where}: {', '.join(managed)} cannot be set in a recipe", "; ".join(f"{k}: {MANAGED_KEYS[k]}" for k in managed))
    unknown = sorted(k for k in trainer if k not in fields)
    if unknown:
        close = {k: difflib.get_close_matches(k, fields, n=1) for k in unknown}
        hints = [f"{k} -> {m[0]}?" for k, m in close.items() if m]
        raise ConfigError(
            f"{where}: unknown {method} trainer key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} (not fields of trl {cls.__name__})",
            ("did you mean " + ", ".join(hints) + " " if hints else "") + f"see the fields of trl's {cls.__name__}",
        )


def coerce_trainer_values(method: str, trainer: dict[str, Any]) -> dict[str, Any]:
    """YAML reads ``5e-5`` (no dot) as a string; give float and int fields numbers."""
    fields = _fields(trl_config_class(method))
    out = dict(trainer)
    for key, value in trainer.items():
        default = fields[key].default if key in fields else None
        if isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
            try:
                number = float(value)
            except ValueError:
                continue
            out[key] = int(number) if isinstance(default, int) and number.is_integer() else number
    return out


# --- loading ------------------------------------------------------------------------------------


def recipes_dir() -> Path:
    return Path(str(importlib.resources.files("training") / "recipes"))


def builtin_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def _format_errors(err: ValidationError) -> str:
    return "; ".join(describe_validation(err))


def recipe_path(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        if not candidate.is_file():
            raise ConfigError(f"recipe file {candidate} does not exist", f"use a built-in recipe ({', '.join(builtin_recipes())}) or a YAML path")
        return candidate
    builtin = recipes_dir() / f"{text}.yaml"
    if not builtin.is_file():
        raise ConfigError(f"unknown recipe {text!r}", f"built-in recipes: {', '.join(builtin_recipes())}; or pass a YAML file")
    return builtin


def parse_recipe(raw: Any, *, where: str) -> Recipe:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a recipe must be a YAML mapping, got {type(raw).__name__}")
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: invalid recipe: {_format_errors(exc)}", "compare with the built-in recipes in training/recipes/") from None
    stages = []
    for i, stage in enumerate(recipe.stages, 1):
        check_trainer_keys(stage.method, stage.trainer, where=f"{where}: stage {i} ({stage.method})")
        stages.append(stage.model_copy(update={"trainer": coerce_trainer_values(stage.method, stage.trainer)}))
    return recipe.model_copy(update={"stages": stages})


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A built-in recipe by name (``orpo``) or a YAML file, fully validated (TRL keys included)."""
    path = recipe_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_recipe(raw, where=str(path))


def with_overrides(recipe: Recipe, overrides: dict[str, Any]) -> Recipe:
    """``recipe`` with ``overrides`` (``--set KEY=VALUE``, ``--max-steps``) applied to every stage's trainer."""
    if not overrides:
        return recipe
    raw = recipe.model_dump(mode="json")
    for stage in raw["stages"]:
        stage["trainer"] = {**stage["trainer"], **overrides}
    return parse_recipe(raw, where=f"recipe {recipe.name} with --set {', '.join(overrides)}")


def parse_set_options(items: list[str]) -> dict[str, Any]:
    """``["max_steps=2", "learning_rate=1e-4"]`` -> {"max_steps": 2, "learning_rate": 0.0001}."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("trainer.")
        if not sep or not key:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE", "for example: --set learning_rate=1e-4")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key] = value
    return out
