"""Bad input gets one clear message before anything runs: motions that are not text or too long,
numeric options out of range, and sweep grids too large to plan without a --yes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_sweep import write_sweep

from bonsai.cli import sweep_cmd
from bonsai.cli.main import main
from bonsai.sweep.config import GRID_CAP
from bonsai.text import MAX_MOTION_CHARS

REPO = Path(__file__).resolve().parents[1]


def _bonsai(*argv: str | bytes, home: Path) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "BONSAI_HOME": str(home), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "bonsai", *argv], capture_output=True, env=env, timeout=120, check=False)


def test_motion_that_is_not_utf8_on_the_command_line(isolated_home: Path) -> None:
    # bytes that are not UTF-8 reach Python as lone surrogates: refused before any engine or store
    proc = _bonsai("debate", b"Tea \xff beats coffee", "--engine", "openai", "--endpoint", "http://127.0.0.1:9", home=isolated_home)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "the motion is not valid Unicode text (character 5 is a lone surrogate" in err and "Traceback" not in err
    assert not (isolated_home / "transcripts.sqlite").exists() and not (isolated_home / "checkpoints.sqlite").exists()


def test_motion_too_long(isolated_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["debate", "x" * (MAX_MOTION_CHARS + 1), "--engine", "openai", "--endpoint", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and f"the motion is {MAX_MOTION_CHARS + 1:,} characters long; the limit is {MAX_MOTION_CHARS:,}" in err


def test_sweep_dry_run_refuses_bad_motions(tmp_path: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m.jsonl").write_text('{"motion": "Tea beats coffee"}\n{"motion": "Bad \\ud800 text"}\n', encoding="utf-8")
    path = write_sweep(tmp_path, motions=[{"file": "m.jsonl"}])
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "m.jsonl, motion 2: the motion is not valid Unicode text" in err and "Traceback" not in err
    path = write_sweep(tmp_path, motions=["ok", "y" * 5000])
    assert main(["sweep", str(path), "--dry-run"]) == 2
    assert "motions[1]: the motion is 5,000 characters long; the limit is 1,000" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tokens-per-s", "-1"], "--tokens-per-s must be more than 0, not -1"),
        (["--tokens-per-s", "0"], "--tokens-per-s must be more than 0, not 0"),
        (["--tokens-per-s", "nan"], "--tokens-per-s must be a finite number"),
        (["--concurrency", "0"], "--concurrency must be between 1 and 4096, not 0"),
        (["--retries", "-1"], "--retries must be between 0 and 50, not -1"),
        (["--budget-tokens", "-5"], "--budget-tokens must be at least 1, not -5"),
        (["--budget-time", "0"], "--budget-time must be more than 0, not 0"),
        (["--kv-cache-gib", "-2"], "--kv-cache-gib must be more than 0, not -2"),
        (["--ray-workers", "0"], "--ray-workers must be at least 1, not 0"),
        (["--max-num-seqs", "0"], "--max-num-seqs must be at least 1, not 0"),
    ],
)
def test_sweep_numeric_options(tmp_path: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert main(["sweep", str(write_sweep(tmp_path)), "--dry-run", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and "hint: see `bonsai sweep --help`" in err


@pytest.mark.parametrize(
    "argv",
    [["ratings", "s1", "--bootstrap", "0"], ["serve", "--port", "70000"], ["tui", "--rounds", "0"], ["tui", "--candidates", "99"],
     ["debate", "m", "--rounds", "-2"]],
)
def test_numeric_options_of_other_commands(isolated_home: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == 2
    assert "must be" in capsys.readouterr().err


def test_grid_over_the_cap_needs_yes_and_is_counted_before_it_is_built(tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    motions = [f"Motion number {i}" for i in range(GRID_CAP // 4 + 1)]
    (tmp_path / "many.txt").write_text("\n".join(motions), encoding="utf-8")
    path = write_sweep(tmp_path, motions=[{"file": "many.txt"}], seeds=[0, 1])  # x 1 pairing x 2 sides x 2 seeds
    expected = len(motions) * 4

    def never(*_a: object, **_k: object) -> None:
        raise AssertionError("the grid was built before its size was checked")

    monkeypatch.setattr(sweep_cmd, "plan_sweep", never)
    for argv in (["--dry-run"], []):
        assert main(["sweep", str(path), *argv]) == 2
        err = capsys.readouterr().err
        assert f"is a grid of {expected:,} debates ({len(motions)} motions x 1 pairings x 2 sides x 2 seeds" in err
        assert f"more than {GRID_CAP:,}" in err and "--yes" in err
    monkeypatch.undo()
    assert main(["sweep", str(path), "--dry-run", "--yes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["debates"] == expected
