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


def test_show_scores_each_debater_turn_with_its_personas_rubric(store_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bonsai.personas import PersonaBook
    from bonsai.rubric import RubricContext, rubric_for

    assert main(["transcripts", "show", "deb-bbb", "--scores", "--json"]) == 0
    turns = json.loads(capsys.readouterr().out)["turns"]
    # optimist is in no persona file: said on its turn, and the other turns are still scored
    assert turns[0]["scores"] == {"error": turns[0]["scores"]["error"]} and "'optimist' is not in" in turns[0]["scores"]["error"]
    skeptic = PersonaBook.load().get("skeptic")
    expected = rubric_for(skeptic).score(  # type: ignore[union-attr]
        turns[1]["text"], RubricContext("AI [bold]should[/bold] be regulated", "en", opponent_last=turns[0]["answer"])
    )
    assert turns[1]["scores"] == {"total": pytest.approx(expected.total), "checks": pytest.approx(expected.checks)}
    assert list(turns[1]["scores"]["checks"]) == ["reasoning_format", "language", "length", "on_motion", "repetition"]
    assert turns[1]["scores"]["checks"]["language"] < 1.0  # skeptic spoke some Japanese here

    assert main(["transcripts", "show", "deb-bbb", "--scores"]) == 0
    out = capsys.readouterr().out
    assert "rubric persona 'optimist' is not in" in out
    assert f"rubric {expected.total:.3f}" in out and "reasoning_format 0.00" in out and "repetition" in out
    # without --scores nothing is scored
    assert main(["transcripts", "show", "deb-bbb"]) == 0
    assert "rubric" not in capsys.readouterr().out


def test_show_scores_says_when_a_persona_has_no_rubric(store_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bonsai.personas import default_personas_dir

    folder = tmp_path / "personas"
    folder.mkdir()
    for f in default_personas_dir().glob("*.yaml"):
        text = f.read_text(encoding="utf-8")
        (folder / f.name).write_text(text.split("\nrubric:")[0] + "\n", encoding="utf-8")  # every rubric removed
    assert main(["transcripts", "show", "deb-aaa", "--scores", "--personas-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "rubric persona 'advocate' declares no rubric" in out and "rubric persona 'skeptic' declares no rubric" in out
