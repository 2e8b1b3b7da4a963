"""New versions appear whole or not at all.

A version is written into a hidden temp folder beside the others, named after its content hash once
the weights are on disk, and renamed into place in one step: an interrupted training leaves at most a
hidden ``.partial`` folder that nothing lists or loads. The manifest records every file's hash, so an
edited version is refused by :func:`bonsai.registry.verify.verify_version` wherever it is loaded.
"""

from __future__ import annotations

import contextlib
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
from bonsai.errors import AdapterError
from bonsai.registry.hashing import file_sha256
from bonsai.registry.identity import inspect_adapter
from bonsai.registry.layout import VERSION_CHARS, persona_dir
from bonsai.registry.manifest import MANIFEST_FILE, MANIFEST_FORMAT, Manifest, write_manifest
from bonsai.registry.verify import verify_version

log = logging.getLogger(__name__)


@dataclass
class Draft:
    """A version being written: fill ``path`` with PEFT's files and ``manifest`` with how it was made."""

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
    for p in draft.path.iterdir():
        if p.is_dir():
            raise AdapterError(f"a registry version holds files only, but {p.name}/ was written into it", "save only PEFT's adapter files into the draft")
    ref = inspect_adapter(draft.path)
    version = ref.content_hash[:VERSION_CHARS]
    files = {p.name: file_sha256(p) for p in sorted(draft.path.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
    manifest = Manifest.model_validate(
        {
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
    )
    write_manifest(draft.path, manifest)
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
