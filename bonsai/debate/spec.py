"""What a user asks of a debate, declared once: validated at every edge (CLI, sweep file, TUI form),
and the source of the debate flags' defaults and help (see ``bonsai.engine.session.add_option_arguments``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bonsai.text import check_motion


class DebateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    motion: str = Field(description="The motion team A argues for and team B against.")
    personas: list[str] | None = Field(
        None, description="comma-separated persona names to seat (debaters by their team, judges, a moderator); empty seats get defaults",
        json_schema_extra={"split": ","},
    )
    format: str = Field("standard", description="debate format: a built-in name (standard, quick) or a YAML file")
    rounds: int = Field(2, ge=1, le=50, description="rebuttal rounds")
    candidates: int = Field(1, ge=1, le=32, description="best-of-N: sample N candidates per turn, keep the judge's favourite")
    seed: int | None = Field(None, description="seed for reproducible sampling")
    max_tokens: int | None = Field(None, ge=1, le=8192, description="cap on every debater turn's length in tokens")
    sweep: str | None = None
    adapters: dict[str, str | None] | None = Field(None, description="Persona -> adapter folder, pinned at start (resume uses these).")

    @field_validator("motion")
    @classmethod
    def _motion_not_empty(cls, v: str) -> str:
        return check_motion(v)  # empty, too long, or not encodable (a lone surrogate)


#: the settings a person picks for a debate (the CLI flags, the TUI form); the rest is set by sweeps and resumes
USER_SETTINGS = ("personas", "format", "rounds", "candidates", "seed", "max_tokens")
