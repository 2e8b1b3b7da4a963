"""Run a sweep's debates on a Ray cluster: one engine per worker, one transcript store on the driver.

Each worker is a Ray async actor that owns one engine (started once), a temporary transcript store and
checkpoint database of its own, and a ``DebateRunner``. It runs many debates at once (``max_concurrency``)
so its engine batches their requests, as the local executor does on one machine. A worker runs one
``SweepJob`` (sent as JSON) and returns the finished debate as a bundle (``TranscriptStore.export_bundle``);
the driver imports each bundle into the one store the moment it arrives, in one transaction, so a killed
driver loses only the debates that were in flight.

Exactly once, as in ``executor.py``: debates finished in the store are skipped. A debate that was in flight
in an earlier run (local or on Ray) re-runs from its start on a worker, because its checkpoints are on
another machine or in a temporary folder that is gone; its import then overwrites the partial rows the
earlier run left (turns are keyed by index, and the new run writes every index). Engine errors and dead
workers (Ray restarts them, ``max_restarts``) are retried with exponential backoff up to the sweep's
``retries``, the debate resubmitted to whichever live worker is free (one that ran an earlier attempt resumes
it from its own checkpoint; any other starts it afresh); other errors fail the debate at once. Tokens are
counted from each imported bundle's turns, so the token budget is checked per finished debate rather than
per turn; reaching either budget cancels the debates in flight at once (unlike the local executor's stop
between turns, nothing of theirs would be kept: their partial rows stay on the workers), and ``--resume``
runs them again.

A worker needs only bonsai (and its engine's extra) installed. The driver pins every seat's adapter folder
before anything runs, and ships the files of the folders through the object store; a worker that does not
have a folder at the same path, with the same content, writes it under its own cache and rewrites the
job's paths. That changes nothing the engines see: an adapter's name is its content hash (see
``bonsai.registry.identity.inspect_adapter``), and the debate's stored settings are put back to the
driver's paths on import. Custom format files and the driver's persona book travel with each worker's
set-up. The embedded base model is prepared by a worker that lacks it; any other base must exist at the
same path on every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import heapq
import inspect
import json
import logging
import math
import os
import random
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bonsai import atomic
from bonsai.debate.runner import DebateRunner, DebateSpec, plan_debate
from bonsai.debate.usage import bundle_tokens
from bonsai.engine import EngineConfig, create_engine
from bonsai.registry.identity import inspect_adapter
from bonsai.errors import AdapterError, BonsaiError, ConfigError, EngineError, ModelError, StoreUnavailable
from bonsai.model.prepare import EMBEDDED_NAME, MANIFEST, resolve_base
from bonsai.paths import bonsai_home
from bonsai.personas import Persona, PersonaBook
from bonsai.store.transcripts import TranscriptStore
from bonsai.sweep.executor import Failure, ProgressHook, SweepProgress, SweepResult
from bonsai.sweep.plan import SweepJob, SweepPlan

log = logging.getLogger(__name__)

#: an engine's start on a worker, model load included (vLLM on a large model takes minutes)
START_TIMEOUT_S = 900.0
#: checking every distinct debate set-up on the workers (tokenizing motions), once they have started
CHECK_TIMEOUT_S = 300.0
#: a worker's engine and store closing at the end; after this it is killed
CLOSE_TIMEOUT_S = 60.0
#: the same, when the run ended with an error or was interrupted
ABORT_CLOSE_TIMEOUT_S = 10.0
#: the TCP probe of the cluster's address: ``ray.init`` retries an address where nothing listens for minutes
PROBE_TIMEOUT_S = 5.0
#: ``ray.init`` once the address answers
CONNECT_TIMEOUT_S = 120.0
#: how often Ray restarts a worker that died (``max_restarts``); after that the worker is given up
MAX_RESTARTS = 3
#: how often a restarting worker is asked whether it is back
RECOVERY_POLL_S = 1.0
#: where workers keep their temporary stores (node-local; removed when the worker closes, or by the next
#: worker on the node when it was killed)
WORKER_TMP = Path(tempfile.gettempdir()) / "bonsai-ray"

_NO_CLUSTER_HINT = "start one with `ray start --head`, then pass its address (--ray auto on that machine, --ray HOST:6379 or --ray ray://HOST:10001)"
_INSTALL_HINT = "pip install 'bonsai[ray]' on the driver and on every node of the cluster"


# --- the worker ------------------------------------------------------------------------------------


def materialise_adapter(root: Path, content_hash: str, files: dict[str, bytes]) -> Path:
    """Write a shipped adapter folder under ``root/<content hash>`` (atomically, once) and check its hash."""
    final = root / content_hash
    if not final.is_dir():
        with atomic.staged_dir(final) as tmp:
            for name, data in files.items():
                if not name or name in (".", "..") or "/" in name or os.sep in name:
                    raise AdapterError(f"shipped adapter {content_hash[:12]} has a bad file name {name!r}", "re-save the adapter with PEFT")
                (tmp / name).write_bytes(data)
    found = inspect_adapter(final).content_hash
    if found != content_hash:
        shutil.rmtree(final, ignore_errors=True)  # wrong content under a content name: never leave it for the next job
        raise AdapterError(
            f"the adapter written to {final} hashes to {found[:12]}, not {content_hash[:12]}",
            "the files changed between the driver and this node; run the sweep again",
        )
    return final


def _remove_stale_worker_dirs() -> None:
    """Remove the temporary folders of workers on this node that were killed (their process is gone):
    a worker that dies never runs its own clean-up."""
    if not WORKER_TMP.is_dir():
        return
    for folder in WORKER_TMP.iterdir():
        try:
            pid = int(folder.name.split("-")[1])
            os.kill(pid, 0)
        except (IndexError, ValueError):
            continue
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed %s, left by a worker that died", folder)
        except PermissionError:
            continue  # alive, another user's


def _same_adapter(path: Path, content_hash: str) -> bool:
    try:
        return path.is_dir() and inspect_adapter(path).content_hash == content_hash
    except AdapterError:
        return False


async def _resolved(value: Any) -> Any:
    """An object-store reference is awaited (inside a Ray async actor); plain values pass through."""
    return await value if inspect.isawaitable(value) else value


class DebateWorker:
    """One Ray worker: an engine started once, a private temporary store, and many debates on it at once.

    Plain Python (``run_on_ray`` wraps it with ``ray.remote``), so it needs Ray only for the object-store
    references it is given. The engine starts on first use, not in ``__init__``: Ray re-runs ``__init__``
    when it restarts a dead worker, and the next job then starts a fresh engine and store."""

    def __init__(self, index: int, setup: dict[str, Any]) -> None:
        self.index = index
        self.setup = setup
        self.home: Path | None = None
        self._lock = asyncio.Lock()
        self._stack: contextlib.AsyncExitStack | None = None
        self._runner: DebateRunner | None = None
        self._store: TranscriptStore | None = None
        self._adapters: dict[str, Path] = {}
        self._adapter_locks: dict[str, asyncio.Lock] = {}
        self.info: dict[str, Any] = {"worker": index, "host": socket.gethostname(), "pid": os.getpid()}

    # -- life cycle ---------------------------------------------------------------------------------

    async def start(self, adapters: dict[str, Any] | None = None) -> dict[str, Any]:
        """Start the engine. ``adapters`` (driver path -> content hash and object-store reference of the files)
        comes here, not through ``__init__``: Ray keeps constructor arguments for restarts and warns about
        references among them; the driver sends it again to a restarted worker."""
        if adapters is not None:
            self.setup = {**self.setup, "adapters": adapters}
        await self._ensure_started()
        return self.info

    async def _ensure_started(self) -> DebateRunner:
        async with self._lock:
            if self._runner is not None:
                return self._runner
            home = self.home = bonsai_home()
            config = await asyncio.to_thread(self._local_base, EngineConfig.model_validate(self.setup["engine"]), home)
            book = PersonaBook((Persona.model_validate(p) for p in self.setup["personas"]), source=None)
            stack = contextlib.AsyncExitStack()
            try:
                _remove_stale_worker_dirs()
                WORKER_TMP.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=f"worker{self.index}-{os.getpid()}-", dir=WORKER_TMP))
                stack.callback(shutil.rmtree, tmp, True)
                engine = create_engine(config)
                await stack.enter_async_context(engine)
                store = stack.enter_context(TranscriptStore(tmp / "transcripts.sqlite"))
                base_name = self.setup.get("base_name") or engine.info.base_model
                runner = await stack.enter_async_context(DebateRunner(engine, store, tmp / "checkpoints.sqlite", book, home, base_name))
            except BaseException:
                await stack.aclose()
                raise
            self._stack, self._store, self._runner = stack, store, runner
            self.info["engine"] = engine.info.kind
            log.info("Ray worker %d on %s: %s engine started (base %s)", self.index, self.info["host"], engine.info.kind, config.base_model)
            return runner

    def _local_base(self, config: EngineConfig, home: Path) -> EngineConfig:
        """The driver's base model folder if this node has it, else the embedded model prepared here."""
        if config.base_model is None or Path(config.base_model).is_dir():
            return config
        where = f"Ray worker {self.index} on {self.info['host']}"
        if not self.setup.get("embedded"):
            raise ModelError(
                f"the base model folder {config.base_model} does not exist on {where}",
                "put the model at the same path on every node (or on a shared file system), or use the embedded base",
            )
        base = resolve_base(None, home)  # prepares the embedded model under this node's BONSAI_HOME
        if config.base_hash and base.content_hash != config.base_hash:
            raise ModelError(
                f"the embedded base prepared on {where} ({base.content_hash[:12]}) differs from the driver's ({config.base_hash[:12]})",
                "install the same bonsai and transformers versions on every node, or copy the prepared model folder to the same path",
            )
        log.info("%s: using the embedded base at %s", where, base.path)
        return config.model_copy(update={"base_model": base.path})

    async def close(self) -> None:
        async with self._lock:
            stack, self._stack, self._runner, self._store = self._stack, None, None, None
        if stack is not None:
            await stack.aclose()

    # -- jobs ---------------------------------------------------------------------------------------

    async def check(self, spec_json: str) -> None:
        """The runner's validation of one debate set-up (adapters load, the motion fits), writing nothing."""
        runner = await self._ensure_started()
        await runner.check(await self.localise(DebateSpec.model_validate_json(spec_json)))

    async def run_job(self, job_json: str) -> dict[str, Any]:
        """Run one debate (or resume it, when an earlier attempt on this worker left it half done) and
        return it as a bundle."""
        runner = await self._ensure_started()
        assert self._store is not None
        job = SweepJob.model_validate_json(job_json)
        status = self._store.debate_statuses([job.debate_id]).get(job.debate_id)
        if status != "finished":
            # no token events: nobody watches them here, and at many debates per worker they cost more than decoding
            if status is None:
                spec = await self.localise(job.spec)
                extra = {"sweep_job": job.labels(), "ray_worker": dict(self.info)}
                events = runner.run(spec, debate_id=job.debate_id, extra=extra, stream_tokens=False)
            else:
                events = runner.resume(job.debate_id, stream_tokens=False)
            async with contextlib.aclosing(events) as stream:
                async for _ in stream:
                    pass
        bundle = self._store.export_bundle(job.debate_id)
        if bundle["debate"]["status"] == "finished":
            # the driver has it now; keep the worker's checkpoint database from growing with the sweep
            with contextlib.suppress(Exception):
                await runner.graph.checkpointer.adelete_thread(job.debate_id)
        return bundle

    async def localise(self, spec: DebateSpec) -> DebateSpec:
        """The job's adapter folders and format file as paths on this node (shipped copies where needed)."""
        adapters = {seat: (str(await self._adapter(p)) if p else None) for seat, p in (spec.adapters or {}).items()}
        fmt = spec.format
        if Path(fmt).suffix and fmt in self.setup.get("formats", {}):
            fmt = str(self._format(fmt, self.setup["formats"][fmt]))
        return spec.model_copy(update={"adapters": adapters, "format": fmt})

    async def _adapter(self, path: str) -> Path:
        if path in self._adapters:
            return self._adapters[path]
        shipped = self.setup.get("adapters", {}).get(path)
        if shipped is None:
            return Path(path)  # not shipped: the runner reports it if it is missing
        async with self._adapter_locks.setdefault(path, asyncio.Lock()):
            if path not in self._adapters:
                content_hash = shipped["hash"]
                local = Path(path)
                if not await asyncio.to_thread(_same_adapter, local, content_hash):
                    files = await _resolved(shipped["files"])
                    root = (self.home or bonsai_home()) / "cache" / "ray-adapters"
                    local = await asyncio.to_thread(materialise_adapter, root, content_hash, files)
                    log.info("Ray worker %d: adapter %s written to %s", self.index, content_hash[:12], local)
                self._adapters[path] = local
        return self._adapters[path]

    def _format(self, path: str, text: str) -> Path:
        p = Path(path)
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if p.is_file() and p.read_text(encoding="utf-8") == text:
                return p
        local = (self.home or bonsai_home()) / "cache" / "ray-formats" / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}{p.suffix}"
        if not local.is_file():
            atomic.write_text(local, text)
        return local


# --- connecting ------------------------------------------------------------------------------------


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs the ray package, which is not installed", _INSTALL_HINT) from None
    return ray


def _probe(address: str) -> None:
    """Fail in seconds when nothing listens at the address: ``ray.init`` retries a dead one for minutes."""
    if address == "auto":
        return  # ray.init finds (or fails to find) a cluster started on this machine at once
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ConfigError(f"--ray {address}: not a Ray address", "pass auto, HOST:PORT (the head's GCS port, 6379 by default) or ray://HOST:10001") from None
    if not host:
        raise ConfigError(f"--ray {address}: not a Ray address", "pass auto, HOST:PORT (the head's GCS port, 6379 by default) or ray://HOST:10001")
    port = port or (10001 if parts.scheme == "ray" else 6379)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"no Ray cluster answers at {address} ({host}:{port}: {reason})", _NO_CLUSTER_HINT) from None


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


async def _connect(ray: Any, address: str) -> None:
    """``ray.init`` on a daemon thread with a deadline: a cluster that accepts TCP but never answers (a head
    that advertises an address this machine cannot reach) would otherwise hang the driver for minutes.
    The event loop stays free meanwhile, so Ctrl-C still works."""
    _probe(address)
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[BaseException | None] = loop.create_future()

    def settle(result: BaseException | None) -> None:
        if not outcome.done():
            outcome.set_result(result)

    def init() -> None:
        result: BaseException | None = None
        try:
            ray.init(address=address, namespace="bonsai", logging_level=logging.WARNING, log_to_driver=log.isEnabledFor(logging.INFO))
        except BaseException as exc:  # handed to the event loop
            result = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: the driver gave up already
            loop.call_soon_threadsafe(settle, result)

    # off the main thread ray.init cannot set its SIGTERM handler, and says so; the driver does not need it
    # (its actors die with it, and run_on_ray closes them itself)
    quiet = _DropMessage("SIGTERM handler is not set")
    ray_worker_log = logging.getLogger("ray._private.worker")
    ray_worker_log.addFilter(quiet)
    try:
        threading.Thread(target=init, name="ray-init", daemon=True).start()
        failure = await asyncio.wait_for(outcome, CONNECT_TIMEOUT_S)
        answered = True
    except TimeoutError:
        answered, failure = False, None
    finally:
        ray_worker_log.removeFilter(quiet)
    if not answered:
        raise EngineError(
            f"the Ray cluster at {address} accepts connections but did not answer within {CONNECT_TIMEOUT_S:g} s",
            "check that the head's advertised address is reachable from here (`ray status` on the head shows it); "
            "a head started with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 needs it set on the driver too",
        )
    if failure is not None:
        first = _first_line(failure)
        raise EngineError(f"cannot connect to the Ray cluster at {address}: {first}", _NO_CLUSTER_HINT) from None


# --- the driver ------------------------------------------------------------------------------------


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
        progress: SweepProgress | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        seed: int = 0,
    ) -> None:
        cfg = plan.sweep.config
        self.plan = plan
        self.store = store
        self.workers = workers
        self.call = call
        self.retries = cfg.retries
        self.backoff_s = cfg.backoff_s
        self.budget = cfg.budget
        self.actor_errors = actor_errors
        self.unavailable_errors = unavailable_errors
        self.transient_errors = transient_errors
        self.start_args = start_args
        self.on_progress = on_progress
        self._sleep = sleep
        self._rng = random.Random(seed)
        self.progress = progress or SweepProgress(total=len(plan.jobs))
        self.failures: list[Failure] = []
        self.stopped: str | None = None
        self._inflight: dict[asyncio.Future[Any], _InFlight] = {}
        self._recovering: dict[asyncio.Future[bool], _Worker] = {}

    def emit(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def result(self) -> SweepResult:
        p = self.progress
        return SweepResult(total=p.total, finished=p.done, skipped=p.done_before, failures=list(self.failures),
                           stopped=self.stopped, tokens=p.tokens, seconds=p.elapsed)

    def check_tokens(self) -> None:
        cap = self.budget.tokens
        total = self.progress.tokens_before + self.progress.tokens
        if cap is not None and total >= cap:
            self.stopped = f"token budget of {cap} reached ({total} generated)"
            raise _Stop(self.stopped)

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
                    self.stopped = f"wall-time budget of {self.budget.wall_s:g} s reached"
                    raise _Stop(self.stopped)
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
            message = f"{type(exc).__name__}: {_first_line(exc)}"
        else:  # a bug in one debate must not take the others down; the worker's traceback goes to the log
            log.error("debate %s failed on Ray worker %d:\n%s", job.debate_id, flight.worker.index, exc)
            self._fail(job, f"{type(cause).__name__}: {_first_line(cause)}", attempt)
            return None
        if attempt > self.retries:
            self._fail(job, f"{message} (after {attempt} attempts)", attempt)
            return None
        delay = self.backoff_s * (2 ** (attempt - 1)) * self._rng.uniform(0.5, 1.5)
        self.progress.retries += 1
        log.warning("debate %s: %s; retry %d of %d in %.1f s (from its start, on any worker)", job.debate_id, message, attempt, self.retries, delay)
        return delay

    def _worker_died(self, flight: _InFlight, exc: BaseException) -> None:
        w = flight.worker
        if flight.generation != w.generation or not w.alive:
            return  # the same death, seen through another of its jobs
        w.generation += 1
        w.deaths += 1
        w.recovering = True
        log.warning("Ray worker %d died (%s); waiting for Ray to restart it", w.index, _first_line(exc))
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
                    log.error("Ray worker %d did not come back within %g s: %s", w.index, START_TIMEOUT_S, _first_line(exc))
                    return False
                await asyncio.sleep(RECOVERY_POLL_S)
            except Exception as exc:
                log.error("Ray worker %d is gone for good: %s", w.index, _first_line(getattr(exc, "cause", None) or exc))
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
        if status == "finished":
            self.progress.done += 1
        else:
            self._fail(job, f"ended with status {status}", 1)

    def _fail(self, job: SweepJob, message: str, attempts: int) -> None:
        self.progress.failed += 1
        self.failures.append(Failure(job.debate_id, message, attempts))
        with contextlib.suppress(BonsaiError):
            if self.store.debate_statuses([job.debate_id]):
                self.store.set_status(job.debate_id, "failed")
        log.error("debate %s (%s vs %s) failed: %s", job.debate_id, job.a, job.b, message)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
        hint = "install bonsai on every node of the cluster, in the Python that runs Ray: " + _INSTALL_HINT
    return EngineError(f"Ray worker {index} failed while {what}: {_first_line(cause)}", hint)


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
    statuses = store.debate_statuses(j.debate_id for j in plan.jobs)
    todo = [j for j in plan.jobs if statuses.get(j.debate_id) != "finished"]
    progress = SweepProgress(total=len(plan.jobs))
    progress.done = progress.done_before = len(plan.jobs) - len(todo)
    progress.tokens_before = store.sweep_tokens(plan.name)
    resumed = sum(1 for j in todo if j.debate_id in statuses)
    log.info("sweep %s on Ray: %d debates, %d finished before, %d to re-run, %d to start", plan.name, len(plan.jobs), progress.done, resumed, len(todo) - resumed)

    def finished_early(stopped: str | None) -> SweepResult:
        if on_ready is not None:
            on_ready()
        if on_progress is not None:
            on_progress(progress)
        return SweepResult(len(plan.jobs), progress.done, progress.done_before, [], stopped, 0, 0.0)

    if not todo:
        return finished_early(None)
    if cfg.budget.tokens is not None and progress.tokens_before >= cfg.budget.tokens:
        return finished_early(f"token budget of {cfg.budget.tokens} reached ({progress.tokens_before} generated)")

    if workers is not None and workers < 1:
        raise ConfigError(f"--ray-workers {workers}: at least one worker is needed", "leave it out for one per GPU (or 1 without GPUs)")
    ray = _import_ray()
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
        await _connect(ray, address)
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
        setups: dict[tuple[Any, ...], SweepJob] = {}
        for job in todo:
            s = job.spec
            setups.setdefault((s.motion, s.format, tuple(s.personas or ()), tuple(sorted((s.adapters or {}).items(), key=str)), s.max_tokens), job)
        checks = list(setups.values())
        results = await gather([call(pool[k % n], "check", (job.spec.model_dump_json(),))[0] for k, job in enumerate(checks)],
                               "checking the debates", CHECK_TIMEOUT_S)
        for k, (job, r) in enumerate(zip(checks, results, strict=True)):
            if isinstance(r, BaseException):
                cause = getattr(r, "cause", None) or r
                if isinstance(cause, BonsaiError):
                    raise type(cause)(f"debate {job.debate_id} ({job.a} vs {job.b}, motion {job.spec.motion[:60]!r}): {cause.message}", cause.hint)
                raise _worker_error(r, pool[k % n].index, "checking the debates")
        if on_ready is not None:
            on_ready()

        from ray.exceptions import ActorUnavailableError, NodeDiedError, ObjectLostError, OutOfMemoryError, RayActorError, WorkerCrashedError

        sweep = RaySweep(plan, store, pool, call, actor_errors=(RayActorError,), unavailable_errors=(ActorUnavailableError,),
                         transient_errors=(NodeDiedError, ObjectLostError, OutOfMemoryError, WorkerCrashedError),
                         start_args=(shipped,), on_progress=on_progress, progress=progress)
        result = await sweep.run(todo)
        clean = True
        return result
    finally:
        if sweep is not None:
            sweep.cancel_inflight()
        # after an error or Ctrl-C, do not wait long for engines to close: killing the actor frees them too
        await _shutdown(ray, handles, timeout=CLOSE_TIMEOUT_S if clean else ABORT_CLOSE_TIMEOUT_S)
        if owns_ray:
            with contextlib.suppress(Exception):
                ray.shutdown()


async def _shutdown(ray: Any, handles: list[Any], *, timeout: float) -> None:
    """Close every worker's engine and store, then kill the actors (a worker stuck in close included)."""
    if not handles:
        return
    closing = [asyncio.wrap_future(h.close.remote().future()) for h in handles]
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), timeout)
    for h in handles:
        with contextlib.suppress(Exception):
            ray.kill(h, no_restart=True)
