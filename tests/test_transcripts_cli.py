"""`bonsai transcripts list|show|export`, driven through the real entry point."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from bonsai.cli.main import main
from bonsai.paths import store_path
from bonsai.store import TranscriptStore
from bonsai.store.records import CandidateRecord, DebateRecord, TurnRecord, VerdictRecord

MOTION = "この議会は週四日勤務制を導入すべきである、なぜなら生産性と幸福度の両方が上がるからだ"


def fill(path: Path) -> None:
    with TranscriptStore(path) as s:
        for n, (debate_id, persona, created) in enumerate((("deb-aaa111", "advocate", 1.0e9), ("deb-bbb222", "optimist", 1.1e9))):
            s.create_debate(
                DebateRecord(
                    debate_id=debate_id,
                    motion=MOTION if n == 0 else "AI [bold]should[/bold] be regulated",
                    format="quick",
                    rounds=1,
                    base_model="smollm2-135m-instruct",
                    engine="vllm-cpu",
                    seats={"A": [persona], "B": ["skeptic"], "judge": ["judge"], "moderator": ["moderator"]},
                    seed=3,
                    candidates=2,
                    created_at=created,
                    sweep="s1" if n == 0 else None,
                )
            )
            for i, (speaker, team) in enumerate(((persona, "A"), ("skeptic", "B"))):
                s.record_turn(
                    TurnRecord(
                        debate_id=debate_id,
                        turn_index=i,
                        phase="opening",
                        round=1,
                        speaker=speaker,
                        team=team,
                        role="debater",
                        text=f"<think>理由 {i}</think>主張 {i} [red]not markup[/red]",
                        answer=f"主張 {i} [red]not markup[/red]",
                        reasoning=f"理由 {i}",
                        adapter_name=speaker,
                        adapter_hash="h",
                        base_model="smollm2-135m-instruct",
                        prompt_tokens=50,
                        output_tokens=12,
                        latency_s=0.5,
                        first_token_s=0.1,
                        sampling={"temperature": 0.7},
                        seed=1,
                        finish_reason="stop",
                        prompt=[{"role": "user", "content": "話して"}],
                        created_at=created + i,
                    )
                )
                s.record_candidates(
                    [
                        CandidateRecord(debate_id, i, c, f"候補{c}", f"候補{c}", None, 0.1 + 0.8 * c, c == 1, 9, "stop", c)
                        for c in range(2)
                    ]
                )
        s.record_verdict(
            VerdictRecord(
                debate_id="deb-aaa111",
                judge="panel",
                winner="A",
                prob_a=0.875,
                confidence=0.875,
                scores={"A": {"clarity": 8.0}, "B": {"clarity": 6.5}},
                rationale="A は明快だった。",
                parsed=True,
                orders=[],
            )
        )
        s.set_status("deb-aaa111", "finished", winner="A")
        s.set_status("deb-bbb222", "failed")


@pytest.fixture
def store_file(isolated_home: Path) -> Path:
    path = store_path(isolated_home)
    fill(path)
    return path


def test_list_table_shows_debates_newest_first(store_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["transcripts", "list"]) == 0
    out = capsys.readouterr().out
    assert "deb-aaa111" in out and "deb-bbb222" in out
    assert out.index("deb-bbb222") < out.index("deb-aaa111")
    assert "finished" in out and "failed" in out and "A: advocate" in out
    assert "この議会は" in out and MOTION not in out  # the long motion is truncated
    assert "[bold]" in out  # motion text is not read as rich markup


def test_list_filters_and_json(store_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["transcripts", "list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["debate_id"], r["turns"], r["status"]) for r in rows] == [("deb-bbb222", 2, "failed"), ("deb-aaa111", 2, "finished")]
    assert rows[1]["motion"] == MOTION
    for argv, expected in (
        (["--winner", "A"], ["deb-aaa111"]),
        (["--status", "failed"], ["deb-bbb222"]),
        (["--persona", "optimist"], ["deb-bbb222"]),
        (["--sweep", "s1"], ["deb-aaa111"]),
        (["--limit", "1"], ["deb-bbb222"]),
        (["--persona", "nobody"], []),
    ):
        assert main(["transcripts", "list", "--json", *argv]) == 0
        assert [json.loads(line)["debate_id"] for line in capsys.readouterr().out.splitlines()] == expected, argv


def test_list_with_nothing_matching_says_so(store_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["transcripts", "list", "--persona", "nobody"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "No debates match" in captured.err


def test_show_renders_turns_candidates_and_verdict(store_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["transcripts", "show", "deb-aaa"]) == 0  # a unique prefix is enough
    out = capsys.readouterr().out
    assert "deb-aaa111" in out and "この議会は" in out
    assert "advocate" in out and "skeptic" in out and "team A" in out and "opening" in out
    assert "主張 0 [red]not markup[/red]" in out and "理由 0" in out
    assert "0.900" in out and "✓" in out  # candidate scores and the chosen mark
    assert "verdict: panel" in out and "0.875" in out and "clarity" in out and "A は明快だった。" in out


def test_show_json(store_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(store_file.parent), "transcripts", "show", "deb-aaa111", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["debate"]["winner"] == "A" and doc["debate"]["motion"] == MOTION
    assert [t["turn_index"] for t in doc["turns"]] == [0, 1]
    assert [c["chosen"] for c in doc["turns"][0]["candidates"]] == [False, True]
    assert doc["verdicts"][0]["scores"] == {"A": {"clarity": 8.0}, "B": {"clarity": 6.5}}


def test_show_unknown_or_ambiguous_id(store_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["transcripts", "show", "nope"]) == 2
    err = capsys.readouterr().err
    assert "error: No debate 'nope'" in err and "bonsai transcripts list" in err
    assert main(["transcripts", "show", "deb-"]) == 2
    assert "several debates" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export(store_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / f"x.{fmt}"
    assert main(["transcripts", "export", "--format", fmt, "-o", str(out), "--debate", "deb-aaa111"]) == 0
    assert "wrote 2 turns" in capsys.readouterr().err
    if fmt == "jsonl":
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    else:
        rows = pq.read_table(out).to_pylist()
    assert [(r["debate_id"], r["turn_index"], r["verdict"]["winner"]) for r in rows] == [("deb-aaa111", 0, "A"), ("deb-aaa111", 1, "A")]
    assert rows[0]["motion"] == MOTION


def test_export_all_with_format_from_suffix_and_explicit_store(store_file: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere.sqlite"
    with sqlite3.connect(store_file) as src, sqlite3.connect(moved) as dst:
        src.backup(dst)
    out = tmp_path / "all.parquet"
    assert main(["transcripts", "export", "--store", str(moved), "-o", str(out)]) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(out).num_rows == 4


def test_export_empty_store_fails_and_leaves_no_file(isolated_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    TranscriptStore(store_path(isolated_home)).close()
    out = tmp_path / "x.jsonl"
    assert main(["transcripts", "export", "--format", "jsonl", "-o", str(out)]) == 2
    assert "no debates to export" in capsys.readouterr().err
    assert list(tmp_path.glob("x.jsonl*")) == [] and list(tmp_path.glob(".x.jsonl*")) == []


def test_export_bad_inputs(store_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.jsonl"
    with pytest.raises(SystemExit) as info:
        main(["transcripts", "export", "--format", "csv", "-o", str(out)])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert main(["transcripts", "export", "-o", str(tmp_path / "x.txt")]) == 2
    assert "--format" in capsys.readouterr().err
    assert main(["transcripts", "export", "--format", "jsonl", "-o", str(out), "--debate", "missing"]) == 2
    assert "No debate 'missing'" in capsys.readouterr().err
    assert main(["transcripts", "export", "--format", "jsonl", "-o", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("x.*"))


@pytest.mark.parametrize("action", [["list"], ["show", "deb-aaa111"], ["export", "--format", "jsonl", "-o", "x.jsonl"]])
def test_missing_store_is_an_error_and_not_created(isolated_home: Path, capsys: pytest.CaptureFixture[str], action: list[str]) -> None:
    assert main(["transcripts", *action]) == 2
    err = capsys.readouterr().err
    assert "There is no transcript store at" in err and "hint:" in err
    assert not store_path(isolated_home).exists()
    assert not Path("x.jsonl").exists()


def test_non_sqlite_store_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "notes.sqlite"
    bad.write_text("hello")
    assert main(["transcripts", "list", "--store", str(bad)]) == 2
    assert "not an SQLite database" in capsys.readouterr().err
    assert bad.read_text() == "hello"


def test_bad_list_arguments(store_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--limit", "0"], ["--limit", "x"], ["--winner", "C"], ["--status", "done"]):
        with pytest.raises(SystemExit) as info:
            main(["transcripts", "list", *argv])
        assert info.value.code == 2, argv
    assert "must be 1 or more" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["transcripts"])  # an action is required


# -- nothing overwritten --------------------------------------------------------------------------


def test_export_refuses_an_existing_file_unless_forced(store_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.jsonl"
    out.write_text("keep me\n")
    assert main(["transcripts", "export", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and "Traceback" not in err
    assert out.read_text() == "keep me\n"
    assert main(["transcripts", "export", "-o", str(out), "--force"]) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 4
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".x.jsonl")] == []


@pytest.mark.parametrize("how", ["same path", "relative path", "symlink", "hard link", "wal file", "store suffix"])
def test_export_never_overwrites_the_store(store_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str], how: str) -> None:
    before = store_file.read_bytes()
    target = store_file
    if how == "relative path":
        monkeypatch.chdir(store_file.parent)
        target = Path("sub/../" + store_file.name)
        (store_file.parent / "sub").mkdir()
    elif how == "symlink":
        target = tmp_path / "link.jsonl"
        target.symlink_to(store_file)
    elif how == "hard link":
        target = tmp_path / "hard.jsonl"
        target.hardlink_to(store_file)
    elif how == "store suffix":
        target = store_file  # no --format: the store is refused before its suffix is
    elif how == "wal file":
        target = store_file.with_name(store_file.name + "-wal")
    fmt = [] if how == "store suffix" else ["--format", "jsonl"]
    assert main(["transcripts", "export", *fmt, "-o", str(target), "--force"]) == 2
    assert "transcript store itself" in capsys.readouterr().err
    assert store_file.read_bytes() == before
    assert main(["transcripts", "list", "--json"]) == 0  # still a working store
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_export_onto_another_sqlite_file_needs_force(store_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "checkpoints.jsonl"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE checkpoints (x)")
    before = other.read_bytes()
    assert main(["transcripts", "export", "-o", str(other)]) == 2
    assert "is an SQLite database" in capsys.readouterr().err
    assert other.read_bytes() == before
    assert main(["transcripts", "export", "-o", str(other), "--force"]) == 0
    assert json.loads(other.read_text(encoding="utf-8").splitlines()[0])["debate_id"] == "deb-aaa111"


def test_export_to_an_unwritable_place_is_one_clear_message(store_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out in (blocker / "x.jsonl", Path("/proc/bonsai-export.jsonl")):
        assert main(["transcripts", "export", "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: Cannot write the export to") and "hint:" in err and "Traceback" not in err, err


def test_an_export_killed_midway_keeps_the_old_file_and_the_next_export_tidies(store_file: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    out = tmp_path / "turns.jsonl"
    out.write_text("old\n")
    # a stage as a SIGKILLed export leaves it: its writer (a process that has exited) is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    stage = tmp_path / f".turns.jsonl.{dead.stdout.strip()}.abcd1234.partial"
    stage.write_text('{"half": ')
    os.utime(stage, (time.time() - 120,) * 2)
    assert out.read_text() == "old\n"
    assert main(["transcripts", "export", "-o", str(out), "--force"]) == 0
    assert not stage.exists() and len(out.read_text(encoding="utf-8").splitlines()) == 4
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's 0600


def _umask() -> int:
    import os

    mask = os.umask(0o22)
    os.umask(mask)
    return mask
