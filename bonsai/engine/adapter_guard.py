"""An ASGI middleware that ``bonsai serve`` adds to vLLM's server (``--middleware``): it runs in the
server process, never in bonsai's.

Runtime adapter loading (``VLLM_ALLOW_RUNTIME_LORA_UPDATING``) lets anything that reaches the port
load any folder or hub id, or replace a served adapter's weights (``load_inplace``). vLLM offers two
routes for it: ``POST /v1/load_lora_adapter`` (``lora_path``) and SageMaker's ``POST /adapters``
(``src``). This guard reads the body of both and refuses (403, with the reason) a source that is not
an existing folder under the server's ``$BONSAI_HOME`` once symlinks are resolved: hub ids, missing
paths and folders elsewhere. ``--allow-any-adapter-path`` turns the check off.

vLLM's key check (``VLLM_API_KEY``) guards only ``/v1``-style prefixes, which leaves ``/adapters``,
``/invocations``, ``/tokenize`` and the rest open; with a key set, this guard asks for it (vLLM's own
check, the same hashes and comparison) on every route but the liveness probes.

Configured through the environment ``bonsai serve`` gives the server: ``BONSAI_ADAPTER_ROOT`` (the
folder adapters must be under; empty: any path; unset: every runtime load is refused, so a lost
setting fails closed) and ``VLLM_API_KEY``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ROOT_ENV = "BONSAI_ADAPTER_ROOT"
#: routes anyone may call without a key: liveness and load probes, nothing that runs the model
OPEN_PATHS = frozenset({"/health", "/ping", "/version", "/metrics", "/load"})
#: a load request's body is a few hundred bytes; anything far larger is not one
MAX_BODY = 1 << 20


def adapter_source_problem(source: object, root: str | None) -> str | None:
    """Why the server must not load ``source`` (None when it may). ``root``: the resolved folder
    adapters must be under; "" allows any source; None refuses every one."""
    if root == "":
        return None
    if root is None:
        return f"runtime adapter loading is not configured on this server ({ROOT_ENV} is unset)"
    if not isinstance(source, str) or not source.strip():
        return "the request names no adapter folder"
    # as vLLM reads it: ~ expanded, a relative path taken from the server's working directory
    path = os.path.expanduser(source)
    if not os.path.isdir(path):
        return (f"{source!r} is not a folder on the server; hub ids and missing paths are not loaded at run time, "
                f"only adapter folders under {root}")
    real = os.path.realpath(path)
    if os.path.commonpath([real, root]) != root:
        return f"adapter folder {real} is outside this server's BONSAI_HOME ({root})"
    return None


async def _respond(send: Send, status: int, message: str, kind: str) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class AdapterGuard:
    """See the module's doc. Starlette builds it as ``AdapterGuard(app)``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        root = os.environ.get(ROOT_ENV)
        self.root = os.path.realpath(root) if root else root
        key = os.environ.get("VLLM_API_KEY")
        self._auth = None
        if key:
            from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

            self._auth = AuthenticationMiddleware(app, [key])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        path = scope["path"].removeprefix(scope.get("root_path", "")).rstrip("/") or "/"
        if self._auth is not None and path not in OPEN_PATHS:
            from starlette.datastructures import Headers

            if not self._auth.verify_token(Headers(scope=scope)):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})  # closed before accepting: HTTP 403
                else:
                    await _respond(send, 401, "Unauthorized", "Unauthorized")
                return
        if scope["type"] == "http" and scope.get("method") == "POST" and (path.endswith("/load_lora_adapter") or path == "/adapters"):
            await self._guard_load(path, scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _guard_load(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_BODY:
                await _respond(send, 413, "request body too large for an adapter load", "BadRequestError")
                return
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            await _respond(send, 400, "an adapter load takes a JSON object", "BadRequestError")
            return
        source = body.get("src") if path == "/adapters" else body.get("lora_path")
        problem = adapter_source_problem(source, self.root)
        if problem is not None:
            hint = "copy the adapter under that folder (e.g. a registry version), or restart `bonsai serve` with --allow-any-adapter-path"
            await _respond(send, 403, f"refused to load an adapter: {problem}; {hint}", "Forbidden")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
