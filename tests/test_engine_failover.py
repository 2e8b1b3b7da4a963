"""The OpenAI engine over several endpoints when some die: real HTTP servers on 127.0.0.1.

A real `bonsai serve` takes a minute to start, so these use a small OpenAI-compatible server written
here (it speaks just enough of vLLM's API: models, tokenize, streamed chat, adapter loading,
/metrics) that can drop a stream at a chosen point, be killed outright, and come back on its port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bonsai.engine.openai import OpenAIEngine
from bonsai.engine.openai.metrics import prometheus_counters
from bonsai.engine.types import AdapterRef, ChatPrompt, Completion, EngineStats, GenerationRequest, Sampling, TextDelta
from bonsai.errors import EndpointUnreachable

pytestmark = pytest.mark.timeout(60)

PROMPT = ChatPrompt.of([{"role": "user", "content": "Should cities ban cars?"}])
SAMPLING = Sampling(temperature=0.0, max_tokens=8)


class FakeServer:
    """An OpenAI-compatible server in the test's event loop.

    ``mode`` says how completion streams end: ``ok``; ``close-before-headers`` (the connection closes
    before any response); ``close-after-role`` (headers and the empty role chunk, then it closes);
    ``abort-after-first`` (the first word, then a reset).
    """

    def __init__(self, name: str, *, port: int = 0, delay: float = 0.0, metrics: str = "") -> None:
        self.name = name
        self.port = port
        self.delay = delay
        self.metrics = metrics
        self.mode = "ok"
        self.words = [f"{name}:", " one", " two"]
        self.adapters: set[str] = set()
        self.completions: list[dict] = []  # the request bodies of streamed completions
        self.loaded: list[str] = []
        self.auth: dict[str, set[str]] = {}  # path -> the Authorization headers it was sent
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def kill(self) -> None:
        """Stop listening and reset every open connection, as a crashed server would."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    def served_words(self) -> str:
        return "".join(self.words)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            length = next((int(h.split(":")[1]) for h in head.split("\r\n") if h.lower().startswith("content-length:")), 0)
            raw = await reader.readexactly(length) if length else b""
            method, path = head.split(" ")[:2]
            auth = next((h.split(":", 1)[1].strip() for h in head.split("\r\n") if h.lower().startswith("authorization:")), "")
            self.auth.setdefault(path, set()).add(auth)
            body = json.loads(raw) if raw else {}
            if path == "/v1/models":
                cards = [{"id": "base", "parent": None, "max_model_len": 2048}] + [{"id": a, "parent": "base"} for a in sorted(self.adapters)]
                await self._reply(writer, 200, json.dumps({"object": "list", "data": cards}))
            elif path == "/tokenize":
                await self._reply(writer, 200, json.dumps({"count": 5, "max_model_len": 2048, "tokens": [1, 2, 3, 4, 5]}))
            elif path == "/v1/load_lora_adapter":
                self.adapters.add(body["lora_name"])
                self.loaded.append(body["lora_name"])
                await self._reply(writer, 200, "Success", "text/plain")
            elif path == "/metrics" and self.metrics:
                await self._reply(writer, 200, self.metrics, "text/plain; version=0.0.4")
            elif method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
                await self._stream(writer, body)
            else:
                await self._reply(writer, 404, json.dumps({"detail": "Not Found"}))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, status: int, text: str, content_type: str = "application/json") -> None:
        data = text.encode()
        writer.write(b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % (status, content_type.encode(), len(data)) + data)
        await writer.drain()

    async def _stream(self, writer: asyncio.StreamWriter, body: dict) -> None:
        self.completions.append(body)
        if self.mode == "close-before-headers":
            return  # the finally clause closes the connection

        def send(payload: object) -> None:
            data = b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode()) + b"\n\n"
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))

        def choice(delta: dict, finish: str | None = None) -> dict:
            return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
        send(choice({"role": "assistant", "content": ""}))
        await writer.drain()
        if self.mode == "close-after-role":
            return
        for word in self.words:
            send(choice({"content": word}))
            await writer.drain()
            if self.mode == "abort-after-first":
                await asyncio.sleep(0.2)  # let the client read the word before the reset arrives
                writer.transport.abort()
                return
            await asyncio.sleep(self.delay)
        send(choice({}, "stop"))
        send({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": len(self.words)}})
        send(b"[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()


@contextlib.asynccontextmanager
async def fake_servers(*names: str, **kwargs: object) -> AsyncIterator[list[FakeServer]]:
    servers = [await FakeServer(name, **kwargs).start() for name in names]  # type: ignore[arg-type]
    try:
        yield servers
    finally:
        for server in servers:
            if server._server is not None:
                await server.kill()


async def collect(engine: OpenAIEngine, request_id: str, **kwargs: object) -> list:
    return [ev async for ev in engine.stream(GenerationRequest(request_id, PROMPT, SAMPLING, **kwargs))]  # type: ignore[arg-type]


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def count_tokens(engine: OpenAIEngine) -> int:
    """The synchronous count_tokens, from a thread: it blocks, and the fake servers share this loop."""
    return await asyncio.to_thread(engine.count_tokens, PROMPT)


def ghost_adapter() -> AdapterRef:
    return AdapterRef(path=Path("/nowhere/lora"), content_hash="1" * 64, name="lora-" + "1" * 16, rank=8, target_modules=())


# --- balancing ----------------------------------------------------------------------------------


async def test_requests_balance_over_endpoints_by_outstanding_count() -> None:
    async with fake_servers("A", "B", delay=0.05) as (a, b), OpenAIEngine([a.url, b.url]) as engine:
        assert engine.endpoint_health() == {a.url: "up", b.url: "up"}
        streams = [engine.stream(GenerationRequest(f"r{i}", PROMPT, SAMPLING)) for i in range(4)]
        loads = []
        for stream in streams:
            first = await anext(stream)
            assert isinstance(first, TextDelta)
            loads.append(sorted(engine.endpoint_load().values()))
        assert loads == [[0, 1], [1, 1], [1, 2], [2, 2]]
        rests = [[ev async for ev in stream] for stream in streams]
        assert all(isinstance(evs[-1], Completion) for evs in rests)
        assert engine.endpoint_load() == {a.url: 0, b.url: 0}
        assert len(a.completions) == len(b.completions) == 2


async def test_the_api_key_goes_with_every_request() -> None:
    """Completions (through the SDK) and vLLM's own routes (models, tokenize, adapters, metrics) alike."""
    async with fake_servers("A", metrics=_metrics_text(1, 0, 1, 1, 1, 0)) as (a,), OpenAIEngine([a.url], api_key="sk-test") as engine:
        await engine.add_adapter(ghost_adapter())
        assert isinstance((await collect(engine, "k"))[-1], Completion)
        await engine.stats()
        assert await count_tokens(engine) == 5
    paths = ("/v1/models", "/v1/load_lora_adapter", "/tokenize", "/v1/chat/completions", "/metrics")
    assert {path: a.auth.get(path) for path in paths} == dict.fromkeys(paths, {"Bearer sk-test"})


# --- one endpoint dies --------------------------------------------------------------------------


async def test_a_killed_endpoint_is_marked_down_and_its_requests_move(caplog: pytest.LogCaptureFixture) -> None:
    async with fake_servers("A", "B") as (a, b), OpenAIEngine([a.url, b.url], endpoint_retry_s=60) as engine:
        for i in range(2):  # one each: the next request goes to A
            await collect(engine, f"warm{i}")
        assert len(a.completions) == len(b.completions) == 1
        await a.kill()
        with caplog.at_level(logging.WARNING, logger="bonsai.engine.openai"):
            for i in range(3):
                events = await collect(engine, f"after{i}")
                assert events[-1].text == b.served_words()  # the first one tried A, was refused, and moved
        assert len(a.completions) == 1 and len(b.completions) == 4
        assert engine.endpoint_health() == {a.url: "down", b.url: "up"}
        assert engine.endpoint_load() == {a.url: 0, b.url: 0}
        assert f"engine endpoint {a.url} is down" in caplog.text and f"requests go to {b.url}" in caplog.text
        # the synchronous token count skips it too
        assert await count_tokens(engine) == 5


@pytest.mark.parametrize("mode", ["close-before-headers", "close-after-role"])
async def test_a_stream_dropped_before_the_first_token_is_retried_elsewhere(mode: str) -> None:
    async with fake_servers("A", "B") as (a, b), OpenAIEngine([a.url, b.url], endpoint_retry_s=60) as engine:
        a.mode = mode
        events = await collect(engine, "moved")
        deltas = [ev.text for ev in events if isinstance(ev, TextDelta)]
        assert "".join(deltas) == events[-1].text == b.served_words()  # nothing of A's reached the caller
        assert len(a.completions) == len(b.completions) == 1  # A got it first, B finished it
        assert engine.endpoint_health() == {a.url: "down", b.url: "up"}
        assert engine.endpoint_load() == {a.url: 0, b.url: 0}


async def test_a_stream_dropped_after_the_first_token_raises_and_marks_the_endpoint_down() -> None:
    async with fake_servers("A", "B") as (a, b), OpenAIEngine([a.url, b.url], endpoint_retry_s=60) as engine:
        a.mode = "abort-after-first"
        seen: list[str] = []
        with pytest.raises(EndpointUnreachable) as info:
            async for event in engine.stream(GenerationRequest("half", PROMPT, SAMPLING)):
                seen.append(event.text)
        assert seen == ["A:"]  # the caller saw part of A's answer: only it can decide to re-run the turn
        assert a.url in info.value.message and "after part of the answer had streamed" in info.value.message
        assert "marked down" in (info.value.hint or "")
        assert len(b.completions) == 0  # not retried behind the caller's back
        assert engine.endpoint_health() == {a.url: "down", b.url: "up"}
        assert engine.endpoint_load() == {a.url: 0, b.url: 0}
        # the caller's re-run goes to B
        events = await collect(engine, "half-again")
        assert events[-1].text == b.served_words()


async def test_every_endpoint_down_is_one_clear_error() -> None:
    async with fake_servers("A", "B") as (a, b), OpenAIEngine([a.url, b.url], endpoint_retry_s=60) as engine:
        await a.kill()
        await b.kill()
        with pytest.raises(EndpointUnreachable) as info:
            await collect(engine, "nowhere")
        message = info.value.message
        assert message.startswith("no engine endpoint is reachable") and a.url in message and b.url in message
        assert "bonsai serve" in (info.value.hint or "") and "retried every 60 s" in (info.value.hint or "")
        assert engine.endpoint_health() == {a.url: "down", b.url: "down"}
        with pytest.raises(EndpointUnreachable, match="no engine endpoint is reachable"):
            await count_tokens(engine)
        with pytest.raises(EndpointUnreachable, match="no engine endpoint is reachable"):
            await engine.add_adapter(ghost_adapter())


async def test_start_with_one_endpoint_dead_uses_the_other() -> None:
    async with fake_servers("A", "B") as (a, b):
        await a.kill()
        async with OpenAIEngine([a.url, b.url], endpoint_retry_s=60) as engine:
            assert engine.endpoint_health() == {a.url: "down", b.url: "up"}
            assert engine.info.base_model == "base"
            assert (await collect(engine, "one"))[-1].text == b.served_words()
        await b.kill()
        with pytest.raises(EndpointUnreachable, match="cannot reach the engine at") as info:
            await OpenAIEngine([a.url, b.url]).start()
        assert a.url in info.value.message and b.url in info.value.message


# --- coming back --------------------------------------------------------------------------------


async def test_a_down_endpoint_comes_back_after_the_cool_down_and_gets_its_adapters() -> None:
    retry_s = 1.0
    async with fake_servers("A", "B") as (a, b), OpenAIEngine([a.url, b.url], endpoint_retry_s=retry_s) as engine:
        await a.kill()
        await collect(engine, "while-down")  # tried A, moved to B
        assert engine.endpoint_health()[a.url] == "down"
        down_at = time.monotonic()
        adapter = ghost_adapter()
        await engine.add_adapter(adapter)  # only B is there to load it
        assert b.loaded == [adapter.name] and a.loaded == []

        revived = await FakeServer("A", port=a.port).start()  # a restarted server: no run-time adapters
        try:
            await collect(engine, "cooling")
            assert revived.completions == []  # still resting (or, on a slow machine, probed in the background)
            await asyncio.sleep(max(0.0, down_at + retry_s - time.monotonic()) + 0.05)
            await collect(engine, "probe-trigger")  # B answers it; A is probed in the background
            await wait_for(lambda: engine.endpoint_health()[a.url] == "up")
            # A has sent fewer requests, so it takes the next one, loading the adapter it lacks first
            events = await collect(engine, "back", adapter=adapter)
            assert events[-1].text == revived.served_words() and events[-1].adapter_name == adapter.name
            assert revived.loaded == [adapter.name] and revived.completions[-1]["model"] == adapter.name
        finally:
            await revived.kill()


async def test_with_every_endpoint_down_a_request_waits_for_the_probe() -> None:
    retry_s = 1.0
    async with fake_servers("A", "B") as (a, b), OpenAIEngine([a.url, b.url], endpoint_retry_s=retry_s) as engine:
        await a.kill()
        await b.kill()
        with pytest.raises(EndpointUnreachable):
            await collect(engine, "nowhere")
        revived = await FakeServer("B", port=b.port).start()
        try:
            with pytest.raises(EndpointUnreachable):
                await collect(engine, "too-soon")  # still resting: not probed yet
            await asyncio.sleep(retry_s + 0.05)
            events = await collect(engine, "after-rest")  # waits for both probes: A refused, B back
            assert events[-1].text == revived.served_words()
            assert engine.endpoint_health() == {a.url: "down", b.url: "up"}
        finally:
            await revived.kill()
        with pytest.raises(EndpointUnreachable):
            await collect(engine, "down-again")
        revived = await FakeServer("B", port=b.port).start()
        try:
            await asyncio.sleep(retry_s + 0.05)
            assert await count_tokens(engine) == 5  # the synchronous path probes too when nothing is up
            assert engine.endpoint_health() == {a.url: "down", b.url: "up"}
        finally:
            await revived.kill()


# --- statistics ---------------------------------------------------------------------------------


def _metrics_text(queries: int, hits: int, prompt: int, generated: int, stop: int, length: int) -> str:
    """The lines of vLLM's /metrics that stats() reads, with some it must ignore around them."""
    labels = 'engine="0",model_name="base"'
    return "\n".join([
        "# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.",
        "# TYPE vllm:prefix_cache_queries_total counter",
        f"vllm:prefix_cache_queries_total{{{labels}}} {queries}.0",
        f"vllm:prefix_cache_queries_created{{{labels}}} 1.7e+09",
        f"vllm:prefix_cache_hits_total{{{labels}}} {hits}.0",
        f"vllm:prompt_tokens_total{{{labels}}} {prompt}.0",
        f'vllm:prompt_tokens_by_source_total{{{labels},source="local_compute"}} 999.0',
        f"vllm:generation_tokens_total{{{labels}}} {generated}.0",
        f'vllm:request_success_total{{{labels},finished_reason="stop"}} {stop}.0',
        f'vllm:request_success_total{{{labels},finished_reason="length"}} {length}.0',
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="a b}",waiting_lora_adapters=""} 1.7e+09',
        f"vllm:num_requests_running{{{labels}}} 0.0",
        "",
    ])


def test_prometheus_text_is_summed_over_labels() -> None:
    totals = prometheus_counters(_metrics_text(100, 40, 100, 20, 3, 1), {"vllm:request_success", "vllm:prefix_cache_hits", "vllm:num_requests_running"})
    assert totals == {"vllm:prefix_cache_hits": 40.0, "vllm:request_success": 4.0}  # gauges are not counters


def test_engine_stats_deltas_and_hit_rate() -> None:
    before = EngineStats(prefix_cache_queries=100, prefix_cache_hits=40, prompt_tokens=100, generation_tokens=20, requests_finished=4)
    after = EngineStats(prefix_cache_queries=300, prefix_cache_hits=190, prompt_tokens=300, generation_tokens=50, requests_finished=6, missing_endpoints=("x",))
    delta = after.since(before)
    assert delta == EngineStats(200, 150, 200, 30, 2, ("x",))
    assert delta.hit_rate == 0.75 and before.hit_rate == 0.4
    assert EngineStats().hit_rate is None and EngineStats().since(before) == EngineStats()


async def test_stats_sum_the_endpoints_and_skip_a_dead_one(caplog: pytest.LogCaptureFixture) -> None:
    async with fake_servers("A", "B") as (a, b), OpenAIEngine([a.url, b.url], endpoint_retry_s=60) as engine:
        a.metrics = _metrics_text(100, 40, 100, 20, 3, 1)
        b.metrics = _metrics_text(50, 10, 60, 5, 1, 0)
        both = await engine.stats()
        assert both == EngineStats(150, 50, 160, 25, 5, ())
        assert both.hit_rate == pytest.approx(1 / 3)
        await a.kill()
        with caplog.at_level(logging.WARNING, logger="bonsai.engine.openai"):
            alone = await engine.stats()
        assert alone == EngineStats(50, 10, 60, 5, 1, (a.url,))
        assert f"engine stats leave out {a.url}" in caplog.text
        assert engine.endpoint_health() == {a.url: "down", b.url: "up"}
        b.metrics = ""  # a server without /metrics: nothing to count, and said so
        assert await engine.stats() == EngineStats(missing_endpoints=(a.url, b.url))


# --- idle connections ----------------------------------------------------------------------------


class KeepAliveServer:
    """A server that keeps connections open between requests, like vLLM's (uvicorn), and closes one that
    has been idle for ``keepalive`` seconds at the moment the next request arrives on it, without an
    answer: the race uvicorn's keep-alive timer loses now and then, pushed to happen every time."""

    def __init__(self, keepalive: float) -> None:
        self.keepalive = keepalive
        self.connections = 0
        self.dropped = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> KeepAliveServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        idle_since = time.monotonic()
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                length = next((int(h.split(":")[1]) for h in head.split("\r\n") if h.lower().startswith("content-length:")), 0)
                if length:
                    await reader.readexactly(length)
                if time.monotonic() - idle_since >= self.keepalive:
                    self.dropped += 1
                    return  # closed with the request unanswered
                path = head.split(" ")[1]
                if path == "/v1/models":
                    body = json.dumps({"object": "list", "data": [{"id": "base", "parent": None, "max_model_len": 2048}]}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                elif path == "/tokenize":
                    body = json.dumps({"count": 5, "max_model_len": 2048, "tokens": [1, 2, 3, 4, 5]}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                else:  # a streamed chat completion, ended with the chunked terminator: the connection stays open
                    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": None}]},
                              {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}]
                    data = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
                await writer.drain()
                idle_since = time.monotonic()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_a_connection_the_server_is_closing_for_idleness_is_not_reused() -> None:
    """vLLM's server drops a connection after 5 s idle; the client must stop reusing one sooner, or a request
    sent at that moment fails as "connection dropped" (it did, in the suite on a busy machine)."""
    from bonsai.engine.openai.pool import KEEPALIVE_EXPIRY_S

    # a server that gives up on idle connections a second after the client stops reusing them (httpx's
    # default of 5 s, vLLM's own 5 s: the race), and a request after the server gave up
    async with KeepAliveServer(keepalive=KEEPALIVE_EXPIRY_S + 1.0) as server, OpenAIEngine([server.url]) as engine:
        for i in range(2):
            events = await collect(engine, f"idle{i}")
            assert isinstance(events[-1], Completion) and events[-1].text == "hi"
            await asyncio.sleep(KEEPALIVE_EXPIRY_S + 1.3)
        assert server.dropped == 0 and server.connections >= 2
