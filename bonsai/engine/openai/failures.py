"""HTTP failures of an OpenAI-compatible server as bonsai's errors, with the server's own words."""

from __future__ import annotations

import json
from typing import Any

import httpx

from bonsai.errors import EndpointUnreachable, EngineError, PromptTooLong

HINT_UNREACHABLE = "start one with `bonsai serve` or check --endpoint"
HINT_DROPPED = "check that the server is still running (`bonsai serve` prints why it stopped)"


def body_message(body: Any) -> str | None:
    """The error text vLLM put in a JSON body (``{"error": {"message": ...}}`` and older shapes)."""
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    if isinstance(err, str):
        return err
    for key in ("detail", "message"):
        if body.get(key):
            return str(body[key])
    return None


def server_message(response: httpx.Response) -> str:
    """The error text in a response's body, else the raw body."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text.strip()[:500] or response.reason_phrase
    return body_message(body) or str(body)[:500]


def request_error(url: str, what: str, status: int, message: str) -> Exception:
    if "maximum context length" in message:
        return PromptTooLong(f"{message} ({url})", "shorten the motion or the debate history, lower --max-tokens, or serve with a larger --max-model-len")
    return EngineError(f"the engine at {url} refused the {what} (HTTP {status}): {message}", "check the request against the server's log")


def describe(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def unreachable(message: str, reason: str, hint: str = HINT_UNREACHABLE) -> EndpointUnreachable:
    """An :class:`EndpointUnreachable` that also carries the short ``reason`` the endpoint is marked down for."""
    err = EndpointUnreachable(message, hint)
    err.reason = reason  # type: ignore[attr-defined]
    return err


def cannot_reach(url: str, exc: BaseException) -> EndpointUnreachable:
    return unreachable(f"cannot reach the engine at {url}: {describe(exc)}", describe(exc))


def reason(exc: EndpointUnreachable) -> str:
    return getattr(exc, "reason", None) or exc.message
