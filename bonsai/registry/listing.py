"""What ``bonsai adapters list|show`` tell about each version: its manifest and whether its files still match."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bonsai.errors import AdapterError
from bonsai.registry.layout import check_version_name, current_version, list_personas, list_versions, persona_dir
from bonsai.registry.manifest import Manifest, read_manifest
from bonsai.registry.peft import CONFIG_FILE
from bonsai.registry.verify import verify_version


@dataclass(frozen=True)
class VersionInfo:
    persona: str
    version: str
    path: Path
    current: bool
    manifest: Manifest
    #: None when the files match their recorded hashes, else why not
    problem: str | None = None

    @property
    def created_at(self) -> float | None:
        return self.manifest.created_at

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        recipe = getattr(m, "recipe", None)
        return {
            "persona": self.persona,
            "version": self.version,
            "current": self.current,
            "path": str(self.path),
            "adapter_name": m.adapter_name,
            "parent": m.parent,
            "recipe": recipe.get("name") if isinstance(recipe, dict) else recipe,
            "base_model": m.base_model,
            "base_hash": m.base_hash,
            "dataset_hash": m.dataset_hash,
            "created_at": self.created_at,
            "ok": self.problem is None,
            "problem": self.problem,
        }


def version_info(home: Path, persona: str, version: str) -> VersionInfo:
    path = persona_dir(home, persona) / check_version_name(version)
    if version.startswith(".") or not (path / CONFIG_FILE).is_file():
        known = ", ".join(list_versions(home, persona)) or "none"
        raise AdapterError(f"adapter {persona}@{version} does not exist", f"versions of {persona}: {known}")
    problem = None
    try:
        manifest = verify_version(path) or Manifest()
    except AdapterError as exc:
        problem = exc.message
        try:
            manifest = read_manifest(path) or Manifest()
        except AdapterError:
            manifest = Manifest()
    return VersionInfo(persona, version, path, current_version(home, persona) == version, manifest, problem)


def versions(home: Path, persona: str | None = None) -> list[VersionInfo]:
    personas = [persona] if persona is not None else list_personas(home)
    return [version_info(home, p, v) for p in personas for v in list_versions(home, p)]
