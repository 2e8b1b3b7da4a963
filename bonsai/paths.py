"""Where bonsai keeps its files: everything lives under one home directory so tests can point it at a
temp folder and users can move it with ``BONSAI_HOME``."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = Path("~/.cache/bonsai")


def bonsai_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    raw = explicit or os.environ.get("BONSAI_HOME") or DEFAULT_HOME
    home = Path(raw).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def models_dir(home: Path) -> Path:
    return home / "models"


def adapters_dir(home: Path) -> Path:
    return home / "adapters"


def store_path(home: Path) -> Path:
    return home / "transcripts.sqlite"


def checkpoints_path(home: Path) -> Path:
    return home / "checkpoints.sqlite"
