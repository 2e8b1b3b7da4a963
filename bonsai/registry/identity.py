"""An adapter folder identified by its content: the same weights get the same name everywhere.

Every engine (vLLM in-process, an OpenAI-compatible server, transformers+PEFT) serves an adapter by
the name derived here, so different weights never share one (vLLM's prefix cache is keyed by adapter
name). Whether the adapter fits a base is the engine's question (:mod:`bonsai.engine.adapters`).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bonsai.errors import AdapterError
from bonsai.registry import hashing, peft
from bonsai.registry.manifest import MANIFEST_FILE, read_manifest


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter on disk, identified by its content hash.

    ``name`` is what the engine serves it as; it is derived from the content hash, so two different
    sets of weights never share a name (vLLM's prefix cache is keyed by adapter name).
    """

    path: Path
    content_hash: str
    name: str
    rank: int
    target_modules: tuple[str, ...]
    base_model: str | None = None


def adapter_name(content_hash: str) -> str:
    return "lora-" + content_hash[:16]


def check_peft_folder(path: Path) -> dict[str, Any]:
    """Refuse a folder that is not a readable PEFT LoRA adapter; returns its config."""
    if not path.is_dir():
        raise AdapterError(f"adapter folder {path} does not exist", peft.HINT_FOLDER)
    for name in (peft.CONFIG_FILE, peft.WEIGHTS_FILE):
        if not (path / name).is_file():
            extra = " (.bin adapters are not supported: re-save with safe_serialization=True)" if name == peft.WEIGHTS_FILE and (path / "adapter_model.bin").exists() else ""
            raise AdapterError(f"adapter folder {path} has no {name}{extra}", peft.HINT_FOLDER)
    config = peft.read_config(path)
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"adapter {path} is a {peft_type or 'unknown'} adapter, not LoRA", "bonsai serves LoRA adapters only; train one with `bonsai train`")
    if peft.rank(config) < 1:
        raise AdapterError(f"adapter {path} has no valid rank r in {peft.CONFIG_FILE}", peft.HINT_FOLDER)
    peft.tensor_shapes(path / peft.WEIGHTS_FILE)  # fail here, not in the engine, when the file is broken
    return config


def inspect_adapter(path: Path) -> AdapterRef:
    """Identify the PEFT LoRA adapter in ``path`` by its content (one read of its weights)."""
    path = Path(path)
    config = check_peft_folder(path)
    digest = hashing.content_hash(config, path / peft.WEIGHTS_FILE)
    manifest = read_manifest(path)
    return AdapterRef(
        path=path.resolve(),
        content_hash=digest,
        name=adapter_name(digest),
        rank=peft.rank(config),
        target_modules=peft.target_modules(config),
        base_model=manifest.base_hash if manifest else None,
    )


class AdapterInspector:
    """``inspect_adapter`` remembered per folder while its files stay the same (size, mtime, inode).

    A sweep starts hundreds of debates on the same few adapters; hashing an 8B-shaped adapter (~84 MB)
    at every start held the event loop for ~0.2 s per debate, which capped a whole GPU sweep. Adapters
    are written by atomic rename (a new inode), so a changed adapter is never served from here. One
    inspector serves a whole command: its pre-flight checks and every debate it then runs.
    """

    def __init__(self) -> None:
        self._refs: dict[tuple[Any, ...], AdapterRef] = {}
        self._pending: dict[tuple[Any, ...], asyncio.Future[AdapterRef]] = {}  # folders being hashed now

    @staticmethod
    def _key(path: Path) -> tuple[Any, ...] | None:
        # not resolved: stat follows a `current` link, so a re-pointed link gives another key
        parts: list[Any] = [os.path.abspath(path)]
        for name in (peft.CONFIG_FILE, peft.WEIGHTS_FILE, MANIFEST_FILE):
            try:
                st = (path / name).stat()
            except FileNotFoundError:
                parts.append(None)
                continue
            except OSError:
                return None  # unreadable: let inspect_adapter say why
            parts.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(parts)

    def inspect(self, path: Path) -> AdapterRef:
        key = self._key(Path(path))
        if key is None:
            return inspect_adapter(Path(path))
        if key not in self._refs:
            self._refs[key] = inspect_adapter(Path(path))
        return self._refs[key]

    async def ainspect(self, path: Path) -> AdapterRef:
        """The same, hashing off the event loop on a miss. Debates that start together share one hashing
        of a folder (a sweep starts hundreds at once: each hashing it again filled the thread pool)."""
        key = self._key(Path(path))
        if key is None:
            return await asyncio.to_thread(inspect_adapter, Path(path))
        if key in self._refs:
            return self._refs[key]
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = asyncio.ensure_future(asyncio.to_thread(inspect_adapter, Path(path)))
            pending.add_done_callback(lambda done: self._settle(key, done))
        # shielded: one debate being cancelled must not cancel the hashing the others wait on
        return await asyncio.shield(pending)

    def _settle(self, key: tuple[Any, ...], done: asyncio.Future[AdapterRef]) -> None:
        self._pending.pop(key, None)
        if not done.cancelled() and done.exception() is None:
            self._refs[key] = done.result()
