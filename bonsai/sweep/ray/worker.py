"""The Ray worker: one engine started once, a private temporary store, and many debates on it at once.

A worker runs one ``SweepJob`` (sent as JSON) and returns the finished debate as a bundle; adapter
folders and format files it lacks are written from what the driver shipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from bonsai import atomic
from bonsai.debate.runner import DebateRunner, DebateSpec
from bonsai.engine import EngineConfig, create_engine
from bonsai.registry.identity import inspect_adapter
from bonsai.errors import AdapterError, ModelError
from bonsai.model.prepare import resolve_base
from bonsai.paths import bonsai_home
from bonsai.personas import Persona, PersonaBook
from bonsai.store.records import DebateStatus
from bonsai.store.transcripts import TranscriptStore
from bonsai.sweep.plan import SweepJob

log = logging.getLogger(__name__)

#: where workers keep their temporary stores (node-local; removed when the worker closes, or by the next
#: worker on the node when it was killed)
WORKER_TMP = Path(tempfile.gettempdir()) / "bonsai-ray"


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
                runner = await stack.enter_async_context(
                    DebateRunner(engine, store, tmp / "checkpoints.sqlite", book, home, base_name, queue_checkpoints=True)
                )
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
        if status != DebateStatus.FINISHED:
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
        if bundle["debate"]["status"] == DebateStatus.FINISHED:
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

