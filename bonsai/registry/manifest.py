"""``bonsai_adapter.json``: what the registry records beside PEFT's files when it writes a version.

The registry's own fields are typed here; training adds its record of how the version was made
(recipe, metrics, ...) beside them, kept as written (``extra="allow"``): the registry stores that
record, it does not own it. A folder placed by hand may have no manifest, or one with a few fields
(``base_hash`` alone, say): every field is optional.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from bonsai.errors import AdapterError, describe_validation
from bonsai.registry.peft import read_json

MANIFEST_FILE = "bonsai_adapter.json"
MANIFEST_FORMAT = 1

_HINT = "retrain it, or roll back with `bonsai adapters rollback`"


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    format: int | None = None
    persona: str | None = None
    #: the version folder's name when it was written (a rename is refused)
    version: str | None = None
    #: the adapter's content hash (:func:`bonsai.registry.hashing.content_hash`) and the name it is served under
    adapter_hash: str | None = None
    adapter_name: str | None = None
    rank: int | None = None
    target_modules: list[str] | None = None
    created_at: float | None = None
    #: file name -> sha256 of every file in the version but this one
    files: dict[str, str] | None = None
    base_model: str | None = None
    #: the content hash of the base it was trained on: an engine refuses it on another base
    base_hash: str | None = None
    dataset: str | None = None
    dataset_hash: str | None = None
    parent: str | None = None

    def extra(self, key: str) -> Any:
        """A field of training's record (``training``, ``metrics``, ``logic_set`` ...), or None."""
        return (self.model_extra or {}).get(key)

    def as_dict(self) -> dict[str, Any]:
        """The manifest as it was written (fields absent from the file stay absent)."""
        return self.model_dump(mode="json", exclude_unset=True)


def read_manifest(folder: Path) -> Manifest | None:
    """A version's manifest, or ``None`` for a folder placed by hand without one."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    data = read_json(path, "adapter manifest", _HINT)
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise AdapterError(f"adapter {folder} has an invalid {MANIFEST_FILE}: {'; '.join(describe_validation(exc))}", _HINT) from None


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Into a version being staged (the stage's rename makes it appear whole)."""
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest.as_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
