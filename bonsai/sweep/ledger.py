"""A sweep run's bookkeeping, one for the local and the Ray executor: what is left to run, progress,
failures, retries with backoff, the token budget and the result.

The executors differ in how debates run (in this process between turns, or as whole debates on Ray
workers); what they count, and how a failed debate is recorded, is the same, so it lives here once.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bonsai.debate.spec import DebateSpec
from bonsai.errors import BonsaiError
from bonsai.store.records import DebateStatus
from bonsai.store.transcripts import TranscriptStore
from bonsai.sweep.config import Budget
from bonsai.sweep.plan import SweepJob, SweepPlan

log = logging.getLogger(__name__)


@dataclass
class SweepProgress:
    total: int
    done: int = 0  # finished, this run and before
    done_before: int = 0  # finished before this run started
    failed: int = 0
    running: int = 0
    retries: int = 0
    tokens: int = 0  # generated in this run
    tokens_before: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Remaining debates at this run's finishing rate (None until one has finished)."""
        finished_now = self.done - self.done_before
        remaining = self.total - self.done - self.failed
        if finished_now <= 0 or remaining <= 0:
            return None if remaining > 0 else 0.0
        return remaining * self.elapsed / finished_now


@dataclass
class Failure:
    debate_id: str
    message: str
    attempts: int


@dataclass
class SweepResult:
    total: int
    finished: int
    skipped: int
    failures: list[Failure]
    stopped: str | None  # why the run stopped early (budget), else None
    tokens: int
    seconds: float

    @property
    def complete(self) -> bool:
        return self.finished == self.total


ProgressHook = Callable[[SweepProgress], None]


def distinct_setups(jobs: Iterable[SweepJob]) -> list[SweepJob]:
    """One job for each distinct debate set-up (motion, format, seats, adapters, length): what is checked
    against the engine before a sweep is recorded."""
    seen: dict[tuple[Any, ...], SweepJob] = {}
    for job in jobs:
        seen.setdefault(_setup_key(job.spec), job)
    return list(seen.values())


def _setup_key(s: DebateSpec) -> tuple[Any, ...]:
    return (s.motion, s.format, tuple(s.personas or ()), tuple(sorted((s.adapters or {}).items(), key=str)), s.max_tokens)


def setup_error(job: SweepJob, exc: BonsaiError) -> BonsaiError:
    """A set-up check's error, naming the debate it was found in."""
    return type(exc)(f"debate {job.debate_id} ({job.a} vs {job.b}, motion {job.spec.motion[:60]!r}): {exc.message}", exc.hint)


class Ledger:
    """The counts and the failures of one run of ``plan``; ``on_progress`` hears of every change."""

    def __init__(
        self,
        plan: SweepPlan,
        store: TranscriptStore,
        *,
        retries: int,
        backoff_s: float,
        budget: Budget | None = None,
        on_progress: ProgressHook | None = None,
        seed: int = 0,
    ) -> None:
        self.plan = plan
        self.store = store
        self.retries = retries
        self.backoff_s = backoff_s
        self.budget = budget or Budget()
        self.on_progress = on_progress
        self.progress = SweepProgress(total=len(plan.jobs))
        self.failures: list[Failure] = []
        #: why the run stopped early (a budget), else None
        self.stopped: str | None = None
        self._rng = random.Random(seed)

    def pending(self, *, where: str = "", rerun: str = "resume") -> list[SweepJob]:
        """The plan's jobs not finished in the store; counts those that are as done before this run."""
        jobs = self.plan.jobs
        statuses = self.store.debate_statuses(j.debate_id for j in jobs)
        todo = [j for j in jobs if statuses.get(j.debate_id) != DebateStatus.FINISHED]
        p = self.progress
        p.done = p.done_before = len(jobs) - len(todo)
        p.tokens_before = self.store.sweep_tokens(self.plan.name)
        p.started = time.monotonic()
        resumed = sum(1 for j in todo if j.debate_id in statuses)
        log.info("sweep %s%s: %d debates, %d finished before, %d to %s, %d to start", self.plan.name, where, len(jobs), p.done, resumed, rerun, len(todo) - resumed)
        return todo

    def emit(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def stop(self, reason: str) -> bool:
        """Record why the run stops; True the first time (the later reasons are dropped)."""
        if self.stopped is not None:
            return False
        self.stopped = reason
        return True

    def token_budget_reached(self) -> str | None:
        """Why the run must stop for tokens, or None while the budget lasts."""
        cap = self.budget.tokens
        total = self.progress.tokens_before + self.progress.tokens
        return f"token budget of {cap} reached ({total} generated)" if cap is not None and total >= cap else None

    def retry_delay(self, attempt: int) -> float | None:
        """The backoff before attempt ``attempt + 1`` (exponential, with jitter), counted as a retry; None
        when the retries are used up."""
        if attempt > self.retries:
            return None
        self.progress.retries += 1
        return self.backoff_s * (2 ** (attempt - 1)) * self._rng.uniform(0.5, 1.5)

    def fail(self, job: SweepJob, message: str, attempts: int) -> None:
        """Count ``job`` as failed and mark its stored debate (if it has one) failed."""
        self.progress.failed += 1
        self.failures.append(Failure(job.debate_id, message, attempts))
        with contextlib.suppress(BonsaiError):
            if self.store.debate_statuses([job.debate_id]):
                self.store.set_status(job.debate_id, DebateStatus.FAILED)
        log.error("debate %s (%s vs %s) failed: %s", job.debate_id, job.a, job.b, message)
        self.emit()

    def result(self) -> SweepResult:
        p = self.progress
        return SweepResult(total=p.total, finished=p.done, skipped=p.done_before, failures=list(self.failures),
                           stopped=self.stopped, tokens=p.tokens, seconds=p.elapsed)
