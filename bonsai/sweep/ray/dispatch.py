"""Dispatching a plan's jobs to started Ray workers: at most ``slots`` per worker in flight, bundles
imported on arrival, engine errors and dead workers retried with backoff, budgets enforced."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from bonsai.debate.usage import bundle_tokens
from bonsai.errors import BonsaiError, EngineError, StoreUnavailable
from bonsai.store.records import DebateStatus
from bonsai.store.transcripts import TranscriptStore
from bonsai.sweep.ledger import Ledger, ProgressHook, SweepProgress, SweepResult
from bonsai.sweep.plan import SweepJob, SweepPlan
from bonsai.sweep.ray.cluster import first_line

log = logging.getLogger(__name__)

#: an engine's start on a worker, model load included (vLLM on a large model takes minutes)
START_TIMEOUT_S = 900.0
#: how often a restarting worker is asked whether it is back
RECOVERY_POLL_S = 1.0


@dataclasses.dataclass
class _Worker:
    index: int
    handle: Any
    slots: int
    busy: int = 0
    generation: int = 0  # bumped on every death seen, so one death failing many jobs counts once
    deaths: int = 0
    alive: bool = True
    recovering: bool = False  # died; Ray is restarting it and nothing is sent to it until it has started

    @property
    def free(self) -> int:
        return self.slots - self.busy if self.alive and not self.recovering else 0


@dataclasses.dataclass
class _InFlight:
    job: SweepJob
    attempt: int
    worker: _Worker
    generation: int
    cancel: Callable[[], None]


#: (worker, method, args) -> (an awaitable of the result, a function that cancels the call)
Call = Callable[[_Worker, str, tuple[Any, ...]], tuple[Awaitable[Any], Callable[[], None]]]


class _Stop(Exception):
    """A budget was reached."""


class RaySweep:
    """Dispatch a plan's jobs to started workers: at most ``slots`` per worker in flight, bundles imported on
    arrival, engine errors and dead workers retried with backoff, budgets enforced.

    Ray-free apart from ``call`` and the error types it is given, so its bookkeeping can be tested with fake workers."""

    def __init__(
        self,
        plan: SweepPlan,
        store: TranscriptStore,
        workers: list[_Worker],
        call: Call,
        *,
        actor_errors: tuple[type[BaseException], ...] = (),
        unavailable_errors: tuple[type[BaseException], ...] = (),
        transient_errors: tuple[type[BaseException], ...] = (),
        start_args: tuple[Any, ...] = (),
        on_progress: ProgressHook | None = None,
        ledger: Ledger | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        seed: int = 0,
    ) -> None:
        """``ledger``: the run's bookkeeping, when the caller has counted what is left already."""
        cfg = plan.sweep.config
        self.plan = plan
        self.store = store
        self.workers = workers
        self.call = call
        self.budget = cfg.budget
        self.actor_errors = actor_errors
        self.unavailable_errors = unavailable_errors
        self.transient_errors = transient_errors
        self.start_args = start_args
        self._sleep = sleep
        self.ledger = ledger or Ledger(plan, store, retries=cfg.retries, backoff_s=cfg.backoff_s, budget=cfg.budget, on_progress=on_progress, seed=seed)
        self._inflight: dict[asyncio.Future[Any], _InFlight] = {}
        self._recovering: dict[asyncio.Future[bool], _Worker] = {}

    @property
    def progress(self) -> SweepProgress:
        return self.ledger.progress

    @property
    def stopped(self) -> str | None:
        return self.ledger.stopped

    def emit(self) -> None:
        self.ledger.emit()

    def result(self) -> SweepResult:
        return self.ledger.result()

    def _stop(self, reason: str) -> None:
        self.ledger.stop(reason)
        raise _Stop(reason)

    def check_tokens(self) -> None:
        reason = self.ledger.token_budget_reached()
        if reason is not None:
            self._stop(reason)

    async def run(self, todo: list[SweepJob]) -> SweepResult:
        p = self.progress
        p.started = time.monotonic()
        deadline = p.started + self.budget.wall_s if self.budget.wall_s else None
        ready: deque[tuple[SweepJob, int]] = deque((job, 1) for job in todo)
        delayed: list[tuple[float, int, SweepJob, int]] = []  # (when, tie-breaker, job, attempt)
        seq = 0
        self.emit()
        try:
            while ready or delayed or self._inflight:
                now = time.monotonic()
                while delayed and delayed[0][0] <= now:
                    _, _, job, attempt = heapq.heappop(delayed)
                    ready.append((job, attempt))
                while ready:
                    worker = max(self.workers, key=lambda w: w.free)
                    if worker.free <= 0:
                        break
                    job, attempt = ready.popleft()
                    self._submit(job, attempt, worker)
                if not any(w.alive for w in self.workers):
                    raise EngineError(
                        f"every Ray worker died for good; {len(ready) + len(delayed) + len(self._inflight)} debates were left",
                        "see the workers' logs (`ray logs`, or the session folder under the cluster's temp dir); out of memory is the usual cause",
                    )
                waits = [w for w in (delayed[0][0] - now if delayed else None, deadline - now if deadline else None) if w is not None]
                timeout = max(0.0, min(waits)) if waits else None
                pending = [*self._inflight, *self._recovering]
                if pending:
                    done, _ = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                else:
                    await self._sleep(timeout or 0.0)
                    done = set()
                for fut in done:
                    if fut in self._recovering:
                        self._recovered(fut)
                        continue
                    flight = self._inflight.pop(fut)
                    flight.worker.busy -= 1
                    p.running = len(self._inflight)
                    retry = self._settle(fut, flight)
                    if retry is not None:
                        heapq.heappush(delayed, (time.monotonic() + retry, seq, flight.job, flight.attempt + 1))
                        seq += 1
                    self.emit()
                if done and (ready or delayed or self._inflight):
                    self.check_tokens()  # after the whole batch: a bundle that has arrived is never dropped
                if deadline is not None and time.monotonic() >= deadline and (ready or delayed or self._inflight):
                    self._stop(f"wall-time budget of {self.budget.wall_s:g} s reached")
        except _Stop:
            log.warning("sweep %s: %s; stopping the debates in flight (they run again with --resume)", self.plan.name, self.stopped)
        finally:
            self.cancel_inflight()
        return self.result()

    def cancel_inflight(self) -> None:
        for task in self._recovering:
            task.cancel()
        self._recovering.clear()
        for fut, flight in list(self._inflight.items()):
            with contextlib.suppress(Exception):
                flight.cancel()
            fut.cancel()
            flight.worker.busy -= 1
        self._inflight.clear()
        self.progress.running = 0

    def _submit(self, job: SweepJob, attempt: int, worker: _Worker) -> None:
        awaitable, cancel = self.call(worker, "run_job", (job.model_dump_json(),))
        fut = asyncio.ensure_future(awaitable)
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "exception was never retrieved"
        self._inflight[fut] = _InFlight(job, attempt, worker, worker.generation, cancel)
        worker.busy += 1
        self.progress.running = len(self._inflight)
        self.emit()

    def _settle(self, fut: asyncio.Future[Any], flight: _InFlight) -> float | None:
        """Import a bundle, or decide what an error means; returns a retry delay, or None when settled."""
        job, attempt = flight.job, flight.attempt
        exc = fut.exception()
        cause = getattr(exc, "cause", None) or exc  # a RayTaskError carries the worker's exception
        if exc is None:
            try:
                self._import(job, fut.result())
                return None
            except StoreUnavailable as failed:  # the driver's store (locked, full): the worker still has the
                message = f"store error: {failed.message}"  # debate, and ships it again on the retry
        elif isinstance(exc, self.actor_errors):
            self._worker_died(flight, exc)
            message = f"Ray worker {flight.worker.index} died ({type(exc).__name__}) while it ran the debate"
        elif isinstance(cause, EngineError):
            message = f"engine error: {cause.message}"
        elif isinstance(cause, StoreUnavailable):  # the worker's own store or checkpoints: retried like the engine
            message = f"store error: {cause.message}"
        elif isinstance(cause, BonsaiError):
            self._fail(job, cause.message, attempt)
            return None
        elif isinstance(exc, self.transient_errors):
            message = f"{type(exc).__name__}: {first_line(exc)}"
        else:  # a bug in one debate must not take the others down; the worker's traceback goes to the log
            log.error("debate %s failed on Ray worker %d:\n%s", job.debate_id, flight.worker.index, exc)
            self._fail(job, f"{type(cause).__name__}: {first_line(cause)}", attempt)
            return None
        delay = self.ledger.retry_delay(attempt)
        if delay is None:
            self._fail(job, f"{message} (after {attempt} attempts)", attempt)
            return None
        log.warning("debate %s: %s; retry %d of %d in %.1f s (from its start, on any worker)", job.debate_id, message, attempt, self.ledger.retries, delay)
        return delay

    def _worker_died(self, flight: _InFlight, exc: BaseException) -> None:
        w = flight.worker
        if flight.generation != w.generation or not w.alive:
            return  # the same death, seen through another of its jobs
        w.generation += 1
        w.deaths += 1
        w.recovering = True
        log.warning("Ray worker %d died (%s); waiting for Ray to restart it", w.index, first_line(exc))
        task = asyncio.ensure_future(self._recover(w))
        self._recovering[task] = w

    async def _recover(self, w: _Worker) -> bool:
        """Start the restarted worker's engine before it gets jobs again; False when it is gone for good
        (Ray's restarts are used up) or its engine no longer starts."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            awaitable, _ = self.call(w, "start", self.start_args)
            try:
                await awaitable
                return True
            except self.unavailable_errors as exc:  # still restarting
                if time.monotonic() > deadline:
                    log.error("Ray worker %d did not come back within %g s: %s", w.index, START_TIMEOUT_S, first_line(exc))
                    return False
                await asyncio.sleep(RECOVERY_POLL_S)
            except Exception as exc:
                log.error("Ray worker %d is gone for good: %s", w.index, first_line(getattr(exc, "cause", None) or exc))
                return False

    def _recovered(self, task: asyncio.Future[bool]) -> None:
        w = self._recovering.pop(task)
        w.recovering = False
        w.alive = not task.cancelled() and task.exception() is None and bool(task.result())
        if w.alive:
            log.warning("Ray worker %d is back (restart %d)", w.index, w.deaths)

    def _import(self, job: SweepJob, bundle: dict[str, Any]) -> None:
        # the debate's stored settings name the driver's adapter and format paths, not the worker's copies
        bundle["debate"]["config"]["spec"] = job.spec.model_dump(mode="json")
        # the one count (debate/usage.py); a debate resumed on a worker ships its earlier turns again, and
        # those are already in the sweep's count from before this run
        before = self.store.debate_tokens(job.debate_id) if self.store.debate_statuses([job.debate_id]) else 0
        self.store.import_bundle(bundle)
        self.progress.tokens += max(0, bundle_tokens(bundle) - before)
        status = bundle["debate"]["status"]
        if status == DebateStatus.FINISHED:
            self.progress.done += 1
        else:
            self._fail(job, f"ended with status {status}", 1)

    def _fail(self, job: SweepJob, message: str, attempts: int) -> None:
        self.ledger.fail(job, message, attempts)
