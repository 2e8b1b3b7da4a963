"""The endpoints of the OpenAI engine and their health: which are up, which to use next, when to retry.

An endpoint that cannot be reached is marked down and rests for ``retry_s``; then the next request
probes it (in the background while another endpoint is up) and takes it back once it answers with
the same base model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from openai import AsyncOpenAI, DefaultAsyncHttpxClient, Timeout

from bonsai.engine.auth import unauthorized
from bonsai.engine.openai.failures import cannot_reach, describe, reason, server_message, unreachable
from bonsai.errors import EndpointUnreachable, EngineError

log = logging.getLogger(__name__)

#: seconds a probe or a /metrics scrape may take: both are cheap, and a dead host must not stall a sweep
QUICK_TIMEOUT_S = 5.0

#: seconds an idle connection is kept for reuse. vLLM's server closes one after 5 s idle
#: (VLLM_HTTP_TIMEOUT_KEEP_ALIVE) and httpx keeps one for 5 s: a request sent on a connection at that moment
#: meets a socket the server is closing and fails as "connection dropped" (ReadError) before it was read.
#: Seen with one server and a client paused for ~5 s between two requests (a busy 2-core machine).
KEEPALIVE_EXPIRY_S = 2.0


def _limits(module: Any) -> Any:
    """``module.Limits`` (httpx's, or httpx2's for the openai SDK's client) with the SDK's own pool sizes."""
    return module.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=KEEPALIVE_EXPIRY_S)


def normalize_endpoint(url: str) -> str:
    """``host:port``, ``http://host:port/`` and ``http://host:port/v1`` all name the same server."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url.removesuffix("/v1")


@dataclass
class Endpoint:
    url: str
    #: for vLLM's own routes (models, tokenize, adapters, metrics)
    client: httpx.AsyncClient
    #: for the OpenAI routes (completions), which the SDK speaks
    sdk: AsyncOpenAI
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


def models_in(response: httpx.Response, url: str) -> list[dict[str, Any]]:
    if response.status_code == 401:
        raise unauthorized(url, sent_key="authorization" in response.request.headers)
    if response.status_code != 200:
        raise EngineError(
            f"the engine at {url} did not list its models (HTTP {response.status_code}): {server_message(response)}",
            "is it an OpenAI-compatible server? check --endpoint (and the API key)",
        )
    try:
        data = response.json()["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise EngineError(f"the engine at {url} answered /v1/models with something that is not a model list", "check --endpoint") from exc
    return [m for m in data if isinstance(m, dict) and "id" in m]


class EndpointPool:
    """The servers of one engine, all of the same base model; each request goes to the least busy live one."""

    def __init__(self, urls: list[str], *, base_model: str | None, api_key: str | None, timeout: float, retry_s: float) -> None:
        self.urls = [normalize_endpoint(u) for u in urls]
        self.base_model = base_model
        self.api_key = api_key
        self.timeout = timeout
        self.retry_s = retry_s
        self.endpoints: list[Endpoint] = []
        self.base_id: str | None = None
        #: the smallest context of the servers that said theirs (0: none did)
        self.max_model_len = 0

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def http_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, connect=min(10.0, self.timeout))

    def quick_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(min(QUICK_TIMEOUT_S, self.timeout))

    def _endpoint(self, url: str) -> Endpoint:
        # the SDK would read OPENAI_API_KEY when given None, and send that key to a bonsai server: a
        # placeholder instead (vLLM ignores the header unless it was started with --api-key)
        # (no retries: a failed request moves to another endpoint instead, see engine.stream)
        import httpx2  # the openai SDK's HTTP library (its own fork of httpx)

        sdk = AsyncOpenAI(base_url=url + "/v1", api_key=self.api_key or "EMPTY", max_retries=0, timeout=Timeout(self.timeout, connect=min(10.0, self.timeout)),
                          http_client=DefaultAsyncHttpxClient(limits=_limits(httpx2)))
        client = httpx.AsyncClient(base_url=url, headers=self.headers(), timeout=self.http_timeout(), limits=_limits(httpx))
        return Endpoint(url, client, sdk)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read every endpoint's models; start if at least one answers (the others are marked down and
        retried later, so a sweep can start while one server is still coming up)."""
        endpoints = [self._endpoint(url) for url in self.urls]
        failed: list[tuple[Endpoint, EndpointUnreachable]] = []
        try:
            cards = await asyncio.gather(*(self._models(ep) for ep in endpoints), return_exceptions=True)
            base_ids = set()
            for ep, models in zip(endpoints, cards, strict=True):
                if isinstance(models, EndpointUnreachable):
                    failed.append((ep, models))
                    continue
                if isinstance(models, BaseException):
                    raise models
                base = self.base_card(ep.url, models)
                base_ids.add(base["id"])
                ep.max_model_len = base.get("max_model_len")
                ep.adapters = {m["id"] for m in models if m.get("parent")}
            if len(failed) == len(endpoints):
                raise unreachable(
                    "cannot reach the engine at " + "; ".join(f"{ep.url} ({reason(exc)})" for ep, exc in failed),
                    reason(failed[0][1]),
                )
            if len(base_ids) > 1:
                raise EngineError(
                    f"the endpoints serve different base models ({', '.join(sorted(base_ids))})",
                    "point every --endpoint at servers of the same base model",
                )
        except BaseException:
            await asyncio.gather(*(_close(ep) for ep in endpoints), return_exceptions=True)
            raise
        self.endpoints = endpoints
        self.base_id = base_ids.pop()
        for ep, exc in failed:
            self.mark_down(ep, reason(exc))
        self._update_length()

    async def close(self) -> None:
        endpoints, self.endpoints = self.endpoints, []
        probes = [ep.probe for ep in endpoints if ep.probe is not None]
        for probe in probes:
            probe.cancel()
        await asyncio.gather(*probes, return_exceptions=True)
        await asyncio.gather(*(_close(ep) for ep in endpoints), return_exceptions=True)

    def started(self) -> list[Endpoint]:
        if not self.endpoints:
            raise EngineError("the OpenAI engine is not started", "use `async with engine:` or await engine.start() first")
        return self.endpoints

    def live(self) -> list[Endpoint]:
        return [ep for ep in self.endpoints if ep.up]

    def _update_length(self) -> None:
        lengths = [ep.max_model_len for ep in self.endpoints if ep.max_model_len]
        self.max_model_len = min(lengths) if lengths else 0

    async def _models(self, ep: Endpoint) -> list[dict[str, Any]]:
        try:
            response = await ep.client.get("/v1/models")
        except httpx.HTTPError as exc:
            raise cannot_reach(ep.url, exc) from exc
        return models_in(response, ep.url)

    def base_card(self, url: str, models: list[dict[str, Any]]) -> dict[str, Any]:
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

    def sync_client(self, ep: Endpoint) -> httpx.Client:
        if ep.sync_client is None:
            ep.sync_client = httpx.Client(base_url=ep.url, headers=self.headers(), timeout=self.http_timeout(), limits=_limits(httpx))
        return ep.sync_client

    # --- health ---------------------------------------------------------------------------------

    def mark_down(self, ep: Endpoint, why: str) -> None:
        now = time.monotonic()
        ep.down_reason = why
        ep.retry_at = now + self.retry_s
        if ep.down_since is not None:
            return
        ep.down_since = now
        live = [other.url for other in self.live()]
        log.warning(
            "engine endpoint %s is down (%s); %s; it is retried in %.0f s",
            ep.url,
            why,
            f"requests go to {', '.join(live)}" if live else "no endpoint is left",
            self.retry_s,
        )

    def _came_back(self, ep: Endpoint, response: httpx.Response) -> None:
        """Take ``ep`` back if its /v1/models answer shows the same base; else keep it down."""
        try:
            models = models_in(response, ep.url)
            base = self.base_card(ep.url, models)
        except EngineError as exc:
            self.mark_down(ep, exc.message)
            return
        if self.base_id is not None and base["id"] != self.base_id:
            self.mark_down(ep, f"it now serves {base['id']}, not {self.base_id}")
            return
        # a restarted server has lost the adapters loaded at run time: start again from what it
        # lists, so a request that needs one loads it there again
        ep.adapters = {m["id"] for m in models if m.get("parent")}
        ep.max_model_len = base.get("max_model_len")
        down_for = time.monotonic() - (ep.down_since or time.monotonic())
        ep.down_since, ep.down_reason = None, ""
        self._update_length()
        # at the level of the "is down" warning, so whoever saw that one sees this one too
        log.warning("engine endpoint %s is back after %.0f s down", ep.url, down_for)

    async def _probe(self, ep: Endpoint) -> None:
        try:
            response = await ep.client.get("/v1/models", timeout=self.quick_timeout())
        except httpx.HTTPError as exc:
            self.mark_down(ep, describe(exc))
        except Exception as exc:  # a background task: an error raised here would go unseen
            log.exception("probing the engine at %s failed", ep.url)
            self.mark_down(ep, describe(exc))
        else:
            self._came_back(ep, response)
        finally:
            ep.probe = None

    async def revive(self) -> None:
        """Probe the down endpoints whose cool-down is over.

        While another endpoint is up the probes run in the background and nobody waits for them;
        with none up, the caller waits, since a returning endpoint is its only chance.
        """
        now = time.monotonic()
        for ep in self.started():
            if not ep.up and ep.probe is None and now >= ep.retry_at:
                ep.probe = asyncio.create_task(self._probe(ep), name=f"bonsai-probe {ep.url}")
        if self.live():
            return
        probes = [ep.probe for ep in self.endpoints if ep.probe is not None]
        if probes:
            # shielded: a cancelled request must not cancel a probe other requests share
            await asyncio.gather(*(asyncio.shield(p) for p in probes), return_exceptions=True)

    def revive_sync(self) -> None:
        """:meth:`revive` for the synchronous count_tokens, used only when no endpoint is up."""
        now = time.monotonic()
        for ep in self.started():
            if ep.up or now < ep.retry_at:
                continue
            try:
                response = self.sync_client(ep).get("/v1/models", timeout=self.quick_timeout())
            except httpx.HTTPError as exc:
                self.mark_down(ep, describe(exc))
            else:
                self._came_back(ep, response)

    def pick(self, exclude: Collection[str] = ()) -> Endpoint:
        """The live endpoint with the fewest requests in flight (then the fewest ever sent)."""
        live = [ep for ep in self.started() if ep.up and ep.url not in exclude]
        if not live:
            raise self.none_left(exclude)
        return min(live, key=lambda ep: (ep.outstanding, ep.sent))

    def none_left(self, tried: Collection[str] = ()) -> EndpointUnreachable:
        now = time.monotonic()
        states = []
        for ep in self.endpoints:
            if not ep.up:
                states.append(f"{ep.url} (down for {now - (ep.down_since or now):.0f} s: {ep.down_reason})")
            elif ep.url in tried:
                states.append(f"{ep.url} (failed this request)")
        return unreachable(
            "no engine endpoint is reachable: " + "; ".join(states),
            "every endpoint is down",
            f"start the servers again with `bonsai serve` or check --endpoint; a down endpoint is retried every {self.retry_s:.0f} s",
        )


async def _close(ep: Endpoint) -> None:
    if ep.sync_client is not None:
        ep.sync_client.close()
    await asyncio.gather(ep.client.aclose(), ep.sdk.close(), return_exceptions=True)
