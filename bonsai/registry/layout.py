"""Where persona adapters live: ``$BONSAI_HOME/adapters/<persona>/<version>/`` plus a ``current`` file
per persona naming the version debates use. Every registry path is built here.
"""

from __future__ import annotations

import re
from pathlib import Path

from bonsai.errors import AdapterError
from bonsai.paths import adapters_dir
from bonsai.personas import NAME_PATTERN, check_persona_name
from bonsai.registry.manifest import read_manifest
from bonsai.registry.peft import CONFIG_FILE

CURRENT = "current"
HISTORY = "history.json"
#: the sidecar file promote/rollback lock (flock) while they read and rewrite ``current`` and the history
LOCK = "history.json.lock"
EVALUATIONS = "evaluations"
#: hex digits of the content hash that name a version
VERSION_CHARS = 12
#: a version folder's name (a content hash, or a name given by hand): one path component, never . or ..
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def persona_dir(home: Path, persona: str) -> Path:
    """The persona's registry folder; every registry path goes through here, so a name like ``../x``
    is refused before anything outside ``$BONSAI_HOME/adapters`` is read or written."""
    return adapters_dir(home) / check_persona_name(persona)


def check_version_name(version: str) -> str:
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise AdapterError(
            f"{version!r} is not a valid adapter version name",
            "a version is one folder name (letters, digits, '.', '-', '_'); see `bonsai adapters list`",
        )
    return version


def current_version(home: Path, persona: str) -> str | None:
    pointer = persona_dir(home, persona) / CURRENT
    if not pointer.is_file():
        return None
    version = pointer.read_text(encoding="utf-8").strip()
    if version and not _VERSION.fullmatch(version):
        raise AdapterError(f"{pointer} names {version!r}, which is not a version", "point it at a version with `bonsai adapters rollback --to VERSION`")
    return version or None


def list_versions(home: Path, persona: str) -> list[str]:
    """Version folders of ``persona``, oldest first (by the time recorded, else the folder's mtime)."""
    root = persona_dir(home, persona)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and not p.name.startswith(".") and (p / CONFIG_FILE).is_file():
            created = None
            try:
                manifest = read_manifest(p)
                created = manifest.created_at if manifest else None
            except AdapterError:
                pass
            found.append((created if created is not None else p.stat().st_mtime, p.name))
    return [name for _, name in sorted(found)]


def list_personas(home: Path) -> list[str]:
    root = adapters_dir(home)
    if not root.is_dir():
        return []
    # a folder whose name no persona can have (placed by hand) is not a persona's
    return sorted(p.name for p in root.iterdir() if p.is_dir() and re.fullmatch(NAME_PATTERN, p.name))
