"""A version's gate evaluation, kept beside it: ``<persona>/evaluations/<version>.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bonsai import atomic
from bonsai.registry.layout import EVALUATIONS, check_version_name, persona_dir


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
