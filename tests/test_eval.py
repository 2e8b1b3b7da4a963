"""``bonsai eval``: statistics, held-out checks, the gate's criteria, and a real evaluation of a real trained adapter."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from trainkit import cli, register_version, small_adapter, tiny_recipe, write_dataset

from bonsai.errors import ConfigError
from bonsai.model.prepare import BaseModel
from bonsai.personas import PersonaBook
from training.evaluation.heldout import check_held_out, trained_motions
from training.evaluation.preference import PairScore, log_odds, summarize_pairs
from training.evaluation.decision import decide
from training.evaluation.run import EvalConfig, evaluate_version
from training.evaluation.stats import clustered_delta, mean_interval, proportion
from bonsai.stats import wilson_interval

# --- statistics -----------------------------------------------------------------------------------


def test_mean_interval_is_normal_and_shrinks_with_n() -> None:
    est = mean_interval([1.0, 2.0, 3.0, 4.0])
    assert est.mean == 2.5 and est.n == 4
    half = 1.959963984540054 * math.sqrt(5 / 3) / 2
    assert (est.low, est.high) == pytest.approx((2.5 - half, 2.5 + half))
    wider = mean_interval([1.0, 4.0])
    assert wider.high - wider.low > est.high - est.low
    assert mean_interval([]).mean is None and mean_interval([0.7]).low == 0.7
    assert mean_interval([1.0, float("nan"), 3.0]).n == 2


@pytest.mark.parametrize(("wins", "n"), [(0, 4), (3, 4), (10, 20), (7.5, 12)])
def test_proportion_is_wilson(wins: float, n: int) -> None:
    est = proportion(wins, n)
    assert est.mean == pytest.approx(wins / n)
    if float(wins).is_integer():
        assert (est.low, est.high) == pytest.approx(wilson_interval(int(wins), n))
    assert 0 <= est.low <= est.mean <= est.high <= 1


def test_clustered_delta_resamples_whole_motions() -> None:
    cand = [(m, v + 0.3) for m in "abcdef" for v in (0.1, 0.2)]
    ref = [(m, v) for m in "abcdef" for v in (0.1, 0.2)]
    est = clustered_delta(cand, ref)
    assert est.mean == pytest.approx(0.3) and est.low == pytest.approx(0.3) and est.high == pytest.approx(0.3)
    # a gain on one motion alone: the point is positive but the interval reaches zero
    lucky = [(m, 1.0 if m == "a" else 0.0) for m in "abcdef"]
    flat = [(m, 0.0) for m in "abcdef"]
    est = clustered_delta(lucky, flat)
    assert est.mean == pytest.approx(1 / 6) and est.low == 0.0 and est.high > 0
    assert clustered_delta([], flat).mean is None


def test_preference_summary_counts_ties_as_half() -> None:
    scores = [PairScore("m", 1.0, 0.0), PairScore("m", 0.0, 1.0), PairScore("n", 0.5, 0.5), PairScore("n", 2.0, -1.0)]
    result = summarize_pairs(scores)
    assert result.accuracy.mean == pytest.approx(2.5 / 4) and result.pairs == 4
    assert result.margin.mean == pytest.approx((1 - 1 + 0 + 3) / 4)
    assert log_odds(math.log(0.5)) == pytest.approx(0.0)
    assert log_odds(math.log(0.9)) > 0 > log_odds(math.log(0.1))
    assert math.isfinite(log_odds(0.0))


# --- the gate's criteria --------------------------------------------------------------------------


def _report(rubric: tuple[float, float, float], ref_mean: float, judge: tuple[float, float, float] | None, acc_low: float | None = None) -> dict[str, Any]:
    est = lambda m, lo, hi: {"mean": m, "low": lo, "high": hi, "n": 8}  # noqa: E731
    metrics: dict[str, Any] = {"rubric": {"candidate": est(*rubric), "reference": est(ref_mean, ref_mean - 0.1, ref_mean + 0.1), "delta": est(0, 0, 0)}}
    if acc_low is not None:
        metrics["preference_accuracy"] = {"candidate": est(acc_low + 0.1, acc_low, 1.0), "reference": est(0.5, 0.3, 0.7), "delta": est(0, 0, 0)}
    out: dict[str, Any] = {"metrics": metrics, "judge": None}
    if judge:
        out["judge"] = {"win_rate": judge[0], "ci_low": judge[1], "ci_high": judge[2], "n": 8}
    return out


def test_decide_on_each_criterion() -> None:
    good = _report((0.6, 0.5, 0.7), 0.3, (0.5, 0.2, 0.8), acc_low=0.6)
    ok, why = decide(good, ["rubric", "win_rate_not_worse", "preference"])
    assert ok and all(v.startswith("passed") for v in why.values())
    ok, why = decide(good, ["win_rate"])
    assert not ok and "lower bound must be above 0.50" in why["win_rate"]
    assert decide(_report((0.6, 0.5, 0.7), 0.3, (0.9, 0.7, 0.98)), ["win_rate"])[0]
    # the rubric's lower bound must clear the reference's mean, not just its point estimate
    ok, why = decide(_report((0.45, 0.25, 0.65), 0.3, None), ["rubric"])
    assert not ok and "0.250" in why["rubric"]
    ok, why = decide(_report((0.6, 0.5, 0.7), 0.3, (0.1, 0.02, 0.4)), ["win_rate_not_worse"])
    assert not ok and "upper bound must reach 0.50" in why["win_rate_not_worse"]
    ok, why = decide(_report((0.6, 0.5, 0.7), 0.3, None), ["win_rate_not_worse", "preference"])
    assert not ok and why["win_rate_not_worse"] == "failed: no judged debates" and "no held-out preference" in why["preference"]
    with pytest.raises(ConfigError, match="unknown gate criterion"):
        decide(good, ["vibes"])


# --- held-out motions -------------------------------------------------------------------------------


def test_motions_any_version_trained_on_are_refused(isolated_home: Path, base_model: BaseModel, tmp_path: Path) -> None:
    old = write_dataset(tmp_path / "old", base=base_model, train_motions=("Cities should ban cars",), test_motions=("Zoos should close",))
    new = write_dataset(tmp_path / "new", base=base_model, train_motions=("Homework should be abolished",), test_motions=("Exams should go",))
    register_version(isolated_home, "advocate", small_adapter(tmp_path / "a1", seed=1), dataset=str(old))
    register_version(isolated_home, "advocate", small_adapter(tmp_path / "a2", seed=2), dataset=str(new))
    seen = trained_motions(isolated_home, "advocate")
    assert set(seen) == {"Cities should ban cars", "Homework should be abolished"}
    check_held_out(isolated_home, "advocate", ["Zoos should close", "Exams should go"])
    # an older version's training motion is refused too, named with the dataset that trained on it
    with pytest.raises(ConfigError, match="Cities should ban cars") as err:
        check_held_out(isolated_home, "advocate", ["Zoos should close", "Cities should ban cars"])
    assert str(old) in err.value.message
    with pytest.raises(ConfigError, match="no motions"):
        check_held_out(isolated_home, "advocate", [])


def test_eval_cli_refuses_bad_input_before_any_engine(isolated_home: Path, base_model: BaseModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import bonsai.engine.session as session

    def no_engine(*a: Any, **k: Any) -> Any:
        raise AssertionError("an engine was created for bad input")

    monkeypatch.setattr(session, "create_engine", no_engine)
    ds = write_dataset(tmp_path / "ds", base=base_model, train_motions=("Cities should ban cars",), test_motions=("Zoos should close",))
    version = register_version(isolated_home, "advocate", small_adapter(tmp_path / "a", seed=1), dataset=str(ds))
    motions = tmp_path / "motions.txt"
    motions.write_text("Zoos should close\nCities should ban cars\n", encoding="utf-8")
    cases = [
        (["eval", "advocate", version, "--motions", str(motions)], "seen in training"),
        (["eval", "advocate", version, "--samples", "0"], "samples"),
        (["eval", "nobody"], "unknown persona"),
        (["eval", "skeptic"], "no current version"),
        (["eval", "advocate", version, "--against", version], "against itself"),
        (["eval", "advocate", version, "--against", "nope"], "nope"),
        (["eval", "advocate", version, "--format", "nope"], "unknown debate format"),
    ]
    for argv, needle in cases:
        code = cli(argv, monkeypatch)
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert needle in err and "Traceback" not in err, (argv, err)
    assert not list((isolated_home / "adapters" / "advocate").glob("evaluations/*-eval-*"))


# --- the real thing -----------------------------------------------------------------------------------


@pytest.mark.engine
@pytest.mark.slow
async def test_eval_of_a_really_trained_adapter(vllm_engine: Any, base_model: BaseModel, quick_short_judge: str, isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from training.evaluation.report import format_table, load_reports, save_report
    from training.gate import GateConfig
    from training.train import train_adapter

    ds = write_dataset(
        tmp_path / "ds", base=base_model, train_motions=("Cities should ban cars", "Homework should be abolished"),
        test_motions=("This house would close all zoos",), per_motion=4,
    )
    # a few strong steps on GOOD-vs-BAD pairs: the held-out pairs have the same contrast on an unseen motion
    result = train_adapter("advocate", ds, home=isolated_home, base=base_model, recipe=tiny_recipe(steps=8, lr=3e-3))
    book = PersonaBook.load()
    report = await evaluate_version(
        vllm_engine, home=isolated_home, book=book, base=base_model, persona="advocate", version=result.version,
        config=EvalConfig(samples=2, max_tokens=24, judge=True, format=quick_short_judge), gate=GateConfig(max_tokens=12, format=quick_short_judge),
        store_path=tmp_path / "eval.sqlite", checkpoints=tmp_path / "ck.sqlite",
    )
    data = report.to_json()
    assert data["reference"] == "base" and data["motions"] == ["This house would close all zoos"]
    metrics = data["metrics"]
    # the rubric's total and each of advocate's checks, for both adapters, on 2 samples each
    assert metrics["rubric"]["candidate"]["n"] == 2 == metrics["rubric"]["reference"]["n"]
    checks = [m for m in metrics if m.startswith("rubric.")]
    assert checks, metrics.keys()
    for name in ["rubric", *checks]:
        for side in ("candidate", "reference"):
            assert 0.0 <= metrics[name][side]["mean"] <= 1.0
    assert 0 < metrics["tokens_per_turn"]["candidate"]["mean"] <= 24
    # held-out preference on the test split's 4 pairs: the trained adapter prefers the chosen answers more than the base
    pref = metrics["preference_margin"]
    assert metrics["preference_accuracy"]["candidate"]["n"] == 4
    assert pref["candidate"]["mean"] > pref["reference"]["mean"], pref
    # the judged debates: one motion, both seats, against the bare base
    assert data["judge"]["n"] == 2 and 0 <= data["judge"]["win_rate"] <= 1
    # the samples are kept with their scores, the rubric's total matches its checks' recomputation
    assert len(data["samples"]["candidate"]) == 2 and all("checks" in s for s in data["samples"]["candidate"])
    files = save_report(isolated_home, data)
    assert Path(files["plot"]).read_bytes()[:4] == b"\x89PNG"
    assert load_reports(isolated_home, "advocate", result.version)[0]["metrics"] == json.loads(json.dumps(metrics))
    table = format_table(data)
    assert "rubric" in table and "preference_margin" in table and "judge_win_rate" in table
    # `bonsai adapters show` prints the saved evaluation
    assert cli(["adapters", "show", "advocate", result.version], monkeypatch) == 0
    shown = capsys.readouterr().out
    assert "eval vs base" in shown and "rubric" in shown
