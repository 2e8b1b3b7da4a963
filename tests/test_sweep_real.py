"""Sweeps on the real tiny model: the in-process vLLM engine with two adapters, a `bonsai sweep` killed with
SIGKILL and resumed (transformers engine: it starts in seconds), and two real `bonsai serve` servers, one
of which dies mid-sweep."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from servekit import Server, start_serve
from test_sweep import assert_each_finished_once, write_sweep

from bonsai.cli.main import main
from bonsai.debate.runner import DebateRunner
from bonsai.registry.identity import inspect_adapter
from bonsai.model.prepare import BaseModel
from bonsai.personas import PersonaBook
from bonsai.store.transcripts import TranscriptStore
from bonsai.sweep.config import load_sweep
from bonsai.sweep.executor import SweepExecutor
from bonsai.sweep.plan import plan_sweep
from bonsai.sweep.ratings.report import summarize
from bonsai.sweep.results import sweep_outcomes


def install_versions(home: Path, lora_adapters: list[Path]) -> dict[str, Path]:
    """The two test adapters as registry versions: advocate@va01 and skeptic@vb02."""
    out = {}
    for persona, version, src in (("advocate", "va01", lora_adapters[0]), ("skeptic", "vb02", lora_adapters[1])):
        dest = home / "adapters" / persona / version
        shutil.copytree(src, dest)
        out[f"{persona}@{version}"] = dest
    return out


@pytest.mark.engine
async def test_sweep_on_the_in_process_vllm_engine(vllm_engine, lora_adapters: list[Path], quick_short_judge: str, tmp_path: Path, isolated_home: Path) -> None:
    versions = install_versions(isolated_home, lora_adapters)
    path = write_sweep(tmp_path, name="real", motions=["Cities should ban cars", "都市部では自家用車を禁止すべきである"],
                       pairings=[{"a": "advocate@va01", "b": "skeptic@vb02"}], formats=[quick_short_judge], max_tokens=12, concurrency=4)
    book = PersonaBook.load()
    plan = plan_sweep(load_sweep(path), book, isolated_home)
    assert len(plan.jobs) == 4
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(vllm_engine, store, tmp_path / "ck.sqlite", book, isolated_home, "smollm2") as runner:
            ex = SweepExecutor(runner, store, plan, concurrency=4, retries=1, backoff_s=0.1)
            await ex.check()
            result = await ex.run()
        assert result.complete and result.tokens > 0
        # the swap really moved the adapters between the seats
        names = {label: inspect_adapter(p).name for label, p in versions.items()}
        for job in plan.jobs:
            by_speaker = {t.speaker: t.adapter_name for t in store.turns(job.debate_id) if t.role == "debater"}
            assert by_speaker == {"advocate": names[job.a], "skeptic": names[job.b]}
        outcomes = sweep_outcomes(store, "real")
    assert_each_finished_once(tmp_path / "t.sqlite", plan)
    report = summarize(outcomes, bootstrap=50)
    assert {c.label for c in report.competitors} == {"advocate@va01", "skeptic@vb02"}
    assert report.sides.n == 4


def _store_counts(store_file: Path, name: str) -> dict[str, int]:
    if not store_file.exists():
        return {}
    try:
        with TranscriptStore(store_file, create=False) as store:
            return store.sweep_status_counts(name)
    except Exception:  # the sweep may be migrating the file right now
        return {}


def test_sigkill_mid_sweep_then_resume_finishes_every_debate_once(base_model: BaseModel, quick_short_judge: str, tmp_path: Path, isolated_home: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = write_sweep(tmp_path, name="killed", motions=["Tea beats coffee", "Cats beat dogs", "Rain beats sun"], formats=[quick_short_judge],
                       max_tokens=10, concurrency=2)
    store_file = isolated_home / "transcripts.sqlite"
    args = ["sweep", str(path), "--engine", "hf", "--base", str(base_model.path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BONSAI_HOME": str(isolated_home)}
    with open(tmp_path / "err", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bonsai.cli.main", *args], env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            counts = _store_counts(store_file, "killed")
            if counts.get("finished", 0) >= 1 and counts.get("running", 0) >= 1:
                break
            assert proc.poll() is None, (tmp_path / "err").read_text()
            assert time.monotonic() < deadline, f"no progress: {counts}"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with TranscriptStore(store_file) as store:
        before = {d.debate_id: d.status for d in store.list_debates(sweep="killed")}
        finished_before = {k for k, v in before.items() if v == "finished"}
        turns_before = {k: [t.text for t in store.turns(k)] for k in finished_before}
    assert "running" in before.values()  # SIGKILL left debates in flight
    assert main([*args, "--resume", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["finished"] == 6 and summary["finished_before"] == len(finished_before)
    plan = plan_sweep(load_sweep(path), PersonaBook.load(), isolated_home)
    assert_each_finished_once(store_file, plan)
    with TranscriptStore(store_file) as store:
        # finished debates were not touched again
        assert {k: [t.text for t in store.turns(k)] for k in finished_before} == turns_before
        assert store.get_sweep("killed").status == "finished"
    # and the ratings come out of the store alone
    assert main(["ratings", "killed", "--bootstrap", "20", "--out", str(tmp_path / "report")]) == 0
    assert {p.name for p in (tmp_path / "report").iterdir()} >= {"results.csv", "ratings.json", "ratings.png", "winrate.png", "confidence.png"}


def _requests_served(endpoint: str) -> float:
    text = httpx.get(f"{endpoint}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:request_success_total"))


@pytest.mark.serve
def test_sweep_over_two_servers_survives_one_dying(served: Server, base_model: BaseModel, lora_adapters: list[Path], quick_short_judge: str, tmp_path: Path,
                                                   isolated_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The session's shared server and one of this test's own: the one that dies (a start of its own is
    what a test that kills a server has to pay; the other one need not be started again)."""
    install_versions(isolated_home, lora_adapters)
    own = start_serve(tmp_path / "s1", base_model.path, "--max-model-len", "2048", "--allow-any-adapter-path")
    try:
        own.wait_ready()
        endpoints = [a for url in (served.endpoint, own.endpoint) for a in ("--endpoint", url)]
        before = [_requests_served(url) for url in (served.endpoint, own.endpoint)]
        # 1. balanced: both servers take requests (by outstanding requests), adapters loaded at run time
        path = write_sweep(tmp_path, name="two", motions=["Tea beats coffee", "Cats beat dogs"],
                           pairings=[{"a": "advocate@va01", "b": "skeptic"}], formats=[quick_short_judge], max_tokens=10, concurrency=4)
        assert main(["sweep", str(path), *endpoints, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["finished"] == 4
        after = [_requests_served(url) for url in (served.endpoint, own.endpoint)]
        assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)

        # 2. one server dies mid-sweep: its debates move to the other, the sweep still finishes
        path = write_sweep(tmp_path, name="dying", motions=[f"Motion number {i}" for i in range(3)],
                           pairings=[{"a": "advocate@va01", "b": "skeptic"}], formats=[quick_short_judge], max_tokens=10, concurrency=4, backoff_s=0.5)
        store_file = isolated_home / "transcripts.sqlite"
        env = {**os.environ, "BONSAI_HOME": str(isolated_home)}
        with open(tmp_path / "err", "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "bonsai.cli.main", "sweep", str(path), *endpoints, "--json"],
                                    env=env, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while _store_counts(store_file, "dying").get("finished", 0) < 2:
                assert proc.poll() is None, (tmp_path / "err").read_text()
                assert time.monotonic() < deadline
                time.sleep(0.5)
            own.kill()
            out, _ = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert proc.returncode == 0, (tmp_path / "err").read_text()
        assert json.loads(out)["finished"] == 6
        plan = plan_sweep(load_sweep(path), PersonaBook.load(), isolated_home)
        assert_each_finished_once(store_file, plan)
    finally:
        own.stop()
