"""The dataset card: what a preference dataset was made from and how, next to its rows as ``card.json``.

The content hash covers the rows and every setting that shaped them (persona, base, strategies and
their parameters, length limits, split), not the time or the store's path: building the same pairs
twice gives the same hash, so the folder named after it is found again instead of duplicated, and a
trained adapter can name exactly the data it learned from. :func:`training.dataset.load_pairs`
recomputes it, so an edited dataset is refused instead of silently trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bonsai import atomic
from bonsai.errors import BonsaiError, describe_validation

CARD_FILE = "card.json"
CARD_VERSION = 1


class DatasetError(BonsaiError):
    """A dataset folder that is missing, incomplete, or altered since it was built."""


class StrategyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class Counts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kept: int = Field(ge=0, description="Pairs in the dataset (train + test).")
    train: int = Field(ge=0)
    test: int = Field(ge=0)
    dropped: dict[str, int] = Field(default_factory=dict, description="Turns or pairs left out, by reason.")
    #: kept pairs whose longer completion will be cut at max_length (TRL truncates completions only)
    truncated: int = Field(0, ge=0)
    #: the mix: kept pairs per strategy, in the order the strategies ran (empty in cards from before it was recorded)
    by_strategy: dict[str, int] = Field(default_factory=dict)


class Split(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: Literal["motion"] = "motion"
    test_fraction: float
    seed: int
    train_motions: list[str]
    test_motions: list[str]


class DatasetCard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    card_version: int = CARD_VERSION
    persona: str
    language: str
    reasoning: str
    format: Literal["conversational", "alpaca"]
    base_model: str
    base_hash: str | None
    source_store: str
    debate_ids: list[str]
    strategies: list[StrategyEntry]
    counts: Counts
    max_length: int
    min_room: int
    split: Split
    content_hash: str
    created_at: float


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def hashed_settings(card: DatasetCard | dict[str, Any]) -> dict[str, Any]:
    """The card fields that go into the content hash (besides the rows)."""
    data = card.model_dump(mode="json") if isinstance(card, DatasetCard) else card
    split = data["split"]
    return {
        "persona": data["persona"],
        "format": data["format"],
        "base_hash": data["base_hash"],
        "strategies": data["strategies"],
        "max_length": data["max_length"],
        "min_room": data["min_room"],
        "split": {"by": split.get("by", "motion"), "test_fraction": split["test_fraction"], "seed": split["seed"]},
    }


def content_hash(settings: dict[str, Any], train: Sequence[dict[str, Any]], test: Sequence[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    h.update(_canonical(settings))
    for name, rows in (("train", train), ("test", test)):
        h.update(f"\0{name}\0".encode())
        for row in rows:
            h.update(_canonical(row))
            h.update(b"\n")
    return h.hexdigest()


def write_card(folder: Path, card: DatasetCard) -> None:
    atomic.write_text(folder / CARD_FILE, json.dumps(card.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n")


def read_card(folder: Path) -> DatasetCard:
    path = folder / CARD_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{folder} has no {CARD_FILE}, so it is not a bonsai dataset", "build one with `bonsai data build --persona NAME --strategy ...`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"the dataset card {path} cannot be read ({exc})", "rebuild the dataset with `bonsai data build`") from None
    try:
        return DatasetCard.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(describe_validation(exc)[:5])
        raise DatasetError(f"the dataset card {path} is not valid ({problems})", "rebuild the dataset with `bonsai data build`") from None
