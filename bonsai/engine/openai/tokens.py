"""Counting a prompt's tokens with a server's own tokenizer (vLLM's ``/tokenize``), so the count is
exactly what the server will see."""

from __future__ import annotations

from typing import Any

import httpx

from bonsai.engine.openai.failures import cannot_reach, request_error, server_message
from bonsai.engine.openai.pool import Endpoint
from bonsai.engine.openai.wire import chat_fields
from bonsai.engine.types import ChatPrompt, Prompt


def tokenize_body(prompt: Prompt, model: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model}
    if isinstance(prompt, ChatPrompt):
        body["messages"], extra = chat_fields(prompt)
        body.update(extra)
    else:
        body["prompt"] = prompt.text
    return body


def token_count(ep: Endpoint, response: httpx.Response) -> int:
    if response.status_code != 200:
        raise request_error(ep.url, "tokenize request", response.status_code, server_message(response))
    return int(response.json()["count"])


async def count_tokens(ep: Endpoint, prompt: Prompt, model: str | None) -> int:
    """The count on ``ep``; :class:`EndpointUnreachable` if it cannot be asked."""
    try:
        response = await ep.client.post("/tokenize", json=tokenize_body(prompt, model))
    except httpx.HTTPError as exc:
        raise cannot_reach(ep.url, exc) from exc
    return token_count(ep, response)
