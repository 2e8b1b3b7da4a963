"""The closed loop: its refusals, and a real one-generation loop on the engine that is interrupted after
the data step and resumed without redoing the finished steps."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from trainkit import cli

from bonsai.registry import current_version
from bonsai.errors import ConfigError
from bonsai.model.prepare import BaseModel
from bonsai.personas import PersonaBook, default_personas_dir
from bonsai.store.transcripts import TranscriptStore
from training.gate import GateConfig
from training.loop import Loop, LoopConfig, StrategyChoice, check_personas, load_state, new_state, save_state, state_path


@pytest.fixture(autouse=True)
def _keep_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("VLLM_LOGGING_LEVEL", "TRANSFORMERS_VERBOSITY"):
        monkeypatch.setenv(k, os.environ.get(k, "WARNING"))


def test_loop_refuses_personas_it_cannot_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    book = PersonaBook.load()
    with pytest.raises(ConfigError, match="'judge' is a judge"):
        check_personas(LoopConfig(personas=["judge"]), book)
    folder = tmp_path / "personas"
    folder.mkdir()
    for f in default_personas_dir().glob("*.yaml"):
        data = yaml.safe_load(f.read_text())
        if data["name"] == "advocate":
            data["adapter"] = None
        (folder / f.name).write_text(yaml.safe_dump(data, allow_unicode=True))
    with pytest.raises(ConfigError, match="does not debate with its registry adapter"):
        check_personas(LoopConfig(personas=["advocate"]), PersonaBook.load(folder))
    # the CLI says so before any engine starts
    assert cli(["loop", "--personas", "advocate", "--personas-dir", str(folder)], monkeypatch) == 2
    assert "adapter: registry" in capsys.readouterr().err
    assert cli(["loop"], monkeypatch) == 2
    assert "no personas given" in capsys.readouterr().err
    assert cli(["loop", "--resume", "nope"], monkeypatch) == 2
    assert "there is no loop 'nope'" in capsys.readouterr().err
    assert cli(["loop", "--personas", "advocate", "--set", "max_stepz=1"], monkeypatch) == 2
    assert "max_stepz" in capsys.readouterr().err


class Injected(Exception):
    pass


@pytest.mark.engine
@pytest.mark.slow
async def test_interrupted_loop_resumes_without_redoing_steps(vllm_engine: Any, base_model: BaseModel, quick_short_judge: str, isolated_home: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli.loop_cmd import _print

    config = LoopConfig(
        personas=["advocate"],
        generations=1,
        debates=1,
        candidates=2,
        max_tokens=12,
        format=quick_short_judge,
        strategies=[StrategyChoice(name="best-of-n", params={"min_gap": 0.0}), StrategyChoice(name="stance")],
        min_pairs=1,
        train_overrides={"max_steps": 1},
        eval_motions=["This house would close all zoos"],
        gate=GateConfig(max_tokens=12, max_motions=1, format=quick_short_judge),
        promote="always",
    )
    state = new_state(config)
    save_state(isolated_home, state)
    book = PersonaBook.load()

    def interrupt_after_data(gen: int, step: str, info: dict[str, Any]) -> None:
        if step == "data":
            raise Injected("killed after the data step")

    first: list[dict[str, Any]] = []
    with pytest.raises(Injected):
        async for ev in Loop(state, engine=vllm_engine, home=isolated_home, book=book, base=base_model, after_step=interrupt_after_data).run():
            first.append(ev)
    saved = load_state(isolated_home, state["id"])
    steps = saved["generations"][0]["steps"]
    assert saved["status"] == "interrupted" and set(steps) == {"debates", "data"}
    assert all(steps[s]["done"] for s in steps)
    dataset = Path(steps["data"]["datasets"]["advocate"]["path"])
    assert (dataset / "card.json").is_file() and steps["data"]["datasets"]["advocate"]["pairs"] >= 1
    store_file = Path(steps["debates"]["store"])
    with TranscriptStore(store_file, create=False) as store:
        debates = [(d.debate_id, d.status) for d in store.list_debates()]
    assert [s for _, s in debates] == ["finished"]
    dataset_mtime = (dataset / "card.json").stat().st_mtime

    resumed: list[dict[str, Any]] = []
    async for ev in Loop(load_state(isolated_home, "latest"), engine=vllm_engine, home=isolated_home, book=book, base=base_model).run():
        resumed.append(ev)
    assert resumed[0]["event"] == "loop_start" and resumed[0]["resumed"]
    assert [ev["step"] for ev in resumed if ev["event"] == "step_start"] == ["train", "evaluate", "promote"]
    assert not [ev for ev in resumed if ev["event"] in ("debate", "dataset")]
    with TranscriptStore(store_file, create=False) as store:
        assert [(d.debate_id, d.status) for d in store.list_debates()] == debates
    assert (dataset / "card.json").stat().st_mtime == dataset_mtime

    final = json.loads(state_path(isolated_home, state["id"]).read_text())
    assert final["status"] == "finished"
    gen = final["generations"][0]
    version = gen["steps"]["train"]["versions"]["advocate"]["version"]
    assert current_version(isolated_home, "advocate") == version == gen["steps"]["promote"]["promoted"]["advocate"]
    evaluation = gen["steps"]["evaluate"]["results"]["advocate"]
    assert evaluation["n"] == 2 and evaluation["against"] is None  # first generation: the previous version is the bare base
    assert gen["summary"]["advocate"]["vs_previous"] == evaluation["vs_previous"]
    # what `bonsai loop` prints for it
    for ev in first + resumed:
        _print(ev)
    out = capsys.readouterr().out
    assert "generation 1:" in out and "win rate vs previous" in out and f"promoted {version}" in out


def test_presets_load_validate_and_yield_to_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli import loop_cmd
    from bonsai.cli.main import build_parser
    from training.loop import load_preset, presets_dir

    shipped = sorted(p.stem for p in presets_dir().glob("*.yaml"))
    assert "cpu" in shipped
    for name in shipped:  # every shipped preset is a valid loop
        load_preset(name)
    args = build_parser().parse_args(["loop", "--preset", "cpu", "--personas", "ronri", "--debates", "3", "--set", "max_steps=5", "--criteria", "rubric"])
    config = loop_cmd._config(args)
    preset = load_preset("cpu")
    assert config.personas == ["ronri"] and config.debates == 3
    assert config.strategies[0].name == preset["strategies"][0]["name"] and config.test_fraction == preset["test_fraction"]
    assert config.train_overrides == {**preset["train_overrides"], "max_steps": 5}
    assert config.gate.criteria == ["rubric"] and config.gate.max_motions == preset["gate"]["max_motions"]
    assert config.gate.format == preset["format"] and config.evaluation.samples == preset["evaluation"]["samples"]
    # no preset: the old defaults, the old gate
    plain = loop_cmd._config(build_parser().parse_args(["loop", "--personas", "advocate"]))
    assert plain.gate.criteria == ["win_rate"] and not plain.gate.needs_eval and plain.gate.max_motions == 2 and plain.candidates == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("debates: 2\ndebatez: 3\n", encoding="utf-8")
    for argv, needle in (
        (["loop", "--preset", "nope", "--personas", "advocate"], "unknown loop preset 'nope'"),
        (["loop", "--preset", str(bad), "--personas", "advocate"], "debatez"),
        (["loop", "--preset", str(tmp_path / "missing.yaml"), "--personas", "advocate"], "does not exist"),
        (["loop", "--personas", "advocate", "--criteria", "vibes"], "criteria"),
    ):
        assert cli(argv, monkeypatch) == 2, argv
        assert needle in capsys.readouterr().err, argv


@pytest.mark.engine
@pytest.mark.slow
async def test_a_loop_gated_on_measured_metrics(vllm_engine: Any, base_model: BaseModel, quick_short_judge: str, isolated_home: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli.loop_cmd import _print
    from training.evaluation.decision import decide
    from training.evaluation.run import EvalConfig
    from bonsai.registry import load_evaluation

    config = LoopConfig(
        personas=["advocate"], generations=1, debates=1, candidates=2, max_tokens=12, format=quick_short_judge,
        strategies=[StrategyChoice(name="best-of-n", params={"min_gap": 0.0}), StrategyChoice(name="stance")],
        min_pairs=1, train_overrides={"max_steps": 1}, eval_motions=["This house would close all zoos"],
        gate=GateConfig(max_tokens=12, max_motions=1, criteria=["rubric", "win_rate_not_worse"], format=quick_short_judge),
        evaluation=EvalConfig(samples=2, max_tokens=16, preference=False, format=quick_short_judge),
    )
    state = new_state(config)
    save_state(isolated_home, state)
    events = [ev async for ev in Loop(state, engine=vllm_engine, home=isolated_home, book=PersonaBook.load(), base=base_model).run()]
    final = json.loads(state_path(isolated_home, state["id"]).read_text())
    gen = final["generations"][0]
    version = gen["steps"]["train"]["versions"]["advocate"]["version"]
    result = gen["steps"]["evaluate"]["results"]["advocate"]
    # measured against the parent (the bare base), on the rubric and the judge, each criterion explained
    assert set(result["reasons"]) == {"rubric", "win_rate_not_worse"} and result["n"] == 2
    assert result["metrics"]["rubric"]["candidate"]["n"] == 2 and "tokens_per_turn" in result["metrics"]
    saved = load_evaluation(isolated_home, "advocate", version)
    assert saved["criteria"] == ["rubric", "win_rate_not_worse"]
    passed, _ = decide(saved, saved["criteria"])
    assert passed == result["passed"] == saved["passed"]
    promoted = gen["steps"]["promote"]["promoted"].get("advocate")
    assert (promoted == version) == passed and (current_version(isolated_home, "advocate") == version) == passed
    end = next(ev for ev in events if ev["event"] == "generation_end")
    assert end["plot"] and Path(end["plot"]).read_bytes()[:4] == b"\x89PNG"
    assert gen["summary"]["advocate"]["metrics"]["rubric"] == result["metrics"]["rubric"]
    for ev in events:
        _print(ev)
    out = capsys.readouterr().out
    assert "gate rubric:" in out and "rubric " in out and "metrics across generations" in out
