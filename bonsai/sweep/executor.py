"""Run a sweep's debates concurrently against one engine, exactly once each, within budgets.

All debates share one ``DebateRunner`` (one compiled graph, one checkpointer) and one engine, and up to
``concurrency`` of them are in flight at once, so the engine's continuous batching sees many requests
from many debates at every step instead of one debate's single stream.

Exactly once: a debate's id comes from the plan, so a finished debate is found in the store and skipped,
a debate that was in flight when the process died is resumed from its last checkpoint (the turn that was
being generated is generated again, and with the queued checkpoints of ``bonsai sweep`` the one or two
before it when their checkpoints were still queued: see ``bonsai.debate.checkpoint_queue``; turns are
written by key, never appended), and a debate that never started is started. Engine errors, and store
errors from outside (the file locked by another writer past the busy timeout, a full disk, an I/O error),
are retried with exponential backoff and jitter by resuming from the checkpoint, ``retries`` times, and
then recorded as the debate's failure with its reason; errors in the debate's own set-up (a motion that
does not fit, a broken adapter) are not, because a retry cannot fix them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from bonsai.debate import events as ev
from bonsai.debate.runner import DebateRunner
from bonsai.errors import BonsaiError, EngineError, StoreUnavailable
from bonsai.store.records import DebateStatus
from bonsai.store.transcripts import TranscriptStore
from bonsai.sweep.config import Budget
from bonsai.sweep.ledger import Ledger, ProgressHook, SweepProgress, SweepResult, distinct_setups, setup_error
from bonsai.sweep.plan import SweepJob, SweepPlan

log = logging.getLogger(__name__)


DebateHook = Callable[[SweepJob, dict[str, Any]], None]


class _Stop(Exception):
    """Raised inside the run to stop every worker (a budget was reached)."""


class SweepExecutor:
    def __init__(
        self,
        runner: DebateRunner,
        store: TranscriptStore,
        plan: SweepPlan,
        *,
        concurrency: int,
        retries: int,
        backoff_s: float,
        budget: Budget | None = None,
        on_progress: ProgressHook | None = None,
        on_debate: DebateHook | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        seed: int = 0,
    ) -> None:
        self.runner = runner
        self.store = store
        self.plan = plan
        self.concurrency = concurrency
        self.budget = budget or Budget()
        self.on_debate = on_debate
        self._sleep = sleep
        self.ledger = Ledger(plan, store, retries=retries, backoff_s=backoff_s, budget=self.budget, on_progress=on_progress, seed=seed)
        self._workers: list[asyncio.Task[None]] = []
        #: how long debates get to reach their next event after the wall-time budget, before cancellation
        self.stop_grace_s = 30.0

    # --- checks before anything runs ------------------------------------------------------------

    async def check(self) -> None:
        """Validate each distinct debate set-up against the engine (adapters load, motions fit)."""
        for job in distinct_setups(self.plan.jobs):
            try:
                await self.runner.check(job.spec)
            except BonsaiError as exc:
                raise setup_error(job, exc) from None

    # --- the run --------------------------------------------------------------------------------

    async def run(self) -> SweepResult:
        todo = self.ledger.pending()
        # "running" here is stale: the process that ran it is gone (the sweep's lock, taken by the caller,
        # keeps two runs of one sweep apart), perhaps killed, perhaps stopped by a store it could not write
        statuses = self.store.debate_statuses(j.debate_id for j in todo)
        for job in todo:
            if statuses.get(job.debate_id) == DebateStatus.RUNNING:
                self.store.set_status(job.debate_id, DebateStatus.INTERRUPTED)
        self._emit()
        if self._tokens_spent():
            p = self.progress
            return SweepResult(p.total, p.done, p.done_before, [], self.ledger.stopped, 0, 0.0)
        queue: asyncio.Queue[SweepJob] = asyncio.Queue()
        for job in todo:
            queue.put_nowait(job)
        workers = [asyncio.create_task(self._worker(queue), name=f"sweep-worker-{i}") for i in range(min(self.concurrency, len(todo)))]
        self._workers = workers
        watchdog = asyncio.create_task(self._watchdog(workers)) if self.budget.wall_s else None
        try:
            results = await asyncio.gather(*workers, return_exceptions=True)
        finally:
            for w in workers:
                w.cancel()
            if watchdog is not None:
                watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watchdog
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, (asyncio.CancelledError, _Stop)):
                raise r
        return self.ledger.result()

    async def _watchdog(self, workers: list[asyncio.Task[None]]) -> None:
        """Past the wall-time budget, debates stop at their next event (between turns, where nothing is
        being written); one that has not stopped within ``stop_grace_s`` is cancelled outright."""
        assert self.budget.wall_s is not None
        await asyncio.sleep(self.budget.wall_s)
        self._stop(f"wall-time budget of {self.budget.wall_s:g} s reached")
        await asyncio.sleep(self.stop_grace_s)
        for w in workers:
            w.cancel()

    @property
    def progress(self) -> SweepProgress:
        return self.ledger.progress

    @property
    def _stop_reason(self) -> str | None:
        return self.ledger.stopped

    def _stop(self, reason: str) -> None:
        if self.ledger.stop(reason):
            log.warning("sweep %s: %s; stopping the debates in flight (they resume with --resume)", self.plan.name, reason)

    def _tokens_spent(self) -> bool:
        reason = self.ledger.token_budget_reached()
        if reason is not None:
            self._stop(reason)
        return self._stop_reason is not None

    async def _worker(self, queue: asyncio.Queue[SweepJob]) -> None:
        while True:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if self._stop_reason is not None:
                return
            self.progress.running += 1
            self._emit()
            try:
                await self._one(job)
            except _Stop:
                return  # the debate was closed at an event: saved as interrupted, resumable
            finally:
                self.progress.running -= 1
                self._emit()

    async def _one(self, job: SweepJob) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                summary = await self._attempt(job)
            except _Stop:
                raise
            except (EngineError, StoreUnavailable) as exc:
                what = "engine error" if isinstance(exc, EngineError) else "store error"
                delay = self.ledger.retry_delay(attempt)
                if delay is None:
                    self._fail(job, f"{what} after {attempt} attempts: {exc.message}", attempt)
                    return
                log.warning("debate %s: %s; retry %d of %d in %.1f s (from its last checkpoint)", job.debate_id, exc.message, attempt, self.ledger.retries, delay)
                await self._sleep(delay)
                if self._stop_reason is not None:
                    raise _Stop(self._stop_reason)
                continue
            except BonsaiError as exc:
                self._fail(job, exc.message, attempt)
                return
            except Exception as exc:  # a bug in one debate must not take the other debates down
                log.exception("debate %s failed", job.debate_id)
                self._fail(job, f"{type(exc).__name__}: {exc}", attempt)
                return
            if summary.get("status") == DebateStatus.FINISHED:
                self.progress.done += 1
            else:
                self._fail(job, f"ended with status {summary.get('status')}", attempt)
                return
            if self.on_debate is not None:
                self.on_debate(job, summary)
            self._emit()
            return

    async def _attempt(self, job: SweepJob) -> dict[str, Any]:
        status = self.store.debate_statuses([job.debate_id]).get(job.debate_id)
        if status == "finished":
            # an earlier attempt stored its verdict, then failed after it (its last checkpoint could not be
            # written: a full disk): the debate is done, and resuming it would be refused
            verdicts = self.store.verdicts(job.debate_id)
            panel = verdicts[-1] if verdicts else None
            return {"debate_id": job.debate_id, "resumed": True, "status": "finished", "winner": self.store.get_debate(job.debate_id).winner,
                    "prob_a": panel.prob_a if panel else None, "confidence": panel.confidence if panel else None}
        exists = status is not None
        # no token events: progress needs only whole turns, and per-token events cost more than decoding at scale
        if exists:
            events = self.runner.resume(job.debate_id, stream_tokens=False)
        else:
            events = self.runner.run(job.spec, debate_id=job.debate_id, extra={"sweep_job": job.labels()}, stream_tokens=False)
        summary: dict[str, Any] = {"debate_id": job.debate_id, "resumed": exists}
        async with contextlib.aclosing(events) as stream:
            async for event in stream:
                if isinstance(event, (ev.TurnEnd, ev.Verdict)):
                    self.progress.tokens += ev.generated_tokens(event)  # the one count (debate/usage.py)
                    self._emit()
                    self._tokens_spent()
                if isinstance(event, ev.Verdict):
                    summary.update(prob_a=event.prob_a, confidence=event.confidence)
                elif isinstance(event, ev.DebateEnd):
                    summary.update(status=event.status, winner=event.winner)
                if self._stop_reason is not None and isinstance(event, (ev.TurnStart, ev.Judging)):
                    # a node that has not started generating: closing the stream here cancels it before it
                    # writes anything, so the resume re-runs exactly that turn (saved as interrupted)
                    raise _Stop(self._stop_reason)
        return summary

    def _fail(self, job: SweepJob, message: str, attempts: int) -> None:
        self.ledger.fail(job, message, attempts)

    def _emit(self) -> None:
        self.ledger.emit()
