"""Where persona adapters live: ``$BONSAI_HOME/adapters/<persona>/<version>/`` plus a ``current`` file
per persona naming the version debates use. Training (``training/registry.py``) writes versions; this
module resolves a persona's ``adapter:`` setting to a folder, and refuses a version whose files no longer
match the hashes recorded when it was written (so an edited adapter never serves under its old name).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from bonsai.engine.adapters import MANIFEST_FILE
from bonsai.errors import AdapterError
from bonsai.paths import adapters_dir
from bonsai.personas import NAME_PATTERN, Persona, check_persona_name

CURRENT = "current"
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


def version_path(home: Path, persona: str, version: str) -> Path:
    if version == CURRENT:
        cur = current_version(home, persona)
        if cur is None:
            raise AdapterError(f"persona {persona!r} has no current adapter version", f"train one first (`bonsai train`) or list versions in {persona_dir(home, persona)}")
        version = cur
    path = persona_dir(home, persona) / check_version_name(version)
    if not path.is_dir() or version.startswith("."):
        raise AdapterError(f"adapter {persona}@{version} does not exist at {path}", "list the versions with `bonsai adapters list`")
    verify_version(path)
    return path


def resolve_version(home: Path, persona: str, ref: str) -> str:
    """``current``, a full version name, or a unique prefix of one."""
    if ref == CURRENT:
        cur = current_version(home, persona)
        if cur is None:
            raise AdapterError(f"persona {persona!r} has no current adapter version", "promote one with `bonsai adapters promote`")
        return cur
    check_version_name(ref)
    versions = list_versions(home, persona)
    if ref in versions:
        return ref
    matches = [v for v in versions if v.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise AdapterError(f"{persona}@{ref} matches several versions ({', '.join(matches)})", "give more of the version name")
    raise AdapterError(f"adapter {persona}@{ref} does not exist", f"versions of {persona}: {', '.join(versions) or 'none'} (`bonsai adapters list`)")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(path: Path) -> dict[str, Any] | None:
    """A version's ``bonsai_adapter.json``, or ``None`` for a folder placed by hand."""
    manifest = path / MANIFEST_FILE
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"adapter {path} has an unreadable {MANIFEST_FILE} ({exc})", "retrain it, or roll back with `bonsai adapters rollback`") from exc
    if not isinstance(data, dict):
        raise AdapterError(f"adapter {path} has a {MANIFEST_FILE} that is not a JSON object", "retrain it, or roll back with `bonsai adapters rollback`")
    return data


def verify_version(path: Path) -> dict[str, Any] | None:
    """Check a version written by the registry against the file hashes it recorded; returns its manifest.

    Folders without recorded hashes (placed by hand) are not checked. Any file added, removed or
    changed since the version was written is refused: its name is a content hash, and serving other
    weights under it would poison every cache keyed by that name.
    """
    manifest = read_manifest(path)
    files = manifest.get("files") if manifest else None
    if not isinstance(files, dict):
        return manifest
    present = {p.name for p in path.iterdir() if p.is_file() and p.name != MANIFEST_FILE}
    problems = [f"{name} is missing" for name in sorted(set(files) - present)]
    problems += [f"{name} was added" for name in sorted(present - set(files))]
    problems += [f"{name} was modified" for name in sorted(set(files) & present) if file_sha256(path / name) != files[name]]
    recorded = manifest.get("version") if manifest else None
    if recorded and recorded != path.name:
        problems.append(f"the folder was renamed from {recorded}")
    if problems:
        raise AdapterError(
            f"adapter {path.parent.name}@{path.name} was changed after it was written: {'; '.join(problems)}",
            "registry versions are immutable: roll back with `bonsai adapters rollback`, or retrain with `bonsai train`",
        )
    return manifest


def list_versions(home: Path, persona: str) -> list[str]:
    """Version folders of ``persona``, oldest first (by the time recorded, else the folder's mtime)."""
    root = persona_dir(home, persona)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and not p.name.startswith(".") and (p / "adapter_config.json").is_file():
            created = None
            try:
                created = (read_manifest(p) or {}).get("created_at")
            except AdapterError:
                pass
            found.append((float(created) if isinstance(created, (int, float)) else p.stat().st_mtime, p.name))
    return [name for _, name in sorted(found)]


def list_personas(home: Path) -> list[str]:
    root = adapters_dir(home)
    if not root.is_dir():
        return []
    # a folder whose name no persona can have (placed by hand) is not a persona's
    return sorted(p.name for p in root.iterdir() if p.is_dir() and re.fullmatch(NAME_PATTERN, p.name))


def resolve_persona_adapter(persona: Persona, home: Path) -> Path | None:
    """The adapter folder a persona debates with, or ``None`` for the bare base."""
    spec = persona.adapter
    if spec is None:
        return None
    if spec == "registry":
        version = current_version(home, persona.name)
        return None if version is None else version_path(home, persona.name, version)
    if spec.startswith("registry:"):
        ref = spec.removeprefix("registry:")
        name, _, version = ref.partition("@")
        return version_path(home, name or persona.name, version or CURRENT)
    path = Path(spec)
    if not path.is_dir():
        raise AdapterError(
            f"adapter folder {path} for persona {persona.name!r} does not exist",
            "fix the persona's `adapter:` (a folder with adapter_config.json), or set it to null for the bare base",
        )
    return path
