"""The promotion gate and hot-loading: Wilson intervals, the promote decision, a real mini-sweep on the
in-process engine, running debates keeping their version while new ones take the promoted one, and
promotion registering the version on a running server under its own name."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fakes import FailingEngine
from trainkit import cli, register_version, small_adapter, write_dataset

from bonsai.registry import current_version, persona_dir
from bonsai.registry.identity import inspect_adapter
from bonsai.errors import AdapterError, ConfigError, EndpointUnreachable
from bonsai.model.prepare import BaseModel
from bonsai.personas import PersonaBook
from bonsai import registry
from bonsai.stats import wilson_interval
from training.gate import GateConfig, check_gate, evaluate_candidate, held_out_motions
from training.hotload import promote_version, rollback_version


@pytest.fixture(autouse=True)
def _keep_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("VLLM_LOGGING_LEVEL", "TRANSFORMERS_VERBOSITY"):
        monkeypatch.setenv(k, os.environ.get(k, "WARNING"))


# --- the statistics and the decision --------------------------------------------------------------


@pytest.mark.parametrize(
    ("wins", "n", "low", "high"),
    [(0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (5, 10, 0.2366, 0.7634), (7, 8, 0.5291, 0.9776), (40, 50, 0.6696, 0.8876)],
)
def test_wilson_interval(wins: int, n: int, low: float, high: float) -> None:
    assert wilson_interval(wins, n) == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_without_data_is_uninformative() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_a_tie_is_half_a_win() -> None:
    from training.gate import Match, match_score, rate

    assert (match_score("A", "A"), match_score("B", "A"), match_score("tie", "A"), match_score("tie", "B"), match_score(None, "A")) == (1.0, 0.0, 0.5, 0.5, 0.0)

    def m(winner: str | None, team: str = "A") -> Match:
        return Match("m", 0, "fixed", "advocate", team, "d", winner, winner == team, None, match_score(winner, team))

    # 2 wins, 4 ties, 2 losses: 4 of 8
    r = rate([m("A"), m("B", "B"), *(m("tie") for _ in range(4)), m("B"), m("A", "B")])
    assert (r["wins"], r["ties"], r["n"], r["win_rate"]) == (4.0, 4, 8, 0.5)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(wilson_interval(4, 8))
    # a judge that cannot tell candidate and opponent apart (all ties) never passes a 0.5 threshold
    all_ties = rate([m("tie") for _ in range(40)])
    assert all_ties["win_rate"] == 0.5 and all_ties["ci_low"] < 0.5 < all_ties["ci_high"]


def _evaluation(home: Path, persona: str, version: str, *, wins: int, n: int, current: str | None, threshold: float = 0.5) -> None:
    low, high = wilson_interval(wins, n)
    registry.save_evaluation(home, persona, version, {
        "persona": persona, "candidate": version, "current": current, "wins": wins, "n": n, "win_rate": wins / n,
        "ci_low": low, "ci_high": high, "threshold": threshold, "passed": low > threshold,
    })


def test_promotion_needs_the_lower_bound_above_the_threshold(isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    v1, v2 = (register_version(isolated_home, "advocate", small_adapter(tmp_path / f"a{i}", seed=i)) for i in range(2))
    with pytest.raises(AdapterError, match="has not been evaluated"):
        check_gate(isolated_home, "advocate", v1)
    _evaluation(isolated_home, "advocate", v1, wins=6, n=8, current=None)  # 0.75, but CI 0.41-0.93
    with pytest.raises(AdapterError, match=r"won 6 of 8 debates \(0.75, 95% CI 0.41-0.93\); the lower bound must be above 0.50"):
        check_gate(isolated_home, "advocate", v1)
    assert cli(["adapters", "promote", "advocate", v1], monkeypatch) == 2
    assert "did not pass the gate" in capsys.readouterr().err and current_version(isolated_home, "advocate") is None
    assert check_gate(isolated_home, "advocate", v1, threshold=0.4)["wins"] == 6  # a lower configured threshold
    assert check_gate(isolated_home, "advocate", v1, force=True) is not None
    _evaluation(isolated_home, "advocate", v1, wins=15, n=16, current=None)
    assert cli(["adapters", "promote", "advocate", v1], monkeypatch) == 0
    assert current_version(isolated_home, "advocate") == v1
    # an evaluation against a version that is no longer current is stale
    _evaluation(isolated_home, "advocate", v2, wins=16, n=16, current=None)
    with pytest.raises(AdapterError, match=f"evaluated against the bare base, but the current version is now {v1}"):
        check_gate(isolated_home, "advocate", v2)
    history = registry.history(isolated_home, "advocate")
    assert history[-1]["evaluation"]["wins"] == 15 and history[-1]["reason"] == "passed the gate"


def test_held_out_motions_come_from_the_test_split_or_a_file(isolated_home: Path, base_model: BaseModel, tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "ds", base=base_model, test_motions=("Zoos should close", "Exams should go"))
    v1 = register_version(isolated_home, "advocate", small_adapter(tmp_path / "a", seed=1), dataset=str(dataset))
    assert held_out_motions(isolated_home, "advocate", v1) == ["Zoos should close", "Exams should go"]
    motions = tmp_path / "motions.txt"
    motions.write_text("# held out\nThis house would ban fireworks\n\nThis house would tax sugar\n")
    assert held_out_motions(isolated_home, "advocate", v1, motions_file=motions) == ["This house would ban fireworks", "This house would tax sugar"]
    empty = write_dataset(tmp_path / "ds2", base=base_model, test_motions=())
    with pytest.raises(ConfigError, match="holds no test motions"):
        held_out_motions(isolated_home, "advocate", v1, dataset=empty)
    (tmp_path / "blank.txt").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no motion"):
        held_out_motions(isolated_home, "advocate", v1, motions_file=tmp_path / "blank.txt")


def test_evaluate_refuses_bad_input_before_any_engine(isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    v1 = register_version(isolated_home, "advocate", small_adapter(tmp_path / "a", seed=1))
    assert cli(["adapters", "evaluate", "advocate", "--candidate", v1], monkeypatch) == 2
    assert "records no dataset" in capsys.readouterr().err
    assert cli(["adapters", "evaluate", "advocate", "--candidate", "zzz", "--motions", "x"], monkeypatch) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli(["adapters", "evaluate", "advocate", "--candidate", v1, "--motions", str(tmp_path / "missing.txt")], monkeypatch) == 2
    assert "motions file" in capsys.readouterr().err


# --- hot-loading on a server ----------------------------------------------------------------------


class _Server(BaseHTTPRequestHandler):
    """Just enough of vLLM's OpenAI server for adapter loading: /v1/models and /v1/load_lora_adapter."""

    loads: list[dict[str, Any]] = []
    refuse = False

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._reply(200, {"data": [{"id": "smollm2-135m-instruct", "max_model_len": 4096}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if type(self).refuse:
            self._reply(500, {"error": {"message": "out of LoRA slots"}})
            return
        type(self).loads.append(body)
        self._reply(200, {"ok": True})


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Server]]]:
    handler = type("Handler", (_Server,), {"loads": [], "refuse": False})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_promotion_loads_the_version_on_the_server_first(isolated_home: Path, tmp_path: Path, server: tuple[str, type[_Server]]) -> None:
    url, handler = server
    v1, v2 = (register_version(isolated_home, "advocate", small_adapter(tmp_path / f"a{i}", seed=i)) for i in range(2))
    p1 = await promote_version(isolated_home, "advocate", v1, force=True, endpoints=[url])
    folder1 = persona_dir(isolated_home, "advocate") / v1
    assert handler.loads == [{"lora_name": inspect_adapter(folder1).name, "lora_path": str(folder1.resolve())}]
    assert p1.adapter_name == inspect_adapter(folder1).name and current_version(isolated_home, "advocate") == v1
    # a server that cannot take the new version: the pointer does not move
    handler.refuse = True
    with pytest.raises(AdapterError, match="out of LoRA slots"):
        await promote_version(isolated_home, "advocate", v2, force=True, endpoints=[url])
    assert current_version(isolated_home, "advocate") == v1
    handler.refuse = False
    p2 = await promote_version(isolated_home, "advocate", v2, force=True, endpoints=[url])
    # every version under its own content-hash name: never new weights under an old name
    assert [x["lora_name"] for x in handler.loads] == [p1.adapter_name, p2.adapter_name] and p1.adapter_name != p2.adapter_name
    assert await rollback_version(isolated_home, "advocate", endpoints=[url]) == (v2, v1)
    with pytest.raises(EndpointUnreachable):
        await promote_version(isolated_home, "advocate", v2, force=True, endpoints=["http://127.0.0.1:9"])
    assert current_version(isolated_home, "advocate") == v1


async def test_promotion_and_rollback_read_the_weights_once(isolated_home: Path, tmp_path: Path, server: tuple[str, type[_Server]],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Promotion checked the files, hashed the adapter for its name, again to load it on the servers and
    checked the files again to move the pointer: four reads of the weights (~84 MB for an 8B adapter).
    The version is now opened once; its checked manifest gives the name."""
    from bonsai.registry import hashing

    url, handler = server
    v1, v2 = (register_version(isolated_home, "advocate", small_adapter(tmp_path / f"a{i}", seed=i)) for i in range(2))
    reads: list[Path] = []
    feed = hashing.feed
    monkeypatch.setattr(hashing, "feed", lambda h, path: (reads.append(Path(path)), feed(h, path))[1])

    def weights_reads() -> int:
        n = sum(p.name == "adapter_model.safetensors" for p in reads)
        reads.clear()
        return n

    for version in (v1, v2):
        promoted = await promote_version(isolated_home, "advocate", version, force=True, endpoints=[url])
        assert weights_reads() == 1
        # the name a server got is the content hash of the files, as hashing them anew gives it
        assert promoted.adapter_name == handler.loads[-1]["lora_name"] == inspect_adapter(persona_dir(isolated_home, "advocate") / version).name
        weights_reads()
    assert await rollback_version(isolated_home, "advocate", endpoints=[url]) == (v2, v1)
    assert weights_reads() == 1 and current_version(isolated_home, "advocate") == v1
    # a manifest whose name is not its hash's is not believed: the weights are hashed instead
    manifest_path = persona_dir(isolated_home, "advocate") / v2 / "bonsai_adapter.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "adapter_name": "lora-0000000000000000"}))
    promoted = await promote_version(isolated_home, "advocate", v2, force=True)
    assert promoted.adapter_name == manifest["adapter_name"] and weights_reads() == 2


# --- on the real engine ---------------------------------------------------------------------------


def _lora(base: BaseModel, out: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base.path), dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    peft_model.save_pretrained(str(out))
    return out


@pytest.mark.engine
@pytest.mark.slow
async def test_mini_sweep_on_the_engine(vllm_engine: Any, base_model: BaseModel, quick_short_judge: str, isolated_home: Path, tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "ds", base=base_model, test_motions=("This house would close all zoos",))
    version = register_version(isolated_home, "advocate", _lora(base_model, tmp_path / "lora", seed=7), dataset=str(dataset), base_hash=base_model.content_hash)
    store = tmp_path / "eval.sqlite"
    seen: list[Any] = []
    result = await evaluate_candidate(
        vllm_engine, home=isolated_home, book=PersonaBook.load(), base_model=base_model.name, persona="advocate",
        candidate=version, motions=held_out_motions(isolated_home, "advocate", version), store_path=store,
        checkpoints=tmp_path / "ck.sqlite", config=GateConfig(max_tokens=12, format=quick_short_judge), on_match=seen.append,
    )
    # no current version yet: "current" is the bare base, the same as the fixed opponent, so it is played once
    assert result["opponents"] == {"current": "base"} and result["n"] == 2 == len(seen)
    assert {m["candidate_seat"] for m in result["matches"]} == {"advocate", "skeptic"}
    assert {m["candidate_team"] for m in result["matches"]} == {"A", "B"}
    for m in result["matches"]:
        assert m["won"] == (m["winner"] == m["candidate_team"]) and 0 <= m["prob_candidate"] <= 1
    assert result["wins"] == sum(m["score"] for m in result["matches"])  # a tie counts half
    assert (result["ci_low"], result["ci_high"]) == pytest.approx(wilson_interval(result["wins"], 2))
    assert result["passed"] is False  # two debates can never clear 0.5 with 95% confidence
    assert registry.load_evaluation(isolated_home, "advocate", version)["n"] == 2
    # the debates went to the evaluation store with the candidate pinned on the seat it played, judged by the judge
    from bonsai.store.transcripts import TranscriptStore

    ref = inspect_adapter(persona_dir(isolated_home, "advocate") / version)
    with TranscriptStore(store, create=False) as s:
        debates = s.list_debates(sweep=f"gate:advocate@{version}")
        assert len(debates) == 2
        for d in debates:
            match = next(m for m in result["matches"] if m["debate_id"] == d.debate_id)
            turns = [t for t in s.turns(d.debate_id) if t.role == "debater"]
            assert {t.adapter_name for t in turns if t.speaker == match["candidate_seat"]} == {ref.name}
            assert {t.adapter_name for t in turns if t.speaker != match["candidate_seat"]} == {None}
            assert d.seats["judge"] == ["judge"]
    with pytest.raises(AdapterError, match="did not pass the gate"):
        check_gate(isolated_home, "advocate", version)


@pytest.mark.engine
@pytest.mark.slow
async def test_running_debates_keep_their_version_and_new_ones_take_the_promoted_one(vllm_engine: Any, base_model: BaseModel, quick_short_judge: str, isolated_home: Path,
                                                                                     tmp_path: Path) -> None:
    from bonsai.debate.runner import DebateRunner, DebateSpec
    from bonsai.store.transcripts import TranscriptStore

    v1, v2 = (register_version(isolated_home, "advocate", _lora(base_model, tmp_path / f"lora{i}", seed=20 + i), base_hash=base_model.content_hash) for i in range(2))
    root = persona_dir(isolated_home, "advocate")
    name1, name2 = inspect_adapter(root / v1).name, inspect_adapter(root / v2).name
    registry.promote(isolated_home, "advocate", v1)
    spec = DebateSpec(motion="This house would ban fireworks", personas=["advocate", "skeptic"], format=quick_short_judge, rounds=1, seed=3, max_tokens=8)
    book, ck = PersonaBook.load(), tmp_path / "ck.sqlite"
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        # debate 1 runs its first turn (advocate, on v1), then the engine fails in the next one
        async with DebateRunner(FailingEngine(vllm_engine, fail_on_call=2), store, ck, book, isolated_home, base_model.name) as runner:
            started: list[Any] = []
            with pytest.raises(RuntimeError, match="mid-turn"):
                async for ev in runner.run(spec):
                    started.append(ev)
        running = started[0].debate_id
        assert [t.adapter_name for t in store.turns(running)] == [name1]
        await promote_version(isolated_home, "advocate", v2, force=True)
        async with DebateRunner(vllm_engine, store, ck, book, isolated_home, base_model.name) as runner:
            # a new debate resolves `current` when it starts: v2
            new_id = [ev async for ev in runner.run(spec.model_copy(update={"seed": 4}))][-1].debate_id
            # the debate that was running goes on with the version it started with, even across a resume
            end = [ev async for ev in runner.resume(running)][-1]
        assert end.name == "debate_end" and end.status == "finished"
        old_turns = [t.adapter_name for t in store.turns(running) if t.speaker == "advocate"]
        new_turns = [t.adapter_name for t in store.turns(new_id) if t.speaker == "advocate"]
    assert old_turns == [name1, name1] and new_turns == [name2, name2]
    assert await asyncio.to_thread(current_version, isolated_home, "advocate") == v2
