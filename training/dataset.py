"""A persona's preference dataset: pairs from the strategies, cleaned, measured, split by motion, saved.

Written to one folder, atomically (it appears complete or not at all)::

    DIR/dataset_dict.json, DIR/train/, DIR/test/   DatasetDict.save_to_disk layout (load_from_disk(DIR))
    DIR/train.parquet, DIR/test.parquet            the same rows, for anything else
    DIR/card.json                                  training.card.DatasetCard

Rows are TRL preference rows plus provenance. Chat personas get the conversational form
(``prompt``: the stored messages, ``chosen``/``rejected``: one assistant message each); Alpaca personas
get plain text (``prompt`` ends with ``### Response:\\n``, completions keep their ``### Reasoning`` /
``### Answer`` sections). Completions are the raw text, reasoning tags included, so the format is
learned with the preference; no EOS is appended (TRL's ORPO adds it when it tokenizes).

The same rules apply to every strategy's pairs, in this order, each counted under its reason in the
card: ``empty_completion``, ``identical`` (chosen == rejected), ``duplicate`` (same prompt, chosen and
rejected), ``prompt_too_long`` (see :class:`LengthCheck`). The split is by motion, so no motion is on
both sides and the held-out motions measure generalisation, not recall.

Every reason ``counts.dropped`` can hold, per turn (before a pair exists) or per pair:

* reading the store: ``other_base`` (debate ran on another base), ``no_stored_prompt``,
  ``prompt_format_mismatch`` (chat prompt for an Alpaca persona or the reverse);
* strategies: ``too_few_candidates`` (best-of-n; rubric: one answer and no repair that beats it),
  ``score_gap_below_min`` (best-of-n), ``rubric_gap_below_min`` (rubric), ``no_opponent`` (stance),
  ``generation_prompt_too_long`` (prompt + budget over the engine's context), ``empty_generation``,
  ``empty_translation`` (cross-lingual);
* every pair: ``empty_completion``, ``identical``, ``duplicate``, ``prompt_too_long``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bonsai import atomic
from bonsai.errors import ConfigError, StoreError
from bonsai.model.prepare import BaseModel as PreparedBase
from bonsai.personas import Persona, PersonaBook, ReasoningFormat
from bonsai.rubric import last_opponent_answer
from bonsai.store.records import CandidateRecord
from bonsai.store.transcripts import TranscriptStore
from training.card import CARD_FILE, Counts, DatasetCard, DatasetError, Split, StrategyEntry, content_hash, hashed_settings, read_card, write_card
from training.pairs import Engines, Pair, PairContext, TurnSource, make_strategy

log = logging.getLogger(__name__)

DatasetFormat = Literal["conversational", "alpaca"]

DEFAULT_MAX_LENGTH = 1024
DEFAULT_MIN_ROOM = 16
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_MIN_PAIRS = 4
SPLITS = ("train", "test")


class TooFewPairs(StoreError):
    """The store does not hold enough usable pairs for the persona."""


class StrategySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class BuildOptions(BaseModel):
    """What ``bonsai data build`` asks for."""

    model_config = ConfigDict(extra="forbid")

    persona: str
    strategies: list[StrategySpec] = Field(min_length=1)
    store: Path
    out: Path | None = Field(None, description="Dataset folder (default: $BONSAI_HOME/datasets/<persona>/<hash12>).")
    max_length: int = Field(DEFAULT_MAX_LENGTH, ge=8, description="Prompt + completion tokens the trainer will see (TRL's max_length).")
    min_room: int = Field(DEFAULT_MIN_ROOM, ge=1, description="Completion tokens the prompt must leave room for (fewer if the completions are shorter).")
    test_fraction: float = Field(DEFAULT_TEST_FRACTION, ge=0.0, lt=1.0, description="Share of pairs held out, by whole motions.")
    seed: int = Field(0, description="Seeds the split and every generation, so a build is reproducible.")
    min_pairs: int = Field(DEFAULT_MIN_PAIRS, ge=1, description="Fewer kept pairs than this is an error.")
    concurrency: int = Field(16, ge=1, description="Generation requests in flight at once.")
    max_tokens: int | None = Field(None, ge=1, le=8192, description="Caps generated completions (default: each turn's own budget).")


@dataclass(frozen=True)
class BuiltDataset:
    path: Path
    card: DatasetCard
    #: True when an identical dataset was already there (same content hash) and was kept as it was
    reused: bool = False


def datasets_dir(home: Path) -> Path:
    return home / "datasets"


def dataset_format(persona: Persona) -> DatasetFormat:
    return "alpaca" if persona.reasoning == ReasoningFormat.ALPACA else "conversational"


def features(fmt: DatasetFormat) -> Any:
    """The column types, fixed so an empty split still has them and every build's files line up."""
    from datasets import Features, List, Value

    text = Value("string")
    if fmt == "conversational":
        message = {"role": text, "content": text}
        prompt, completion = List(message), List(message)
    else:
        prompt = completion = text
    return Features(
        {
            "prompt": prompt,
            "chosen": completion,
            "rejected": completion,
            "motion": text,
            "strategy": text,
            "debate_id": text,
            "turn_index": Value("int64"),
            "meta": text,
        }
    )


# --- reading the store ----------------------------------------------------------------------------


def _same_base(recorded: str, base: PreparedBase) -> bool:
    return recorded in {base.name, str(base.path), base.path.name}


def collect_sources(store: TranscriptStore, persona: Persona, base: PreparedBase) -> tuple[list[TurnSource], Counter[str]]:
    """The persona's debater turns that can become pairs, oldest debate first, and the ones that cannot."""
    dropped: Counter[str] = Counter()
    if not store.list_debates(limit=1):
        raise StoreError(
            f"the transcript store {store.path} has no debates",
            f"run debates first, e.g. `bonsai debate \"MOTION\" --personas {persona.name} --candidates 4`",
        )
    want = "text" if dataset_format(persona) == "alpaca" else "chat"
    sources: list[TurnSource] = []
    total = 0
    for debate in store.list_debates(persona=persona.name, newest_first=False):
        every_turn = store.turns(debate.debate_id)
        turns = [t for t in every_turn if t.speaker == persona.name and t.role == "debater"]
        if not turns:
            continue
        total += len(turns)
        if not _same_base(debate.base_model, base):
            dropped["other_base"] += len(turns)
            continue
        by_turn: dict[int, list[CandidateRecord]] = {}
        for cand in store.candidates(debate.debate_id):
            by_turn.setdefault(cand.turn_index, []).append(cand)
        for turn in turns:
            prompt = turn.prompt
            if not isinstance(prompt, dict):
                dropped["no_stored_prompt"] += 1
            elif prompt.get("format") != want or prompt.get("continue_final_message"):
                dropped["prompt_format_mismatch"] += 1
            else:
                opponent = last_opponent_answer(every_turn, turn.turn_index, turn.team)
                sources.append(TurnSource(debate, turn, tuple(by_turn.get(turn.turn_index, ())), opponent))
    if total == 0:
        raise StoreError(
            f"persona {persona.name!r} has no debater turns in {store.path}",
            f"run debates with it first: `bonsai debate \"MOTION\" --personas {persona.name} --candidates 4`",
        )
    if not sources:
        reasons = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(dropped.items()))
        raise StoreError(
            f"none of {persona.name}'s {total} turns in {store.path} can be used ({reasons})",
            f"pass --base with the model these debates ran on ({', '.join(sorted({d.base_model for d in store.list_debates(persona=persona.name)}))})"
            if dropped.get("other_base")
            else "run new debates with this version of bonsai (older ones did not store prompts)",
        )
    return sources, dropped


# --- rows -----------------------------------------------------------------------------------------


def pair_row(pair: Pair, fmt: DatasetFormat) -> dict[str, Any]:
    stored, turn, debate = pair.source.turn.prompt, pair.source.turn, pair.source.debate
    if fmt == "conversational":
        prompt: Any = [{"role": m["role"], "content": m["content"]} for m in stored["messages"]]
        chosen: Any = [{"role": "assistant", "content": pair.chosen}]
        rejected: Any = [{"role": "assistant", "content": pair.rejected}]
    else:
        prompt, chosen, rejected = stored["text"], pair.chosen, pair.rejected
    meta = {
        **pair.meta,
        "phase": turn.phase,
        "round": turn.round,
        "team": turn.team,
        "speaker_adapter": turn.adapter_name,
    }
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "motion": debate.motion,
        "strategy": pair.strategy,
        "debate_id": debate.debate_id,
        "turn_index": turn.turn_index,
        "meta": json.dumps(meta, sort_keys=True, ensure_ascii=False),
    }


def _completion_text(value: Any) -> str:
    return value if isinstance(value, str) else "".join(m["content"] for m in value)


def clean_rows(rows: Iterable[dict[str, Any]], dropped: Counter[str]) -> list[dict[str, Any]]:
    """Drop empty completions, identical completions and duplicate pairs (first one kept), counting each."""
    seen: set[bytes] = set()
    kept = []
    for row in rows:
        chosen, rejected = _completion_text(row["chosen"]), _completion_text(row["rejected"])
        if not chosen.strip() or not rejected.strip():
            dropped["empty_completion"] += 1
            continue
        if chosen.strip() == rejected.strip():
            dropped["identical"] += 1
            continue
        key = hashlib.sha256(json.dumps([row["prompt"], row["chosen"], row["rejected"]], ensure_ascii=False).encode()).digest()
        if key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        kept.append(row)
    return kept


class LengthCheck:
    """Measures pairs the way TRL's ORPO trainer will tokenize them, with the base's tokenizer.

    ORPO applies the chat template (conversational rows), tokenizes the prompt without special tokens,
    prepends BOS unless the prompt starts with it, appends EOS to each completion, and when prompt +
    completion exceeds ``max_length`` truncates the completion only. A pair is kept when its prompt
    leaves room for at least ``min(min_room, longer completion)`` completion tokens; otherwise the
    trainer would learn from a stub of the answer, or from nothing.
    """

    def __init__(self, tokenizer: Any, max_length: int, min_room: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.min_room = min_room

    @classmethod
    def for_base(cls, base: PreparedBase, max_length: int, min_room: int) -> LengthCheck:
        from bonsai.model.chat_template import load_tokenizer

        return cls(load_tokenizer(base.path, base.chat_template), max_length, min_room)

    def measure(self, row: dict[str, Any]) -> tuple[int, int, int]:
        """(prompt, chosen, rejected) token counts as the trainer will see them."""
        from trl.data_utils import maybe_apply_chat_template

        example = maybe_apply_chat_template({"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}, self.tokenizer)
        tok = self.tokenizer
        prompt_ids = tok(example["prompt"], add_special_tokens=False)["input_ids"]
        bos, eos = tok.bos_token_id, tok.eos_token_id
        n_prompt = len(prompt_ids) + (1 if bos is not None and (not prompt_ids or prompt_ids[0] != bos) else 0)

        def completion(text: str) -> int:
            ids = tok(example["prompt"] + text, add_special_tokens=False)["input_ids"]
            n = max(0, len(ids) - len(prompt_ids))
            return n + (0 if ids and ids[-1] == eos and n else 1)

        return n_prompt, completion(example["chosen"]), completion(example["rejected"])

    def fits(self, row: dict[str, Any]) -> tuple[bool, bool]:
        """(kept, completion will be truncated)."""
        n_prompt, n_chosen, n_rejected = self.measure(row)
        longest = max(n_chosen, n_rejected)
        room = self.max_length - n_prompt
        return room >= min(self.min_room, longest), room < longest


def split_by_motion(rows: Sequence[dict[str, Any]], test_fraction: float, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str], list[str]]:
    """Whole motions to the test side, in a seeded order, until it holds ``test_fraction`` of the rows.

    With two motions or more and a non-zero fraction, each side gets at least one motion; with a single
    motion everything trains (there is nothing to hold out without leaking the motion).
    """
    counts = Counter(r["motion"] for r in rows)
    motions = sorted(counts, key=lambda m: (hashlib.sha256(f"{seed}\0{m}".encode()).hexdigest(), m))
    test_motions: list[str] = []
    if test_fraction > 0 and len(motions) >= 2:
        target, held = test_fraction * len(rows), 0
        for motion in motions[:-1]:
            if held >= target:
                break
            test_motions.append(motion)
            held += counts[motion]
    elif test_fraction > 0:
        log.warning("all pairs share one motion: nothing can be held out without leaking it, so the test split is empty")
    held_out = set(test_motions)
    train = [r for r in rows if r["motion"] not in held_out]
    test = [r for r in rows if r["motion"] in held_out]
    return train, test, sorted(set(counts) - held_out), sorted(held_out)


# --- building -------------------------------------------------------------------------------------


async def build_dataset(options: BuildOptions, *, base: PreparedBase, book: PersonaBook, home: Path, engines: Engines) -> BuiltDataset:
    """Read the store, run the strategies, clean, measure, split and write the dataset (nothing on error)."""
    strategies = [make_strategy(s.name, s.params) for s in options.strategies]
    names = [s.name for s in strategies]
    if len(set(names)) != len(names):
        raise ConfigError(f"a strategy is named twice ({', '.join(names)})", "name each strategy once")
    persona = book.get(options.persona)
    for strategy in strategies:
        strategy.check(persona)
    described = [StrategyEntry.model_validate(s.describe()) for s in strategies]
    if options.out is not None:
        _check_out(options.out)
    fmt = dataset_format(persona)

    with TranscriptStore(options.store, read_only=True) as store:
        sources, dropped = collect_sources(store, persona, base)
    log.info("%d usable turns of %s in %s", len(sources), persona.name, options.store)

    ctx = PairContext(
        persona=persona, book=book, home=home, sources=sources, engines=engines,
        seed=options.seed, concurrency=options.concurrency, max_tokens=options.max_tokens,
    )
    pairs: list[Pair] = []
    for strategy in strategies:
        made = await strategy.build(ctx)
        log.info("%s: %d pairs", strategy.name, len(made))
        pairs.extend(made)
    dropped.update(ctx.dropped)

    rows = clean_rows((pair_row(p, fmt) for p in pairs), dropped)
    check = LengthCheck.for_base(base, options.max_length, options.min_room)
    fitting, truncated = [], 0
    for row in rows:
        ok, cut = check.fits(row)
        if not ok:
            dropped["prompt_too_long"] += 1
            continue
        truncated += cut
        fitting.append(row)
    if len(fitting) < options.min_pairs:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(dropped.items())) or "none"
        raise TooFewPairs(
            f"only {len(fitting)} usable preference pair{'s' if len(fitting) != 1 else ''} for {persona.name} "
            f"from {len(sources)} turns with {', '.join(names)} (need at least {options.min_pairs}; dropped: {reasons})",
            "run more debates with --candidates 4 or more, use another strategy, or lower --min-pairs"
            + (" / --min-gap" if "best-of-n" in names else ""),
        )

    train, test, train_motions, test_motions = split_by_motion(fitting, options.test_fraction, options.seed)
    card = DatasetCard(
        persona=persona.name,
        language=persona.language,
        reasoning=persona.reasoning.value,
        format=fmt,
        base_model=base.name,
        base_hash=base.content_hash,
        source_store=str(Path(options.store).resolve()),
        debate_ids=sorted({r["debate_id"] for r in fitting}),
        strategies=described,
        counts=Counts(
            kept=len(fitting), train=len(train), test=len(test), dropped=dict(sorted(dropped.items())), truncated=truncated,
            by_strategy={name: sum(r["strategy"] == name for r in fitting) for name in names},
        ),
        max_length=options.max_length,
        min_room=options.min_room,
        split=Split(test_fraction=options.test_fraction, seed=options.seed, train_motions=train_motions, test_motions=test_motions),
        content_hash="",
        created_at=time.time(),
    )
    card.content_hash = content_hash(hashed_settings(card), train, test)
    final = options.out if options.out is not None else datasets_dir(home) / persona.name / card.content_hash[:12]
    return _write(final, card, {"train": train, "test": test})


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file", "pass a folder for the dataset")
    if out.is_dir() and any(out.iterdir()) and not (out / CARD_FILE).is_file():
        raise ConfigError(f"--out {out} is a folder that holds something other than a dataset", "pass a new or empty folder")


def _existing(final: Path, card: DatasetCard) -> BuiltDataset | None:
    """The dataset already at ``final`` if it is this one; an error if it is another."""
    if not final.exists() or (final.is_dir() and not any(final.iterdir())):
        return None
    _check_out(final)
    existing = read_card(final)
    if existing.content_hash != card.content_hash:
        raise ConfigError(
            f"{final} already holds another dataset (content hash {existing.content_hash[:12]}, this one {card.content_hash[:12]})",
            "pass a new --out folder, or remove the old one",
        )
    log.info("an identical dataset is already at %s", final)
    return BuiltDataset(final, existing, reused=True)


def _write(final: Path, card: DatasetCard, splits: dict[str, list[dict[str, Any]]]) -> BuiltDataset:
    found = _existing(final, card)
    if found is not None:
        return found
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    feats = features(card.format)  # type: ignore[arg-type]
    dd = DatasetDict(
        {
            name: Dataset.from_list(rows, features=feats) if rows else Dataset.from_dict({k: [] for k in feats}, features=feats)
            for name, rows in splits.items()
        }
    )
    if final.is_dir():
        final.rmdir()  # empty (checked above): the staged folder takes its place
    with atomic.staged_dir(final) as tmp:
        # one shard per split, even an empty one: datasets saves an empty split as zero shards, which
        # load_from_disk then cannot read back
        dd.save_to_disk(str(tmp), num_shards={name: 1 for name in SPLITS})
        for name in SPLITS:
            # pyarrow directly: it writes a schema even for an empty split, which datasets' to_parquet does not
            pq.write_table(dd[name].data.table, str(tmp / f"{name}.parquet"))
        write_card(tmp, card)
    # another build may have won the race to the same folder: then its copy stays and ours is gone
    found = _existing(final, card)
    assert found is not None
    return BuiltDataset(final, found.card, reused=found.card.created_at != card.created_at)


def load_pairs(path: Path) -> tuple[Any, dict[str, Any]]:
    """The dataset at ``path`` (a ``DatasetDict`` with train and test) and its card, checked against each other."""
    from datasets import load_from_disk

    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"there is no dataset at {path}", "build one with `bonsai data build --persona NAME --strategy ...`")
    card = read_card(path)
    if not (path / "dataset_dict.json").is_file():
        raise DatasetError(f"{path} has a card but no dataset_dict.json: the dataset is incomplete", "rebuild it with `bonsai data build`")
    try:
        dd = load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"the dataset at {path} cannot be loaded ({exc})", "rebuild it with `bonsai data build`") from None
    if sorted(dd) != sorted(SPLITS):
        raise DatasetError(f"the dataset at {path} has splits {sorted(dd)}, not train and test", "rebuild it with `bonsai data build`")
    train, test = dd["train"].to_list(), dd["test"].to_list()
    if content_hash(hashed_settings(card), train, test) != card.content_hash:
        raise DatasetError(
            f"the dataset at {path} does not match its card's content hash {card.content_hash[:12]}: it was changed after it was built",
            "rebuild it with `bonsai data build`",
        )
    return dd, card.model_dump(mode="json")
