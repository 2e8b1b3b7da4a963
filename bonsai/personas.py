"""Personas: who speaks, for which side, in which language and format, on which adapter.

Persona files are YAML validated once, here, at the edge; the rest of the code only sees
:class:`Persona` objects.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bonsai.errors import ConfigError, PersonaNotFound, describe_validation
from bonsai.reasoning import ReasoningFormat
from bonsai.rubric.config import CheckConfig, Language, check_rubric, require_types


class Team(str, Enum):
    A = "A"
    B = "B"
    NONE = "none"


class Role(str, Enum):
    DEBATER = "debater"
    JUDGE = "judge"
    MODERATOR = "moderator"
    TRANSLATOR = "translator"
    #: trained on verifiable tasks to lend its adapter to others (``--teacher-adapter``); never seated
    TEACHER = "teacher"


class Style(str, Enum):
    ASSISTANT = "assistant"
    CREATOR = "creator"
    LOGICIAN = "logician"
    TRANSLATOR = "translator"


class SamplingDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature; 0 means greedy.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(96, ge=1, le=8192, description="Most tokens one turn may generate.")
    repetition_penalty: float = Field(1.0, ge=1.0, le=2.0, description="Above 1 discourages repeating earlier text.")


#: what a persona may be called; the name is also a folder under $BONSAI_HOME (adapters, datasets), so
#: no separators, no dots, nothing that could step out of it
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)


def check_persona_name(name: str) -> str:
    """``name`` if it is a valid persona name, else a ConfigError (before it is ever used in a path)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"{name!r} is not a valid persona name",
            "persona names are 1-64 characters: lower-case letters, digits, '-' and '_', starting with a letter or digit",
        )
    return name


class Persona(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=NAME_PATTERN, description="Unique id, lower-case.")]
    team: Team = Field(description="A or B for debaters; none for judges, moderators, translators and teachers.")
    role: Role
    style: Style = Style.ASSISTANT
    language: Language = "en"
    system_prompt: str = Field(min_length=1, description="The persona's standing instructions.")
    reasoning: ReasoningFormat = Field(
        ReasoningFormat.NONE, description="How the persona lays out private reasoning before its answer."
    )
    sampling: SamplingDefaults = Field(default_factory=SamplingDefaults)
    adapter: str | None = Field(
        None,
        description=(
            "null for the bare base; 'registry' for this persona's current version under "
            "$BONSAI_HOME/adapters (bare base until one is trained); 'registry:NAME@VERSION'; "
            "or a directory path (relative paths are resolved against the YAML file)."
        ),
    )
    description: str = ""
    rubric: tuple[CheckConfig, ...] | None = Field(
        None, description="Checks each speech should pass, scored 0..1 (bonsai/rubric/config.py); null: no rubric."
    )

    @field_validator("rubric", mode="before")
    @classmethod
    def _rubric_types(cls, raw: object) -> object:
        return require_types(raw)

    # An after-validator, not a field validator on ``team``: ``team`` is declared before ``role``,
    # so a field validator would run before ``role`` is known and never check anything.
    @model_validator(mode="after")
    def _team_fits_role(self) -> Persona:
        if self.role == Role.DEBATER and self.team == Team.NONE:
            raise ValueError("team: a debater needs team A or B")
        if self.role != Role.DEBATER and self.team != Team.NONE:
            raise ValueError(f"team: a {self.role.value} takes no side: set team: none")
        if self.rubric is not None:
            check_rubric(self.rubric, reasoning=self.reasoning.value)
        return self

    @property
    def label(self) -> str:
        return f"{self.name} ({self.team.value})" if self.team != Team.NONE else self.name


def _format_validation_error(path: Path, err: ValidationError) -> str:
    return f"{path}: invalid persona:\n    " + "\n    ".join(describe_validation(err))


def load_persona(path: Path) -> Persona:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PersonaNotFound(f"persona file {path} does not exist") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}", "fix the syntax; `bonsai personas validate` checks every file") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a persona file must be a YAML mapping, got {type(raw).__name__}")
    adapter = raw.get("adapter")
    if isinstance(adapter, str) and adapter not in ("registry",) and not adapter.startswith("registry:"):
        p = Path(adapter).expanduser()
        raw["adapter"] = str(p if p.is_absolute() else (path.parent / p).resolve())
    try:
        persona = Persona.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(path, exc), "see personas/README or `bonsai personas show NAME` for a valid file") from None
    if persona.name != path.stem:
        raise ConfigError(f"{path}: persona name {persona.name!r} must match the file name {path.stem!r}")
    return persona


def default_personas_dir() -> Path:
    return Path(str(importlib.resources.files("personas")))


class PersonaBook:
    """Every persona in one directory, looked up by name."""

    def __init__(self, personas: Iterable[Persona], source: Path | None = None) -> None:
        self.source = source
        self._by_name: dict[str, Persona] = {}
        for p in personas:
            if p.name in self._by_name:
                raise ConfigError(f"persona {p.name!r} is defined twice in {source}")
            self._by_name[p.name] = p

    @classmethod
    def load(cls, directory: Path | None = None) -> PersonaBook:
        directory = directory or default_personas_dir()
        if not directory.is_dir():
            raise ConfigError(f"personas directory {directory} does not exist", "pass --personas-dir with a folder of persona YAML files")
        files = sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml"))
        return cls((load_persona(f) for f in files), source=directory)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def names(self) -> list[str]:
        return list(self._by_name)

    def get(self, name: str) -> Persona:
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(sorted(self._by_name)) or "(none)"
            raise PersonaNotFound(
                f"unknown persona {name!r}", f"known personas: {known}; add personas/{name}.yaml to define it"
            ) from None

    def by_role(self, role: Role, team: Team | None = None) -> list[Persona]:
        return [p for p in self if p.role == role and (team is None or p.team == team)]
