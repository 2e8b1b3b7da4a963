"""Which motions an evaluation may use: never one the adapter (or any version before it) trained on."""

from __future__ import annotations

import logging
from pathlib import Path

from bonsai.registry import list_versions, persona_dir, read_manifest
from bonsai.errors import AdapterError, ConfigError
from training.card import DatasetError, read_card

log = logging.getLogger(__name__)


def trained_motions(home: Path, persona: str, extra_datasets: list[Path] | None = None) -> dict[str, str]:
    """motion -> the dataset that trained on it, over every version of the persona in the registry."""
    seen: dict[str, str] = {}
    datasets: list[Path] = list(extra_datasets or [])
    for version in list_versions(home, persona):
        try:
            manifest = read_manifest(persona_dir(home, persona) / version)
            recorded = manifest.dataset if manifest else None
        except AdapterError:
            continue
        if recorded:
            datasets.append(Path(recorded))
    for dataset in datasets:
        try:
            card = read_card(dataset)
        except (DatasetError, ConfigError, OSError):
            log.info("dataset %s is gone or unreadable; its motions are not checked", dataset)
            continue
        for motion in card.split.train_motions:
            seen.setdefault(motion, str(dataset))
    return seen


def check_held_out(home: Path, persona: str, motions: list[str]) -> None:
    """Refuse, naming it, any motion a version of ``persona`` was trained on."""
    if not motions:
        raise ConfigError("there are no motions to evaluate on", "pass --motions FILE (one motion per line)")
    seen = trained_motions(home, persona)
    clash = [m for m in motions if m in seen]
    if clash:
        listed = "; ".join(f"{m!r} (trained on in {seen[m]})" for m in clash[:3])
        more = f" and {len(clash) - 3} more" if len(clash) > 3 else ""
        raise ConfigError(
            f"{len(clash)} evaluation motion(s) were seen in training: {listed}{more}",
            "evaluate on held-out motions only: remove them from --motions, or use the dataset's test motions (the default)",
        )
