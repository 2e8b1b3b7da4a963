"""A transcript store filled by real debates, shared by the dataset tests (test_pairs, test_dataset, test_data_cli).

Two short best-of-2 debates on the transformers+PEFT engine (it starts in seconds): ronri (ja, xml-tags)
vs skeptic (Alpaca) on one motion, advocate (chat) vs skeptic on another, every debater on the bare base
(debates with LoRA adapters are test_debate_real's; here they would only cost time, the strategies' own
adapters being what these tests are about). Each test module asks for the store through a module
fixture; the first one runs the debates, the others reuse the file from the session's temp folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from bonsai.debate.runner import DebateRunner, DebateSpec
from bonsai.model.prepare import BaseModel
from bonsai.personas import PersonaBook
from bonsai.store.transcripts import TranscriptStore

MOTIONS = ("Cities should ban private cars from their centres", "Homework should be abolished")

#: openings and one rebuttal round, a judge that writes little: the cheapest debate that stores candidates
FORMAT = """\
name: pairs
moderator: "off"
phases:
  - name: opening
    speakers: [A, B]
    instruction: Give your opening statement on the motion.
  - name: rebuttal
    repeat: rounds
    speakers: [B, A]
    instruction: Rebut the other side's latest argument.
judge:
  criteria: [logic]
  max_tokens: 16
"""


async def _fill(store_file: Path, work: Path, base: BaseModel) -> list[str]:
    from bonsai.engine.hf_peft import HFEngine

    fmt = work / "pairs.yaml"
    fmt.write_text(FORMAT)
    home = work / "home"
    home.mkdir(exist_ok=True)
    book = PersonaBook.load()
    specs = [
        DebateSpec(motion=MOTIONS[0], personas=["ronri", "skeptic", "judge"], format=str(fmt), rounds=1, candidates=2, seed=11,
                   max_tokens=12, adapters={"ronri": None, "skeptic": None}),
        DebateSpec(motion=MOTIONS[1], personas=["advocate", "skeptic", "judge"], format=str(fmt), rounds=1, candidates=2, seed=12,
                   max_tokens=12, adapters={"advocate": None, "skeptic": None}),
    ]
    async with HFEngine(base.path, base_hash=base.content_hash) as engine:
        with TranscriptStore(store_file) as store:

            async def run(i: int, spec: DebateSpec) -> str:
                async with DebateRunner(engine, store, work / f"ck{i}.sqlite", book, home, base.name) as runner:
                    events = [ev async for ev in runner.run(spec)]
                assert events[-1].name == "debate_end" and events[-1].status == "finished", events[-1]
                return events[0].debate_id

            # one after the other: batched together, the two debates' rows would pad each other
            # differently from run to run and sample different text; alone, each samples the same
            return [await run(i, spec) for i, spec in enumerate(specs)]


async def debate_store(tmp_path_factory: pytest.TempPathFactory, base: BaseModel) -> Path:
    """The shared store's path (a read-only original: copy it before writing to it)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each xdist worker's own: one store for all of them
    work = root / "pair-store"
    store_file, done = work / "transcripts.sqlite", work / "debates.json"
    with FileLock(str(root / "pair-store.lock")):  # another worker may be filling it: wait for that one
        if not done.is_file():
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            with single_torch_thread():
                ids = await _fill(store_file, work, base)
            done.write_text(json.dumps(ids))
    return store_file


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    """torch on one thread while the transformers engine decodes.

    On this 2-core machine shared with other test runs, torch's two OpenMP threads wait on each other
    at every op: one 16-token decode took 15 s on two threads and 1.1 s on one.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def copy_store(original: Path, dest: Path) -> Path:
    """A private copy of the store to write to (SQLite's backup API: the WAL's rows come along)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(original)) as src, contextlib.closing(sqlite3.connect(dest)) as dst:
        src.backup(dst)
    return dest


def distinct_candidate_turns(store_file: Path, persona: str) -> list[tuple[str, int, str]]:
    """(debate id, turn index, motion) of each of ``persona``'s turns whose candidates differ in text.

    Only those can give a best-of-n pair: a tiny model now and then samples the same text twice, and a
    pair of identical completions is dropped as ``identical``.
    """
    with TranscriptStore(store_file, create=False) as store:
        out = []
        for debate in store.list_debates(persona=persona, newest_first=False):
            for turn in store.turns(debate.debate_id):
                texts = {c.text.strip() for c in store.candidates(debate.debate_id) if c.turn_index == turn.turn_index}
                if turn.speaker == persona and len(texts) > 1:
                    out.append((debate.debate_id, turn.turn_index, debate.motion))
        return out
