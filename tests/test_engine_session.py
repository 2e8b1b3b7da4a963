"""The engine session: options declared once and turned into every command's flags, the one engine set-up."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import bonsai.engine.adapters as adapters
from bonsai.cli.main import build_parser
from bonsai.debate.spec import USER_SETTINGS, DebateSpec
from bonsai.engine.adapters import validate_adapter
from bonsai.registry.identity import inspect_adapter
from bonsai.engine.session import EngineOptions, JudgeEngineOptions, add_option_arguments, options_from_args, plan_engine, plan_judge
from bonsai.errors import AdapterError, ConfigError
from bonsai.model.prepare import BaseModel

COMMANDS = (["debate"], ["sweep"], ["loop"], ["tui"], ["data", "build"], ["adapters", "evaluate"])


def _flags(parser: argparse.ArgumentParser, path: list[str]) -> dict[str, argparse.Action]:
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return {opt: a for a in parser._actions for opt in a.option_strings}


def test_every_command_has_the_same_engine_flags() -> None:
    parser = build_parser()
    expected = {"--engine", "--endpoint", "--base", "--max-model-len", "--max-lora-rank", "--personas-dir"}
    judge = {"--judge-endpoint", "--judge-model", "--judge-base"}
    for path in COMMANDS:
        flags = _flags(parser, path)
        assert expected <= flags.keys(), path
        assert (judge <= flags.keys()) == (path != ["tui"]), path
        engine = flags["--engine"]
        assert engine.choices == ["vllm", "openai", "hf"] and engine.dest == "kind"
        assert flags["--max-model-len"].help == _flags(parser, ["debate"])["--max-model-len"].help


def test_flags_come_back_as_the_model_with_its_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_option_arguments(parser, EngineOptions)
    add_option_arguments(parser, DebateSpec, only=USER_SETTINGS)
    assert options_from_args(EngineOptions, parser.parse_args([])) == EngineOptions()
    args = parser.parse_args(["--endpoint", "http://a", "--endpoint", "http://b", "--max-model-len", "2048", "--personas", "advocate, skeptic", "--rounds", "3"])
    assert options_from_args(EngineOptions, args) == EngineOptions(endpoints=["http://a", "http://b"], max_model_len=2048)
    spec = options_from_args(DebateSpec, args, motion="Tea beats coffee")
    assert spec.personas == ["advocate", "skeptic"] and spec.rounds == 3 and spec.format == DebateSpec.model_fields["format"].default
    assert "(default 2)" in next(a.help for a in parser._actions if "--rounds" in a.option_strings)
    with pytest.raises(ConfigError, match="invalid options: max_model_len"):
        options_from_args(EngineOptions, parser.parse_args(["--max-model-len", "10"]))
    with pytest.raises(ValueError, match="do not go together"):
        JudgeEngineOptions.model_validate({"judge_endpoint": "http://x", "judge_base": "/b"})


def test_plan_engine(base_model: BaseModel, lora_adapters: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--engine openai needs --endpoint"):
        plan_engine(EngineOptions(kind="openai"), tmp_path)
    remote = plan_engine(EngineOptions(endpoints=["http://x"]), tmp_path)
    assert remote.config.kind == "openai" and remote.base is None and remote.config.base_model is None
    assert plan_engine(EngineOptions(endpoints=["http://x"], base=str(base_model.path)), tmp_path, need_base=True).base == base_model
    refs = [inspect_adapter(p) for p in lora_adapters]
    local = plan_engine(EngineOptions(kind="hf", base=str(base_model.path)), tmp_path, [*refs, None], min_loras=4, kv_cache_gib=3.0)
    assert local.config.kind == "hf" and local.config.base_hash == base_model.content_hash
    assert local.config.max_loras == 4 and local.config.max_lora_rank == 16 and local.config.kv_cache_gib == 3.0
    with pytest.raises(AdapterError, match="max_lora_rank 4"):
        plan_engine(EngineOptions(kind="hf", base=str(base_model.path), max_lora_rank=4), tmp_path, refs)
    assert plan_judge(JudgeEngineOptions(), EngineOptions(), tmp_path) is None
    judge = plan_judge(JudgeEngineOptions(judge_endpoint="http://j", judge_model="big"), EngineOptions(kind="hf"), tmp_path)
    assert judge is not None and judge.config.endpoints == ["http://j"] and judge.model == "big"
    local_judge = plan_judge(JudgeEngineOptions(judge_base=str(base_model.path)), EngineOptions(kind="hf"), tmp_path)
    assert local_judge is not None and local_judge.config.kind == "hf" and local_judge.base == base_model


def test_an_adapter_is_checked_against_a_base_once(base_model: BaseModel, lora_adapters: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's pre-flight check and the engine's own check on load read the same files once."""
    calls: list[str] = []
    check = adapters._check_fits
    monkeypatch.setattr(adapters, "_check_fits", lambda ref, *a: (calls.append(ref.name), check(ref, *a))[1])
    monkeypatch.setattr(adapters, "_FITS", set())
    ref = inspect_adapter(lora_adapters[1])
    for max_rank in (None, 16, 16):
        validate_adapter(ref, base_dir=base_model.path, base_hash=base_model.content_hash, max_rank=max_rank)
    assert calls == [ref.name]
    with pytest.raises(AdapterError, match="max_lora_rank 4"):  # the rank is still checked every time
        validate_adapter(ref, base_dir=base_model.path, base_hash=base_model.content_hash, max_rank=4)
    validate_adapter(ref, base_dir=base_model.path, base_hash=None, max_rank=None)  # no hash: nothing to remember by
    assert calls == [ref.name, ref.name]
