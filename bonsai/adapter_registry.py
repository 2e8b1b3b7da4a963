"""Where persona adapters live: ``$BONSAI_HOME/adapters/<persona>/<version>/`` plus a ``current`` file
per persona naming the version debates use. Training (``training/``) writes versions; this module only
resolves a persona's ``adapter:`` setting to a folder.
"""

from __future__ import annotations

from pathlib import Path

from bonsai.errors import AdapterError
from bonsai.paths import adapters_dir
from bonsai.personas import Persona

CURRENT = "current"


def persona_dir(home: Path, persona: str) -> Path:
    return adapters_dir(home) / persona


def current_version(home: Path, persona: str) -> str | None:
    pointer = persona_dir(home, persona) / CURRENT
    if not pointer.is_file():
        return None
    version = pointer.read_text(encoding="utf-8").strip()
    return version or None


def version_path(home: Path, persona: str, version: str) -> Path:
    if version == CURRENT:
        cur = current_version(home, persona)
        if cur is None:
            raise AdapterError(f"persona {persona!r} has no current adapter version", f"train one first (`bonsai train`) or list versions in {persona_dir(home, persona)}")
        version = cur
    path = persona_dir(home, persona) / version
    if not path.is_dir():
        raise AdapterError(f"adapter {persona}@{version} does not exist at {path}", "list the versions with `bonsai adapters list`")
    return path


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
