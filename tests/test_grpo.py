"""GRPO on generated logic problems: the recipe, the logician persona, bad input, and two real steps on
CPU with the tiny model (weights change, rewards logged, a registry version a teacher can use)."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from trainkit import cli, register_version, small_adapter

from bonsai.registry import adapter_folder, persona_dir
from bonsai.debate.schedule import Cast
from bonsai.engine.adapters import validate_adapter
from bonsai.registry.identity import inspect_adapter
from bonsai.registry.manifest import MANIFEST_FILE
from bonsai.errors import AdapterError, ConfigError
from bonsai.model.prepare import BaseModel
from bonsai.personas import PersonaBook, ReasoningFormat, Role, Team
from training.config import load_recipe, parse_recipe
from bonsai.stats import wilson_interval as wilson
from training.logic.evaluate import logic_accuracy
from training.logic.grpo import LogicSet, grpo_dataset, set_card
from training.logic.problems import generate
from training.logic.rewards import correctness_reward
from training.train import train_adapter, trl_args


@pytest.fixture(autouse=True)
def _keep_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("VLLM_LOGGING_LEVEL", "TRANSFORMERS_VERBOSITY"):
        monkeypatch.setenv(k, os.environ.get(k, "WARNING"))


def nothing_written(home: Path) -> bool:
    root = home / "adapters"
    return not root.exists() or all(not any(p.iterdir()) for p in root.iterdir())


# --- recipe and persona -----------------------------------------------------------------------------


def test_the_grpo_recipe_builds_trls_grpo_config(tmp_path: Path) -> None:
    recipe = load_recipe("grpo")
    assert recipe.is_grpo and recipe.lora.r == 16 and recipe.lora.alpha == 16 and recipe.lora.dropout == 0.0
    args = trl_args(recipe.stages[0], device="cpu", output_dir=tmp_path, progress=False, seed=0, max_length=512)
    assert type(args).__name__ == "GRPOConfig" and args.use_cpu and not args.bf16
    assert args.num_generations == 8 and args.max_completion_length == 192 and args.beta == 0.0
    assert not hasattr(args, "max_length")  # GRPOConfig has none; bonsai does not invent it


def test_grpo_stands_alone_and_its_keys_are_checked() -> None:
    with pytest.raises(ConfigError, match="must be the recipe's only stage"):
        parse_recipe({"name": "x", "stages": [{"method": "grpo"}, {"method": "sft"}]}, where="x.yaml")
    with pytest.raises(ConfigError, match="num_generation -> num_generations"):
        parse_recipe({"name": "x", "stages": [{"method": "grpo", "trainer": {"num_generation": 4}}]}, where="x.yaml")


def test_the_logician_is_a_teacher_with_tags_that_never_debates() -> None:
    book = PersonaBook.load()
    logician = book.get("logician")
    assert logician.role == Role.TEACHER and logician.team == Team.NONE and logician.reasoning == ReasoningFormat.XML
    assert logician.adapter == "registry"
    with pytest.raises(ConfigError, match="'logician' is a teacher and cannot take a seat"):
        Cast.from_names(book, ["advocate", "skeptic", "logician"])
    assert "logician" not in {p.name for p in book.by_role(Role.DEBATER)}


# --- bad input: one message, exit 2, nothing written ---------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "advocate", "--recipe", "grpo"], "persona 'advocate' has no reasoning format, and GRPO's format rewards read"),
        (["train", "skeptic", "--recipe", "grpo"], "persona 'skeptic' writes the alpaca-reasoning format"),
        (["train", "logician", "--recipe", "grpo", "--dataset", "/tmp"], "not on a dataset"),
        (["train", "logician", "--recipe", "grpo", "--langs", "en,fr"], "--langs: fr is not allowed"),
        (["train", "logician", "--recipe", "grpo", "--kinds", "riddles"], "--kinds: riddles is not allowed"),
        (["train", "logician", "--recipe", "grpo", "--problems", "0"], "--problems: Input should be greater than or equal to 1"),
        (["train", "logician", "--recipe", "grpo", "--eval", "0"], "--eval must be at least 1"),
        (["train", "advocate", "--recipe", "orpo", "--problems", "8"], "--problems only goes with a grpo recipe"),
        (["train", "nobody", "--recipe", "grpo"], "unknown persona 'nobody'"),
    ],
)
def test_bad_grpo_input(argv: list[str], message: str, isolated_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(argv, monkeypatch) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1
    assert nothing_written(isolated_home)


def test_a_grpo_recipe_is_refused_on_a_preference_dataset(isolated_home: Path, base_model: BaseModel, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trains on generated logic problems"):
        train_adapter("advocate", tmp_path, home=isolated_home, base=base_model, recipe=load_recipe("grpo"))


# --- pieces ---------------------------------------------------------------------------------------------


def test_the_training_set_card_and_columns() -> None:
    logic = LogicSet(n=9, languages="en,zh", kinds=["ordering", "arithmetic"], seed=2)  # type: ignore[arg-type]
    problems = logic.problems()
    card = set_card(logic, problems)
    assert card["n"] == 9 and card["languages"] == ["en", "zh"] and card["seed"] == 2 and card["split"] == "train"
    assert card == set_card(logic, LogicSet(n=9, languages="en,zh", kinds="ordering,arithmetic", seed=2).problems())  # type: ignore[arg-type]
    assert card["content_hash"] != set_card(logic, LogicSet(n=9, seed=3).problems())["content_hash"]
    persona = PersonaBook.load().get("logician")
    ds = grpo_dataset(problems, persona)
    assert ds.column_names == ["prompt", "check", "kind", "lang"]
    first = ds[0]
    assert first["prompt"][0] == {"role": "system", "content": persona.system_prompt.strip()}
    assert problems[0].question in first["prompt"][1]["content"] and "<answer>" in first["prompt"][1]["content"]
    # the check column is exactly what the correctness reward reads
    right = [[{"role": "assistant", "content": f"<reasoning>r</reasoning><answer>{p.answer}</answer>"}] for p in problems]
    assert correctness_reward(right, check=ds["check"]) == [2.0] * 9


def test_wilson_interval() -> None:
    low, high = wilson(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0) and wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0


async def test_accuracy_is_measured_on_held_out_problems_only() -> None:
    persona = PersonaBook.load().get("logician")
    with pytest.raises(ConfigError, match="test problems only"):
        await logic_accuracy(None, None, generate(2, split="train"), persona=persona)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no problems"):
        await logic_accuracy(None, None, [], persona=persona)  # type: ignore[arg-type]


def test_teacher_adapters_by_registry_version(isolated_home: Path, tmp_path: Path) -> None:
    version = register_version(isolated_home, "logician", small_adapter(tmp_path / "a", seed=1))
    folder = persona_dir(isolated_home, "logician") / version
    assert adapter_folder(isolated_home, f"logician@{version}") == folder
    assert adapter_folder(isolated_home, f"logician@{version[:6]}") == folder
    assert adapter_folder(isolated_home, str(tmp_path / "a")) == tmp_path / "a"
    with pytest.raises(AdapterError, match="has no current adapter version"):
        adapter_folder(isolated_home, "logician@current")
    with pytest.raises(AdapterError, match="adapter logician@nope does not exist"):
        adapter_folder(isolated_home, "logician@nope")
    with pytest.raises(AdapterError, match="neither a folder nor PERSONA@VERSION"):
        adapter_folder(isolated_home, str(tmp_path / "missing"))


# --- two real GRPO steps on CPU ------------------------------------------------------------------------

TINY = {
    "name": "grpo-tiny",
    "init": "base",
    "lora": {"r": 8, "alpha": 16},
    "stages": [
        {
            "method": "grpo",
            "trainer": {
                "learning_rate": 1.0e-3,
                "max_steps": 2,
                "per_device_train_batch_size": 4,
                "num_generations": 4,
                "max_completion_length": 32,
                "temperature": 1.0,
            },
        }
    ],
}


@pytest.fixture(scope="module")
def grpo_run(base_model: BaseModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`bonsai train logician --recipe FILE --problems 8 --langs en --eval 3 --json`: two steps, then held-out correctness."""
    root = tmp_path_factory.mktemp("grpo")
    home = root / "home"
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    argv = ["--home", str(home), "train", "logician", "--recipe", str(recipe), "--base", str(base_model.path),
            "--problems", "8", "--langs", "en", "--eval", "3", "--eval-max-tokens", "24", "--json"]
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setenv("BONSAI_HOME", str(home))
        code = cli(argv, mp)
    assert code == 0
    return {"home": home, "result": json.loads(out.getvalue().strip().splitlines()[-1])}


@pytest.mark.slow
def test_two_grpo_steps_change_the_adapter_and_log_the_rewards(grpo_run: dict[str, Any], base_model: BaseModel) -> None:
    import torch
    from safetensors.torch import load_file

    result, home = grpo_run["result"], grpo_run["home"]
    path = Path(result["path"])
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for name in ("correctness_reward", "strict_format_reward", "soft_format_reward", "tag_count_reward"):
        assert all(f"rewards/{name}/mean" in r for r in steps), name
    assert (path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # PEFT starts every lora_B at zero: a step with any reward spread moves them
    weights = load_file(str(path / "adapter_model.safetensors"))
    b = [t for name, t in weights.items() if "lora_B" in name]
    assert len(b) == 7 * 30 and sum(int(torch.count_nonzero(t) > 0) for t in b) == len(b)
    # a registry version like any other, with a card of what it learnt from
    ref = inspect_adapter(path)
    assert path.name == ref.content_hash[:12] == result["version"]
    validate_adapter(ref, base_dir=base_model.path, base_hash=base_model.content_hash, max_rank=16)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    card = manifest["logic_set"]
    assert card["n"] == 8 and card["languages"] == ["en"] and card["split"] == "train" and manifest["dataset_hash"] == card["content_hash"]
    assert manifest["recipe"]["name"] == "grpo-tiny" and manifest["training"]["stages"][0]["steps"] == 2
    assert manifest["metrics"]["stages"][0]["last"]["reward"] == steps[-1]["reward"]
    # held-out correctness before (the bare base) and after, with intervals
    ev = result["eval"]
    assert set(ev) == {"before", "after"} and ev["before"]["adapter"] == "base" and ev["after"]["adapter"] == ref.name
    for side in ev.values():
        assert side["correct"]["n"] == 3 and len(side["correct"]["ci95"]) == 2 and 0 <= side["strict_format"]["rate"] <= 1
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        assert cli(["--home", str(home), "adapters", "show", "logician", result["version"]], mp) == 0
    assert "8 generated logic problems (arithmetic,syllogism,ordering; en; seed 0)" in out.getvalue()
    # usable as a teacher by registry version
    from training.pairs import make_strategy

    folder = adapter_folder(home, f"logician@{result['version']}")
    assert folder == path
    teacher = make_strategy("teacher", {"adapter": folder})
    assert teacher.describe()["params"]["adapter_hash"] == ref.content_hash
