"""One generation request through the ``openai`` SDK: bonsai's request as SDK arguments, the streamed
chunks as bonsai's events, and the SDK's failures as bonsai's errors."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx2
from openai import APIConnectionError, APIError, APIStatusError, APITimeoutError, AsyncOpenAI

from bonsai.engine.openai.failures import HINT_DROPPED, body_message, describe, request_error, unreachable
from bonsai.engine.types import ChatPrompt, Completion, GenerationRequest, Sampling, StreamEvent, TextDelta, TextPrompt, TokenLogprob
from bonsai.errors import EngineError

#: the failures of a connection that never opened (the server is not there), in either HTTP library
_CONNECT_FAILURES = (httpx.ConnectError, httpx.ConnectTimeout, httpx2.ConnectError, httpx2.ConnectTimeout)


def chat_fields(prompt: ChatPrompt) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The messages, and vLLM's extensions that say whether the answer starts a turn or continues the last."""
    messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
    return messages, {"add_generation_prompt": not prompt.continue_final_message, "continue_final_message": prompt.continue_final_message}


def arguments(request: GenerationRequest, model: str) -> dict[str, Any]:
    """The keyword arguments of ``chat.completions.create`` or ``completions.create`` for ``request``."""
    s: Sampling = request.sampling
    args: dict[str, Any] = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": s.temperature,
        "top_p": s.top_p,
        "max_tokens": s.max_tokens,
    }
    extra: dict[str, Any] = {}  # vLLM's extensions of the OpenAI API
    if s.seed is not None:
        args["seed"] = s.seed
    if s.stop:
        args["stop"] = list(s.stop)
    if s.repetition_penalty != 1.0:
        extra["repetition_penalty"] = s.repetition_penalty
    if s.json_schema is not None:
        # vLLM >= 0.10.2 (so 0.24 and 0.32 alike); without disable_any_whitespace a small model pads
        # the JSON with newlines until max_tokens runs out
        extra["structured_outputs"] = {"json": s.json_schema, "disable_any_whitespace": True}
    prompt = request.prompt
    if isinstance(prompt, ChatPrompt):
        args["messages"], chat_extra = chat_fields(prompt)
        extra.update(chat_extra)
        if s.logprobs is not None:
            args["logprobs"] = True
            args["top_logprobs"] = s.logprobs
    else:
        assert isinstance(prompt, TextPrompt)
        args["prompt"] = prompt.text
        if s.logprobs is not None:
            args["logprobs"] = s.logprobs
    if extra:
        args["extra_body"] = extra
    return args


async def stream(url: str, sdk: AsyncOpenAI, request: GenerationRequest, model: str, timeout: float) -> AsyncIterator[StreamEvent]:
    """Stream ``request`` from one server; a failure to reach it, or a dropped connection, is
    :class:`EndpointUnreachable` (the caller decides where to go next)."""
    chat = isinstance(request.prompt, ChatPrompt)
    what = f"request {request.request_id}"
    t0 = time.perf_counter()
    first_token_s: float | None = None
    parts: list[str] = []
    logprobs: list[TokenLogprob] = []
    prompt_tokens = completion_tokens = 0
    finish_reason: str | None = None
    chunks_with_text = 0
    try:
        create = sdk.chat.completions.create if chat else sdk.completions.create
        async with await create(**arguments(request, model)) as chunks:
            async for chunk in chunks:
                if chunk.usage is not None:
                    prompt_tokens, completion_tokens = chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0
                for choice in chunk.choices or []:
                    text = ((choice.delta.content if choice.delta is not None else None) if chat else choice.text) or ""
                    if request.sampling.logprobs is not None and choice.logprobs is not None:
                        data = choice.logprobs.model_dump()
                        logprobs.extend(_chat_logprobs(data) if chat else _completion_logprobs(data))
                    if text:
                        if first_token_s is None:
                            first_token_s = time.perf_counter() - t0
                        chunks_with_text += 1
                        parts.append(text)
                        yield TextDelta(request.request_id, text)
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
    except APITimeoutError as exc:
        if isinstance(exc.__cause__, _CONNECT_FAILURES):
            raise unreachable(f"cannot reach the engine at {url}: {describe(exc.__cause__)}", describe(exc.__cause__)) from exc
        raise EngineError(f"the engine at {url} did not answer {what} within {timeout:.0f} s", "the server may be overloaded; see its log") from exc
    except APIConnectionError as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, _CONNECT_FAILURES):
            raise unreachable(f"cannot reach the engine at {url}: {describe(cause)}", describe(cause)) from exc
        raise unreachable(
            f"the connection to the engine at {url} dropped during {what}: {describe(cause)}",
            f"connection dropped: {describe(cause)}",
            HINT_DROPPED,
        ) from exc
    except APIStatusError as exc:
        raise request_error(url, what, exc.status_code, body_message(exc.body) or exc.message) from exc
    except APIError as exc:  # vLLM reports a failure after the stream started as a chunk with "error"
        code = exc.body.get("code") if isinstance(exc.body, dict) else None
        raise request_error(url, what, int(code) if isinstance(code, int) else 500, exc.message) from exc
    if finish_reason is None:
        raise unreachable(f"the engine at {url} ended {what} mid-stream", "it ended a stream mid-way", HINT_DROPPED)
    yield Completion(
        request_id=request.request_id,
        text="".join(parts),
        prompt_tokens=prompt_tokens,
        output_tokens=completion_tokens or len(logprobs) or chunks_with_text,
        finish_reason=finish_reason,
        first_token_s=first_token_s,
        total_s=time.perf_counter() - t0,
        logprobs=tuple(logprobs) if request.sampling.logprobs is not None else None,
        adapter_name=request.adapter.name if request.adapter is not None else None,
    )


def _with_chosen(token: str, logprob: float, top: dict[str, float]) -> TokenLogprob:
    top = dict(top)
    top.setdefault(token, logprob)
    return TokenLogprob(token=token, logprob=logprob, top=top)


def _chat_logprobs(data: dict[str, Any]) -> list[TokenLogprob]:
    result = []
    for entry in data.get("content") or []:
        top: dict[str, float] = {}
        for alt in entry.get("top_logprobs") or []:
            top[alt["token"]] = max(float(alt["logprob"]), top.get(alt["token"], float("-inf")))
        result.append(_with_chosen(entry["token"], float(entry["logprob"]), top))
    return result


def _completion_logprobs(data: dict[str, Any]) -> list[TokenLogprob]:
    tokens = data.get("tokens") or []
    values = data.get("token_logprobs") or []
    tops = data.get("top_logprobs") or []
    result = []
    for i, token in enumerate(tokens):
        top = {k: float(v) for k, v in (tops[i] or {}).items()} if i < len(tops) else {}
        value = values[i] if i < len(values) else None
        result.append(_with_chosen(token, float(value) if value is not None else float("nan"), top))
    return result
