"""The PEFT half of an adapter folder: ``adapter_config.json`` beside ``adapter_model.safetensors``.

Only headers are read here (the config, the tensors' names and shapes), never the weights: the
weights are read once, by :mod:`bonsai.registry.hashing`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bonsai.errors import AdapterError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

#: config fields that change what the adapter computes; anything else (paths, task type) does not
WEIGHT_FIELDS = ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "use_rslora", "use_dora", "modules_to_save")

HINT_FOLDER = "pass a folder written by PEFT's save_pretrained (adapter_config.json + adapter_model.safetensors)"


def read_json(path: Path, what: str, hint: str = HINT_FOLDER) -> dict[str, Any]:
    """One JSON object of an adapter folder; anything else is refused with ``hint``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{what} {path} cannot be read ({exc})", hint) from exc
    if not isinstance(data, dict):
        raise AdapterError(f"{what} {path} is not a JSON object", hint)
    return data


def read_config(folder: Path) -> dict[str, Any]:
    return read_json(folder / CONFIG_FILE, "adapter config")


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes from a safetensors header; no tensor data is read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            return {name: tuple(fh.get_slice(name).get_shape()) for name in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for broken headers
        raise AdapterError(f"{path} is not a readable safetensors file ({exc})", "re-save the adapter, or point at the right folder") from exc


def rank(config: dict[str, Any]) -> int:
    r = int(config.get("r") or 0)
    pattern = config.get("rank_pattern") or {}
    return max([r, *(int(v) for v in pattern.values())])


def target_modules(config: dict[str, Any]) -> tuple[str, ...]:
    targets = config.get("target_modules")
    if targets is None:
        return ()
    if isinstance(targets, str):
        return (targets,)
    return tuple(sorted(str(t) for t in targets))


def canonical_config(config: dict[str, Any]) -> bytes:
    """The config fields that change the weights' meaning, in one byte form for hashing."""
    fields = {key: config.get(key) for key in WEIGHT_FIELDS}
    # PEFT saves target_modules from a set: its order changes between saves of the same adapter
    if isinstance(fields["target_modules"], list):
        fields["target_modules"] = sorted(fields["target_modules"])
    if isinstance(fields["modules_to_save"], list):
        fields["modules_to_save"] = sorted(fields["modules_to_save"])
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
