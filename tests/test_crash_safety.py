"""What a crash or a race leaves behind: history.json written under a lock, directories fsynced after a
rename, a SIGKILLed writer's stage removed at the next start, and a lowered gate logged as an override."""

from __future__ import annotations

import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_gate import _evaluation
from trainkit import cli, register_version, small_adapter

from bonsai import atomic
from bonsai.registry import persona_dir
from bonsai import registry

REPO = Path(__file__).resolve().parents[1]


def _flip(home: str, versions: list[str], rounds: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    recorded = 0
    for i in range(rounds):
        version = versions[i % 2]
        if registry.promote(Path(home), "advocate", version) != version:
            recorded += 1  # a promotion that moved the pointer appends one event
    out.put(recorded)


def test_concurrent_promotions_lose_no_history_event(isolated_home: Path, tmp_path: Path) -> None:
    versions = [register_version(isolated_home, "advocate", small_adapter(tmp_path / f"a{i}", seed=i)) for i in range(2)]
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_flip, args=(str(isolated_home), versions if i % 2 else versions[::-1], 30, out)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    recorded = sum(out.get(timeout=5) for _ in procs)
    events = registry.history(isolated_home, "advocate")
    assert len(events) == recorded > 0  # every pointer move has its event: none was overwritten by another writer


def test_atomic_writes_fsync_the_directory_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic.write_text(tmp_path / "a.json", "{}")
    assert synced == ["file", "dir"]
    synced.clear()
    with atomic.staged_dir(tmp_path / "folder") as stage:
        (stage / "x").write_text("x")
    assert synced[-1] == "dir" and (tmp_path / "folder" / "x").is_file()


def test_a_sigkilled_writer_leaves_a_stage_that_the_next_start_removes(isolated_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = isolated_home / "adapters" / "advocate" / "current"
    code = (
        "import sys, time; from pathlib import Path; from bonsai import atomic\n"
        "with atomic.staged_file(Path(sys.argv[1])) as tmp:\n"
        "    tmp.write_text('half'); print('staged', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "staged"
    stage = next(target.parent.glob(".current.*.tmp"))
    assert atomic.clean_orphans(isolated_home) == []  # its writer is alive: left alone
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert stage.exists() and not target.exists()  # what kill -9 leaves
    old = time.time() - 120
    os.utime(stage, (old, old))
    live = target.parent / f".history.json.{os.getpid()}.x1y2.tmp"  # this process's own, in flight
    live.write_text("mine")
    os.utime(live, (old, old))
    unknown_new, unknown_old = target.parent / ".notes.partial", isolated_home / "models" / ".m.partial"
    unknown_new.mkdir(parents=True)
    unknown_old.mkdir(parents=True)
    os.utime(unknown_old, (time.time() - 8 * 86400,) * 2)
    visible = target.parent / "keep.tmp"
    visible.write_text("not a stage")

    assert cli(["adapters", "list"], pytest.MonkeyPatch()) == 0  # any command tidies at start
    capsys.readouterr()
    assert not stage.exists() and not unknown_old.exists()
    assert live.exists() and unknown_new.exists() and visible.exists()


def test_a_lowered_threshold_is_logged_as_an_override(isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    v1 = register_version(isolated_home, "advocate", small_adapter(tmp_path / "a1", seed=1))
    _evaluation(isolated_home, "advocate", v1, wins=6, n=10, current=None, threshold=0.5)  # lower bound ~0.31: fails at 0.5
    assert cli(["adapters", "promote", "advocate", v1], monkeypatch) == 2
    assert "did not pass the gate" in capsys.readouterr().err
    assert cli(["adapters", "promote", "advocate", v1, "--threshold", "0.2"], monkeypatch) == 0
    assert "gate threshold overridden to 0.2; logged as an override" in capsys.readouterr().out
    event = registry.history(isolated_home, "advocate")[-1]
    assert event["reason"].startswith("threshold override: passed at 0.2") and "passed the gate" != event["reason"]
    assert event["evaluation"]["threshold_override"] == 0.2 and event["evaluation"]["threshold"] == 0.5
    assert (persona_dir(isolated_home, "advocate") / registry.LOCK).exists()
