"""Turns out of the store as a dataset: one row per debater turn, JSONL or Parquet.

Both formats carry the same rows under one fixed schema (``SCHEMA``), so a file loads with
``datasets.load_dataset("json"|"parquet", ...)`` and exports from different stores concatenate.
Maps whose keys vary from debate to debate (sampling settings, the prompt, the judges' raw side
orders) travel as JSON strings; seats and verdict scores become lists of small structs.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from bonsai import atomic
from bonsai.errors import StoreError
from bonsai.store.records import CandidateRecord, DebateRecord, TurnRecord, VerdictRecord
from bonsai.store.transcripts import TranscriptStore

ExportFormat = Literal["jsonl", "parquet"]
FORMATS: tuple[str, ...] = ("jsonl", "parquet")

_SCORES = pa.list_(pa.struct([("team", pa.string()), ("criterion", pa.string()), ("score", pa.float64())]))

SCHEMA = pa.schema(
    [
        # the debate
        ("debate_id", pa.string()),
        ("motion", pa.string()),
        ("format", pa.string()),
        ("status", pa.string()),
        ("winner", pa.string()),
        ("sweep", pa.string()),
        ("seats", pa.list_(pa.struct([("seat", pa.string()), ("personas", pa.list_(pa.string()))]))),
        # the turn
        ("turn_index", pa.int64()),
        ("phase", pa.string()),
        ("round", pa.int64()),
        ("speaker", pa.string()),
        ("team", pa.string()),
        ("role", pa.string()),
        ("text", pa.string()),
        ("answer", pa.string()),
        ("reasoning", pa.string()),
        ("adapter_name", pa.string()),
        ("adapter_hash", pa.string()),
        ("base_model", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("latency_s", pa.float64()),
        ("first_token_s", pa.float64()),
        ("sampling", pa.string()),
        ("seed", pa.int64()),
        ("finish_reason", pa.string()),
        ("prompt", pa.string()),
        ("created_at", pa.float64()),
        # every token generated for the turn (all candidates and their scoring probes); null before it was counted
        ("generated_tokens", pa.int64()),
        # what the turn was chosen from, and how the debate was judged
        (
            "candidates",
            pa.list_(
                pa.struct(
                    [
                        ("candidate_index", pa.int64()),
                        ("text", pa.string()),
                        ("answer", pa.string()),
                        ("reasoning", pa.string()),
                        ("score", pa.float64()),
                        ("chosen", pa.bool_()),
                        ("output_tokens", pa.int64()),
                        ("finish_reason", pa.string()),
                        ("seed", pa.int64()),
                    ]
                )
            ),
        ),
        (
            "verdict",
            pa.struct(
                [
                    ("judge", pa.string()),
                    ("winner", pa.string()),
                    ("prob_a", pa.float64()),
                    ("confidence", pa.float64()),
                    ("scores", _SCORES),
                    ("rationale", pa.string()),
                    ("parsed", pa.bool_()),
                    ("orders", pa.string()),
                    ("tie_band", pa.float64()),
                ]
            ),
        ),
    ]
)


def export_turns(
    store: TranscriptStore,
    out: Path,
    fmt: ExportFormat,
    debate_ids: Iterable[str] | None = None,
    *,
    include_moderator: bool = False,
    force: bool = False,
) -> int:
    """Write the turns of ``debate_ids`` (all debates, oldest first, when None) to ``out``; returns the row count.

    An existing ``out`` is replaced only with ``force``, and never when it is the store (see
    :func:`check_target`). The file appears only when complete. Nothing to export is an error rather than an empty file,
    because an empty JSONL or Parquet file fails later, far from the cause, when a trainer loads it.
    """
    if fmt not in FORMATS:
        raise StoreError(f"Unknown export format {fmt!r}.", hint=f"use one of: {', '.join(FORMATS)}")
    check_target(out, store.path, force=force)
    if debate_ids is None:
        debates = store.list_debates(newest_first=False)
    else:
        debates = [store.get_debate(store.resolve_id(d)) for d in dict.fromkeys(debate_ids)]
    if not debates:
        raise StoreError(f"The transcript store {store.path} has no debates to export.", hint="run a debate first (`bonsai debate ...`)")

    def batches() -> Iterator[list[dict[str, Any]]]:
        for debate in debates:
            rows = debate_rows(store, debate, include_moderator=include_moderator)
            if rows:
                yield rows

    # an export killed earlier (kill -9, power cut) may have left its stage beside the target
    atomic.clean_orphans(Path(out).parent, depth=0)
    try:
        with atomic.staged_file(out, suffix=".partial", shared=True) as tmp:
            count = _write_jsonl(tmp, batches()) if fmt == "jsonl" else _write_parquet(tmp, batches())
            if count == 0:
                raise StoreError(
                    f"The selected debates in {store.path} have no debater turns to export.",
                    hint="pick debates that got past the opening (see `bonsai transcripts list`)",
                )
            # checked again just before the rename: a file that appeared meanwhile is not replaced unasked
            check_target(out, store.path, force=force)
    except OSError as exc:
        raise StoreError(
            f"Cannot write the export to {out}: {exc.strerror or exc}.",
            hint="check that the folder exists and is writable and the disk has room, or pick another -o",
        ) from exc
    return count


def debate_rows(store: TranscriptStore, debate: DebateRecord, *, include_moderator: bool = False) -> list[dict[str, Any]]:
    """The export rows of one debate, in turn order (also what training reads without a file in between)."""
    by_turn: dict[int, list[CandidateRecord]] = {}
    for cand in store.candidates(debate.debate_id):
        by_turn.setdefault(cand.turn_index, []).append(cand)
    verdict = _combined_verdict(store.verdicts(debate.debate_id))
    verdict_row = _verdict_row(verdict) if verdict is not None else None
    seats = [{"seat": seat, "personas": list(personas)} for seat, personas in debate.seats.items()]
    rows = []
    for turn in store.turns(debate.debate_id):
        if turn.role != "debater" and not include_moderator:
            continue
        rows.append(
            {
                "debate_id": debate.debate_id,
                "motion": debate.motion,
                "format": debate.format,
                "status": debate.status,
                "winner": debate.winner,
                "sweep": debate.sweep,
                "seats": seats,
                **_turn_fields(turn),
                "candidates": [_candidate_row(c) for c in by_turn.get(turn.turn_index, [])],
                "verdict": verdict_row,
            }
        )
    return rows


def _turn_fields(turn: TurnRecord) -> dict[str, Any]:
    fields = turn.to_dict()
    del fields["debate_id"]
    fields["sampling"] = json.dumps(turn.sampling, ensure_ascii=False)
    fields["prompt"] = None if turn.prompt is None else json.dumps(turn.prompt, ensure_ascii=False)
    return fields


def _candidate_row(cand: CandidateRecord) -> dict[str, Any]:
    row = cand.to_dict()
    del row["debate_id"], row["turn_index"]
    return row


def _combined_verdict(verdicts: list[VerdictRecord]) -> VerdictRecord | None:
    """The panel's verdict, or the only judge's when there was one judge; None while unjudged."""
    for verdict in verdicts:
        if verdict.judge == "panel":
            return verdict
    return verdicts[0] if len(verdicts) == 1 else None


def _verdict_row(verdict: VerdictRecord) -> dict[str, Any]:
    return {
        "judge": verdict.judge,
        "winner": verdict.winner,
        "prob_a": verdict.prob_a,
        "confidence": verdict.confidence,
        "scores": [
            {"team": team, "criterion": criterion, "score": float(score)}
            for team, by_criterion in verdict.scores.items()
            for criterion, score in by_criterion.items()
        ],
        "rationale": verdict.rationale,
        "parsed": verdict.parsed,
        "orders": json.dumps(verdict.orders, ensure_ascii=False),
        "tie_band": verdict.tie_band,
    }


def _write_jsonl(path: Path, batches: Iterable[list[dict[str, Any]]]) -> int:
    count = 0
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for rows in batches:
            for row in rows:
                # allow_nan=False: NaN/Infinity are not JSON and the `datasets` JSON reader rejects them.
                fh.write(json.dumps(_finite(row), ensure_ascii=False, allow_nan=False) + "\n")
                count += 1
    return count


def _write_parquet(path: Path, batches: Iterable[list[dict[str, Any]]]) -> int:
    import pyarrow.parquet as pq

    count = 0
    with pq.ParquetWriter(str(path), SCHEMA) as writer:
        for rows in batches:
            writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
            count += len(rows)
    return count


def _finite(value: Any) -> Any:
    """NaN and infinities become null (a judge that produced no usable probability, say)."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def check_target(out: Path, store_path: Path, *, force: bool = False) -> None:
    """Refuse an export target that would destroy data: the store itself (always), any existing file
    (unless ``force``), and say plainly when the file in the way is an SQLite database."""
    out = Path(out)
    if out.is_dir():
        raise StoreError(f"The export target {out} is a folder.", hint="give a file name, e.g. -o turns.jsonl")
    store_path = Path(store_path)
    # the store's own file and its WAL/journal companions, by resolved path and, for links, by inode
    guarded = [store_path, *(store_path.with_name(store_path.name + s) for s in ("-wal", "-shm", "-journal"))]
    target = out.expanduser().resolve()
    for g in guarded:
        same = target == g.expanduser().resolve()
        with contextlib.suppress(OSError):
            same = same or (out.exists() and g.exists() and os.path.samefile(out, g))
        if same:
            raise StoreError(f"Refusing to export onto the transcript store itself ({g}).", hint="pick another output file, e.g. -o turns.jsonl")
    if not out.exists():
        return
    if _is_sqlite(out) and not force:
        raise StoreError(
            f"{out} is an SQLite database (perhaps a transcript store or a checkpoint file); an export would replace it.",
            hint="pick another output file, or pass --force if you really mean to replace that database",
        )
    if not force:
        raise StoreError(f"{out} already exists.", hint="pick another output file, or pass --force to replace it")


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False
