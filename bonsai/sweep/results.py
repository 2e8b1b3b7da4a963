"""A sweep's finished debates as rating outcomes, read from the store alone.

Each sweep debate carries its competitors' labels in its stored settings (``sweep_job``), so ratings can
be computed on another machine from the SQLite file, without the sweep file or the adapter registry.
"""

from __future__ import annotations

import logging

from bonsai.errors import ConfigError
from bonsai.store.transcripts import TranscriptStore
from bonsai.sweep.ratings.outcome import Outcome

log = logging.getLogger(__name__)


def sweep_outcomes(store: TranscriptStore, name: str) -> list[Outcome]:
    if store.get_sweep(name) is None and not store.list_debates(sweep=name, limit=1):
        known = ", ".join(s.name for s in store.list_sweeps()) or "none"
        raise ConfigError(f"there is no sweep named {name!r} in {store.path}", f"sweeps in this store: {known}")
    outcomes = []
    for debate, verdicts, tokens in store.sweep_results(name):
        job = debate.config.get("sweep_job")
        if not isinstance(job, dict) or debate.winner not in ("A", "B", "tie"):
            log.warning("debate %s of sweep %s has no competitor labels or no winner; left out of the ratings", debate.debate_id, name)
            continue
        verdict = verdicts[-1] if verdicts else None  # the panel's when there is one (sorted last)
        outcomes.append(
            Outcome(
                debate_id=debate.debate_id,
                motion=debate.motion,
                a=str(job["a"]),
                b=str(job["b"]),
                winner=debate.winner,
                prob_a=verdict.prob_a if verdict else None,
                confidence=verdict.confidence if verdict else None,
                judge=",".join(debate.seats.get("judge", [])) or (verdict.judge if verdict else ""),
                format=debate.format,
                seed=debate.seed,
                candidates=debate.candidates,
                tokens=tokens,
            )
        )
    return outcomes
