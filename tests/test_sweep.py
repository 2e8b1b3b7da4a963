"""Sweep files, plans and the executor's logic (concurrency, retries, budgets, exactly-once resume) on a
scripted engine. Real engines run sweeps in test_sweep_real.py (vLLM, transformers, `bonsai serve`)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fakes import FakeEngine

from bonsai.cli.main import main
from bonsai.debate.runner import DebateRunner
from bonsai.engine import GenerationRequest, StreamEvent
from bonsai.errors import AdapterError, ConfigError, EngineError, StoreError
from bonsai.personas import PersonaBook
from bonsai.store.transcripts import TranscriptStore
from bonsai.sweep.config import Budget, load_sweep
from bonsai.sweep.executor import SweepExecutor
from bonsai.sweep.plan import plan_sweep
from bonsai.sweep.results import sweep_outcomes

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def book() -> PersonaBook:
    return PersonaBook.load()


def write_sweep(folder: Path, name: str = "s1", **fields: object) -> Path:
    data: dict[str, object] = {
        "name": name,
        "motions": ["Tea beats coffee", "Cats beat dogs"],
        "pairings": [{"a": "advocate", "b": "skeptic"}],
        "formats": ["quick"],
        "max_tokens": 16,
        "concurrency": 4,
    }
    data.update(fields)
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")  # JSON is YAML
    return path


# --- the file and the plan ------------------------------------------------------------------------


def test_example_sweep_plans_the_whole_grid(book: PersonaBook, isolated_home: Path) -> None:
    sweep = load_sweep(EXAMPLES / "sweep-quick.yaml")
    plan = plan_sweep(sweep, book, isolated_home)
    # 3 unique motions (the inline one repeats the file's first) x 2 pairings x 2 sides
    assert len(sweep.motions) == 3 and len(plan.jobs) == 12
    assert len({j.debate_id for j in plan.jobs}) == 12
    assert any("都市部" in m for m in sweep.motions)
    # the swap moves the adapters, not the seats: the seats keep their personas (and sides)
    first, swapped = plan.jobs[0], plan.jobs[1]
    assert (first.a, first.b) == ("advocate@base", "skeptic@base") and (swapped.a, swapped.b) == ("skeptic@base", "advocate@base")
    assert first.spec.personas == swapped.spec.personas == ["advocate", "skeptic", "judge"]


def test_ids_are_stable_and_depend_on_the_grid(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    a = plan_sweep(load_sweep(write_sweep(tmp_path)), book, isolated_home)
    b = plan_sweep(load_sweep(write_sweep(tmp_path)), book, isolated_home)
    assert [j.debate_id for j in a.jobs] == [j.debate_id for j in b.jobs]
    c = plan_sweep(load_sweep(write_sweep(tmp_path, seeds=[1])), book, isolated_home)
    assert not {j.debate_id for j in a.jobs} & {j.debate_id for j in c.jobs}
    # grid hash ignores what may change between runs (concurrency, budgets), not what decides debates
    assert load_sweep(write_sweep(tmp_path, concurrency=64)).grid_hash() == load_sweep(write_sweep(tmp_path)).grid_hash()
    assert load_sweep(write_sweep(tmp_path, rounds=2)).grid_hash() != load_sweep(write_sweep(tmp_path)).grid_hash()


def test_versions_resolve_and_are_pinned(tmp_path: Path, book: PersonaBook, isolated_home: Path, lora_adapters: list[Path]) -> None:

    version_dir = isolated_home / "adapters" / "advocate" / "v1abc"
    shutil.copytree(lora_adapters[0], version_dir)
    (isolated_home / "adapters" / "advocate" / "current").write_text("v1abc")
    sweep = load_sweep(write_sweep(tmp_path, pairings=[{"a": "advocate", "b": "advocate@base"}, {"a": "advocate@v1", "b": "skeptic"}]))
    plan = plan_sweep(sweep, book, isolated_home)
    assert set(plan.competitors) == {"advocate@v1abc", "advocate@base", "skeptic@base"}
    # two versions of one persona: the opposing seat goes to the other team's default debater
    job = next(j for j in plan.jobs if j.a == "advocate@v1abc" and j.b == "advocate@base")
    assert job.spec.personas[:2] == ["advocate", "skeptic"]
    assert job.spec.adapters == {"advocate": str(version_dir.resolve()), "skeptic": None}
    # after a promotion elsewhere, the stored resolution keeps the ids
    stored = plan.resolved_json()
    (isolated_home / "adapters" / "advocate" / "current").write_text("")
    again = plan_sweep(sweep, book, isolated_home, resolved=stored)
    assert [j.debate_id for j in again.jobs] == [j.debate_id for j in plan.jobs]
    assert [j.debate_id for j in plan_sweep(sweep, book, isolated_home).jobs] != [j.debate_id for j in plan.jobs]


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"pairings": [{"a": "nobody", "b": "skeptic"}]}, ConfigError, r"pairings\[0\]\.a: unknown persona 'nobody'"),
        ({"pairings": [{"a": "advocate@nope", "b": "skeptic"}]}, AdapterError, r"pairings\[0\]\.a: adapter advocate@nope does not exist"),
        ({"pairings": [{"a": "judge", "b": "skeptic"}]}, ConfigError, r"'judge' is a judge, not a debater"),
        ({"pairings": [{"a": "advocate@", "b": "skeptic"}]}, ConfigError, r"not 'persona' or 'persona@version'"),
        ({"judges": ["advocate"]}, ConfigError, r"judges\[0\]: 'advocate' is a debater, not a judge"),
        ({"formats": ["marathon"]}, ConfigError, r"formats\[0\]"),
        ({"seeds": [1, 1]}, ConfigError, r"seeds lists a value twice"),
        ({"colour": "red"}, ConfigError, r"colour: unknown key"),
        ({"motions": []}, ConfigError, r"motions"),
        ({"name": "has space"}, ConfigError, r"name"),
    ],
)
def test_bad_sweep_files(tmp_path: Path, book: PersonaBook, isolated_home: Path, fields: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        plan_sweep(load_sweep(write_sweep(tmp_path, **fields)), book, isolated_home)


def test_motions_files(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text('{"motion": "本院认为应当禁止私家车"}\n\n{"motion": "Tea"}\n', encoding="utf-8")
    (tmp_path / "m.csv").write_text("id,motion\n1,大学の授業料は無償化すべきである\n2,\"Tea, or coffee\"\n", encoding="utf-8")
    (tmp_path / "m.txt").write_text("\ufeff# comment\nOne\n\nTwo\n", encoding="utf-8")
    sweep = load_sweep(write_sweep(tmp_path, motions=[{"file": "m.jsonl"}, {"file": "m.csv"}, {"file": "m.txt", "limit": 1}]))
    assert sweep.motions == ["本院认为应当禁止私家车", "Tea", "大学の授業料は無償化すべきである", "Tea, or coffee", "One"]


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.txt", b"# only a comment\n\n", r"holds no motion"),
        ("sjis.txt", "Tea\n".encode() + "都市部".encode("shift_jis") + b"\n", r"not UTF-8 text: byte 0x93 at line 2 \(offset 4\)"),
        ("bad.jsonl", b'{"motion": "x"}\n{oops\n', r"line 2: not JSON"),
        ("nocol.csv", b"a,b\n1,2\n", r"no 'motion' column \(columns: a, b\)"),
        ("m.docx", b"x", r"does not read"),
        ("missing.txt", None, r"does not exist"),
    ],
)
def test_bad_motions_files(tmp_path: Path, name: str, content: bytes | None, match: str) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(ConfigError, match=match):
        load_sweep(write_sweep(tmp_path, motions=[{"file": name}]))


def test_dry_run_counts_and_estimates(tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_home: Path) -> None:
    path = write_sweep(tmp_path, seeds=[0, 1], candidates=[1, 2])
    assert main(["sweep", str(path), "--dry-run", "--json", "--tokens-per-s", "100"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["debates"] == 2 * 1 * 2 * 2 * 2
    assert out["axes"] == {"motions": 2, "pairings": 1, "sides": 2, "seeds": 2, "judges": 1, "formats": 1, "candidates": 2}
    assert out["max_tokens"] > 0 and out["estimated_seconds"] == pytest.approx(out["max_tokens"] / 100, rel=0.01)
    assert not (isolated_home / "transcripts.sqlite").exists()  # a dry run writes nothing
    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert "16 debates" in capsys.readouterr().out


# --- the executor on a scripted engine --------------------------------------------------------------


class CountingEngine(FakeEngine):
    """Tracks requests in flight; can raise an engine error on chosen calls."""

    def __init__(self, *, fail_calls: set[int] | None = None, delay: float = 0.0) -> None:
        super().__init__(p_a=0.7)
        self.in_flight = 0
        self.peak = 0
        self.debates: dict[str, int] = {}  # debate id -> requests in flight
        self.peak_debates = 0
        self.fail_calls = fail_calls or set()
        self.delay = delay
        self.n = 0

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        self.n += 1
        n = self.n
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        debate = request.request_id[:15]  # "s1-" + 12 hex digits
        self.debates[debate] = self.debates.get(debate, 0) + 1
        self.peak_debates = max(self.peak_debates, len(self.debates))
        try:
            await asyncio.sleep(self.delay)
            if n in self.fail_calls:
                raise EngineError(f"injected engine error on call {n}")
            async for ev in super().stream(request):
                yield ev
        finally:
            self.in_flight -= 1
            self.debates[debate] -= 1
            if not self.debates[debate]:
                del self.debates[debate]


async def run_sweep(tmp_path: Path, book: PersonaBook, home: Path, engine: FakeEngine, path: Path, **kw: object):
    sweep = load_sweep(path)
    plan = plan_sweep(sweep, book, home)
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        # queued checkpoints, as `bonsai sweep` runs them
        async with DebateRunner(engine, store, tmp_path / "ck.sqlite", book, home, "fake", queue_checkpoints=True) as runner:
            cfg = sweep.config
            ex = SweepExecutor(runner, store, plan, concurrency=kw.pop("concurrency", cfg.concurrency), retries=kw.pop("retries", cfg.retries),
                               backoff_s=0.0, budget=kw.pop("budget", cfg.budget), **kw)
            result = await ex.run()
    return plan, result


def assert_each_finished_once(store_path: Path, plan) -> None:
    with TranscriptStore(store_path) as store:
        debates = store.list_debates(sweep=plan.name)
        assert sorted(d.debate_id for d in debates) == sorted(j.debate_id for j in plan.jobs)
        for d in debates:
            assert d.status == "finished", d
            turns = store.turns(d.debate_id)
            assert [t.turn_index for t in turns] == list(range(len(turns))) and turns
            assert len(store.verdicts(d.debate_id)) == 1


async def test_all_debates_run_concurrently_and_land_once(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    engine = CountingEngine(delay=0.01)
    path = write_sweep(tmp_path, motions=["M1", "M2", "M3", "M4"], concurrency=3)
    seen = []
    plan, result = await run_sweep(tmp_path, book, isolated_home, engine, path, on_debate=lambda job, s: seen.append(job.debate_id))
    assert result.complete and result.finished == 8 and not result.failures and result.tokens > 0
    assert engine.peak_debates == 3 and engine.peak > 3  # bounded by the concurrency; judges ask several things at once
    assert sorted(seen) == sorted(j.debate_id for j in plan.jobs)
    assert_each_finished_once(tmp_path / "t.sqlite", plan)
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        outcomes = sweep_outcomes(store, plan.name)
        assert len(outcomes) == 8 and {(o.a, o.b) for o in outcomes} == {("advocate@base", "skeptic@base"), ("skeptic@base", "advocate@base")}
        assert all(o.winner in ("A", "B", "tie") and o.tokens > 0 for o in outcomes)
    # a second run finds everything finished and runs nothing
    again, result2 = await run_sweep(tmp_path, book, isolated_home, CountingEngine(), path)
    assert result2.finished == result2.skipped == 8 and result2.tokens == 0


async def test_engine_errors_are_retried_from_the_checkpoint(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    engine = CountingEngine(fail_calls={3, 7})
    path = write_sweep(tmp_path, motions=["M1"], concurrency=1, retries=2)
    sleeps: list[float] = []

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)

    plan, result = await run_sweep(tmp_path, book, isolated_home, engine, path, sleep=fake_sleep)
    assert result.complete and not result.failures
    assert len(sleeps) == 2
    assert_each_finished_once(tmp_path / "t.sqlite", plan)


async def test_a_debate_that_keeps_failing_is_marked_failed_and_the_rest_finish(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    engine = CountingEngine(fail_calls=set(range(1, 4)))  # the first debate's first turn fails 3 times
    path = write_sweep(tmp_path, motions=["M1"], concurrency=1, retries=2, backoff_s=0)
    sleeps: list[float] = []

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)

    plan, result = await run_sweep(tmp_path, book, isolated_home, engine, path, sleep=fake_sleep)
    assert not result.complete and result.finished == 1 and len(result.failures) == 1
    assert "after 3 attempts" in result.failures[0].message and sleeps == [0.0, 0.0]
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        assert store.get_debate(result.failures[0].debate_id).status == "failed"
    # --resume retries the failed one and finishes it
    plan2, result2 = await run_sweep(tmp_path, book, isolated_home, CountingEngine(), path)
    assert result2.complete and result2.skipped == 1
    assert_each_finished_once(tmp_path / "t.sqlite", plan)


async def test_token_budget_stops_then_resume_finishes_exactly_once(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    # 20: reached while turns are spoken (a debate's judge readings alone generate more, and count too)
    path = write_sweep(tmp_path, motions=["M1", "M2", "M3"], concurrency=2)
    plan, result = await run_sweep(tmp_path, book, isolated_home, CountingEngine(delay=0.01), path, budget=Budget(tokens=20))
    assert result.stopped and "token budget of 20" in result.stopped and not result.complete
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        statuses = {d.status for d in store.list_debates(sweep=plan.name)}
        assert "interrupted" in statuses  # the debates in flight are kept for --resume
        assert store.sweep_tokens(plan.name) >= 20
    # the budget counts the whole sweep: a resume under the same cap stops at once
    _, blocked = await run_sweep(tmp_path, book, isolated_home, CountingEngine(), path, budget=Budget(tokens=20))
    assert blocked.stopped and blocked.tokens == 0
    _, done = await run_sweep(tmp_path, book, isolated_home, CountingEngine(), path, budget=Budget())
    assert done.complete
    assert_each_finished_once(tmp_path / "t.sqlite", plan)


async def test_wall_budget_interrupts_and_resume_finishes(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    path = write_sweep(tmp_path, motions=["M1", "M2"], concurrency=4)
    plan, result = await run_sweep(tmp_path, book, isolated_home, CountingEngine(delay=0.2), path, budget=Budget(wall_s=0.5))
    assert result.stopped and "wall-time budget" in result.stopped and not result.complete
    _, done = await run_sweep(tmp_path, book, isolated_home, CountingEngine(), path, budget=Budget())
    assert done.complete
    assert_each_finished_once(tmp_path / "t.sqlite", plan)


def _counted_adapter(isolated_home: Path, lora_adapters: list[Path], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[Path]]:
    """advocate@v1abc installed, and a list that records every hashing of an adapter folder."""
    import bonsai.registry.identity as adapters_mod

    version_dir = isolated_home / "adapters" / "advocate" / "v1abc"
    shutil.copytree(lora_adapters[0], version_dir)
    calls: list[Path] = []
    real = adapters_mod.inspect_adapter
    monkeypatch.setattr(adapters_mod, "inspect_adapter", lambda path: calls.append(Path(path)) or real(path))
    return version_dir, calls


async def test_a_sweep_hashes_each_adapter_once(tmp_path: Path, book: PersonaBook, isolated_home: Path, lora_adapters: list[Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashing an adapter at every debate start (an 8B adapter is ~84 MB) held the event loop and capped GPU sweeps."""
    version_dir, calls = _counted_adapter(isolated_home, lora_adapters, monkeypatch)
    path = write_sweep(tmp_path, motions=["M1", "M2", "M3"], pairings=[{"a": "advocate@v1abc", "b": "skeptic"}], concurrency=6)
    plan, result = await run_sweep(tmp_path, book, isolated_home, CountingEngine(delay=0.01), path)
    assert result.complete and result.finished == 6
    assert [p.resolve() for p in calls] == [version_dir.resolve()]


async def test_checks_and_debates_share_one_inspector(tmp_path: Path, book: PersonaBook, isolated_home: Path, lora_adapters: list[Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`bonsai sweep` checks every competitor's adapter before the runner starts: the runner reuses that hash."""
    from bonsai.registry.identity import AdapterInspector

    version_dir, calls = _counted_adapter(isolated_home, lora_adapters, monkeypatch)
    plan = plan_sweep(load_sweep(write_sweep(tmp_path, motions=["M1", "M2"], pairings=[{"a": "advocate@v1abc", "b": "skeptic"}])), book, isolated_home)
    inspector = AdapterInspector()
    checked = [inspector.inspect(c.adapter) for c in plan.competitors.values() if c.adapter is not None]
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(CountingEngine(), store, tmp_path / "ck.sqlite", book, isolated_home, "fake", inspector) as runner:
            result = await SweepExecutor(runner, store, plan, concurrency=4, retries=0, backoff_s=0.0).run()
    assert result.complete and len(checked) == 1
    assert [p.resolve() for p in calls] == [version_dir.resolve()]


def test_max_num_seqs_must_be_positive(tmp_path: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", str(write_sweep(tmp_path)), "--max-num-seqs", "0"]) == 2
    assert "--max-num-seqs must be at least 1" in capsys.readouterr().err
    assert not (isolated_home / "transcripts.sqlite").exists()


# --- the command line -----------------------------------------------------------------------------------


def test_duplicate_name_changed_grid_and_missing_sweep(tmp_path: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bonsai.store.records import SweepRecord

    path = write_sweep(tmp_path)
    sweep = load_sweep(path)
    with TranscriptStore(isolated_home / "transcripts.sqlite") as store:
        store.create_sweep(SweepRecord("s1", sweep.grid_hash(), {}, 4, "incomplete", 0.0, 0.0))
        with pytest.raises(StoreError, match="already exists"):
            store.create_sweep(SweepRecord("s1", "x", {}, 4, "running", 0.0, 0.0))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "a sweep named 's1' already exists" in err and "--resume" in err
    assert main(["sweep", str(write_sweep(tmp_path, motions=["Other"])), "--resume"]) == 2
    assert "no longer matches" in capsys.readouterr().err
    assert main(["sweep", str(write_sweep(tmp_path, name="s2")), "--resume"]) == 2
    assert "no sweep named 's2'" in capsys.readouterr().err


def test_store_from_a_newer_bonsai_is_refused(tmp_path: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    from bonsai.store import migrations

    store = isolated_home / "transcripts.sqlite"
    TranscriptStore(store).close()
    with sqlite3.connect(store) as db:
        db.execute("INSERT INTO schema_version VALUES (?, 'm_future', 0)", (len(migrations.MIGRATIONS) + 1,))
    assert main(["sweep", str(write_sweep(tmp_path)), "--dry-run"]) == 2
    assert "written by a newer bonsai" in capsys.readouterr().err
    assert main(["ratings", "s1"]) == 2


def test_ratings_of_an_unknown_sweep(isolated_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ratings", "nope"]) == 2
    assert "no transcript store" in capsys.readouterr().err
    TranscriptStore(isolated_home / "transcripts.sqlite").close()
    assert main(["ratings", "nope"]) == 2
    assert "no sweep named 'nope'" in capsys.readouterr().err


async def test_tui_monitor_counts_the_planned_total_and_competitors(tmp_path: Path, book: PersonaBook, isolated_home: Path) -> None:
    from bonsai.store.records import SweepRecord
    from tui.sweep_stats import summarize

    path = write_sweep(tmp_path, motions=["M1", "M2", "M3"], concurrency=1)
    plan, result = await run_sweep(tmp_path, book, isolated_home, CountingEngine(), path, budget=Budget(tokens=40))
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        store.create_sweep(SweepRecord("s1", "h", {}, len(plan.jobs), "incomplete", 0.0, 0.0))
        debates = store.list_debates()
        s = summarize("s1", debates, planned=store.get_sweep("s1").total)
    assert s.total == 6 and s.finished == result.finished - result.skipped < 6
    assert s.personas and {r.persona for r in s.personas} <= {"advocate@base", "skeptic@base"}
