"""The TUI on the real stack: a whole live debate on the shared vLLM engine with two real LoRA adapters
(Pilot), and `bonsai tui` started in a real terminal (tmux) on the transformers+PEFT engine, driven
with keys and read back from the captured pane."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bonsai.store.transcripts import TranscriptStore
from tui.app import BonsaiApp
from tui.options import FormDefaults, TuiOptions
from tui.engines import ReadyEngine
from tui.screens.start import StartScreen
from tui.textshot import screen_text

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
MOTION = "Homework should be abolished"
#: guards against hanging (the machine may be shared), not timing assertions
DEADLINE_S = 600.0


def install_adapter(home: Path, persona: str, version: str, source: Path) -> None:
    """Put a LoRA in the adapter registry as ``persona``'s current version, as training would."""
    target = home / "adapters" / persona / version
    shutil.copytree(source, target)
    (home / "adapters" / persona / "current").write_text(version, encoding="utf-8")


@pytest.mark.engine
async def test_live_debate_on_vllm_with_adapters(vllm_engine, lora_adapters, base_model, isolated_home: Path) -> None:  # type: ignore[no-untyped-def]
    install_adapter(isolated_home, "advocate", "v1", lora_adapters[0])
    install_adapter(isolated_home, "skeptic", "v2", lora_adapters[1])
    form = FormDefaults(motion=MOTION, format="quick", rounds=1, max_tokens=16, seed=7)
    app = BonsaiApp(TuiOptions(home=isolated_home, form=form), engines=ReadyEngine(vllm_engine, base_model.name))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("n")
        await pilot.pause()
        assert isinstance(app.screen, StartScreen)
        await pilot.press("ctrl+s")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_S
        runner = app.runner
        assert runner is not None
        streamed_partially = False
        while runner.state not in ("finished", "failed"):
            assert loop.time() < deadline, "the debate did not finish"
            view = app.live.turns.get(0)
            if view is not None and view.done is None and view.answer_text:
                streamed_partially = True  # tokens on screen before the turn ended
            await pilot.pause(0.05)
        await pilot.pause(0.2)
        assert runner.state == "finished"
        assert streamed_partially
        did = runner.debate_id
        text = screen_text(app)
        assert app.store is not None
        record = app.store.get_debate(did)  # type: ignore[arg-type]
        turns = app.store.turns(did)  # type: ignore[arg-type]
    assert record.status == "finished" and record.winner in ("A", "B", "tie")
    assert [t.speaker for t in turns] == ["advocate", "skeptic", "skeptic", "advocate"]
    assert {t.adapter_name for t in turns if t.speaker == "advocate"} != {t.adapter_name for t in turns if t.speaker == "skeptic"}
    assert all(t.adapter_name for t in turns)
    # what is on screen is what the store holds
    assert "Team A (for) · advocate" in text and "Team B (against) · skeptic" in text
    assert "opening · advocate · v1" in text or "rebuttal · advocate · v1" in text
    assert "opening · skeptic · v2" in text or "rebuttal · skeptic · v2" in text
    for t in turns:
        shown = app.live.turns[t.turn_index]
        assert shown.answer_text == t.answer and shown.started.speaker == t.speaker
    expected = "Tie: no side won" if record.winner == "tie" else f"Winner: team {record.winner} ({'advocate' if record.winner == 'A' else 'skeptic'})"
    assert expected in text
    assert re.search(r"\d+\.\d tok/s", text)


def _tmux(socket: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", socket, *args], check=True, capture_output=True, text=True).stdout


def _wait_for(socket: str, pattern: str, deadline: float) -> str:
    while True:
        pane = _tmux(socket, "capture-pane", "-p", "-t", "tui")
        if re.search(pattern, pane):
            return pane
        assert time.monotonic() < deadline, f"{pattern!r} never showed up; the pane reads:\n{pane}"
        time.sleep(0.5)


def _bonsai_tui() -> list[str]:
    return [sys.executable, "-m", "bonsai", "tui"]


def test_bonsai_tui_in_a_real_terminal(base_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Start `bonsai tui` in tmux, start a short debate with keys, read both columns and the verdict."""
    assert shutil.which("tmux"), "this test needs tmux (apt-get install -y tmux)"
    home, store = tmp_path / "home", tmp_path / "t.sqlite"
    (home / "models").mkdir(parents=True)
    (home / "models" / base_model.path.name).symlink_to(base_model.path)
    command = [*_bonsai_tui(), "--engine", "hf", "--store", str(store), "--format", "quick", "--rounds", "1", "--max-tokens", "16", "--seed", "3"]
    # one torch thread: with the cores shared by parallel test processes, two OpenMP threads spin
    # against each other and decoding gets an order of magnitude slower
    env = {"BONSAI_HOME": str(home), "OMP_NUM_THREADS": "1", "TERM": "xterm-256color", "PYTHONPATH": str(REPO)}
    shell = f"cd {shlex.quote(str(REPO))} && env {' '.join(f'{k}={shlex.quote(v)}' for k, v in env.items())} {shlex.join(command)}; echo EXIT=$?; sleep 600"
    socket = f"bonsai-test-{os.getpid()}"
    _tmux(socket, "new-session", "-d", "-s", "tui", "-x", "120", "-y", "40", shell)
    try:
        deadline = time.monotonic() + DEADLINE_S
        _wait_for(socket, r"No debate yet", deadline)
        _tmux(socket, "send-keys", "-t", "tui", "n")
        _wait_for(socket, r"New debate", deadline)
        _tmux(socket, "send-keys", "-t", "tui", "-l", MOTION)
        _tmux(socket, "send-keys", "-t", "tui", "Enter")
        _wait_for(socket, rf"Motion: {MOTION}", deadline)
        pane = _wait_for(socket, r"✓ finished", deadline)
        assert "Team A (for) · advocate" in pane and "Team B (against) · skeptic" in pane
        assert re.search(r"✓ (opening|rebuttal) · advocate · base model", pane), pane
        assert re.search(r"✓ (opening|rebuttal) · skeptic · base model", pane), pane
        shown = re.search(r"Winner: team ([AB]) \((advocate|skeptic)\)|(Tie): no side won", pane)
        assert shown, pane
        _tmux(socket, "send-keys", "-t", "tui", "q")
        _wait_for(socket, r"EXIT=0", deadline)
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
    with TranscriptStore(store, create=False) as s:
        [record] = s.list_debates()
        assert record.motion == MOTION and record.status == "finished"
        assert record.winner == (shown.group(1) or "tie")
        turns = s.turns(record.debate_id)
        assert [t.speaker for t in turns] == ["advocate", "skeptic", "skeptic", "advocate"]
        # each column ends with its team's last stored answer
        for t in turns[-2:]:
            words = re.findall(r"[A-Za-z]{4,}", t.answer)
            assert not words or words[0] in pane, (t.answer, pane)
