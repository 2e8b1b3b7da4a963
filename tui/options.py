"""What `bonsai tui` is started with: where the data lives, which engine to use, the form's defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EngineOptions(BaseModel):
    """The same engine choices as `bonsai debate` (``--engine``, ``--endpoint``, ``--base``, ...)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["vllm", "openai", "hf"] = Field("vllm", description="in-process vLLM, a `bonsai serve` endpoint, or transformers+PEFT")
    endpoints: list[str] = Field(default_factory=list, description="OpenAI-compatible server URLs (kind=openai)")
    base: str | None = Field(None, description="base model folder or cached hub id (default: the embedded model)")
    max_model_len: int = Field(4096, ge=256)
    max_lora_rank: int | None = Field(None, ge=1, description="default: from the adapters in play, at least 16")


class FormDefaults(BaseModel):
    """What the new-debate form starts filled with (from the command line)."""

    model_config = ConfigDict(extra="forbid")

    motion: str = ""
    personas: list[str] | None = None
    format: str = "standard"
    rounds: int = Field(2, ge=1, le=50)
    candidates: int = Field(1, ge=1, le=32)
    seed: int | None = None
    max_tokens: int | None = Field(None, ge=1, le=8192)


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
