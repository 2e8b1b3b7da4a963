"""Datasets built from a store of real debates (tests/pair_store.py): on-disk layout and column types TRL
expects, the split by motion, deduplication, the max_length filter, the card and its hash, bad input."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pair_store import MOTIONS, copy_store, debate_store, distinct_candidate_turns

from bonsai.errors import ConfigError, PersonaNotFound, StoreError
from bonsai.model.prepare import BaseModel
from bonsai.personas import PersonaBook
from bonsai.store.transcripts import TranscriptStore
from training.card import DatasetError
from training.dataset import BuildOptions, LengthCheck, StrategySpec, TooFewPairs, build_dataset, clean_rows, load_pairs, split_by_motion
from training.pairs import Engines

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
async def store_file(tmp_path_factory: pytest.TempPathFactory, base_model) -> Path:
    return await debate_store(tmp_path_factory, base_model)


def options(store: Path, persona: str = "skeptic", **kw) -> BuildOptions:
    kw.setdefault("strategies", [StrategySpec(name="best-of-n", params={"min_gap": 0.0})])
    kw.setdefault("min_pairs", 1)
    return BuildOptions(persona=persona, store=store, **kw)


async def build(opts: BuildOptions, base_model: BaseModel, home: Path):
    async with Engines() as engines:
        return await build_dataset(opts, base=base_model, book=PersonaBook.load(), home=home, engines=engines)


async def test_alpaca_dataset_layout_types_and_split(store_file: Path, base_model, isolated_home: Path) -> None:
    from datasets import load_from_disk
    from trl.data_utils import is_conversational

    usable = distinct_candidate_turns(store_file, "skeptic")
    assert {motion for _, _, motion in usable} == set(MOTIONS), "the debates should give best-of-n pairs on both motions"
    built = await build(options(store_file, test_fraction=0.5), base_model, isolated_home)
    card = built.card
    assert built.path == isolated_home / "datasets" / "skeptic" / card.content_hash[:12] and not built.reused
    assert sorted(p.name for p in built.path.iterdir()) == ["card.json", "dataset_dict.json", "test", "test.parquet", "train", "train.parquet"]
    dd = load_from_disk(str(built.path))
    assert sorted(dd) == ["test", "train"]
    # split by motion: one motion each side, none on both
    train_motions, test_motions = set(dd["train"]["motion"]), set(dd["test"]["motion"])
    assert train_motions and test_motions and not train_motions & test_motions
    assert train_motions | test_motions == set(MOTIONS)
    assert (sorted(train_motions), sorted(test_motions)) == (card.split.train_motions, card.split.test_motions)
    for row in [*dd["train"], *dd["test"]]:
        assert isinstance(row["prompt"], str) and row["prompt"].endswith("### Response:\n")
        assert isinstance(row["chosen"], str) and isinstance(row["rejected"], str) and row["chosen"] != row["rejected"]
        assert row["strategy"] == "best-of-n" and isinstance(row["turn_index"], int)
        assert {"chosen_score", "rejected_score", "gap", "phase"} <= set(json.loads(row["meta"]))
        assert not is_conversational(row)
    assert dd["train"].features["prompt"].dtype == "string"
    # the Parquet copies hold the same rows
    for split in ("train", "test"):
        table = pq.read_table(built.path / f"{split}.parquet")
        assert table.num_rows == len(dd[split]) and table.to_pylist() == dd[split].to_list()
    # the card
    data = json.loads((built.path / "card.json").read_text())
    assert data["persona"] == "skeptic" and data["format"] == "alpaca" and data["reasoning"] == "alpaca-reasoning"
    assert data["base_model"] == base_model.name and data["base_hash"] == base_model.content_hash
    assert data["source_store"] == str(store_file.resolve())
    with TranscriptStore(store_file, create=False) as store:
        assert data["debate_ids"] == sorted(d.debate_id for d in store.list_debates(persona="skeptic"))
    assert data["strategies"] == [{"name": "best-of-n", "params": {"min_gap": 0.0}}]
    assert data["counts"]["kept"] == data["counts"]["train"] + data["counts"]["test"] == len(usable)
    assert data["counts"]["dropped"] == ({"identical": 4 - len(usable)} if len(usable) < 4 else {})
    assert data["counts"]["train"] == len(dd["train"]) and data["counts"]["test"] == len(dd["test"])
    assert data["max_length"] == 1024 and data["created_at"] <= time.time()
    loaded, loaded_card = load_pairs(built.path)
    assert loaded_card == data and loaded["train"].to_list() == dd["train"].to_list()


async def test_conversational_dataset_fits_trl(store_file: Path, base_model, isolated_home: Path) -> None:
    from transformers import AutoTokenizer
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    built = await build(options(store_file, "advocate", out=isolated_home / "ds"), base_model, isolated_home)
    dd, card = load_pairs(isolated_home / "ds")
    assert card["format"] == "conversational" and card["counts"]["kept"] == 2
    assert len(dd["test"]) == 0 and dd["test"].column_names == dd["train"].column_names  # one motion: nothing held out
    tokenizer = AutoTokenizer.from_pretrained(str(base_model.path))
    with TranscriptStore(store_file, create=False) as store:
        for row in dd["train"]:
            assert is_conversational(row)
            turn = store.turns(row["debate_id"])[row["turn_index"]]
            assert row["prompt"] == [{"role": m["role"], "content": m["content"]} for m in turn.prompt["messages"]]
            assert row["prompt"][0]["role"] == "system" and row["prompt"][-1]["role"] == "user"
            assert [m["role"] for m in row["chosen"]] == [m["role"] for m in row["rejected"]] == ["assistant"]
            texts = maybe_apply_chat_template({k: row[k] for k in ("prompt", "chosen", "rejected")}, tokenizer)
            assert texts["prompt"].endswith("<|im_start|>assistant\n")
            assert texts["chosen"] == row["chosen"][0]["content"] + "<|im_end|>\n"
    assert built.path == isolated_home / "ds"


async def test_duplicates_are_dropped_and_counted(store_file: Path, base_model, tmp_path: Path, isolated_home: Path) -> None:
    """The same debate stored twice under two ids gives the same pairs twice: kept once."""
    store_copy = copy_store(store_file, tmp_path / "dup.sqlite")
    with TranscriptStore(store_copy) as store:
        debate = next(d for d in store.list_debates() if d.motion == MOTIONS[1])
        twin = "twin-" + debate.debate_id
        store.create_debate(type(debate)(**{**debate.to_dict(), "debate_id": twin}))
        for turn in store.turns(debate.debate_id):
            store.record_turn(type(turn)(**{**turn.to_dict(), "debate_id": twin}))
        store.record_candidates(type(c)(**{**c.to_dict(), "debate_id": twin}) for c in store.candidates(debate.debate_id))
    usable = distinct_candidate_turns(store_file, "skeptic")
    twin_pairs = sum(debate_id == debate.debate_id for debate_id, _, _ in usable)
    assert twin_pairs > 0
    built = await build(options(store_copy, test_fraction=0.0), base_model, isolated_home)
    assert built.card.counts.dropped["duplicate"] == twin_pairs
    # skeptic speaks twice per debate: the twin repeats the original's identical candidates too
    assert built.card.counts.dropped.get("identical", 0) == (4 - len(usable)) + (2 - twin_pairs)
    assert built.card.counts.kept == len(usable) and twin not in built.card.debate_ids


async def test_prompts_without_room_are_dropped_and_counted(store_file: Path, base_model, isolated_home: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_model.path))
    usable = distinct_candidate_turns(store_file, "skeptic")
    with TranscriptStore(store_file, create=False) as store:
        prompts = [store.turns(debate_id)[turn_index].prompt["text"] for debate_id, turn_index, _ in usable]
    # what the ORPO trainer sees: the prompt's tokens plus the BOS it prepends
    lengths = sorted(len(tokenizer(p, add_special_tokens=False)["input_ids"]) + 1 for p in prompts)
    assert lengths[0] < lengths[-1], "the store should hold skeptic pairs with prompts of different lengths"
    max_length = lengths[0] + 1  # room for one completion token after the shortest prompt only
    built = await build(options(store_file, max_length=max_length, min_room=1, test_fraction=0.0), base_model, isolated_home)
    expected = sum(n + 1 > max_length for n in lengths)
    assert 0 < expected < len(usable)
    assert built.card.counts.dropped["prompt_too_long"] == expected
    assert built.card.counts.kept == len(usable) - expected and built.card.counts.truncated == built.card.counts.kept
    # every kept pair fits the way LengthCheck measures it, and the measure agrees with the tokenizer
    check = LengthCheck(tokenizer, max_length, 1)
    dd, _ = load_pairs(built.path)
    for row in dd["train"]:
        n_prompt, n_chosen, _ = check.measure(row)
        assert n_prompt == len(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]) + 1 <= max_length - 1
        assert n_chosen == len(tokenizer(row["prompt"] + row["chosen"], add_special_tokens=False)["input_ids"]) - n_prompt + 2
    with pytest.raises(TooFewPairs, match=rf"only 0 usable preference pairs .*need at least 1; dropped: .*prompt_too_long {len(usable)}"):
        await build(options(store_file, max_length=lengths[0]), base_model, isolated_home)


async def test_card_and_hash_are_stable_for_the_same_input(store_file: Path, base_model, isolated_home: Path) -> None:
    first = await build(options(store_file), base_model, isolated_home)
    again = await build(options(store_file), base_model, isolated_home)
    assert again.reused and again.path == first.path and again.card == first.card
    elsewhere = await build(options(store_file, out=isolated_home / "copy"), base_model, isolated_home)
    assert not elsewhere.reused and elsewhere.card.content_hash == first.card.content_hash
    assert elsewhere.card.model_dump(exclude={"created_at"}) == first.card.model_dump(exclude={"created_at"})
    other_seed = await build(options(store_file, seed=1), base_model, isolated_home)
    assert other_seed.card.content_hash != first.card.content_hash and other_seed.path != first.path
    # a different dataset is never written over an existing one
    with pytest.raises(ConfigError, match="already holds another dataset"):
        await build(options(store_file, seed=1, out=isolated_home / "copy"), base_model, isolated_home)
    # an edited dataset no longer matches its card
    card_file = elsewhere.path / "card.json"
    data = json.loads(card_file.read_text())
    card_file.write_text(json.dumps({**data, "max_length": 2048}))
    with pytest.raises(DatasetError, match="does not match its card's content hash"):
        load_pairs(elsewhere.path)
    (first.path / "dataset_dict.json").unlink()
    with pytest.raises(DatasetError, match="incomplete"):
        load_pairs(first.path)
    with pytest.raises(DatasetError, match="no dataset"):
        load_pairs(isolated_home / "nothing")


async def test_bad_input_is_one_clear_error_and_writes_nothing(store_file: Path, base_model, tmp_path: Path, isolated_home: Path) -> None:
    cases = [
        (options(tmp_path / "missing.sqlite"), StoreError, "no transcript store"),
        (options(store_file, "bianlun"), StoreError, "'bianlun' has no debater turns"),
        (options(store_file, "nobody"), PersonaNotFound, "unknown persona 'nobody'"),
        (options(store_file, min_pairs=50), TooFewPairs, r"only \d usable preference pairs for skeptic from 4 turns .*need at least 50"),
        (options(store_file, strategies=[StrategySpec(name="best-of-three")]), ConfigError, "unknown pair strategy"),
        (options(store_file, "advocate", strategies=[StrategySpec(name="cross-lingual")]), ConfigError, "speaks 'en'"),
    ]
    for opts, error, message in cases:
        with pytest.raises(error, match=message):
            await build(opts, base_model, isolated_home)
    TranscriptStore(tmp_path / "empty.sqlite").close()
    with pytest.raises(StoreError, match="has no debates"):
        await build(options(tmp_path / "empty.sqlite"), base_model, isolated_home)
    other = BaseModel(path=tmp_path / "other-model", name="other-model", content_hash="0" * 64)
    with pytest.raises(StoreError, match=r"none of skeptic's 4 turns .* \(4 other base\)") as info:
        await build(options(store_file), other, isolated_home)
    assert base_model.name in (info.value.hint or "")
    assert not (isolated_home / "datasets").exists()
    assert not (tmp_path / "missing.sqlite").exists()


def test_split_by_motion_holds_out_whole_motions() -> None:
    rows = [{"motion": f"m{i % 5}", "n": i} for i in range(50)]
    train, test, train_motions, test_motions = split_by_motion(rows, 0.2, seed=3)
    assert len(test) == 10 and len(test_motions) == 1 and not set(train_motions) & set(test_motions)
    assert {r["motion"] for r in test} == set(test_motions) and len(train) + len(test) == 50
    assert split_by_motion(rows, 0.2, seed=3) == (train, test, train_motions, test_motions)
    assert split_by_motion(rows, 0.5, seed=3)[3] != [] and len(split_by_motion(rows, 0.5, seed=3)[1]) >= 25
    # each side keeps at least one motion, and one motion cannot be split
    assert len(split_by_motion(rows, 0.99, seed=0)[2]) == 1
    assert split_by_motion(rows[:10:5], 0.5, seed=0)[1] == []
    assert split_by_motion(rows, 0.0, seed=0)[1] == []


def test_clean_rows_counts_each_reason() -> None:
    def row(chosen: str, rejected: str, prompt: str = "p") -> dict:
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}

    dropped: Counter[str] = Counter()
    kept = clean_rows([row("a", "b"), row("a", "b"), row("a", "b", "q"), row("same", "same "), row("", "b"), row("a", "  ")], dropped)
    assert kept == [row("a", "b"), row("a", "b", "q")]
    assert dropped == {"duplicate": 1, "identical": 1, "empty_completion": 2}
