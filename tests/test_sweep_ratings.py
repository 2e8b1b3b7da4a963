"""Sweep ratings: the Bradley-Terry fit against known truths, bootstrap, side bias, report files."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bonsai import atomic
from bonsai.errors import ConfigError
from bonsai.stats import wilson_interval
from bonsai.sweep.ratings import files, plots
from bonsai.sweep.ratings.files import write_report
from bonsai.sweep.ratings.outcome import Outcome
from bonsai.sweep.ratings.report import Record, format_table, summarize
from bonsai.sweep.ratings.statistics import bootstrap_intervals, bradley_terry, to_elo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILES = ["results.csv", "ratings.json", "ratings.png", "winrate.png", "confidence.png"]


def oc(a: str, b: str, winner: str, k: int = 0, **kw: object) -> Outcome:
    fields: dict[str, object] = {
        "debate_id": f"d{k}",
        "motion": "motion",
        "prob_a": None,
        "confidence": None,
        "judge": "judge@base",
        "format": "oxford",
        "seed": k,
        "candidates": 1,
        "tokens": 10,
    }
    fields.update(kw)
    return Outcome(a=a, b=b, winner=winner, **fields)  # type: ignore[arg-type]


def games(a: str, b: str, a_wins: int, b_wins: int, start: int = 0) -> list[Outcome]:
    """``a_wins`` + ``b_wins`` debates with ``a`` always on side A."""
    return [oc(a, b, "A", start + k) for k in range(a_wins)] + [
        oc(a, b, "B", start + a_wins + k) for k in range(b_wins)
    ]


def simulate(true: dict[str, float], n: int, seed: int) -> list[Outcome]:
    rng = np.random.default_rng(seed)
    labels = list(true)
    out = []
    for k in range(n):
        i, j = rng.choice(len(labels), size=2, replace=False)
        a, b = labels[i], labels[j]
        p_a = 1.0 / (1.0 + math.exp(true[b] - true[a]))
        out.append(oc(a, b, "A" if rng.random() < p_a else "B", k, prob_a=p_a, confidence=max(p_a, 1 - p_a)))
    return out


TRUE = {"weak@base": -1.0, "mid@1111aaaa": 0.0, "good@2222bbbb": 0.5, "best@3333cccc": 1.5}


# --- Bradley-Terry ------------------------------------------------------------------------------------


def test_recovers_true_strengths_from_simulated_games() -> None:
    fitted = bradley_terry(simulate(TRUE, 1500, seed=7))
    assert sorted(fitted, key=fitted.get) == list(TRUE)  # type: ignore[arg-type]
    assert sum(fitted.values()) == pytest.approx(0.0, abs=1e-9)
    mean = sum(TRUE.values()) / len(TRUE)
    for label, truth in TRUE.items():
        assert fitted[label] == pytest.approx(truth - mean, abs=0.2), label


@pytest.mark.parametrize(("w", "n"), [(7, 10), (1, 4), (30, 50)])
def test_two_competitors_without_prior_match_closed_form(w: int, n: int) -> None:
    fitted = bradley_terry(games("x@1", "y@2", w, n - w), prior_games=0)
    assert fitted["x@1"] - fitted["y@2"] == pytest.approx(math.log(w / (n - w)), abs=1e-8)
    assert fitted["x@1"] == pytest.approx(-fitted["y@2"], abs=1e-12)


@pytest.mark.parametrize(("w", "n", "prior"), [(10, 10, 1.0), (7, 10, 1.0), (3, 4, 2.5)])
def test_two_competitors_with_prior_solve_the_regularised_score_equation(w: int, n: int, prior: float) -> None:
    # With a prior the fit is symmetric (s_x = -s_y = d/2) and d solves
    #   w + prior/2 = n * sigmoid(d) + prior * sigmoid(d/2),
    # solved here independently by bisection.
    def sigmoid(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-x))

    lo, hi = -50.0, 50.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if n * sigmoid(mid) + prior * sigmoid(mid / 2) < w + prior / 2:
            lo = mid
        else:
            hi = mid
    fitted = bradley_terry(games("x@1", "y@2", w, n - w), prior_games=prior)
    assert fitted["x@1"] - fitted["y@2"] == pytest.approx(lo, abs=1e-7)
    assert math.isfinite(fitted["x@1"])


def test_perfect_separation_stays_finite_and_prior_shrinks() -> None:
    outcomes = games("a@1", "b@1", 5, 0) + games("b@1", "c@1", 5, 0, start=5)
    weak = bradley_terry(outcomes, prior_games=1.0)
    strong = bradley_terry(outcomes, prior_games=10.0)
    for fit in (weak, strong):
        assert all(math.isfinite(v) for v in fit.values())
        assert fit["a@1"] > fit["b@1"] > fit["c@1"]
    assert strong["a@1"] - strong["c@1"] < weak["a@1"] - weak["c@1"]


def test_without_prior_a_perfect_separation_is_refused() -> None:
    with pytest.raises(ConfigError, match="infinite") as err:
        bradley_terry(games("a@1", "b@1", 5, 0), prior_games=0)
    assert err.value.hint and "prior_games" in err.value.hint
    with pytest.raises(ConfigError):
        bradley_terry(games("a@1", "b@1", 5, 0), prior_games=-1)


def test_self_play_is_skipped_in_the_fit_but_counted_on_sides() -> None:
    base = games("a@1", "b@1", 3, 1)
    self_play = [oc("a@1", "a@1", "A", 100), oc("a@1", "a@1", "A", 101), oc("b@1", "b@1", "B", 102)]
    assert bradley_terry(base + self_play) == pytest.approx(bradley_terry(base))

    report = summarize(base + self_play, bootstrap=0)
    assert report.totals.debates == 7 and report.totals.self_play == 3 and report.totals.rated == 4
    assert report.sides.n == 7 and report.sides.wins_a == 5
    a = report.sides.per_competitor["a@1"]
    assert (a.as_a.games, a.as_a.wins, a.as_b.games, a.as_b.wins) == (6, 5, 2, 0)
    b = report.sides.per_competitor["b@1"]
    assert (b.as_a.games, b.as_a.wins, b.as_b.games, b.as_b.wins) == (1, 0, 5, 2)
    by_label = {c.label: c for c in report.competitors}
    assert (by_label["a@1"].games, by_label["a@1"].wins) == (4, 3)  # self-play is not a rated game


def test_a_competitor_alone_cannot_be_rated() -> None:
    with pytest.raises(ConfigError, match="single competitor"):
        bradley_terry([oc("a@1", "a@1", "A")])


def test_disconnected_groups_are_finite_and_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    outcomes = games("a@1", "b@1", 6, 2) + games("c@1", "d@1", 6, 2, start=10)
    with caplog.at_level(logging.WARNING, logger="bonsai.sweep.ratings.statistics"):
        fit = bradley_terry(outcomes)
    assert "do not all meet" in caplog.text
    assert all(math.isfinite(v) for v in fit.values())
    assert fit["a@1"] - fit["b@1"] == pytest.approx(fit["c@1"] - fit["d@1"], abs=1e-9)
    assert fit["a@1"] == pytest.approx(fit["c@1"], abs=1e-9)


def test_connected_graph_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bonsai.sweep.ratings.statistics"):
        bradley_terry(games("a@1", "b@1", 3, 1) + games("b@1", "c@1", 3, 1, start=10))
    assert "do not all meet" not in caplog.text


def test_competitors_who_never_met_are_ordered_through_others() -> None:
    outcomes = games("a@1", "b@1", 8, 2) + games("b@1", "c@1", 8, 2, start=10)
    fit = bradley_terry(outcomes)
    assert fit["a@1"] > fit["b@1"] > fit["c@1"]
    report = summarize(outcomes, bootstrap=0)
    idx = {label: k for k, label in enumerate(report.matrix.labels)}
    assert report.matrix.cells[idx["a@1"]][idx["c@1"]] is None
    assert report.matrix.cells[idx["c@1"]][idx["a@1"]] is None


def test_outcome_rejects_an_unknown_winner() -> None:
    for bad in ("draw", "a", "", None):
        with pytest.raises(ValueError, match="winner"):
            oc("a@1", "b@1", bad)  # type: ignore[arg-type]


# --- ties: half a win each way (Chatbot Arena) -------------------------------------------------------


def test_ties_count_as_half_wins_in_the_fit() -> None:
    """2 wins, 2 losses and 4 ties are 4 of 8 each: equal strengths. 3 wins, 1 loss and 4 ties are 5 of 8:
    exactly what 5 wins and 3 losses give, without a prior (closed form: log(5/3))."""
    even = games("a@1", "b@1", 2, 2) + [oc("a@1", "b@1", "tie", 10 + k) for k in range(4)]
    s = bradley_terry(even, prior_games=0)
    assert s["a@1"] == pytest.approx(s["b@1"], abs=1e-9)
    tied = games("a@1", "b@1", 3, 1) + [oc("a@1", "b@1", "tie", 10 + k) for k in range(4)]
    plain = games("a@1", "b@1", 5, 3)
    with_ties, without = bradley_terry(tied, prior_games=0), bradley_terry(plain, prior_games=0)
    assert with_ties["a@1"] - with_ties["b@1"] == pytest.approx(math.log(5 / 3), abs=1e-6)
    assert with_ties == pytest.approx(without, abs=1e-9)
    # all ties: the MLE exists (each beat the other half a game) and is even
    only_ties = [oc("a@1", "b@1", "tie", k) for k in range(3)]
    assert bradley_terry(only_ties, prior_games=0)["a@1"] == pytest.approx(0.0, abs=1e-9)
    lo, hi = bootstrap_intervals(tied, n=200, seed=1)["a@1"]
    assert lo < with_ties["a@1"] < hi


def test_ties_in_win_rates_side_bias_matrix_table_and_csv() -> None:
    outcomes = [oc("a@1", "b@1", "A", 0), oc("a@1", "b@1", "tie", 1), oc("b@1", "a@1", "tie", 2), oc("b@1", "a@1", "A", 3)]
    report = summarize(outcomes, bootstrap=0)
    by = {c.label: c for c in report.competitors}
    assert (by["a@1"].wins, by["a@1"].games, by["a@1"].win_rate) == (2.0, 4, 0.5)
    assert (by["b@1"].wins, by["b@1"].win_rate) == (2.0, 0.5)
    sides = report.sides
    assert (sides.wins_a, sides.n, sides.rate_a, sides.ties) == (3.0, 4, 0.75, 2)
    assert (sides.low, sides.high) == pytest.approx(wilson_interval(3.0, 4))
    assert sides.per_competitor["a@1"].as_a == Record(1.5, 2, 0.75, 1)
    assert sides.per_competitor["a@1"].as_b == Record(0.5, 2, 0.25, 1)
    idx = {label: k for k, label in enumerate(report.matrix.labels)}
    cell = report.matrix.cells[idx["a@1"]][idx["b@1"]]
    assert cell == Record(2.0, 4, 0.5, 2)
    assert "side A won 3/4 = 75.0%" in format_table(report) and "2 ties counted as half" in format_table(report)
    rows = list(csv.DictReader(io.StringIO(files.results_csv(outcomes))))
    assert [(r["winner"], r["winner_label"]) for r in rows] == [("A", "a@1"), ("tie", ""), ("tie", ""), ("A", "b@1")]
    assert plots.winrate_png(report).startswith(PNG_SIGNATURE)


def test_a_fair_judge_between_equals_gives_side_a_about_half() -> None:
    """The check of issue 11: the same competitor on both sides, every verdict a tie: 50%, inside the CI."""
    outcomes = [oc("x@base", "y@base", "tie", k) for k in range(20)]
    sides = summarize(outcomes, bootstrap=0).sides
    assert sides.rate_a == 0.5 and sides.low < 0.5 < sides.high
    # the old judge: side A won all of them
    biased = summarize([oc("x@base", "y@base", "A", k) for k in range(20)], bootstrap=0).sides
    assert biased.low > 0.5


# --- bootstrap ------------------------------------------------------------------------------------


def test_bootstrap_contains_estimate_narrows_with_data_and_is_seeded() -> None:
    small = simulate(TRUE, 60, seed=1)
    large = simulate(TRUE, 900, seed=1)
    point = bradley_terry(small)
    ci_small = bootstrap_intervals(small, n=200, seed=3)
    for label, (low, high) in ci_small.items():
        assert low <= point[label] <= high, label
    ci_large = bootstrap_intervals(large, n=200, seed=3)
    for label in TRUE:
        assert ci_large[label][1] - ci_large[label][0] < 0.7 * (ci_small[label][1] - ci_small[label][0]), label

    assert bootstrap_intervals(small, n=200, seed=3) == ci_small
    assert bootstrap_intervals(small, n=200, seed=4) != ci_small
    # a wider level gives a wider interval
    ci_wide = bootstrap_intervals(small, n=200, seed=3, level=0.99)
    assert all(ci_wide[k][0] <= ci_small[k][0] and ci_wide[k][1] >= ci_small[k][1] for k in TRUE)


def test_report_intervals_are_on_the_elo_scale() -> None:
    outcomes = simulate(TRUE, 120, seed=2)
    report = summarize(outcomes, bootstrap=100, seed=5)
    ci = bootstrap_intervals(outcomes, n=100, seed=5)
    for c in report.competitors:
        assert c.elo == pytest.approx(1000 + 400 / math.log(10) * c.log_strength)
        assert (c.elo_low, c.elo_high) == pytest.approx((to_elo(ci[c.label][0]), to_elo(ci[c.label][1])))
        assert c.elo_low is not None and c.elo_high is not None
        assert c.elo_low <= c.elo <= c.elo_high
    assert to_elo(0.0) == 1000.0 and to_elo(math.log(10)) == pytest.approx(1400.0)


# --- side bias, matrix, confidence ---------------------------------------------------------------------


def test_side_bias_on_a_hand_made_set() -> None:
    # side A wins 7 of 10: x on A wins 4/5, y on A wins 3/5
    outcomes = games("x@1", "y@1", 4, 1) + games("y@1", "x@1", 3, 2, start=5)
    s = summarize(outcomes, bootstrap=0).sides
    assert (s.n, s.wins_a) == (10, 7)
    assert s.rate_a == pytest.approx(0.7)
    assert (s.low, s.high) == pytest.approx((0.3968, 0.8922), abs=5e-5)  # published Wilson 95% for 7/10
    x = s.per_competitor["x@1"]
    assert (x.as_a.wins, x.as_a.games, x.as_a.rate) == (4, 5, pytest.approx(0.8))
    assert (x.as_b.wins, x.as_b.games, x.as_b.rate) == (2, 5, pytest.approx(0.4))
    y = s.per_competitor["y@1"]
    assert (y.as_a.wins, y.as_a.games, y.as_b.wins, y.as_b.games) == (3, 5, 1, 5)


def test_wilson_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)  # no trials: says nothing
    low, high = wilson_interval(0, 5)
    assert low == 0.0 and 0.4 < high < 0.5  # 0.4345 for 0/5
    low, high = wilson_interval(5, 5)
    assert high == 1.0 and low == pytest.approx(1 - 0.4345, abs=1e-4)
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)


def test_win_rate_matrix_on_a_hand_made_set() -> None:
    outcomes = (
        games("a@1", "b@1", 2, 1)  # a beats b 2, b beats a 1
        + games("b@1", "a@1", 1, 0, start=10)  # b beats a once more (b on side A)
        + games("a@1", "c@1", 3, 0, start=20)
        + [oc("c@1", "c@1", "A", 30)]
    )
    m = summarize(outcomes, bootstrap=0).matrix
    assert m.labels == ["a@1", "b@1", "c@1"]  # best first
    cell = {(r, c): m.cells[i][j] for i, r in enumerate(m.labels) for j, c in enumerate(m.labels)}
    ab, ba = cell["a@1", "b@1"], cell["b@1", "a@1"]
    assert ab is not None and (ab.wins, ab.games, ab.rate) == (2, 4, 0.5)
    assert ba is not None and (ba.wins, ba.games, ba.rate) == (2, 4, 0.5)
    ac, ca = cell["a@1", "c@1"], cell["c@1", "a@1"]
    assert ac is not None and (ac.wins, ac.games, ac.rate) == (3, 3, 1.0)
    assert ca is not None and (ca.wins, ca.games, ca.rate) == (0, 3, 0.0)
    assert cell["b@1", "c@1"] is None and cell["c@1", "b@1"] is None
    assert all(cell[x, x] is None for x in m.labels)


def test_confidence_distribution() -> None:
    outcomes = [
        oc("a@1", "b@1", "A", 0, prob_a=0.9, confidence=0.9, judge="j1"),
        oc("a@1", "b@1", "B", 1, prob_a=0.4, confidence=0.6, judge="j1"),
        oc("a@1", "b@1", "A", 2, prob_a=0.52, confidence=0.52, judge="j2"),
        oc("a@1", "b@1", "A", 3, prob_a=1.0, confidence=1.0, judge="j2"),
        oc("a@1", "b@1", "B", 4, judge="j3"),  # no probability recorded
    ]
    c = summarize(outcomes, bootstrap=0).confidence
    assert c.count == 4
    assert c.mean == pytest.approx(0.755)
    assert c.median == pytest.approx(0.75)
    assert c.edges[0] == 0.5 and c.edges[-1] == 1.0 and len(c.edges) == len(c.counts) + 1
    assert sum(c.counts) == 4
    assert c.counts == [1, 0, 1, 0, 0, 0, 0, 0, 1, 1]  # 0.52, 0.6, 0.9; 1.0 falls in the last bin
    assert set(c.per_judge) == {"j1", "j2"}
    assert c.per_judge["j1"].mean == pytest.approx(0.75) and c.per_judge["j1"].count == 2
    assert c.per_judge["j2"].mean == pytest.approx(0.76)


# --- the report as a whole -------------------------------------------------------------------------


def test_empty_outcomes_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="no finished debates to rate") as err:
        summarize([])
    assert err.value.hint


def test_report_ranks_totals_and_json() -> None:
    # a and b tie exactly (symmetric record); c is worse
    outcomes = games("a@1", "b@1", 2, 2) + games("a@1", "c@1", 3, 1, start=10) + games("b@1", "c@1", 3, 1, start=20)
    report = summarize(outcomes, bootstrap=50, seed=1)
    assert [c.label for c in report.competitors] == ["a@1", "b@1", "c@1"]
    assert [c.rank for c in report.competitors] == [1, 1, 3]
    a = report.competitors[0]
    assert (a.games, a.wins, a.win_rate) == (8, 5, pytest.approx(5 / 8))
    assert report.totals.tokens == 10 * len(outcomes)
    data = json.loads(json.dumps(report.to_json()))
    assert data["competitors"][0]["label"] == "a@1"
    assert data["sides"]["n"] == len(outcomes)
    assert data["matrix"]["cells"][0][0] is None
    assert data["totals"]["debates"] == 12
    assert {"prior_games", "bootstrap", "seed", "level"} <= set(data)


def test_format_table() -> None:
    outcomes = games("strong@abc", "weak@base", 7, 3)
    text = format_table(summarize(outcomes, bootstrap=50))
    lines = text.splitlines()
    assert lines[0].split() == ["rank", "competitor", "elo", "95%", "CI", "games", "win", "rate"]
    assert lines[1].split()[:2] == ["1", "strong@abc"] and "70.0%" in lines[1]
    assert lines[2].split()[:2] == ["2", "weak@base"] and "30.0%" in lines[2]
    assert lines[1].index("strong@abc") == lines[2].index("weak@base")  # aligned
    assert "side A won 7/10 = 70.0% (95% CI 39.7% to 89.2%" in text
    assert "10 debates" in text


# --- files ---------------------------------------------------------------------------------------


MOTIONS = ["猫は犬より優れている", "人工智能应该受到监管", 'commas, "quotes"\nand newlines']


def report_outcomes() -> list[Outcome]:
    outcomes = simulate(TRUE, 40, seed=11)
    return [replace(o, motion=MOTIONS[k % len(MOTIONS)]) for k, o in enumerate(outcomes)] + [
        oc("weak@base", "weak@base", "B", 99, motion=MOTIONS[0], seed=None)
    ]


def test_write_report_writes_five_files(tmp_path: Path) -> None:
    outcomes = report_outcomes()
    report = summarize(outcomes, bootstrap=50)
    out = tmp_path / "report"
    paths = write_report(report, outcomes, out)
    assert [p.name for p in paths] == FILES and all(p.parent == out for p in paths)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)

    with (out / "results.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(files.RESULT_COLUMNS)
    assert len(rows) == len(outcomes)
    for row, o in zip(rows, outcomes, strict=True):
        assert row["motion"] == o.motion and row["debate_id"] == o.debate_id
        assert row["winner_label"] == (o.a if o.winner == "A" else o.b)
        assert row["prob_a"] == ("" if o.prob_a is None else str(o.prob_a))
        assert row["seed"] == ("" if o.seed is None else str(o.seed))

    text = (out / "ratings.json").read_text(encoding="utf-8")
    assert json.loads(text) == json.loads(json.dumps(report.to_json()))

    for name in ("ratings.png", "winrate.png", "confidence.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, name


def test_plot_failure_leaves_the_directory_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outcomes = games("a@1", "b@1", 3, 1)
    report = summarize(outcomes, bootstrap=0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_text("old\n", encoding="utf-8")

    def broken(_report: object) -> bytes:
        raise RuntimeError("plot exploded")

    monkeypatch.setattr(plots, "winrate_png", broken)
    with pytest.raises(RuntimeError, match="plot exploded"):
        write_report(report, outcomes, out)
    assert sorted(p.name for p in out.iterdir()) == ["results.csv"]
    assert (out / "results.csv").read_text(encoding="utf-8") == "old\n"


def test_write_failure_leaves_whole_files_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outcomes = games("a@1", "b@1", 3, 1)
    report = summarize(outcomes, bootstrap=0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "ratings.png").write_bytes(b"old")
    real_replace = atomic.os.replace
    calls = []

    def flaky(src: str, dst: object) -> None:
        calls.append(dst)
        if len(calls) == 3:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", flaky)
    with pytest.raises(OSError, match="disk full"):
        write_report(report, outcomes, out)
    monkeypatch.undo()
    assert [Path(str(d)).name for d in calls] == ["results.csv", "ratings.json", "ratings.png"]
    assert sorted(p.name for p in out.iterdir()) == ["ratings.json", "ratings.png", "results.csv"]  # no temp files
    assert (out / "ratings.png").read_bytes() == b"old"
    json.loads((out / "ratings.json").read_text(encoding="utf-8"))


def test_png_renderers_return_png_bytes_without_bootstrap_or_confidences() -> None:
    report = summarize(games("a@1", "b@1", 3, 1), bootstrap=0)
    for render in (plots.ratings_png, plots.winrate_png, plots.confidence_png):
        assert render(report).startswith(PNG_SIGNATURE)


def test_results_csv_is_plain_utf8_text() -> None:
    text = files.results_csv([oc("a@1", "b@1", "B", motion=MOTIONS[1], prob_a=0.25, confidence=0.75)])
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[1][:6] == ["d0", MOTIONS[1], "a@1", "b@1", "B", "b@1"]
    assert rows[1][6:8] == ["0.25", "0.75"]
