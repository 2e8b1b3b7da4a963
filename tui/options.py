"""What `bonsai tui` is started with: where the data lives, which engine to use, the form's defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

from bonsai.debate.spec import DebateSpec
from bonsai.engine.session import EngineOptions

__all__ = ["EngineOptions", "FormDefaults", "TuiOptions"]


def _spec_field(name: str) -> FieldInfo:
    """The field as DebateSpec declares it (default, limits, description): declared once."""
    return FieldInfo.merge_field_infos(DebateSpec.model_fields[name])


class FormDefaults(BaseModel):
    """What the new-debate form starts filled with (from the command line): the debate settings with
    :class:`DebateSpec`'s own defaults and limits, and a motion that may still be empty."""

    model_config = ConfigDict(extra="forbid")

    motion: str = ""
    personas: list[str] | None = _spec_field("personas")
    format: str = _spec_field("format")
    rounds: int = _spec_field("rounds")
    candidates: int = _spec_field("candidates")
    seed: int | None = _spec_field("seed")
    max_tokens: int | None = _spec_field("max_tokens")


class TuiOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    home: Path
    store: Path | None = Field(None, description="transcript store (default: $BONSAI_HOME/transcripts.sqlite)")
    personas_dir: Path | None = None
    engine: EngineOptions = Field(default_factory=EngineOptions)
    form: FormDefaults = Field(default_factory=FormDefaults)
    #: what to show first: a stored debate replayed, an unfinished one resumed, or a sweep
    replay: str | None = None
    resume: str | None = None
    sweep: str | None = None
    #: seconds between replayed chunks (0: show stored debates at once)
    replay_delay: float = Field(0.0, ge=0.0)
