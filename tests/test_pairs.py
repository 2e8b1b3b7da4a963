"""Pair strategies on a store filled by real debates (tests/pair_store.py), generating on the real model.

best-of-n reads stored candidates; stance, cross-lingual and teacher generate through the transformers+
PEFT engine (one per module), and one stance test runs on the shared vLLM engine.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from pair_store import debate_store, single_torch_thread

from bonsai.debate.prompts import LANGUAGE_HINT, debater_prompt
from bonsai.debate.schedule import Slot
from bonsai.engine import GenerationRequest
from bonsai.registry.identity import inspect_adapter
from bonsai.errors import ConfigError
from bonsai.personas import Persona, PersonaBook, ReasoningFormat
from bonsai.store.transcripts import TranscriptStore
from training.dataset import collect_sources
from training.pairs import Engines, PairContext, make_strategy, parse_strategy_list, strategy_names
from training.pairs.base import prompt_from_json, turn_sampling
from training.pairs.cross_lingual import ENGLISH_HINT, english_prompt, english_system_prompt, in_format
from training.pairs.stance import opposing_persona

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with single_torch_thread():
        yield


@pytest.fixture(scope="module")
async def store_file(tmp_path_factory: pytest.TempPathFactory, base_model) -> Path:
    return await debate_store(tmp_path_factory, base_model)


@pytest.fixture(scope="module")
async def hf_engine(base_model):
    from bonsai.engine.hf_peft import HFEngine

    async with HFEngine(base_model.path, base_hash=base_model.content_hash) as engine:
        yield engine


def context(store_file: Path, persona: str, base_model, home: Path, engine=None, **kw) -> PairContext:
    book = PersonaBook.load()
    p = book.get(persona)
    with TranscriptStore(store_file, create=False) as store:
        sources, _ = collect_sources(store, p, base_model)
    return PairContext(persona=p, book=book, home=home, sources=sources, engines=Engines(engine=engine), seed=5, **kw)


def register_current(home: Path, persona: str, adapter: Path) -> Path:
    """Put ``adapter`` in the registry as ``persona``'s current version (what resolve_persona_adapter reads)."""
    version = home / "adapters" / persona / "v-test"
    shutil.copytree(adapter, version)
    (home / "adapters" / persona / "current").write_text("v-test\n")
    return version


def test_registry_names_and_parsing() -> None:
    assert strategy_names() == ["best-of-n", "stance", "cross-lingual", "teacher", "rubric"]
    assert parse_strategy_list(" best-of-n, stance ") == ["best-of-n", "stance"]
    with pytest.raises(ConfigError, match="unknown pair strategy 'best-of-three'"):
        parse_strategy_list("best-of-n,best-of-three")
    with pytest.raises(ConfigError, match="named twice"):
        parse_strategy_list("stance,stance")
    with pytest.raises(ConfigError, match="no pair strategy"):
        parse_strategy_list(" , ")
    with pytest.raises(ConfigError, match="min_gap"):
        make_strategy("best-of-n", {"min_gap": 2})
    with pytest.raises(ConfigError, match="min_gapp"):
        make_strategy("best-of-n", {"min_gapp": 0.1})


def test_teacher_needs_exactly_one_teacher(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one teacher"):
        make_strategy("teacher", {})
    with pytest.raises(ConfigError, match=r"exactly one teacher.*got adapter, base"):
        make_strategy("teacher", {"adapter": str(tmp_path), "base": str(tmp_path)})
    with pytest.raises(ConfigError, match="only goes with --teacher-endpoint"):
        make_strategy("teacher", {"base": str(tmp_path), "model": "x"})


async def test_best_of_n_pairs_judge_best_against_worst(store_file: Path, base_model, isolated_home: Path) -> None:
    ctx = context(store_file, "skeptic", base_model, isolated_home)
    assert len(ctx.sources) == 4  # two turns in each of the two debates
    assert all(len(s.candidates) == 2 for s in ctx.sources)
    pairs = await make_strategy("best-of-n", {"min_gap": 0.0}).build(ctx)
    gaps = []
    for pair in pairs:
        cands = pair.source.candidates
        best = max(cands, key=lambda c: c.score)
        worst = min(cands, key=lambda c: c.score)
        assert (pair.chosen, pair.rejected) == (best.text, worst.text)
        assert pair.meta["gap"] == pytest.approx(best.score - worst.score)
        assert pair.source.turn.prompt["format"] == "text"  # skeptic is an Alpaca persona
        gaps.append(pair.meta["gap"])
    assert len(pairs) == 4 and not ctx.dropped
    # a gap threshold keeps exactly the pairs at or above it
    threshold = sorted(gaps)[2]
    ctx = context(store_file, "skeptic", base_model, isolated_home)
    kept = await make_strategy("best-of-n", {"min_gap": threshold}).build(ctx)
    assert len(kept) == sum(g >= threshold for g in gaps)
    assert ctx.dropped["score_gap_below_min"] == 4 - len(kept)


async def test_best_of_n_without_candidates_drops_every_turn(store_file: Path, base_model, isolated_home: Path) -> None:
    ctx = context(store_file, "advocate", base_model, isolated_home)
    ctx.sources = [type(s)(s.debate, s.turn, ()) for s in ctx.sources]
    assert await make_strategy("best-of-n").build(ctx) == []
    assert ctx.dropped == {"too_few_candidates": len(ctx.sources)}


def test_opponent_is_the_debater_of_the_other_team(store_file: Path, base_model, isolated_home: Path) -> None:
    ctx = context(store_file, "skeptic", base_model, isolated_home)
    assert sorted({opposing_persona(s) for s in ctx.sources}) == ["advocate", "ronri"]
    for s in ctx.sources:
        assert opposing_persona(s) in s.debate.seats["A"]


async def test_stance_rejected_is_the_opposing_adapter_on_the_same_prompt(store_file: Path, base_model, lora_adapters, hf_engine, isolated_home: Path) -> None:
    register_current(isolated_home, "skeptic", lora_adapters[1])
    skeptic_ref = inspect_adapter(lora_adapters[1])
    ctx = context(store_file, "advocate", base_model, isolated_home, hf_engine)
    before = len(hf_engine.recent_batch_sizes)
    pairs = await make_strategy("stance", {"temperature": 0.0}).build(ctx)
    assert len(pairs) == len(ctx.sources) == 2
    assert max(list(hf_engine.recent_batch_sizes)[before:]) == 2, "the opposing answers were not generated in one batch"
    for pair in pairs:
        turn = pair.source.turn
        assert pair.chosen == turn.text
        assert pair.meta["opponent"] == "skeptic" and pair.meta["opponent_adapter"] == skeptic_ref.name
        # the rejected answer is exactly what skeptic's adapter says to advocate's stored prompt
        alone = await hf_engine.generate(
            GenerationRequest("check", prompt_from_json(turn.prompt), turn_sampling(turn, seed=1, temperature=0.0), skeptic_ref)
        )
        assert pair.rejected == alone.text and alone.text.strip()
    # opponent=base: the bare base answers instead
    ctx = context(store_file, "advocate", base_model, isolated_home, hf_engine)
    base_pairs = await make_strategy("stance", {"temperature": 0.0, "opponent": "base"}).build(ctx)
    assert [p.meta["opponent_adapter"] for p in base_pairs] == [None, None]
    assert [p.rejected for p in base_pairs] != [p.rejected for p in pairs]


def test_english_prompt_rewrites_system_and_language_hint(store_file: Path, base_model, isolated_home: Path) -> None:
    ctx = context(store_file, "ronri", base_model, isolated_home)
    ronri = ctx.persona
    hint = LANGUAGE_HINT["ja"]
    rebuttal = max(ctx.sources, key=lambda s: s.turn.turn_index)  # has ronri's own opening in its history
    original = rebuttal.prompt
    english = english_prompt(original, ronri)
    assert english.messages[0].content == english_system_prompt(ronri) and "FOR the motion" in english.messages[0].content
    assert len(english.messages) == len(original.messages) >= 4
    for before, after in zip(original.messages[1:], english.messages[1:], strict=True):
        assert before.role == after.role
        if before.role == "assistant":
            assert after.content == before.content  # own earlier turn kept verbatim
        else:
            assert hint in before.content and hint not in after.content
            assert after.content == before.content.replace(hint, ENGLISH_HINT)
    # an Alpaca persona's prompt: text before the first instruction replaced, hint rewritten
    alpaca_ja = Persona(name="kanso", team="B", role="debater", language="ja", reasoning="alpaca-reasoning", system_prompt="あなたは反対側です。")
    slot = Slot(0, "debater", "opening", "opening", 1, "kanso", "B", "Give your opening statement on the motion.", None)
    text = debater_prompt(alpaca_ja, "Homework should be abolished", [], slot).text
    rewritten = english_prompt(prompt_from_json({"format": "text", "text": text}), alpaca_ja).text
    assert rewritten.startswith(english_system_prompt(alpaca_ja) + "\n\n### Instruction:\n")
    assert "AGAINST the motion" in rewritten and hint not in rewritten and rewritten.endswith(f"{ENGLISH_HINT}\n\n### Response:\n")
    assert in_format(ReasoningFormat.XML, "r", "a") == "<reasoning>r</reasoning>\n<answer>a</answer>"
    assert in_format(ReasoningFormat.ALPACA, None, "a") == "### Answer\na"


async def test_cross_lingual_translates_the_english_answer(store_file: Path, base_model, hf_engine, isolated_home: Path) -> None:
    ctx = context(store_file, "ronri", base_model, isolated_home, hf_engine)
    pairs = await make_strategy("cross-lingual", {"translation_max_tokens": 24}).build(ctx)
    assert len(pairs) + sum(ctx.dropped.values()) == len(ctx.sources) == 2
    assert pairs, f"no cross-lingual pair at all: {dict(ctx.dropped)}"
    for pair in pairs:
        assert pair.rejected == pair.source.turn.text  # the native stored answer
        assert pair.meta["translator"] == "translator" and pair.meta["language"] == "ja" and pair.meta["english"]
        # laid out in ronri's xml-tags format whatever the translator wrote
        assert pair.chosen.startswith(("<reasoning>", "<answer>")) and pair.chosen.endswith("</answer>")


async def test_cross_lingual_refuses_an_english_persona(store_file: Path, base_model, isolated_home: Path) -> None:
    strategy = make_strategy("cross-lingual")
    with pytest.raises(ConfigError, match="'advocate' speaks 'en'"):
        strategy.check(PersonaBook.load().get("advocate"))
    with pytest.raises(ConfigError, match="not a translator"):
        await make_strategy("cross-lingual", {"translator": "judge"}).build(context(store_file, "ronri", base_model, isolated_home))


async def test_teacher_adapter_answers_the_same_prompt(store_file: Path, base_model, lora_adapters, hf_engine, isolated_home: Path) -> None:
    ctx = context(store_file, "advocate", base_model, isolated_home, hf_engine)
    teacher = make_strategy("teacher", {"adapter": str(lora_adapters[1]), "temperature": 0.0})
    pairs = await teacher.build(ctx)
    ref = inspect_adapter(lora_adapters[1])
    assert teacher.describe()["params"]["adapter_hash"] == ref.content_hash
    assert len(pairs) == 2
    for pair in pairs:
        turn = pair.source.turn
        assert pair.rejected == turn.text
        alone = await hf_engine.generate(GenerationRequest("t", prompt_from_json(turn.prompt), turn_sampling(turn, seed=3, temperature=0.0), ref))
        assert pair.chosen == alone.text


async def test_teacher_base_runs_in_an_engine_of_its_own(store_file: Path, base_model, isolated_home: Path) -> None:
    ctx = context(store_file, "skeptic", base_model, isolated_home)  # no main engine at all
    async with ctx.engines:
        pairs = await make_strategy("teacher", {"base": str(base_model.path), "temperature": 0.0}).build(ctx)
    assert len(pairs) == 4
    assert all(p.meta["teacher"] == f"base {base_model.name}" for p in pairs)
    assert all(p.rejected == p.source.turn.text for p in pairs)
    assert any(p.chosen.strip() for p in pairs)


async def test_generating_without_an_engine_is_a_clear_error(store_file: Path, base_model, isolated_home: Path) -> None:
    ctx = context(store_file, "advocate", base_model, isolated_home)
    with pytest.raises(ConfigError, match="the stance strategy generates text at build time"):
        await make_strategy("stance").build(ctx)


@pytest.mark.engine
async def test_stance_on_vllm_uses_each_debates_opponent(store_file: Path, base_model, lora_adapters, vllm_engine, isolated_home: Path) -> None:
    """skeptic faced ronri (no adapter: the bare base answers) and advocate (its registry version)."""
    register_current(isolated_home, "advocate", lora_adapters[0])
    ctx = context(store_file, "skeptic", base_model, isolated_home, vllm_engine)
    pairs = await make_strategy("stance").build(ctx)
    assert len(pairs) == 4
    by_opponent = {p.meta["opponent"]: p.meta["opponent_adapter"] for p in pairs}
    assert by_opponent == {"ronri": None, "advocate": inspect_adapter(lora_adapters[0]).name}
    for pair in pairs:
        assert pair.chosen == pair.source.turn.text
        assert pair.source.turn.sampling["stop"] == ["### Instruction:"] and "### Instruction:" not in pair.rejected
        assert not math.isnan(pair.meta["seed"])
