"""``run_on_ray``: pin the adapters, start the workers, check every debate set-up, then dispatch."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bonsai.debate.runner import plan_debate
from bonsai.engine import EngineConfig
from bonsai.registry.identity import inspect_adapter
from bonsai.errors import BonsaiError, ConfigError, EngineError
from bonsai.model.prepare import EMBEDDED_NAME, MANIFEST
from bonsai.personas import PersonaBook
from bonsai.store.transcripts import TranscriptStore
from bonsai.sweep.ledger import Ledger, ProgressHook, SweepResult, distinct_setups, setup_error
from bonsai.sweep.plan import SweepJob, SweepPlan
from bonsai.sweep.ray.cluster import INSTALL_HINT, connect, first_line, import_ray, shutdown
from bonsai.sweep.ray.dispatch import START_TIMEOUT_S, RaySweep, _Worker
from bonsai.sweep.ray.worker import DebateWorker

log = logging.getLogger(__name__)

#: checking every distinct debate set-up on the workers (tokenizing motions), once they have started
CHECK_TIMEOUT_S = 300.0
#: a worker's engine and store closing at the end; after this it is killed
CLOSE_TIMEOUT_S = 60.0
#: the same, when the run ended with an error or was interrupted
ABORT_CLOSE_TIMEOUT_S = 10.0
#: how often Ray restarts a worker that died (``max_restarts``); after that the worker is given up
MAX_RESTARTS = 3


def _pin(jobs: list[SweepJob], book: PersonaBook, home: Path) -> list[SweepJob]:
    """Every seat's adapter folder resolved here, on the driver: a worker's own registry plays no part."""
    seen: dict[tuple[Any, ...], dict[str, str | None]] = {}
    pinned = []
    for job in jobs:
        s = job.spec
        key = (s.format, tuple(s.personas or ()), tuple((s.adapters or {}).items()))
        if key not in seen:
            prepared = plan_debate(s, book, home)
            seen[key] = {name: (str(path) if path else None) for name, path in prepared.adapter_paths.items()}
        pinned.append(job.model_copy(update={"spec": s.model_copy(update={"adapters": dict(seen[key])})}))
    return pinned


def _is_embedded(base: Path | None) -> bool:
    if base is None:
        return False
    with contextlib.suppress(OSError, ValueError):
        return json.loads((base / MANIFEST).read_text()).get("name") == EMBEDDED_NAME
    return False


def _worker_error(exc: BaseException, index: int, what: str) -> BonsaiError:
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, BonsaiError):
        return type(cause)(f"Ray worker {index}: {cause.message}", cause.hint)
    text = str(exc)
    hint = "see the worker's log (`ray logs` on the head, or the session folder under the cluster's temp dir)"
    if "No module named 'bonsai'" in text or "ModuleNotFoundError" in text:
        hint = "install bonsai on every node of the cluster, in the Python that runs Ray: " + INSTALL_HINT
    return EngineError(f"Ray worker {index} failed while {what}: {first_line(cause)}", hint)


async def run_on_ray(
    plan: SweepPlan,
    store: TranscriptStore,
    engine_config: EngineConfig,
    *,
    address: str,
    workers: int | None = None,
    home: Path,
    personas_dir: Path | None = None,
    on_progress: ProgressHook | None = None,
    base_name: str | None = None,
    on_ready: Callable[[], None] | None = None,
) -> SweepResult:
    """Run ``plan``'s unfinished debates on the Ray cluster at ``address``; every bundle lands in ``store``.

    ``workers``: how many engines (default: one per GPU of the cluster, or 1 without GPUs). ``base_name``
    is what debates record as their base model (default: the engine's). ``on_ready`` is called once the
    workers have started and every debate set-up has passed its checks, before the first debate runs
    (the CLI records the sweep there, so a sweep that cannot start leaves nothing behind)."""
    cfg = plan.sweep.config
    ledger = Ledger(plan, store, retries=cfg.retries, backoff_s=cfg.backoff_s, budget=cfg.budget, on_progress=on_progress)
    todo = ledger.pending(where=" on Ray", rerun="re-run")

    def finished_early(stopped: str | None) -> SweepResult:
        if on_ready is not None:
            on_ready()
        ledger.emit()
        p = ledger.progress
        return SweepResult(p.total, p.done, p.done_before, [], stopped, 0, 0.0)

    if not todo:
        return finished_early(None)
    spent = ledger.token_budget_reached()
    if spent is not None:
        return finished_early(spent)

    if workers is not None and workers < 1:
        raise ConfigError(f"--ray-workers {workers}: at least one worker is needed", "leave it out for one per GPU (or 1 without GPUs)")
    ray = import_ray()
    book = PersonaBook.load(personas_dir)
    todo = _pin(todo, book, home)
    adapter_paths = sorted({p for j in todo for p in (j.spec.adapters or {}).values() if p})
    adapter_hashes = {p: inspect_adapter(Path(p)).content_hash for p in adapter_paths}
    formats = {}
    for job in todo:
        if Path(job.spec.format).suffix and job.spec.format not in formats:
            formats[job.spec.format] = Path(job.spec.format).read_text(encoding="utf-8")

    owns_ray = not ray.is_initialized()
    if owns_ray:
        await connect(ray, address)
    handles: list[Any] = []
    sweep: RaySweep | None = None
    clean = False
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 0))
        n = min(workers or (gpus if gpus >= 1 else 1), len(todo))
        slots = max(1, math.ceil(cfg.concurrency / n))
        if (gpus and n > gpus) or (not gpus and n > cpus):
            log.warning("%d Ray workers asked for, but the cluster has %d %s now: the rest wait for nodes to join", n, gpus or cpus, "GPUs" if gpus else "CPUs")
        setup = {
            "engine": engine_config.model_dump(mode="json"),
            "base_name": base_name,
            "embedded": _is_embedded(engine_config.base_model),
            "personas": [p.model_dump(mode="json") for p in book],
            "formats": formats,
        }
        # read once here; a worker fetches a folder's files only if it lacks the folder
        shipped = {p: {"hash": adapter_hashes[p], "files": ray.put({f.name: f.read_bytes() for f in sorted(Path(p).iterdir()) if f.is_file()})}
                   for p in adapter_paths}
        resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        actor = ray.remote(DebateWorker).options(
            max_restarts=MAX_RESTARTS, max_task_retries=0, max_concurrency=slots + 2, scheduling_strategy="SPREAD", **resources
        )
        handles = [actor.remote(i, setup) for i in range(n)]
        pool = [_Worker(i, h, slots) for i, h in enumerate(handles)]
        log.info("sweep %s: starting %d Ray workers (%s each, %d debates in flight each)", plan.name, n, resources, slots)

        def call(worker: _Worker, method: str, args: tuple[Any, ...]) -> tuple[Awaitable[Any], Callable[[], None]]:
            ref = getattr(worker.handle, method).remote(*args)
            return asyncio.wrap_future(ref.future()), lambda: ray.cancel(ref)

        async def gather(calls: list[Awaitable[Any]], what: str, timeout: float) -> list[Any]:
            try:
                return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout)
            except TimeoutError:
                raise EngineError(
                    f"the Ray workers did not finish {what} within {timeout:g} s",
                    f"the cluster may lack room for {n} workers with {resources} each: pass --ray-workers, or add nodes",
                ) from None

        infos = await gather([call(w, "start", (shipped,))[0] for w in pool], "starting", START_TIMEOUT_S)
        for w, r in zip(pool, infos, strict=True):
            if isinstance(r, BaseException):
                raise _worker_error(r, w.index, "starting")
        log.info("sweep %s: Ray workers ready: %s", plan.name, ", ".join(f"{i['worker']}@{i['host']}:{i['pid']}" for i in infos))
        # every distinct debate set-up checked before the sweep is recorded (as the local executor does),
        # spread over the workers
        checks = distinct_setups(todo)
        results = await gather([call(pool[k % n], "check", (job.spec.model_dump_json(),))[0] for k, job in enumerate(checks)],
                               "checking the debates", CHECK_TIMEOUT_S)
        for k, (job, r) in enumerate(zip(checks, results, strict=True)):
            if isinstance(r, BaseException):
                cause = getattr(r, "cause", None) or r
                if isinstance(cause, BonsaiError):
                    raise setup_error(job, cause)
                raise _worker_error(r, pool[k % n].index, "checking the debates")
        if on_ready is not None:
            on_ready()

        from ray.exceptions import ActorUnavailableError, NodeDiedError, ObjectLostError, OutOfMemoryError, RayActorError, WorkerCrashedError

        sweep = RaySweep(plan, store, pool, call, actor_errors=(RayActorError,), unavailable_errors=(ActorUnavailableError,),
                         transient_errors=(NodeDiedError, ObjectLostError, OutOfMemoryError, WorkerCrashedError),
                         start_args=(shipped,), ledger=ledger)
        result = await sweep.run(todo)
        clean = True
        return result
    finally:
        if sweep is not None:
            sweep.cancel_inflight()
        # after an error or Ctrl-C, do not wait long for engines to close: killing the actor frees them too
        await shutdown(ray, handles, timeout=CLOSE_TIMEOUT_S if clean else ABORT_CLOSE_TIMEOUT_S)
        if owns_ray:
            with contextlib.suppress(Exception):
                ray.shutdown()

