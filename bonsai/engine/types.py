"""The engine facade's vocabulary: plain dataclasses, no vLLM types.

Everything outside ``bonsai/engine/`` talks to an :class:`Engine` with :class:`GenerationRequest`
objects and gets back :class:`TextDelta` events and one :class:`Completion`. The three backends
(in-process vLLM, an OpenAI-compatible server, transformers+PEFT) accept exactly the same requests.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from bonsai.errors import PromptTooLong
from bonsai.registry.identity import AdapterRef  # the registry describes adapters; the engine serves them

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


#: EngineStats field -> the vLLM v1 Prometheus counter it is read from (names without ``_total``)
VLLM_COUNTERS: dict[str, str] = {
    "prefix_cache_queries": "vllm:prefix_cache_queries",
    "prefix_cache_hits": "vllm:prefix_cache_hits",
    "prompt_tokens": "vllm:prompt_tokens",
    "generation_tokens": "vllm:generation_tokens",
    "requests_finished": "vllm:request_success",
}


@dataclass(frozen=True)
class EngineStats:
    """Running totals since the engine (or each server) started; ``None`` where a backend cannot tell.

    They exist to measure work, e.g. how much of a debate sweep's prompts the prefix cache served:
    take one snapshot before and one after, and report ``after.since(before)``. Totals restart at
    zero when an engine or server restarts, so a delta spanning a restart is meaningless.
    """

    #: prompt tokens looked up in the prefix cache (every prompt token of every new request)
    prefix_cache_queries: int | None = None
    #: of those, tokens whose KV blocks were already cached
    prefix_cache_hits: int | None = None
    prompt_tokens: int | None = None
    generation_tokens: int | None = None
    #: requests that ran to their end (stop, length, error); ones the caller abandoned are not counted
    requests_finished: int | None = None
    #: endpoints left out of the sums (unreachable, or no metrics): only the OpenAI engine has any;
    #: a delta is only meaningful between two snapshots that left out the same endpoints
    missing_endpoints: tuple[str, ...] = ()

    @property
    def hit_rate(self) -> float | None:
        """Share of looked-up prompt tokens served from the prefix cache (``None`` before any lookup)."""
        if not self.prefix_cache_queries or self.prefix_cache_hits is None:
            return None
        return self.prefix_cache_hits / self.prefix_cache_queries

    def since(self, earlier: EngineStats) -> EngineStats:
        """The work done between ``earlier`` and this snapshot (``None`` where either lacks a number)."""
        counts: dict[str, int | None] = {}
        for f in fields(self):
            if f.name == "missing_endpoints":
                continue
            now, then = getattr(self, f.name), getattr(earlier, f.name)
            counts[f.name] = None if now is None or then is None else now - then
        missing = tuple(dict.fromkeys((*earlier.missing_endpoints, *self.missing_endpoints)))
        return EngineStats(**counts, missing_endpoints=missing)  # type: ignore[arg-type]

    @classmethod
    def from_vllm_counters(cls, totals: Mapping[str, float], *, missing_endpoints: Sequence[str] = ()) -> EngineStats:
        """From vLLM counter totals keyed by metric name (``vllm:prompt_tokens``, ``_total`` stripped)."""
        values = {name: int(round(totals[metric])) if metric in totals else None for name, metric in VLLM_COUNTERS.items()}
        return cls(**values, missing_endpoints=tuple(missing_endpoints))  # type: ignore[arg-type]


def ensure_room(prompt_tokens: int, max_tokens: int, limit: int) -> None:
    """Refuse a prompt that leaves no room for ``max_tokens`` in a context of ``limit`` (0: unknown, not
    checked). Every backend refuses with this one sentence: vLLM would quietly shorten the answer."""
    if limit and prompt_tokens + max_tokens > limit:
        raise PromptTooLong(
            f"the prompt takes {prompt_tokens} tokens; with max_tokens {max_tokens} that exceeds the context of {limit}",
            "shorten the motion or the debate history, lower --max-tokens, or raise --max-model-len (a server's, for --endpoint)",
        )


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

    async def acount_tokens(self, prompt: Prompt) -> int:
        """:meth:`count_tokens` without blocking the event loop: a backend whose count is a network
        call (the OpenAI engine's ``/tokenize``) overrides this; a local tokenizer needs no I/O."""
        return self.count_tokens(prompt)

    async def check_room(self, prompt: Prompt, max_tokens: int) -> int:
        """The prompt-length check, the one every backend makes before generating (see :func:`ensure_room`),
        for a caller that wants to refuse a prompt before asking for anything. Returns its tokens."""
        used = await self.acount_tokens(prompt)
        ensure_room(used, max_tokens, self.info.max_model_len)
        return used

    async def stats(self) -> EngineStats:
        """Running totals of the work done (see :class:`EngineStats`); all ``None`` for a backend
        that keeps none, so callers can ask any engine."""
        return EngineStats()
