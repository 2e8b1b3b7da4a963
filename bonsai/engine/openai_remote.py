"""The engine behind one or more OpenAI-compatible vLLM servers (``bonsai serve``, or any ``vllm serve``).

Requests go over HTTP with server-sent events, so a debate can run on a laptop against a GPU box.
Adapters are addressed by their content-hash name (the same one every engine uses) and loaded on
the servers at run time when they are new, so a freshly trained version is used without a restart
and never under an old name. No vLLM import: only ``httpx``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bonsai.engine.adapters import validate_adapter
from bonsai.engine.types import (
    AdapterRef,
    ChatPrompt,
    Completion,
    Engine,
    EngineInfo,
    GenerationRequest,
    Prompt,
    Sampling,
    StreamEvent,
    TextDelta,
    TextPrompt,
    TokenLogprob,
)
from bonsai.errors import AdapterError, EndpointUnreachable, EngineError, PromptTooLong
from bonsai.model.prepare import MANIFEST

log = logging.getLogger(__name__)

_HINT_UNREACHABLE = "start one with `bonsai serve` or check --endpoint"


def normalize_endpoint(url: str) -> str:
    """``host:port``, ``http://host:port/`` and ``http://host:port/v1`` all name the same server."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url.removesuffix("/v1")


@dataclass
class _Endpoint:
    url: str
    client: httpx.AsyncClient
    #: requests streaming from this server right now
    outstanding: int = 0
    #: requests ever sent, to break ties between idle servers by spreading the load
    sent: int = 0
    #: adapter names the server serves (from /v1/models, plus those we loaded)
    adapters: set[str] = field(default_factory=set)
    max_model_len: int | None = None
    #: for the synchronous count_tokens, made on first use
    sync_client: httpx.Client | None = None


def _server_message(response: httpx.Response) -> str:
    """The error text vLLM put in the body (``{"error": {"message": ...}}``), else the raw body."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if body.get("detail"):
            return str(body["detail"])
        if body.get("message"):
            return str(body["message"])
    return str(body)[:500]


def _request_error(url: str, what: str, status: int, message: str) -> Exception:
    if "maximum context length" in message:
        return PromptTooLong(f"{message} ({url})", "shorten the motion or the debate history, lower --max-tokens, or serve with a larger --max-model-len")
    return EngineError(f"the engine at {url} refused the {what} (HTTP {status}): {message}", "check the request against the server's log")


class OpenAIEngine(Engine):
    """A facade over OpenAI-compatible vLLM servers; each request goes to the least busy one."""

    def __init__(self, endpoints: list[str], *, base_model: str | None = None, api_key: str | None = None, timeout: float = 600) -> None:
        if not endpoints:
            raise EngineError("the OpenAI engine needs at least one endpoint URL", "pass --endpoint http://127.0.0.1:8000 (from `bonsai serve`)")
        self.endpoint_urls = [normalize_endpoint(u) for u in endpoints]
        self.base_model = base_model
        self.api_key = api_key
        self.timeout = timeout
        self.base_id: str | None = None
        self.info = EngineInfo(kind="openai", base_model=base_model or "", max_model_len=0, supports_json_schema=True)
        self._endpoints: list[_Endpoint] = []
        self._adapter_lock = asyncio.Lock()

    # --- lifecycle ------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, connect=min(10.0, self.timeout))

    async def start(self) -> None:
        if self._endpoints:
            return
        endpoints = [_Endpoint(url, httpx.AsyncClient(base_url=url, headers=self._headers(), timeout=self._timeout())) for url in self.endpoint_urls]
        try:
            cards = await asyncio.gather(*(self._models(ep) for ep in endpoints))
            base_ids = set()
            for ep, models in zip(endpoints, cards, strict=True):
                base = self._base_card(ep.url, models)
                base_ids.add(base["id"])
                ep.max_model_len = base.get("max_model_len")
                ep.adapters = {m["id"] for m in models if m.get("parent")}
            if len(base_ids) > 1:
                raise EngineError(
                    f"the endpoints serve different base models ({', '.join(sorted(base_ids))})",
                    "point every --endpoint at servers of the same base model",
                )
        except BaseException:
            await asyncio.gather(*(ep.client.aclose() for ep in endpoints), return_exceptions=True)
            raise
        self._endpoints = endpoints
        self.base_id = base_ids.pop()
        lengths = [ep.max_model_len for ep in endpoints if ep.max_model_len]
        self.info = EngineInfo(
            kind="openai",
            base_model=self.base_id,
            max_model_len=min(lengths) if lengths else 0,
            supports_json_schema=True,
        )
        log.info("OpenAI engine on %s: base %s, %d adapters served", ", ".join(self.endpoint_urls), self.base_id, len(endpoints[0].adapters))

    async def _models(self, ep: _Endpoint) -> list[dict[str, Any]]:
        try:
            response = await ep.client.get("/v1/models")
        except httpx.HTTPError as exc:
            raise EndpointUnreachable(f"cannot reach the engine at {ep.url}: {exc or type(exc).__name__}", _HINT_UNREACHABLE) from exc
        if response.status_code != 200:
            raise EngineError(
                f"the engine at {ep.url} did not list its models (HTTP {response.status_code}): {_server_message(response)}",
                "is it an OpenAI-compatible server? check --endpoint (and the API key)",
            )
        try:
            data = response.json()["data"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise EngineError(f"the engine at {ep.url} answered /v1/models with something that is not a model list", "check --endpoint") from exc
        return [m for m in data if isinstance(m, dict) and "id" in m]

    def _base_card(self, url: str, models: list[dict[str, Any]]) -> dict[str, Any]:
        """The base model's card: the one with no parent (adapters name the base as their parent)."""
        roots = [m for m in models if not m.get("parent")]
        if not roots:
            raise EngineError(f"the engine at {url} serves no base model", "start it with `bonsai serve`")
        if self.base_model is None:
            return roots[0]
        wanted = {self.base_model, Path(self.base_model).name}
        for card in roots:
            if {card["id"], Path(card["id"]).name, str(card.get("root") or "")} & wanted:
                return card
        raise EngineError(
            f"the engine at {url} serves {', '.join(c['id'] for c in roots)}, not {self.base_model}",
            "start the server with the same --base, or drop --base for this engine",
        )

    async def close(self) -> None:
        endpoints, self._endpoints = self._endpoints, []
        for ep in endpoints:
            if ep.sync_client is not None:
                ep.sync_client.close()
        await asyncio.gather(*(ep.client.aclose() for ep in endpoints), return_exceptions=True)

    def _require_started(self) -> list[_Endpoint]:
        if not self._endpoints:
            raise EngineError("the OpenAI engine is not started", "use `async with engine:` or await engine.start() first")
        return self._endpoints

    def endpoint_load(self) -> dict[str, int]:
        """Requests in flight on each endpoint (what the next request's choice is based on)."""
        return {ep.url: ep.outstanding for ep in self._endpoints}

    def _pick(self) -> _Endpoint:
        return min(self._require_started(), key=lambda ep: (ep.outstanding, ep.sent))

    # --- adapters -------------------------------------------------------------------------------

    async def add_adapter(self, adapter: AdapterRef) -> None:
        """Load ``adapter`` on every endpoint that does not serve it yet (by path: the servers read
        the folder themselves, so it must exist on their machine at the same path)."""
        endpoints = self._require_started()
        async with self._adapter_lock:
            missing = [ep for ep in endpoints if adapter.name not in ep.adapters]
            if not missing:
                return
            base_dir = Path(self.base_model) if self.base_model else None
            if base_dir is not None and (base_dir / "config.json").is_file():
                # the base is here too: refuse a misfit with a clear sentence before the server does
                validate_adapter(adapter, base_dir=base_dir, base_hash=_base_hash(base_dir), max_rank=None)
            await asyncio.gather(*(self._load_adapter(ep, adapter) for ep in missing))

    async def _load_adapter(self, ep: _Endpoint, adapter: AdapterRef) -> None:
        body = {"lora_name": adapter.name, "lora_path": str(adapter.path)}
        try:
            response = await ep.client.post("/v1/load_lora_adapter", json=body)
        except httpx.HTTPError as exc:
            raise EndpointUnreachable(f"cannot reach the engine at {ep.url}: {exc or type(exc).__name__}", _HINT_UNREACHABLE) from exc
        message = _server_message(response)
        if response.status_code == 200 or (response.status_code == 400 and "already been loaded" in message):
            ep.adapters.add(adapter.name)
            log.info("adapter %s (%s) loaded on %s", adapter.name, adapter.path, ep.url)
            return
        if response.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):
            raise EngineError(
                f"the engine at {ep.url} does not load adapters at run time, and does not serve {adapter.name}",
                "restart it with `bonsai serve` (which allows it), or set VLLM_ALLOW_RUNTIME_LORA_UPDATING=True for `vllm serve`",
            )
        raise AdapterError(
            f"the engine at {ep.url} could not load adapter {adapter.path} (HTTP {response.status_code}): {message}",
            "the folder must exist at that path on the server's machine and fit the server's base model and --max-lora-rank",
        )

    # --- tokens ---------------------------------------------------------------------------------

    def _tokenize_body(self, prompt: Prompt) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.base_id}
        if isinstance(prompt, ChatPrompt):
            body["messages"] = [{"role": m.role, "content": m.content} for m in prompt.messages]
            body["add_generation_prompt"] = not prompt.continue_final_message
            body["continue_final_message"] = prompt.continue_final_message
        else:
            body["prompt"] = prompt.text
        return body

    @staticmethod
    def _token_count(ep: _Endpoint, response: httpx.Response) -> int:
        if response.status_code != 200:
            raise _request_error(ep.url, "tokenize request", response.status_code, _server_message(response))
        return int(response.json()["count"])

    def count_tokens(self, prompt: Prompt) -> int:
        """Asks the server's tokenizer (``/tokenize``), so the count is exactly what it will see.

        Synchronous, as the facade requires: one short request that blocks the caller meanwhile.
        """
        ep = self._pick()
        if ep.sync_client is None:
            ep.sync_client = httpx.Client(base_url=ep.url, headers=self._headers(), timeout=self._timeout())
        try:
            response = ep.sync_client.post("/tokenize", json=self._tokenize_body(prompt))
        except httpx.HTTPError as exc:
            raise EndpointUnreachable(f"cannot reach the engine at {ep.url}: {exc or type(exc).__name__}", _HINT_UNREACHABLE) from exc
        return self._token_count(ep, response)

    async def _count_tokens(self, ep: _Endpoint, prompt: Prompt) -> int:
        try:
            response = await ep.client.post("/tokenize", json=self._tokenize_body(prompt))
        except httpx.HTTPError as exc:
            raise EndpointUnreachable(f"cannot reach the engine at {ep.url}: {exc or type(exc).__name__}", _HINT_UNREACHABLE) from exc
        return self._token_count(ep, response)

    # --- generation -----------------------------------------------------------------------------

    def _body(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        s: Sampling = request.sampling
        body: dict[str, Any] = {
            "model": request.adapter.name if request.adapter is not None else self.base_id,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
        }
        if s.seed is not None:
            body["seed"] = s.seed
        if s.stop:
            body["stop"] = list(s.stop)
        if s.repetition_penalty != 1.0:
            body["repetition_penalty"] = s.repetition_penalty  # a vLLM extension of the OpenAI API
        if s.json_schema is not None:
            # vLLM's extension (>= 0.10.2, so 0.24 and 0.32 alike); without disable_any_whitespace
            # a small model pads the JSON with newlines until max_tokens runs out
            body["structured_outputs"] = {"json": s.json_schema, "disable_any_whitespace": True}
        prompt = request.prompt
        if isinstance(prompt, ChatPrompt):
            body["messages"] = [{"role": m.role, "content": m.content} for m in prompt.messages]
            body["add_generation_prompt"] = not prompt.continue_final_message
            body["continue_final_message"] = prompt.continue_final_message
            if s.logprobs is not None:
                body["logprobs"] = True
                body["top_logprobs"] = s.logprobs
            return "/v1/chat/completions", body
        assert isinstance(prompt, TextPrompt)
        body["prompt"] = prompt.text
        if s.logprobs is not None:
            body["logprobs"] = s.logprobs
        return "/v1/completions", body

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        ep = self._pick()
        ep.outstanding += 1
        ep.sent += 1
        try:
            if request.adapter is not None and request.adapter.name not in ep.adapters:
                await self.add_adapter(request.adapter)
            if ep.max_model_len:
                # vLLM would quietly shorten max_tokens to fit; refuse like the in-process engine does
                prompt_tokens = await self._count_tokens(ep, request.prompt)
                if prompt_tokens + request.sampling.max_tokens > ep.max_model_len:
                    raise PromptTooLong(
                        f"the prompt takes {prompt_tokens} tokens; with max_tokens {request.sampling.max_tokens} that exceeds the context of {ep.max_model_len}",
                        "shorten the motion or the debate history, lower --max-tokens, or serve with a larger --max-model-len",
                    )
            path, body = self._body(request)
            async for event in self._stream_from(ep, path, body, request):
                yield event
        finally:
            ep.outstanding -= 1

    async def _stream_from(self, ep: _Endpoint, path: str, body: dict[str, Any], request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        chat = path.endswith("/chat/completions")
        t0 = time.perf_counter()
        first_token_s: float | None = None
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        usage: dict[str, Any] = {}
        finish_reason: str | None = None
        done = False
        chunks_with_text = 0
        try:
            async with ep.client.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _request_error(ep.url, f"request {request.request_id}", response.status_code, _server_message(response))
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators and SSE comments
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        done = True
                        break
                    chunk = json.loads(payload)
                    if "error" in chunk:  # vLLM reports failures after the stream started this way
                        err = chunk["error"]
                        message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
                        raise _request_error(ep.url, f"request {request.request_id}", int(err.get("code") or 500) if isinstance(err, dict) else 500, message)
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or []:
                        text = ((choice.get("delta") or {}).get("content") if chat else choice.get("text")) or ""
                        if request.sampling.logprobs is not None and choice.get("logprobs"):
                            logprobs.extend(_chat_logprobs(choice["logprobs"]) if chat else _completion_logprobs(choice["logprobs"]))
                        if text:
                            if first_token_s is None:
                                first_token_s = time.perf_counter() - t0
                            chunks_with_text += 1
                            parts.append(text)
                            yield TextDelta(request.request_id, text)
                        if choice.get("finish_reason"):
                            finish_reason = choice["finish_reason"]
        except httpx.TimeoutException as exc:
            raise EngineError(f"the engine at {ep.url} did not answer request {request.request_id} within {self.timeout:.0f} s", "the server may be overloaded; see its log") from exc
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise EndpointUnreachable(
                f"the connection to the engine at {ep.url} dropped during request {request.request_id}: {exc or type(exc).__name__}",
                "check that the server is still running (`bonsai serve` prints why it stopped)",
            ) from exc
        if not done and finish_reason is None:
            raise EndpointUnreachable(
                f"the engine at {ep.url} ended request {request.request_id} mid-stream",
                "check that the server is still running (`bonsai serve` prints why it stopped)",
            )
        yield Completion(
            request_id=request.request_id,
            text="".join(parts),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or len(logprobs) or chunks_with_text),
            finish_reason=finish_reason or "stop",
            first_token_s=first_token_s,
            total_s=time.perf_counter() - t0,
            logprobs=tuple(logprobs) if request.sampling.logprobs is not None else None,
            adapter_name=request.adapter.name if request.adapter is not None else None,
        )


def _base_hash(base_dir: Path) -> str | None:
    """The content hash ``bonsai model prepare`` recorded for a base folder, if it did."""
    try:
        return json.loads((base_dir / MANIFEST).read_text(encoding="utf-8")).get("content_hash")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


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
