"""`bonsai data build` through the real CLI entry point (``bonsai.cli.main.main``), on a store of real
debates (tests/pair_store.py): success with and without an engine, and one clear error per bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pair_store import debate_store, distinct_candidate_turns, single_torch_thread

from bonsai.cli import main as cli_main
from training.dataset import load_pairs

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with single_torch_thread():
        yield


@pytest.fixture(scope="module")
async def store_file(tmp_path_factory: pytest.TempPathFactory, base_model) -> Path:
    return await debate_store(tmp_path_factory, base_model)


@pytest.fixture
def bonsai(monkeypatch: pytest.MonkeyPatch, base_model, isolated_home: Path, capsys: pytest.CaptureFixture[str]):
    """Run `bonsai ...` in-process; returns (exit code, stdout, stderr)."""
    # the prepared base lives in the ambient home, not the test's empty one
    (isolated_home / "models").mkdir()
    (isolated_home / "models" / base_model.path.name).symlink_to(base_model.path)

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli_main.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_build_best_of_n_prints_the_card(bonsai, store_file: Path, isolated_home: Path) -> None:
    code, out, err = bonsai("data", "build", "--persona", "skeptic", "--strategy", "best-of-n", "--min-gap", "0",
                            "--store", str(store_file), "--test-fraction", "0.5", "--min-pairs", "2", "--json")
    assert code == 0, err
    usable = len(distinct_candidate_turns(store_file, "skeptic"))
    summary = json.loads(out.strip().splitlines()[-1])
    path = Path(summary["path"])
    assert path.parent == isolated_home / "datasets" / "skeptic" and path.name == summary["content_hash"][:12]
    assert summary["counts"]["kept"] == usable and summary["counts"]["test"] > 0 and summary["format"] == "alpaca"
    assert summary["strategies"] == [{"name": "best-of-n", "params": {"min_gap": 0.0}}]
    dd, card = load_pairs(path)
    assert card["content_hash"] == summary["content_hash"] and len(dd["train"]) + len(dd["test"]) == usable
    # the same command again finds the same dataset
    code, out, err = bonsai("data", "build", "--persona", "skeptic", "--strategy", "best-of-n", "--min-gap", "0",
                            "--store", str(store_file), "--test-fraction", "0.5", "--min-pairs", "2")
    assert code == 0, err
    counts = summary["counts"]
    assert f"already built {path}" in out and f"{usable} pairs ({counts['train']} train, {counts['test']} test)" in out


def test_build_stance_starts_its_own_engine(bonsai, store_file: Path, isolated_home: Path) -> None:
    out_dir = isolated_home / "stance-ds"
    code, out, err = bonsai("data", "build", "--persona", "advocate", "--strategy", "best-of-n,stance", "--min-gap", "0",
                            "--opponent", "base", "--store", str(store_file), "--out", str(out_dir), "--engine", "hf", "--max-tokens", "8")
    assert code == 0, err
    dd, card = load_pairs(out_dir)
    assert [s["name"] for s in card["strategies"]] == ["best-of-n", "stance"]
    assert card["strategies"][1]["params"] == {"opponent": "base", "temperature": None}
    assert card["format"] == "conversational" and set(dd["train"]["strategy"]) == {"best-of-n", "stance"}
    assert card["counts"]["kept"] == 4 - sum(card["counts"]["dropped"].values())
    assert "advocate: " in out and f"written to {out_dir}" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--persona", "skeptic", "--strategy", "best-of-n", "--store", "{tmp}/missing.sqlite"], "There is no transcript store"),
        (["--persona", "skeptic", "--strategy", "best-of-three"], "unknown pair strategy 'best-of-three'"),
        (["--persona", "bianlun", "--strategy", "best-of-n"], "'bianlun' has no debater turns"),
        (["--persona", "skeptic", "--strategy", "best-of-n", "--min-gap", "0", "--min-pairs", "9"], r"only \d usable preference pairs .*need at least 9"),
        (["--persona", "skeptic", "--strategy", "best-of-n", "--min-gap", "1"], r"only 0 usable .*score_gap_below_min 4"),
        (["--persona", "advocate", "--strategy", "cross-lingual"], "cross-lingual pairs are for Japanese or Chinese personas"),
        (["--persona", "skeptic", "--strategy", "best-of-n", "--teacher-base", "x"], "--teacher-base is an option of the teacher strategy"),
        (["--persona", "skeptic", "--strategy", "teacher"], "name exactly one teacher"),
        (["--persona", "skeptic", "--strategy", "best-of-n", "--test-fraction", "1"], "--test-fraction"),
    ],
)
def test_bad_input_exits_non_zero_and_writes_nothing(bonsai, store_file: Path, tmp_path: Path, isolated_home: Path, args: list[str], message: str) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--store" not in argv:
        argv += ["--store", str(store_file)]
    code, out, err = bonsai("data", "build", *argv)
    assert code == 2
    assert "\nerror: " in "\n" + err and "hint: " in err
    assert re.search(message, err), err
    assert not (isolated_home / "datasets").exists() and not (tmp_path / "missing.sqlite").exists()
