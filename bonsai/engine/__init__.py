"""The engine facade. Only this package imports vLLM; everything else uses these types.

``create_engine`` picks a backend by name; the backends are imported lazily so that a machine without
vLLM can still run the transformers+PEFT engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from bonsai.engine.types import (
    AdapterRef,
    ChatMessage,
    ChatPrompt,
    Completion,
    Engine,
    EngineInfo,
    EngineStats,
    GenerationRequest,
    Prompt,
    Sampling,
    StreamEvent,
    TextDelta,
    TextPrompt,
    TokenLogprob,
)

EngineKind = Literal["vllm", "openai", "hf"]


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: EngineKind = "vllm"
    base_model: Path | None = Field(None, description="Prepared base model folder (in-process engines).")
    base_hash: str | None = Field(None, description="Content hash of the base; adapters trained on another are refused.")
    endpoints: list[str] = Field(default_factory=list, description="OpenAI-compatible server URLs (kind=openai).")
    max_model_len: int = Field(4096, ge=256)
    max_loras: int = Field(4, ge=1)
    max_lora_rank: int = Field(16, ge=1)
    dtype: str = Field("auto", description="auto: float32 on CPU, bfloat16 on GPU.")
    kv_cache_gib: float = Field(1.0, gt=0)
    max_num_seqs: int | None = Field(None, ge=1, description="Requests in one batch (in-process vLLM); None: vLLM's throughput default for the device.")
    seed: int = 0
    log_stats: bool = Field(False, description="vLLM's own per-token statistics (in-process vLLM engine); Engine.stats() does not need them.")
    endpoint_retry_s: float = Field(15.0, ge=0, description="Seconds a down endpoint rests before it is probed again (kind=openai).")
    chat_template: str | None = Field(None, description="Chat template text used instead of the base's own (in-process engines; checked by the caller).")
    #: left out of every dump: a config written to a file or sent to a worker never carries the key
    api_key: SecretStr | None = Field(None, exclude=True, description="Key the endpoints require (kind=openai); None: $BONSAI_API_KEY.")


def create_engine(config: EngineConfig) -> Engine:
    if config.kind == "vllm":
        from bonsai.engine.vllm_local import VLLMEngine

        assert config.base_model is not None
        return VLLMEngine(
            config.base_model,
            base_hash=config.base_hash,
            max_model_len=config.max_model_len,
            max_loras=config.max_loras,
            max_lora_rank=config.max_lora_rank,
            dtype=config.dtype,
            kv_cache_gib=config.kv_cache_gib,
            seed=config.seed,
            log_stats=config.log_stats,
            max_num_seqs=config.max_num_seqs,
            chat_template=config.chat_template,
        )
    if config.kind == "hf":
        from bonsai.engine.hf_peft import HFEngine

        assert config.base_model is not None
        return HFEngine(
            config.base_model, base_hash=config.base_hash, dtype=config.dtype, max_model_len=config.max_model_len, chat_template=config.chat_template,
        )
    from bonsai.engine.auth import env_api_key
    from bonsai.engine.openai import OpenAIEngine

    api_key = config.api_key.get_secret_value() if config.api_key else env_api_key()
    return OpenAIEngine(
        config.endpoints, base_model=str(config.base_model) if config.base_model else None, endpoint_retry_s=config.endpoint_retry_s, api_key=api_key
    )


__all__ = [
    "AdapterRef",
    "ChatMessage",
    "ChatPrompt",
    "Completion",
    "Engine",
    "EngineConfig",
    "EngineInfo",
    "EngineKind",
    "EngineStats",
    "GenerationRequest",
    "Prompt",
    "Sampling",
    "StreamEvent",
    "TextDelta",
    "TextPrompt",
    "TokenLogprob",
    "create_engine",
]
