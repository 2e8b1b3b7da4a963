"""The engine facade's vocabulary: plain dataclasses, no vLLM types.

Everything outside ``bonsai/engine/`` talks to an :class:`Engine` with :class:`GenerationRequest`
objects and gets back :class:`TextDelta` events and one :class:`Completion`. The three backends
(in-process vLLM, an OpenAI-compatible server, transformers+PEFT) accept exactly the same requests.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class ChatPrompt:
    """Messages rendered with the base model's chat template.

    ``continue_final_message`` leaves the last (assistant) message open so the model continues it:
    that is how the judge reads the probability of the winner token after a fixed prefix.
    """

    messages: tuple[ChatMessage, ...]
    continue_final_message: bool = False

    @staticmethod
    def of(messages: Sequence[ChatMessage | dict[str, str]], *, continue_final_message: bool = False) -> ChatPrompt:
        msgs = tuple(m if isinstance(m, ChatMessage) else ChatMessage(m["role"], m["content"]) for m in messages)  # type: ignore[arg-type]
        return ChatPrompt(msgs, continue_final_message)


@dataclass(frozen=True)
class TextPrompt:
    """Raw text sent as-is (Alpaca-format personas render their own prompt)."""

    text: str


Prompt = ChatPrompt | TextPrompt


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 128
    seed: int | None = None
    stop: tuple[str, ...] = ()
    #: >1 discourages repeating tokens already in the prompt or output (tiny models loop without it)
    repetition_penalty: float = 1.0
    #: number of top alternatives to return per generated token (None: no logprobs)
    logprobs: int | None = None
    #: JSON schema to constrain the output to, where the backend supports guided decoding
    json_schema: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "stop": list(self.stop),
            "repetition_penalty": self.repetition_penalty,
            "logprobs": self.logprobs,
            "json_schema": self.json_schema is not None,
        }


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter on disk, identified by its content hash.

    ``name`` is what the engine serves it as; it is derived from the content hash, so two different
    sets of weights never share a name (vLLM's prefix cache is keyed by adapter name).
    """

    path: Path
    content_hash: str
    name: str
    rank: int
    target_modules: tuple[str, ...]
    base_model: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt: Prompt
    sampling: Sampling = field(default_factory=Sampling)
    adapter: AdapterRef | None = None


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    #: alternatives at this position, token text -> logprob (includes the chosen token)
    top: dict[str, float]


@dataclass(frozen=True)
class TextDelta:
    request_id: str
    text: str


@dataclass(frozen=True)
class Completion:
    request_id: str
    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str
    #: seconds from submission to the first output token, and to the end
    first_token_s: float | None
    total_s: float
    logprobs: tuple[TokenLogprob, ...] | None = None
    adapter_name: str | None = None


StreamEvent = TextDelta | Completion


@dataclass(frozen=True)
class EngineInfo:
    kind: Literal["vllm", "openai", "hf"]
    base_model: str
    max_model_len: int
    supports_json_schema: bool
    max_lora_rank: int | None = None


class Engine(abc.ABC):
    """One async interface over every backend. Use as ``async with engine:``."""

    info: EngineInfo

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Yield text deltas as they are produced, then exactly one :class:`Completion`."""

    async def generate(self, request: GenerationRequest) -> Completion:
        final: Completion | None = None
        async for event in self.stream(request):
            if isinstance(event, Completion):
                final = event
        assert final is not None, "engine stream ended without a Completion"
        return final

    @abc.abstractmethod
    async def add_adapter(self, adapter: AdapterRef) -> None:
        """Make ``adapter`` servable (validating it against the base first); idempotent."""

    @abc.abstractmethod
    def count_tokens(self, prompt: Prompt) -> int:
        """Tokens the rendered prompt takes, to refuse prompts that leave no room for the answer."""
