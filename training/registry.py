"""The adapter registry's write side: new versions appear whole or not at all, ``current`` moves atomically.

A version is written into a hidden temp folder beside the others, named after its content hash once
the weights are on disk, and renamed into place in one step: an interrupted training leaves at most a
hidden ``.partial`` folder that nothing lists or loads. The manifest records every file's hash, so an
edited version is refused by :func:`bonsai.adapter_registry.verify_version` wherever it is loaded.

``current`` is one small file replaced with ``os.replace``; ``history.json`` remembers the promotions so
``rollback`` can step back. The pointer is the truth: the history is written after it, and a rollback
works from the history's view of what came before whatever ``current`` says now.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bonsai import atomic
from bonsai.adapter_registry import (
    CURRENT,
    current_version,
    file_sha256,
    list_personas,
    list_versions,
    persona_dir,
    check_version_name,
    read_manifest,
    resolve_version,
    verify_version,
)
from bonsai.engine.adapters import MANIFEST_FILE, inspect_adapter
from bonsai.errors import AdapterError

log = logging.getLogger(__name__)

HISTORY = "history.json"
#: the sidecar file promote/rollback lock (flock) while they read and rewrite ``current`` and the history
LOCK = "history.json.lock"
EVALUATIONS = "evaluations"
#: hex digits of the content hash that name a version
VERSION_CHARS = 12
MANIFEST_FORMAT = 1


@dataclass
class Draft:
    """A version being written: fill ``path`` with PEFT's files and ``manifest`` with its metadata."""

    persona: str
    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    version: str | None = None


@contextlib.contextmanager
def new_version(home: Path, persona: str) -> Iterator[Draft]:
    """Stage a version; on a clean exit it is hashed, named and renamed into the registry.

    Any exception (KeyboardInterrupt included) removes the staged folder: no version appears.
    """
    root = persona_dir(home, persona)
    root.mkdir(parents=True, exist_ok=True)
    # the pid in the name lets the next start tell a dead process's leftover from a live stage (atomic.clean_orphans)
    staged = Path(tempfile.mkdtemp(prefix=atomic.stage_prefix(persona), suffix=".partial", dir=root))
    draft = Draft(persona=persona, path=staged)
    try:
        yield draft
        draft.version = _commit(draft, root)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def _commit(draft: Draft, root: Path) -> str:
    ref = inspect_adapter(draft.path)
    version = ref.content_hash[:VERSION_CHARS]
    files = {p.name: file_sha256(p) for p in sorted(draft.path.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
    for p in draft.path.iterdir():
        if p.is_dir():
            raise AdapterError(f"a registry version holds files only, but {p.name}/ was written into it", "save only PEFT's adapter files into the draft")
    manifest = {
        "format": MANIFEST_FORMAT,
        **draft.manifest,
        "persona": draft.persona,
        "version": version,
        "adapter_hash": ref.content_hash,
        "adapter_name": ref.name,
        "rank": ref.rank,
        "target_modules": list(ref.target_modules),
        "created_at": draft.manifest.get("created_at", time.time()),
        "files": files,
    }
    (draft.path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    atomic.fsync_dir(draft.path)
    final = root / version
    if final.exists():
        # the same weights again (a deterministic re-run): the version already exists, keep the first
        verify_version(final)
        shutil.rmtree(draft.path, ignore_errors=True)
        log.info("adapter %s@%s already exists; the new copy is identical", draft.persona, version)
        return version
    os.rename(draft.path, final)
    atomic.fsync_dir(root)
    log.info("adapter %s@%s written to %s", draft.persona, version, final)
    return version


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionInfo:
    persona: str
    version: str
    path: Path
    current: bool
    manifest: dict[str, Any]
    #: None when the files match their recorded hashes, else why not
    problem: str | None = None

    @property
    def created_at(self) -> float | None:
        value = self.manifest.get("created_at")
        return float(value) if isinstance(value, (int, float)) else None

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "persona": self.persona,
            "version": self.version,
            "current": self.current,
            "path": str(self.path),
            "adapter_name": m.get("adapter_name"),
            "parent": m.get("parent"),
            "recipe": (m.get("recipe") or {}).get("name") if isinstance(m.get("recipe"), dict) else m.get("recipe"),
            "base_model": m.get("base_model"),
            "base_hash": m.get("base_hash"),
            "dataset_hash": m.get("dataset_hash"),
            "created_at": self.created_at,
            "ok": self.problem is None,
            "problem": self.problem,
        }


def version_info(home: Path, persona: str, version: str) -> VersionInfo:
    path = persona_dir(home, persona) / check_version_name(version)
    if version.startswith(".") or not (path / "adapter_config.json").is_file():
        known = ", ".join(list_versions(home, persona)) or "none"
        raise AdapterError(f"adapter {persona}@{version} does not exist", f"versions of {persona}: {known}")
    problem = None
    try:
        manifest = verify_version(path) or {}
    except AdapterError as exc:
        problem = exc.message
        try:
            manifest = read_manifest(path) or {}
        except AdapterError:
            manifest = {}
    return VersionInfo(persona, version, path, current_version(home, persona) == version, manifest, problem)


def versions(home: Path, persona: str | None = None) -> list[VersionInfo]:
    personas = [persona] if persona is not None else list_personas(home)
    return [version_info(home, p, v) for p in personas for v in list_versions(home, p)]


# --- current pointer and history ----------------------------------------------------------------


def history(home: Path, persona: str) -> list[dict[str, Any]]:
    path = persona_dir(home, persona) / HISTORY
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{path} cannot be read ({exc})", "fix or delete it (the `current` file alone still works)") from exc
    return data if isinstance(data, list) else []


def promotion_stack(events: list[dict[str, Any]]) -> list[str]:
    """The versions that were current, oldest first, as promotions push and rollbacks pop them."""
    stack: list[str] = []
    for ev in events:
        if ev.get("action") == "promote":
            stack.append(ev["version"])
        elif ev.get("action") == "rollback" and stack:
            stack.pop()
            if ev.get("version") and (not stack or stack[-1] != ev["version"]):
                stack.append(ev["version"])
    return stack


@contextlib.contextmanager
def _locked(home: Path, persona: str) -> Iterator[None]:
    """Hold the persona's history lock: two promotions or rollbacks at once would each read the
    history, append their event and write it back, and one event would be lost."""
    root = persona_dir(home, persona)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _record(home: Path, persona: str, event: dict[str, Any]) -> None:
    """Append to history.json; the caller holds :func:`_locked`."""
    events = [*history(home, persona), {**event, "at": time.time()}]
    atomic.write_text(persona_dir(home, persona) / HISTORY, json.dumps(events, indent=2) + "\n")


def set_current(home: Path, persona: str, version: str) -> None:
    """Point ``current`` at ``version`` in one atomic replace (temp file + ``os.replace``)."""
    atomic.write_text(persona_dir(home, persona) / CURRENT, version + "\n")


def promote(home: Path, persona: str, version: str, *, reason: str = "", evaluation: dict[str, Any] | None = None) -> str | None:
    """Make ``version`` current (after checking its files); returns the version it replaced."""
    version = resolve_version(home, persona, version)
    verify_version(persona_dir(home, persona) / version)
    with _locked(home, persona):
        previous = current_version(home, persona)
        if previous == version:
            log.info("%s@%s is already current", persona, version)
            return previous
        set_current(home, persona, version)
        _record(home, persona, {"action": "promote", "version": version, "previous": previous, "reason": reason, "evaluation": evaluation})
    return previous


def rollback(home: Path, persona: str, *, to: str | None = None) -> tuple[str | None, str]:
    """Point ``current`` back to the version promoted before it (or ``to``); returns (from, to)."""
    with _locked(home, persona):
        return _rollback(home, persona, to=to)


def _rollback(home: Path, persona: str, *, to: str | None) -> tuple[str | None, str]:
    cur = current_version(home, persona)
    if to is not None:
        target = resolve_version(home, persona, to)
    else:
        stack = promotion_stack(history(home, persona))
        # the pointer is the truth: if it moved without a history entry, what the history holds last
        # is what came before it
        earlier = stack[:-1] if stack and stack[-1] == cur else stack
        if not earlier:
            raise AdapterError(
                f"persona {persona!r} has no earlier version to roll back to (current: {cur or 'none'})",
                "name one with --to VERSION (see `bonsai adapters list`)",
            )
        target = earlier[-1]
    if target == cur:
        raise AdapterError(f"{persona}@{target} is already current", "name another version with --to")
    verify_version(persona_dir(home, persona) / target)
    set_current(home, persona, target)
    _record(home, persona, {"action": "rollback", "version": target, "previous": cur})
    return cur, target


# --- evaluations --------------------------------------------------------------------------------


def evaluation_path(home: Path, persona: str, version: str) -> Path:
    return persona_dir(home, persona) / EVALUATIONS / f"{check_version_name(version)}.json"


def save_evaluation(home: Path, persona: str, version: str, result: dict[str, Any]) -> Path:
    path = evaluation_path(home, persona, version)
    atomic.write_text(path, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return path


def load_evaluation(home: Path, persona: str, version: str) -> dict[str, Any] | None:
    path = evaluation_path(home, persona, version)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
