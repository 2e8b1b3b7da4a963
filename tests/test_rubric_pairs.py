"""The ``rubric`` pair strategy on a store filled by real debates (tests/pair_store.py): rankings by the
persona's rubric, the judge mixed in, the verifiable repair, samples generated on the real engines, the
mix in the dataset card and the `bonsai data build` flags."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from pair_store import debate_store, single_torch_thread

from bonsai.cli import main as cli_main
from bonsai.errors import ConfigError
from bonsai.personas import PersonaBook
from bonsai.rubric import RubricContext, rubric_for
from bonsai.store.transcripts import TranscriptStore
from training.dataset import collect_sources, load_pairs
from training.pairs import Engines, PairContext, make_strategy

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with single_torch_thread():
        yield


@pytest.fixture(scope="module")
async def store_file(tmp_path_factory: pytest.TempPathFactory, base_model) -> Path:
    return await debate_store(tmp_path_factory, base_model)


def context(store_file: Path, persona: str, base_model, home: Path, engine=None, *, single: bool = False, **kw) -> PairContext:
    book = PersonaBook.load()
    p = book.get(persona)
    with TranscriptStore(store_file, create=False) as store:
        sources, _ = collect_sources(store, p, base_model)
    if single:  # as if the debates ran without best-of-N: each turn has only its stored text
        sources = [replace(s, candidates=()) for s in sources]
    return PairContext(persona=p, book=book, home=home, sources=sources, engines=Engines(engine=engine), seed=5, **kw)


def rescore(pair, persona_name: str, text: str):
    persona = PersonaBook.load().get(persona_name)
    src = pair.source
    return rubric_for(persona).score(text, RubricContext(src.debate.motion, persona.language, src.opponent_last))  # type: ignore[union-attr]


def test_sources_carry_the_opponents_last_answer(store_file: Path, base_model, isolated_home: Path) -> None:
    ctx = context(store_file, "skeptic", base_model, isolated_home)
    with TranscriptStore(store_file, create=False) as store:
        for src in ctx.sources:
            before = [t for t in store.turns(src.debate.debate_id) if t.turn_index < src.turn.turn_index and t.team == "A" and t.role == "debater"]
            assert src.opponent_last == before[-1].answer  # pairs debates: A always speaks before B's turns


async def test_ronri_pairs_rank_by_the_rubric_and_repair_into_tags(store_file: Path, base_model, isolated_home: Path) -> None:
    """The bare 135M base never writes ronri's tags: every chosen answer is a repair that scores higher."""
    ctx = context(store_file, "ronri", base_model, isolated_home)
    assert all(len(s.candidates) == 2 for s in ctx.sources)
    pairs = await make_strategy("rubric", {"min_gap": 0.0}).build(ctx)
    assert pairs and len(pairs) + sum(ctx.dropped.values()) == len(ctx.sources)
    for pair in pairs:
        m = pair.meta
        texts = {c.text: c for c in pair.source.candidates}
        assert pair.rejected in texts and m["rejected_judge"] == texts[pair.rejected].score
        # verifiable: the recorded scores are the rubric's own on the texts in the pair
        assert rescore(pair, "ronri", pair.chosen).total == pytest.approx(m["chosen_score"])
        assert rescore(pair, "ronri", pair.rejected).total == pytest.approx(m["rejected_score"])
        assert m["chosen_score"] - m["rejected_score"] == pytest.approx(m["gap"]) and m["gap"] >= 0
        assert set(m["chosen_checks"]) == {"language", "reasoning_format", "length", "repetition"}
        # the raw candidates have no tags, so the best one was repaired into them
        assert max(rescore(pair, "ronri", t).checks["reasoning_format"] for t in texts) < 1.0
        assert m["repaired"] is True and m["chosen_checks"]["reasoning_format"] == 1.0
        assert m["repair"]["after"]["total"] > m["repair"]["before"]["total"]
        assert pair.chosen.startswith("<reasoning>\n") and pair.chosen.endswith("\n</answer>")
        # the rejected answer is the worst candidate by the rubric
        assert m["rejected_score"] == pytest.approx(min(rescore(pair, "ronri", t).total for t in texts))


async def test_repaired_answers_fit_the_turn_budget_in_the_bases_tokens(store_file: Path, base_model, isolated_home: Path) -> None:
    """With the base's tokenizer (an engine config, no engine started) and a build cap, every repaired chosen
    answer ends inside the cap, tags closed; without a cap the persona's own budget holds."""
    from bonsai.engine import EngineConfig
    from bonsai.model.chat_template import load_tokenizer

    tokens = lambda text: len(load_tokenizer(base_model.path)(text, add_special_tokens=False).input_ids)  # noqa: E731
    engines = lambda: Engines(EngineConfig(kind="vllm", base_model=base_model.path))  # noqa: E731
    loose = context(store_file, "ronri", base_model, isolated_home)
    loose_pairs = await make_strategy("rubric", {"min_gap": 0.0}).build(loose)
    longest = max(tokens(p.chosen) for p in loose_pairs if p.meta["repaired"])
    for share in (1.0, 0.75):  # the whole cap, and the default headroom
        cap = max(24, longest - 8) if share == 1.0 else int((longest - 4) / share) + 1  # tighter than the longest unbounded repair
        tight = replace(context(store_file, "ronri", base_model, isolated_home, max_tokens=cap), engines=engines())
        pairs = await make_strategy("rubric", {"min_gap": 0.0, "fit_share": share}).build(tight)
        repaired = [p for p in pairs if p.meta["repaired"]]
        limit = int(cap * share)
        assert limit < longest and repaired, (cap, share, longest)
        assert all(tokens(p.chosen) < limit and p.chosen.endswith("</answer>") for p in repaired), (cap, share, [tokens(p.chosen) for p in repaired])
        assert all(rescore(p, "ronri", p.chosen).total == pytest.approx(p.meta["chosen_score"]) for p in repaired)
    share = make_strategy("rubric", {}).params.fit_share
    persona_budget = PersonaBook.load().get("ronri").sampling.max_tokens
    own = replace(context(store_file, "ronri", base_model, isolated_home), engines=engines())
    assert all(tokens(p.chosen) < int(persona_budget * share) for p in await make_strategy("rubric", {"min_gap": 0.0}).build(own) if p.meta["repaired"])


async def test_without_repair_and_with_the_judge_weighed_in(store_file: Path, base_model, isolated_home: Path) -> None:
    # judge_weight 1: the judge alone ranks, so (without repair) the pairs are best-of-n's
    ctx = context(store_file, "skeptic", base_model, isolated_home)
    judged = await make_strategy("rubric", {"min_gap": 0.0, "judge_weight": 1.0, "repair": False}).build(ctx)
    ctx = context(store_file, "skeptic", base_model, isolated_home)
    best_of_n = await make_strategy("best-of-n", {"min_gap": 0.0}).build(ctx)
    assert [(p.chosen, p.rejected) for p in judged] == [(p.chosen, p.rejected) for p in best_of_n]
    assert all(p.meta["judge_weight"] == 1.0 and not p.meta["repaired"] for p in judged)
    # judge_weight 0: the rubric ranks; every chosen answer scores at least its rejected one
    ctx = context(store_file, "skeptic", base_model, isolated_home)
    ruled = await make_strategy("rubric", {"min_gap": 0.0, "repair": False}).build(ctx)
    assert ruled and all(p.meta["chosen_score"] >= p.meta["rejected_score"] and p.meta["judge_weight"] == 0.0 for p in ruled)
    for p in ruled:
        scores = sorted(rescore(p, "skeptic", c.text).total for c in p.source.candidates)
        assert (p.meta["rejected_score"], p.meta["chosen_score"]) == (pytest.approx(scores[0]), pytest.approx(scores[-1]))
    # a gap threshold drops the closer pairs, counted
    gaps = sorted(p.meta["gap"] for p in ruled)
    ctx = context(store_file, "skeptic", base_model, isolated_home)
    kept = await make_strategy("rubric", {"min_gap": gaps[-1], "repair": False}).build(ctx)
    assert len(kept) == sum(g >= gaps[-1] for g in gaps) and ctx.dropped["rubric_gap_below_min"] == len(ruled) - len(kept)


async def test_a_single_stored_answer_still_makes_a_repaired_pair(store_file: Path, base_model, isolated_home: Path) -> None:
    ctx = context(store_file, "ronri", base_model, isolated_home, single=True)
    pairs = await make_strategy("rubric").build(ctx)
    assert len(pairs) == len(ctx.sources) == 2
    for pair in pairs:
        assert pair.rejected == pair.source.turn.text and pair.meta["candidates"] == 1
        assert pair.meta["repaired"] and pair.meta["chosen_score"] > pair.meta["rejected_score"]
        assert pair.meta["rejected_origin"] == "turn" and pair.meta["chosen_judge"] == pair.meta["rejected_judge"] is None
    # without repair a single answer has nothing to be compared with
    ctx = context(store_file, "ronri", base_model, isolated_home, single=True)
    assert await make_strategy("rubric", {"repair": False}).build(ctx) == []
    assert ctx.dropped == {"too_few_candidates": 2}


async def test_a_persona_without_a_rubric_is_refused(store_file: Path, base_model, isolated_home: Path) -> None:
    ctx = context(store_file, "advocate", base_model, isolated_home)
    ctx.persona = ctx.persona.model_copy(update={"rubric": None})
    strategy = make_strategy("rubric")
    with pytest.raises(ConfigError, match="persona 'advocate' declares no rubric"):
        strategy.check(ctx.persona)
    with pytest.raises(ConfigError, match="declares no rubric"):
        await strategy.build(ctx)
    with pytest.raises(ConfigError, match="judge_weight"):
        make_strategy("rubric", {"judge_weight": 1.5})
    with pytest.raises(ConfigError, match="samples"):
        make_strategy("rubric", {"samples": -1})


async def test_samples_need_an_engine(store_file: Path, base_model, isolated_home: Path) -> None:
    ctx = context(store_file, "skeptic", base_model, isolated_home, single=True)
    with pytest.raises(ConfigError, match="the rubric strategy with samples generates text at build time"):
        await make_strategy("rubric", {"samples": 2}).build(ctx)


async def test_samples_on_the_transformers_engine(store_file: Path, base_model, isolated_home: Path) -> None:
    from bonsai.engine.hf_peft import HFEngine

    async with HFEngine(base_model.path, base_hash=base_model.content_hash) as engine:
        ctx = context(store_file, "skeptic", base_model, isolated_home, engine, single=True, max_tokens=16)
        pairs = await make_strategy("rubric", {"samples": 2, "min_gap": 0.0}).build(ctx)
    assert pairs
    for pair in pairs:
        assert pair.meta["candidates"] == 3 and pair.meta["sampler"] == "the bare base"
        assert pair.meta["chosen_score"] >= pair.meta["rejected_score"]


@pytest.mark.engine
async def test_samples_on_vllm_make_pairs_for_every_turn(store_file: Path, base_model, lora_adapters, vllm_engine, isolated_home: Path) -> None:
    """The learning loop's mode: turns stored with one answer, K samples each from the persona's current adapter."""
    from test_pairs import register_current

    from bonsai.registry.identity import inspect_adapter

    register_current(isolated_home, "skeptic", lora_adapters[0])
    ctx = context(store_file, "skeptic", base_model, isolated_home, vllm_engine, single=True)
    pairs = await make_strategy("rubric", {"samples": 4}).build(ctx)
    assert len(pairs) + sum(ctx.dropped.values()) == len(ctx.sources) == 4
    assert len(pairs) >= 3, dict(ctx.dropped)
    ref = inspect_adapter(lora_adapters[0])
    for pair in pairs:
        m = pair.meta
        assert m["candidates"] == 5 and m["sampler"] == ref.name
        assert rescore(pair, "skeptic", pair.chosen).total == pytest.approx(m["chosen_score"])
        assert m["chosen_score"] - m["rejected_score"] >= 0.05
        assert "### Instruction:" not in pair.chosen + pair.rejected  # the turn's stop strings held
        if m["repaired"]:
            assert pair.chosen.startswith("### Reasoning\n") and m["chosen_checks"]["reasoning_format"] == 1.0
    # the same build samples the same answers
    again = await make_strategy("rubric", {"samples": 4}).build(context(store_file, "skeptic", base_model, isolated_home, vllm_engine, single=True))
    assert [(p.chosen, p.rejected) for p in again] == [(p.chosen, p.rejected) for p in pairs]


def test_data_build_mixes_rubric_with_best_of_n_and_the_card_records_it(store_file: Path, base_model, isolated_home: Path, monkeypatch, capsys) -> None:
    (isolated_home / "models").mkdir()
    (isolated_home / "models" / base_model.path.name).symlink_to(base_model.path)
    out_dir = isolated_home / "mix"
    argv = ["data", "build", "--persona", "ronri", "--strategy", "rubric,best-of-n", "--min-gap", "0", "--rubric-min-gap", "0.1",
            "--judge-weight", "0.2", "--store", str(store_file), "--out", str(out_dir), "--min-pairs", "2"]
    assert cli_main.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    dd, card = load_pairs(out_dir)
    mix = card["counts"]["by_strategy"]
    assert list(mix) == ["rubric", "best-of-n"] and mix["rubric"] >= 1 and sum(mix.values()) == card["counts"]["kept"]
    assert card["strategies"][0] == {"name": "rubric", "params": {"min_gap": 0.1, "judge_weight": 0.2, "samples": 0, "repair": True, "temperature": None, "fit_share": 0.75}}
    assert f"strategies: rubric {mix['rubric']}, best-of-n {mix['best-of-n']}" in out
    rows = [r for split in ("train", "test") for r in dd[split] if r["strategy"] == "rubric"]
    assert len(rows) == mix["rubric"]
    for row in rows:
        meta = json.loads(row["meta"])
        assert meta["repaired"] and meta["repair"]["after"]["total"] > meta["repair"]["before"]["total"]
        assert row["chosen"][0]["content"].startswith("<reasoning>")
    # a rubric flag without the rubric strategy is a mistake worth saying
    assert cli_main.main(["data", "build", "--persona", "ronri", "--strategy", "best-of-n", "--judge-weight", "0.5", "--store", str(store_file)]) == 2
    assert "--judge-weight is an option of the rubric strategy" in capsys.readouterr().err
