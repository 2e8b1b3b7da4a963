"""The OpenAI engine's facade: the :class:`~bonsai.engine.types.Engine` interface over an endpoint pool,
with failover of a request that streamed nothing yet (see the package's docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import httpx

from bonsai.engine.openai import metrics, tokens, wire
from bonsai.engine.openai.adapters import AdapterCheck, load_adapter
from bonsai.engine.openai.failures import HINT_DROPPED, describe, reason, unreachable
from bonsai.engine.openai.pool import Endpoint, EndpointPool
from bonsai.engine.types import VLLM_COUNTERS, AdapterRef, Engine, EngineInfo, EngineStats, GenerationRequest, Prompt, StreamEvent, TextDelta, ensure_room
from bonsai.errors import EndpointUnreachable, EngineError

log = logging.getLogger(__name__)


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
        """``api_key``: sent as ``Authorization: Bearer`` on every request; ``endpoint_retry_s``: how
        long a down endpoint rests before it is probed again."""
        if not endpoints:
            raise EngineError("the OpenAI engine needs at least one endpoint URL", "pass --endpoint http://127.0.0.1:8000 (from `bonsai serve`)")
        if endpoint_retry_s < 0:
            raise EngineError(f"endpoint_retry_s must be 0 or more, got {endpoint_retry_s}", "pass a cool-down in seconds, e.g. 15")
        self.base_model = base_model
        self.api_key = api_key
        self.timeout = timeout
        self.endpoint_retry_s = endpoint_retry_s
        self._pool = EndpointPool(endpoints, base_model=base_model, api_key=api_key, timeout=timeout, retry_s=endpoint_retry_s)
        self.endpoint_urls = self._pool.urls
        self._adapter_lock = asyncio.Lock()
        self._check_adapter = AdapterCheck(base_model)

    @property
    def base_id(self) -> str | None:
        """The base model's id on the servers (known once started)."""
        return self._pool.base_id

    @property
    def info(self) -> EngineInfo:  # type: ignore[override]
        return EngineInfo(kind="openai", base_model=self._pool.base_id or self.base_model or "", max_model_len=self._pool.max_model_len, supports_json_schema=True)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._pool.endpoints:
            return
        await self._pool.start()
        live = self._pool.live()
        log.info("OpenAI engine on %s: base %s, %d adapters served", ", ".join(ep.url for ep in live), self.base_id, len(live[0].adapters))

    async def close(self) -> None:
        await self._pool.close()

    def endpoint_load(self) -> dict[str, int]:
        """Requests in flight on each endpoint (what the next request's choice is based on)."""
        return {ep.url: ep.outstanding for ep in self._pool.endpoints}

    def endpoint_health(self) -> dict[str, str]:
        """``"up"`` or ``"down"`` for each endpoint, for a progress display."""
        return {ep.url: "up" if ep.up else "down" for ep in self._pool.endpoints}

    # --- adapters -------------------------------------------------------------------------------

    async def add_adapter(self, adapter: AdapterRef) -> None:
        """Load ``adapter`` on every live endpoint that does not serve it yet. An endpoint that is down
        gets it when a request needs it there, after it came back."""
        endpoints = self._pool.started()
        await self._pool.revive()
        async with self._adapter_lock:
            live = self._pool.live()
            if not live:
                raise self._pool.none_left()
            missing = [ep for ep in live if adapter.name not in ep.adapters]
            if not missing:
                return
            self._check_adapter(adapter)
            results = await asyncio.gather(*(load_adapter(ep, adapter) for ep in missing), return_exceptions=True)
        for ep, result in zip(missing, results, strict=True):
            if isinstance(result, EndpointUnreachable):
                self._pool.mark_down(ep, reason(result))
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, EndpointUnreachable):
                raise result
        if not any(ep.up for ep in endpoints):
            raise self._pool.none_left()

    async def _ensure_adapter(self, ep: Endpoint, adapter: AdapterRef) -> None:
        if adapter.name in ep.adapters:
            return
        async with self._adapter_lock:
            if adapter.name not in ep.adapters:
                self._check_adapter(adapter)
                await load_adapter(ep, adapter)

    # --- tokens ---------------------------------------------------------------------------------

    def count_tokens(self, prompt: Prompt) -> int:
        """Asks a live server's tokenizer (``/tokenize``), so the count is exactly what it will see.

        Synchronous, as the facade requires: one short request that blocks the caller meanwhile. An
        unreachable server is marked down and the next one asked.
        """
        tried: list[str] = []
        while True:
            if not any(ep.up and ep.url not in tried for ep in self._pool.started()):
                self._pool.revive_sync()
            ep = self._pool.pick(exclude=tried)
            tried.append(ep.url)
            try:
                response = self._pool.sync_client(ep).post("/tokenize", json=tokens.tokenize_body(prompt, self.base_id))
            except httpx.HTTPError as exc:
                self._pool.mark_down(ep, describe(exc))
                continue
            return tokens.token_count(ep, response)

    async def acount_tokens(self, prompt: Prompt) -> int:
        """:meth:`count_tokens` on the event loop's own client: a down server is marked and the next asked."""
        tried: list[str] = []
        while True:
            await self._pool.revive()
            ep = self._pool.pick(exclude=tried)
            tried.append(ep.url)
            try:
                return await tokens.count_tokens(ep, prompt, self.base_id)
            except EndpointUnreachable as exc:
                self._pool.mark_down(ep, reason(exc))

    # --- statistics -----------------------------------------------------------------------------

    async def stats(self) -> EngineStats:
        """vLLM's counters summed over the endpoints (each server's ``/metrics``).

        A down endpoint, or one that does not answer ``/metrics``, is left out with a warning and named
        in ``missing_endpoints``. Each server counts since it started, so a delta across a server's
        restart (or across snapshots that left out different endpoints) is meaningless.
        """
        if not self._pool.endpoints:
            return EngineStats()  # like the other engines: nothing counted before start or after close
        endpoints = self._pool.endpoints
        await self._pool.revive()
        live = self._pool.live()
        wanted = set(VLLM_COUNTERS.values())
        scraped = dict(zip((ep.url for ep in live), await asyncio.gather(*(metrics.scrape(self._pool, ep, wanted) for ep in live)), strict=True))
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

    # --- generation -----------------------------------------------------------------------------

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Stream from the least busy live endpoint, moving to another one (each at most once) while
        nothing has been streamed yet; see the package's docstring for what happens after."""
        self._pool.started()
        tried: list[str] = []
        while True:
            await self._pool.revive()
            ep = self._pool.pick(exclude=tried)
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
                self._pool.mark_down(ep, reason(exc))
                if streamed:
                    raise unreachable(
                        f"the connection to the engine at {ep.url} dropped during request {request.request_id}, "
                        f"after part of the answer had streamed: {reason(exc)}",
                        reason(exc),
                        f"re-run the request (a sweep re-runs the turn from its checkpoint): {ep.url} is marked down, "
                        f"so it goes to another endpoint; {HINT_DROPPED}",
                    ) from exc
                log.info("request %s did not get through to %s (%s); trying another endpoint", request.request_id, ep.url, reason(exc))
            finally:
                ep.outstanding -= 1

    async def _attempt(self, ep: Endpoint, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """One try of ``request`` on ``ep``; any :class:`EndpointUnreachable` it raises is about ``ep``."""
        if request.adapter is not None:
            await self._ensure_adapter(ep, request.adapter)
        if ep.max_model_len:
            # the one length check, against this server's own context (servers of a pool may differ)
            ensure_room(await tokens.count_tokens(ep, request.prompt, self.base_id), request.sampling.max_tokens, ep.max_model_len)
        model = request.adapter.name if request.adapter is not None else self.base_id
        assert model is not None  # started
        async with contextlib.aclosing(wire.stream(ep.url, ep.sdk, request, model, self.timeout)) as events:
            async for event in events:
                yield event
