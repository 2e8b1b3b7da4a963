"""The sweep file: a grid of debates in YAML, validated once, here, before anything runs.

The grid is motions x pairings x side assignments x seeds x judges x formats x candidate counts. Names
(personas, versions, judges, formats) are checked against the persona book and the adapter registry by
``plan.py``; this module checks shape and ranges, and reads motions files relative to the sweep file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bonsai.errors import ConfigError, describe_validation
from bonsai.sweep.motions import read_motions, unique
from bonsai.text import check_motion

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class MotionsFile(BaseModel):
    """Motions read from a file (.txt, .jsonl or .csv), relative to the sweep file's folder."""

    model_config = ConfigDict(extra="forbid")

    file: Path
    field: str = Field("motion", description="JSON field or CSV column holding the motion.")
    limit: int | None = Field(None, ge=1, description="Take only the first N motions of the file.")


class Pairing(BaseModel):
    """Two competitors, ``persona`` or ``persona@version`` (``@base``: no adapter, ``@current``: promoted)."""

    model_config = ConfigDict(extra="forbid")

    a: str = Field(description="Competitor whose adapter sits in side A's seat in the first assignment.")
    b: str = Field(description="Competitor whose adapter sits in side B's seat in the first assignment.")
    seats: tuple[str, str] | None = Field(
        None, description="Persona seats for side A and side B (their prompts). Default: the competitors' own personas where they fit."
    )

    @field_validator("a", "b")
    @classmethod
    def _shape(cls, v: str) -> str:
        v = v.strip()
        persona, at, version = v.partition("@")
        if not persona or (at and not version):
            raise ValueError(f"{v!r} is not 'persona' or 'persona@version'")
        return v


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: int | None = Field(None, ge=1, description="Stop launching debates once the sweep's debates have generated this many tokens.")
    wall_s: float | None = Field(None, gt=0, description="Stop after this many seconds of this run (in-flight debates are kept for --resume).")


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Unique in the store; debates are tagged with it.")
    motions: list[str | MotionsFile] = Field(min_length=1, description="Inline motions and/or motions files.")
    pairings: list[Pairing] = Field(min_length=1)
    sides: Literal["both", "given"] = Field("both", description="both: every pairing also runs with the adapters' seats swapped.")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    judges: list[str] = Field(default_factory=lambda: ["judge"], min_length=1, description="Each debate is judged by one of these (a grid axis).")
    formats: list[str] = Field(default_factory=lambda: ["quick"], min_length=1)
    rounds: int = Field(1, ge=1, le=50)
    candidates: list[int] = Field(default_factory=lambda: [1], min_length=1, description="Best-of-N settings (a grid axis).")
    max_tokens: int | None = Field(None, ge=1, le=8192, description="Caps every debater turn.")
    concurrency: int = Field(16, ge=1, le=4096, description="Debates in flight at once.")
    retries: int = Field(2, ge=0, le=50, description="Engine errors a debate may hit before it is marked failed.")
    backoff_s: float = Field(2.0, ge=0, le=600, description="First retry delay; doubles each time (with jitter).")
    budget: Budget = Field(default_factory=Budget)

    @field_validator("candidates")
    @classmethod
    def _candidates(cls, v: list[int]) -> list[int]:
        if any(not 1 <= c <= 32 for c in v):
            raise ValueError("each candidates value must be between 1 and 32")
        return v

    @model_validator(mode="after")
    def _no_repeats(self) -> SweepConfig:
        for axis in ("seeds", "judges", "formats", "candidates"):
            values = getattr(self, axis)
            if len(set(values)) != len(values):
                raise ValueError(f"{axis} lists a value twice")
        keys = [(p.a, p.b, p.seats) for p in self.pairings]
        if len(set(keys)) != len(keys):
            raise ValueError("pairings lists the same pairing twice")
        return self


def _checked(motion: str, where: str) -> str:
    try:
        return check_motion(motion)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}", "fix or remove that motion") from None


#: a grid larger than this is run (or planned, with --dry-run) only with --yes: 10,000 debates are
#: hours of GPU time, and planning a grid holds every debate of it in memory at once
GRID_CAP = 10_000


class ResolvedSweep(BaseModel):
    """A sweep with its motions read: what is stored, hashed and compared on --resume."""

    model_config = ConfigDict(extra="forbid")

    config: SweepConfig
    motions: list[str]
    source: str | None = None

    def grid_size(self) -> int:
        """Debates in the grid, counted without building it (an upper bound: a competitor paired with
        itself runs one assignment, not two)."""
        cfg = self.config
        sides = 2 if cfg.sides == "both" else 1
        return len(self.motions) * len(cfg.pairings) * sides * len(cfg.seeds) * len(cfg.judges) * len(cfg.formats) * len(cfg.candidates)

    def grid_hash(self) -> str:
        """Hash of what decides the debates (not concurrency, retries or budgets, which may change on resume)."""
        grid = self.config.model_dump(mode="json", exclude={"concurrency", "retries", "backoff_s", "budget", "motions"})
        payload = json.dumps({"grid": grid, "motions": self.motions}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def load_sweep(path: Path, *, overrides: dict[str, object] | None = None) -> ResolvedSweep:
    """Read and validate ``path`` (YAML), with ``overrides`` (from the command line) laid on top."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"sweep file {path} does not exist", "pass the path of a sweep YAML (see examples/sweep-quick.yaml)") from None
    except IsADirectoryError:
        raise ConfigError(f"sweep file {path} is a folder", "pass the path of a sweep YAML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"sweep file {path} is not UTF-8 text", "save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}", "fix the syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a sweep file must be a YAML mapping, got {type(raw).__name__}", "see examples/sweep-quick.yaml")
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    try:
        config = SweepConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid sweep:\n    " + "\n    ".join(describe_validation(exc)), "see examples/sweep-quick.yaml for a valid file") from None
    motions: list[str] = []
    for i, item in enumerate(config.motions):
        if isinstance(item, MotionsFile):
            file = item.file if item.file.is_absolute() else path.parent / item.file
            found = read_motions(file, field=item.field)
            found = found[: item.limit] if item.limit else found
            motions.extend(_checked(m, f"motions file {file}, motion {n}") for n, m in enumerate(found, start=1))
        else:
            text = item.strip()
            if not text:
                raise ConfigError(f"{path}: motions lists an empty motion", "remove it, or write the motion")
            motions.append(_checked(text, f"{path}: motions[{i}]"))
    return ResolvedSweep(config=config, motions=unique(motions), source=str(path.resolve()))
