"""Debate formats, declared in YAML: the phases, who speaks in which order, what each phase asks for.

A phase with ``repeat: rounds`` is played ``--rounds`` times (the rebuttal rounds); the judge section
names the criteria every verdict scores.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bonsai.errors import ConfigError

SideLabel = Literal["A", "B"]


class PhaseSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    instruction: str = Field(min_length=1, description="What the speaker is asked to do in this phase.")
    speakers: list[SideLabel] = Field(default_factory=lambda: ["A", "B"], min_length=1, description="Speaking order by team.")
    repeat: Literal["once", "rounds"] = "once"
    max_tokens: int | None = Field(None, ge=1, le=8192, description="Overrides the persona's max_tokens in this phase.")


class JudgeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    criteria: list[str] = Field(default_factory=lambda: ["evidence", "logic", "rebuttal", "clarity"], min_length=1)
    max_tokens: int = Field(160, ge=16, le=2048)


class DebateFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    description: str = ""
    phases: list[PhaseSpec] = Field(min_length=1)
    judge: JudgeSpec = Field(default_factory=JudgeSpec)
    moderator: bool = Field(True, description="Whether the moderator introduces each phase.")

    @field_validator("phases")
    @classmethod
    def _unique_phase_names(cls, phases: list[PhaseSpec]) -> list[PhaseSpec]:
        names = [p.name for p in phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, got {names}")
        return phases

    def schedule(self, rounds: int) -> list[PlannedPhase]:
        """The phases in the order they are played, with repeated phases expanded."""
        out: list[PlannedPhase] = []
        for spec in self.phases:
            n = rounds if spec.repeat == "rounds" else 1
            for r in range(1, n + 1):
                out.append(PlannedPhase(spec=spec, round=r, total_rounds=n))
        return out


@dataclass(frozen=True)
class PlannedPhase:
    spec: PhaseSpec
    round: int
    total_rounds: int

    @property
    def title(self) -> str:
        return f"{self.spec.name} {self.round}/{self.total_rounds}" if self.total_rounds > 1 else self.spec.name


def builtin_formats_dir() -> Path:
    return Path(str(importlib.resources.files("bonsai") / "formats"))


def load_format(name_or_path: str) -> DebateFormat:
    """A built-in format by name (``standard``), or a YAML file path."""
    p = Path(name_or_path)
    if not p.suffix:
        p = builtin_formats_dir() / f"{name_or_path}.yaml"
        if not p.is_file():
            known = ", ".join(sorted(f.stem for f in builtin_formats_dir().glob("*.yaml")))
            raise ConfigError(f"unknown debate format {name_or_path!r}", f"built-in formats: {known}; or pass a YAML file path")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"format file {p} does not exist") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    try:
        return DebateFormat.model_validate(raw)
    except ValidationError as exc:
        msgs = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"{p}: invalid debate format: {msgs}", "see bonsai/formats/standard.yaml for a valid format") from None
