"""The engine behind one or more OpenAI-compatible vLLM servers (``bonsai serve``, or any ``vllm serve``).

Requests go over HTTP with server-sent events, so a debate can run on a laptop against a GPU box.
Adapters are addressed by their content-hash name (the same one every engine uses) and loaded on
the servers at run time when they are new, so a freshly trained version is used without a restart
and never under an old name. No vLLM import: only ``httpx``.

A sweep spreads its debates over several servers, so one server dying must not stop it: an endpoint
that cannot be reached, or whose connection drops, is marked down and skipped; a request that had
streamed nothing yet moves to another endpoint on its own, and one that had streamed part of its
answer fails with :class:`EndpointUnreachable` so the caller re-runs it (elsewhere, since the endpoint
is down). A down endpoint is probed again after a cool-down and used again once it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bonsai.engine.adapters import validate_adapter
from bonsai.engine.auth import unauthorized
from bonsai.engine.types import (
    VLLM_COUNTERS,
    AdapterRef,
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
    ensure_room,
)
from bonsai.errors import AdapterError, EndpointUnreachable, EngineError, PromptTooLong
from bonsai.model.prepare import MANIFEST

log = logging.getLogger(__name__)

_HINT_UNREACHABLE = "start one with `bonsai serve` or check --endpoint"
_HINT_DROPPED = "check that the server is still running (`bonsai serve` prints why it stopped)"
#: seconds a probe or a /metrics scrape may take: both are cheap, and a dead host must not stall a sweep
_QUICK_TIMEOUT_S = 5.0


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
    #: time.monotonic() when it was found unreachable; None while it is up
    down_since: float | None = None
    #: why it is down (the last failure), for messages
    down_reason: str = ""
    #: time.monotonic() after which it is probed again
    retry_at: float = 0.0
    #: the probe in flight, shared by every request that finds the endpoint due for one
    probe: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self.down_since is None


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


def _describe(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def _unreachable(message: str, reason: str, hint: str = _HINT_UNREACHABLE) -> EndpointUnreachable:
    """An :class:`EndpointUnreachable` that also carries the short ``reason`` the endpoint is marked down for."""
    err = EndpointUnreachable(message, hint)
    err.reason = reason  # type: ignore[attr-defined]
    return err


def _reason(exc: EndpointUnreachable) -> str:
    return getattr(exc, "reason", None) or exc.message


def _models_in(response: httpx.Response, url: str) -> list[dict[str, Any]]:
    if response.status_code == 401:
        raise unauthorized(url, sent_key="authorization" in response.request.headers)
    if response.status_code != 200:
        raise EngineError(
            f"the engine at {url} did not list its models (HTTP {response.status_code}): {_server_message(response)}",
            "is it an OpenAI-compatible server? check --endpoint (and the API key)",
        )
    try:
        data = response.json()["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise EngineError(f"the engine at {url} answered /v1/models with something that is not a model list", "check --endpoint") from exc
    return [m for m in data if isinstance(m, dict) and "id" in m]


def _prometheus_counters(text: str, wanted: Collection[str]) -> dict[str, float]:
    """Totals of the ``wanted`` counters in Prometheus text format, summed over their labels.

    Counters appear as ``name_total{labels} value``; the names in ``wanted`` are without ``_total``.
    """
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        ends = [i for i in (line.find("{"), line.find(" ")) if i >= 0]
        if not ends:
            continue
        name, rest = line[: min(ends)], line[min(ends) :]
        if not name.endswith("_total") or name[: -len("_total")] not in wanted:
            continue
        if rest.startswith("{"):
            rest = rest[rest.rfind("}") + 1 :]
        try:
            value = float(rest.split()[0])
        except (IndexError, ValueError):
            continue
        totals[name[: -len("_total")]] = totals.get(name[: -len("_total")], 0.0) + value
    return totals


class OpenAIEngine(Engine):
    """A facade over OpenAI-compatible vLLM servers; each request goes to the least busy live one."""

    def __init__(
        self,
        endpoints: list[str],
        *,
        base_model: str | None = None,
        api_key: str | None = None,
        timeout: float = 600,
        endpoint_retry_s: float = 15.0,
    ) -> None:
        """``endpoint_retry_s``: how long a down endpoint rests before it is probed again."""
        if not endpoints:
            raise EngineError("the OpenAI engine needs at least one endpoint URL", "pass --endpoint http://127.0.0.1:8000 (from `bonsai serve`)")
        if endpoint_retry_s < 0:
            raise EngineError(f"endpoint_retry_s must be 0 or more, got {endpoint_retry_s}", "pass a cool-down in seconds, e.g. 15")
        self.endpoint_urls = [normalize_endpoint(u) for u in endpoints]
        self.base_model = base_model
        self.api_key = api_key
        self.timeout = timeout
        self.endpoint_retry_s = endpoint_retry_s
        self.base_id: str | None = None
        self.info = EngineInfo(kind="openai", base_model=base_model or "", max_model_len=0, supports_json_schema=True)
        self._endpoints: list[_Endpoint] = []
        self._adapter_lock = asyncio.Lock()
        self._validated: set[str] = set()  # adapter names checked against the local base

    # --- lifecycle ------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, connect=min(10.0, self.timeout))

    def _quick_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(min(_QUICK_TIMEOUT_S, self.timeout))

    async def start(self) -> None:
        """Read every endpoint's models; start if at least one answers (the others are marked down and
        retried later, so a sweep can start while one server is still coming up)."""
        if self._endpoints:
            return
        endpoints = [_Endpoint(url, httpx.AsyncClient(base_url=url, headers=self._headers(), timeout=self._timeout())) for url in self.endpoint_urls]
        unreachable: list[tuple[_Endpoint, EndpointUnreachable]] = []
        try:
            cards = await asyncio.gather(*(self._models(ep) for ep in endpoints), return_exceptions=True)
            base_ids = set()
            for ep, models in zip(endpoints, cards, strict=True):
                if isinstance(models, EndpointUnreachable):
                    unreachable.append((ep, models))
                    continue
                if isinstance(models, BaseException):
                    raise models
                base = self._base_card(ep.url, models)
                base_ids.add(base["id"])
                ep.max_model_len = base.get("max_model_len")
                ep.adapters = {m["id"] for m in models if m.get("parent")}
            if len(unreachable) == len(endpoints):
                raise _unreachable(
                    "cannot reach the engine at " + "; ".join(f"{ep.url} ({_reason(exc)})" for ep, exc in unreachable),
                    _reason(unreachable[0][1]),
                )
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
        for ep, exc in unreachable:
            self._mark_down(ep, _reason(exc))
        self._update_info()
        live = [ep for ep in endpoints if ep.up]
        log.info("OpenAI engine on %s: base %s, %d adapters served", ", ".join(ep.url for ep in live), self.base_id, len(live[0].adapters))

    def _update_info(self) -> None:
        lengths = [ep.max_model_len for ep in self._endpoints if ep.max_model_len]
        self.info = EngineInfo(kind="openai", base_model=self.base_id or "", max_model_len=min(lengths) if lengths else 0, supports_json_schema=True)

    async def _models(self, ep: _Endpoint) -> list[dict[str, Any]]:
        try:
            response = await ep.client.get("/v1/models")
        except httpx.HTTPError as exc:
            raise _unreachable(f"cannot reach the engine at {ep.url}: {_describe(exc)}", _describe(exc)) from exc
        return _models_in(response, ep.url)

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
        probes = [ep.probe for ep in endpoints if ep.probe is not None]
        for probe in probes:
            probe.cancel()
        await asyncio.gather(*probes, return_exceptions=True)
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

    def endpoint_health(self) -> dict[str, str]:
        """``"up"`` or ``"down"`` for each endpoint, for a progress display."""
        return {ep.url: "up" if ep.up else "down" for ep in self._endpoints}

    # --- endpoint health ------------------------------------------------------------------------

    def _mark_down(self, ep: _Endpoint, reason: str) -> None:
        now = time.monotonic()
        ep.down_reason = reason
        ep.retry_at = now + self.endpoint_retry_s
        if ep.down_since is not None:
            return
        ep.down_since = now
        live = [other.url for other in self._endpoints if other.up]
        log.warning(
            "engine endpoint %s is down (%s); %s; it is retried in %.0f s",
            ep.url,
            reason,
            f"requests go to {', '.join(live)}" if live else "no endpoint is left",
            self.endpoint_retry_s,
        )

    def _came_back(self, ep: _Endpoint, response: httpx.Response) -> None:
        """Take ``ep`` back if its /v1/models answer shows the same base; else keep it down."""
        try:
            models = _models_in(response, ep.url)
            base = self._base_card(ep.url, models)
        except EngineError as exc:
            self._mark_down(ep, exc.message)
            return
        if self.base_id is not None and base["id"] != self.base_id:
            self._mark_down(ep, f"it now serves {base['id']}, not {self.base_id}")
            return
        # a restarted server has lost the adapters loaded at run time: start again from what it
        # lists, so stream() loads the missing ones on it when a request needs them
        ep.adapters = {m["id"] for m in models if m.get("parent")}
        ep.max_model_len = base.get("max_model_len")
        down_for = time.monotonic() - (ep.down_since or time.monotonic())
        ep.down_since, ep.down_reason = None, ""
        self._update_info()
        # at the level of the "is down" warning, so whoever saw that one sees this one too
        log.warning("engine endpoint %s is back after %.0f s down", ep.url, down_for)

    async def _probe(self, ep: _Endpoint) -> None:
        try:
            response = await ep.client.get("/v1/models", timeout=self._quick_timeout())
        except httpx.HTTPError as exc:
            self._mark_down(ep, _describe(exc))
        except Exception as exc:  # a background task: an error raised here would go unseen
            log.exception("probing the engine at %s failed", ep.url)
            self._mark_down(ep, _describe(exc))
        else:
            self._came_back(ep, response)
        finally:
            ep.probe = None

    async def _revive(self) -> None:
        """Probe the down endpoints whose cool-down is over.

        While another endpoint is up the probes run in the background and nobody waits for them;
        with none up, the caller waits, since a returning endpoint is its only chance.
        """
        now = time.monotonic()
        for ep in self._require_started():
            if not ep.up and ep.probe is None and now >= ep.retry_at:
                ep.probe = asyncio.create_task(self._probe(ep), name=f"bonsai-probe {ep.url}")
        if any(ep.up for ep in self._endpoints):
            return
        probes = [ep.probe for ep in self._endpoints if ep.probe is not None]
        if probes:
            # shielded: a cancelled request must not cancel a probe other requests share
            await asyncio.gather(*(asyncio.shield(p) for p in probes), return_exceptions=True)

    def _revive_sync(self) -> None:
        """:meth:`_revive` for the synchronous count_tokens, used only when no endpoint is up."""
        now = time.monotonic()
        for ep in self._require_started():
            if ep.up or now < ep.retry_at:
                continue
            try:
                response = self._sync_client(ep).get("/v1/models", timeout=self._quick_timeout())
            except httpx.HTTPError as exc:
                self._mark_down(ep, _describe(exc))
            else:
                self._came_back(ep, response)

    def _pick(self, exclude: Collection[str] = ()) -> _Endpoint:
        """The live endpoint with the fewest requests in flight (then the fewest ever sent)."""
        live = [ep for ep in self._require_started() if ep.up and ep.url not in exclude]
        if not live:
            raise self._none_left(exclude)
        return min(live, key=lambda ep: (ep.outstanding, ep.sent))

    def _none_left(self, tried: Collection[str] = ()) -> EndpointUnreachable:
        now = time.monotonic()
        states = []
        for ep in self._endpoints:
            if not ep.up:
                states.append(f"{ep.url} (down for {now - (ep.down_since or now):.0f} s: {ep.down_reason})")
            elif ep.url in tried:
                states.append(f"{ep.url} (failed this request)")
        return _unreachable(
            "no engine endpoint is reachable: " + "; ".join(states),
            "every endpoint is down",
            f"start the servers again with `bonsai serve` or check --endpoint; a down endpoint is retried every {self.endpoint_retry_s:.0f} s",
        )

    # --- adapters -------------------------------------------------------------------------------

    def _validate(self, adapter: AdapterRef) -> None:
        """Refuse a misfit with a clear sentence before a server does, when the base is here too."""
        if adapter.name in self._validated:
            return
        base_dir = Path(self.base_model) if self.base_model else None
        if base_dir is not None and (base_dir / "config.json").is_file():
            validate_adapter(adapter, base_dir=base_dir, base_hash=_base_hash(base_dir), max_rank=None)
        self._validated.add(adapter.name)

    async def add_adapter(self, adapter: AdapterRef) -> None:
        """Load ``adapter`` on every live endpoint that does not serve it yet (by path: the servers read
        the folder themselves, so it must exist on their machine at the same path). An endpoint that
        is down gets it when a request needs it there, after it came back."""
        endpoints = self._require_started()
        await self._revive()
        async with self._adapter_lock:
            live = [ep for ep in endpoints if ep.up]
            if not live:
                raise self._none_left()
            missing = [ep for ep in live if adapter.name not in ep.adapters]
            if not missing:
                return
            self._validate(adapter)
            results = await asyncio.gather(*(self._load_adapter(ep, adapter) for ep in missing), return_exceptions=True)
        for ep, result in zip(missing, results, strict=True):
            if isinstance(result, EndpointUnreachable):
                self._mark_down(ep, _reason(result))
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, EndpointUnreachable):
                raise result
        if not any(ep.up for ep in endpoints):
            raise self._none_left()

    async def _ensure_adapter(self, ep: _Endpoint, adapter: AdapterRef) -> None:
        if adapter.name in ep.adapters:
            return
        async with self._adapter_lock:
            if adapter.name not in ep.adapters:
                self._validate(adapter)
                await self._load_adapter(ep, adapter)

    async def _load_adapter(self, ep: _Endpoint, adapter: AdapterRef) -> None:
        body = {"lora_name": adapter.name, "lora_path": str(adapter.path)}
        try:
            response = await ep.client.post("/v1/load_lora_adapter", json=body)
        except httpx.HTTPError as exc:
            raise _unreachable(f"cannot reach the engine at {ep.url}: {_describe(exc)}", _describe(exc)) from exc
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

    def _sync_client(self, ep: _Endpoint) -> httpx.Client:
        if ep.sync_client is None:
            ep.sync_client = httpx.Client(base_url=ep.url, headers=self._headers(), timeout=self._timeout())
        return ep.sync_client

    def count_tokens(self, prompt: Prompt) -> int:
        """Asks a live server's tokenizer (``/tokenize``), so the count is exactly what it will see.

        Synchronous, as the facade requires: one short request that blocks the caller meanwhile. An
        unreachable server is marked down and the next one asked.
        """
        tried: list[str] = []
        while True:
            if not any(ep.up and ep.url not in tried for ep in self._require_started()):
                self._revive_sync()
            ep = self._pick(exclude=tried)
            tried.append(ep.url)
            try:
                response = self._sync_client(ep).post("/tokenize", json=self._tokenize_body(prompt))
            except httpx.HTTPError as exc:
                self._mark_down(ep, _describe(exc))
                continue
            return self._token_count(ep, response)

    async def acount_tokens(self, prompt: Prompt) -> int:
        """:meth:`count_tokens` on the event loop's own client: a down server is marked and the next asked."""
        tried: list[str] = []
        while True:
            await self._revive()
            ep = self._pick(exclude=tried)
            tried.append(ep.url)
            try:
                return await self._count_tokens(ep, prompt)
            except EndpointUnreachable as exc:
                self._mark_down(ep, _reason(exc))

    async def _count_tokens(self, ep: _Endpoint, prompt: Prompt) -> int:
        try:
            response = await ep.client.post("/tokenize", json=self._tokenize_body(prompt))
        except httpx.HTTPError as exc:
            raise _unreachable(f"cannot reach the engine at {ep.url}: {_describe(exc)}", _describe(exc)) from exc
        return self._token_count(ep, response)

    # --- statistics -----------------------------------------------------------------------------

    async def stats(self) -> EngineStats:
        """vLLM's counters summed over the endpoints (each server's ``/metrics``).

        A down endpoint, or one that does not answer ``/metrics``, is left out with a warning and named
        in ``missing_endpoints``. Each server counts since it started, so a delta across a server's
        restart (or across snapshots that left out different endpoints) is meaningless.
        """
        if not self._endpoints:
            return EngineStats()  # like the other engines: nothing counted before start or after close
        endpoints = self._endpoints
        await self._revive()
        live = [ep for ep in endpoints if ep.up]
        scraped = dict(zip((ep.url for ep in live), await asyncio.gather(*(self._metrics(ep) for ep in live)), strict=True))
        totals: dict[str, float] = {}
        missing = []
        for ep in endpoints:
            counters = scraped.get(ep.url)
            if counters is None:
                missing.append(ep.url)
                continue
            for name, value in counters.items():
                totals[name] = totals.get(name, 0.0) + value
        if missing:
            log.warning("engine stats leave out %s (down, or no /metrics)", ", ".join(missing))
        return EngineStats.from_vllm_counters(totals, missing_endpoints=missing)

    async def _metrics(self, ep: _Endpoint) -> dict[str, float] | None:
        try:
            # a busy server may be slow to answer, which is no reason to send its work elsewhere
            response = await ep.client.get("/metrics", timeout=httpx.Timeout(min(30.0, self.timeout), connect=min(_QUICK_TIMEOUT_S, self.timeout)))
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            self._mark_down(ep, _describe(exc))
            return None
        except httpx.HTTPError as exc:
            log.warning("could not read /metrics from the engine at %s: %s", ep.url, _describe(exc))
            return None
        if response.status_code != 200:
            log.warning("the engine at %s answered /metrics with HTTP %d", ep.url, response.status_code)
            return None
        return _prometheus_counters(response.text, set(VLLM_COUNTERS.values()))

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
        """Stream from the least busy live endpoint, moving to another one (each at most once) while
        nothing has been streamed yet; see the module docstring for what happens after."""
        self._require_started()
        tried: list[str] = []
        while True:
            await self._revive()
            ep = self._pick(exclude=tried)
            tried.append(ep.url)
            ep.outstanding += 1
            ep.sent += 1
            streamed = False
            try:
                # closed explicitly, so a caller that stops reading closes the HTTP stream (and the
                # server aborts the request) at once, not when the generator is collected
                async with contextlib.aclosing(self._attempt(ep, request)) as events:
                    async for event in events:
                        streamed = streamed or isinstance(event, TextDelta)
                        yield event
                return
            except EndpointUnreachable as exc:
                self._mark_down(ep, _reason(exc))
                if streamed:
                    raise _unreachable(
                        f"the connection to the engine at {ep.url} dropped during request {request.request_id}, "
                        f"after part of the answer had streamed: {_reason(exc)}",
                        _reason(exc),
                        f"re-run the request (a sweep re-runs the turn from its checkpoint): {ep.url} is marked down, "
                        f"so it goes to another endpoint; {_HINT_DROPPED}",
                    ) from exc
                log.info("request %s did not get through to %s (%s); trying another endpoint", request.request_id, ep.url, _reason(exc))
            finally:
                ep.outstanding -= 1

    async def _attempt(self, ep: _Endpoint, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """One try of ``request`` on ``ep``; any :class:`EndpointUnreachable` it raises is about ``ep``."""
        if request.adapter is not None:
            await self._ensure_adapter(ep, request.adapter)
        if ep.max_model_len:
            # the one length check, against this server's own context (servers of a pool may differ)
            ensure_room(await self._count_tokens(ep, request.prompt), request.sampling.max_tokens, ep.max_model_len)
        path, body = self._body(request)
        async with contextlib.aclosing(self._stream_from(ep, path, body, request)) as events:
            async for event in events:
                yield event

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
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _unreachable(f"cannot reach the engine at {ep.url}: {_describe(exc)}", _describe(exc)) from exc
        except httpx.TimeoutException as exc:
            raise EngineError(f"the engine at {ep.url} did not answer request {request.request_id} within {self.timeout:.0f} s", "the server may be overloaded; see its log") from exc
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise _unreachable(
                f"the connection to the engine at {ep.url} dropped during request {request.request_id}: {_describe(exc)}",
                f"connection dropped: {_describe(exc)}",
                _HINT_DROPPED,
            ) from exc
        if not done and finish_reason is None:
            raise _unreachable(f"the engine at {ep.url} ended request {request.request_id} mid-stream", "it ended a stream mid-way", _HINT_DROPPED)
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
