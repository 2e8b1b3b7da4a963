"""From what a user or a persona names (``current``, a version or a prefix of one, ``PERSONA@VERSION``,
``registry:...``) to a checked version folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bonsai.errors import AdapterError
from bonsai.personas import Persona
from bonsai.registry.identity import AdapterRef, inspect_adapter
from bonsai.registry.layout import CURRENT, check_version_name, current_version, list_versions, persona_dir
from bonsai.registry.manifest import Manifest
from bonsai.registry.verify import trusted_ref, verify_version

_VERSION_REF = re.compile(r"^(?P<persona>[a-z0-9][a-z0-9_-]{0,63})@(?P<version>[A-Za-z0-9_.-]+)$")


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


def version_path(home: Path, persona: str, version: str) -> Path:
    """The folder of ``version`` (or ``current``), checked against its recorded hashes."""
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


@dataclass(frozen=True)
class Version:
    """A version checked once: its files match the manifest, and ``adapter`` is what they hold."""

    persona: str
    version: str
    path: Path
    manifest: Manifest | None
    adapter: AdapterRef


def open_version(home: Path, persona: str, ref: str) -> Version:
    """Resolve ``ref`` and check the version's files: the one read of its weights that promotion,
    loading on servers and moving ``current`` all share."""
    version = resolve_version(home, persona, ref)
    path = persona_dir(home, persona) / version
    manifest = verify_version(path)
    adapter = trusted_ref(path, manifest) or inspect_adapter(path)
    return Version(persona, version, path, manifest, adapter)


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


def adapter_folder(home: Path, text: str) -> Path:
    """An adapter given on the command line: a folder, or ``PERSONA@VERSION`` (a version, a unique prefix
    of one, or ``current``) from the registry, checked against its recorded hashes."""
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    m = _VERSION_REF.match(text)
    if m is None:
        raise AdapterError(f"adapter {text!r} is neither a folder nor PERSONA@VERSION", "pass an adapter folder, or e.g. logician@current (see `bonsai adapters list`)")
    persona = m.group("persona")
    return version_path(home, persona, resolve_version(home, persona, m.group("version")))
