"""`bonsai serve` (a real vLLM server in a child process) and the OpenAI engine that talks to it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from servekit import Server

from bonsai.cli.main import main
from bonsai.registry.identity import inspect_adapter
from bonsai.engine.openai import OpenAIEngine, normalize_endpoint
from bonsai.engine.platform import CPU_WORKER_CLS, cpu_worker_env
from bonsai.serve.server import serve_info_path, serve_log_path
from bonsai.engine.types import AdapterRef, ChatMessage, ChatPrompt, Completion, GenerationRequest, Sampling, TextDelta, TextPrompt
from bonsai.errors import AdapterError, EndpointUnreachable, PromptTooLong
from bonsai.model.prepare import BaseModel

PROMPT = ChatPrompt.of([{"role": "user", "content": "Should cities ban cars from their centres? Answer in one sentence."}])
GREEDY = Sampling(temperature=0.0, max_tokens=24)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_persona(folder: Path, name: str, team: str, adapter: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"name: {name}", f"team: {team}", "role: debater", f"system_prompt: You argue {'for' if team == 'A' else 'against'} the motion."]
    if adapter is not None:
        lines.append(f"adapter: {adapter}")
    (folder / f"{name}.yaml").write_text("\n".join(lines) + "\n")


def _serve_args(home: Path, base: BaseModel, personas: Path, *extra: str) -> list[str]:
    return ["--home", str(home), "serve", "--base", str(base.path), "--personas-dir", str(personas), *extra]


# --- no server needed ---------------------------------------------------------------------------


def test_endpoint_spellings_normalize() -> None:
    assert normalize_endpoint("127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert normalize_endpoint("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000"
    assert normalize_endpoint("https://gpu.example:443") == "https://gpu.example:443"


def test_dry_run_binds_localhost_and_names_adapters_by_content(
    base_model: BaseModel, lora_adapters: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    personas = tmp_path / "personas"
    _write_persona(personas, "pro", "A", adapter=str(lora_adapters[0]))
    _write_persona(personas, "con", "B")  # bare base: not in the map
    ref = inspect_adapter(lora_adapters[0])

    assert main(_serve_args(tmp_path / "home", base_model, personas, "--dry-run")) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("VLLM_ALLOW_RUNTIME_LORA_UPDATING=True ")
    assert "--host 127.0.0.1 --port 8000" in line and f"{ref.name}={ref.path}" in line

    assert main(_serve_args(tmp_path / "home", base_model, personas, "--dry-run", "--json", "--adapter", f"con={lora_adapters[1]}", "--port", "8123")) == 0
    plan = json.loads(capsys.readouterr().out)
    cmd = plan["command"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8123"
    assert cmd[cmd.index("--max-lora-rank") + 1] == "16"  # the adapters are r=8; at least 16
    assert cmd[cmd.index("--served-model-name") + 1] == base_model.name and "--enable-lora" in cmd
    # on CPU, the worker that keeps adapter-less requests off the last adapter slot (bonsai/engine/cpu_lora.py)
    assert cmd[cmd.index("--worker-cls") + 1] == CPU_WORKER_CLS
    assert plan["adapters"] == {"pro": ref.name, "con": inspect_adapter(lora_adapters[1]).name}
    # on CPU also the worker's cores and OpenMP runtime, as far as this process's environment leaves them open
    # (an in-process engine started earlier in the same process has set them here already)
    assert plan["env"] == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "BONSAI_ADAPTER_ROOT": str((tmp_path / "home").resolve()), **cpu_worker_env()}
    assert not serve_info_path(tmp_path / "home", 8123).exists()  # a dry run publishes nothing


def test_missing_adapter_folder_fails_before_starting_anything(base_model: BaseModel, tmp_path: Path) -> None:
    personas = tmp_path / "personas"
    _write_persona(personas, "pro", "A")
    home = tmp_path / "home"
    port = _free_port()
    missing = tmp_path / "no-such-adapter"
    result = subprocess.run(
        [sys.executable, "-m", "bonsai.cli.main", *_serve_args(home, base_model, personas, "--port", str(port), "--adapter", f"pro={missing}")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert f"adapter folder {missing}" in result.stderr and "does not exist" in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.stderr
    assert not serve_log_path(home, port).exists() and not serve_info_path(home, port).exists()


def test_persona_with_a_missing_adapter_folder_is_refused(base_model: BaseModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    personas = tmp_path / "personas"
    _write_persona(personas, "pro", "A", adapter="./gone")
    assert main(_serve_args(tmp_path / "home", base_model, personas, "--dry-run")) != 0
    err = capsys.readouterr().err
    assert "adapter folder" in err and "gone" in err and "'pro'" in err


def test_port_in_use_is_an_engine_error(base_model: BaseModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    personas = tmp_path / "personas"
    _write_persona(personas, "pro", "A")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(_serve_args(tmp_path / "home", base_model, personas, "--port", str(port))) == 3
    err = capsys.readouterr().err
    assert f"cannot serve on 127.0.0.1:{port}" in err and "--port" in err


async def test_unreachable_endpoint_at_start() -> None:
    port = _free_port()  # closed again: nothing listens there
    engine = OpenAIEngine([f"http://127.0.0.1:{port}"])
    with pytest.raises(EndpointUnreachable) as info:
        await engine.start()
    assert f"cannot reach the engine at http://127.0.0.1:{port}" in info.value.message
    assert "bonsai serve" in (info.value.hint or "") and info.value.exit_code == 3


@contextlib.asynccontextmanager
async def _server_that_drops_streams():
    """A real HTTP server that lists a model, then cuts every completion stream after one chunk."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        length = next((int(h.split(":")[1]) for h in head.split("\r\n") if h.lower().startswith("content-length:")), 0)
        await reader.readexactly(length)
        if head.startswith("GET /v1/models"):
            body = json.dumps({"object": "list", "data": [{"id": "base", "parent": None, "max_model_len": 2048}]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        elif head.startswith("POST /tokenize"):
            body = b'{"count": 5, "max_model_len": 2048, "tokens": [1, 2, 3, 4, 5]}'
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        else:
            chunk = b'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": null}]}\n\n'
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def test_dropped_connection_mid_stream_is_unreachable() -> None:
    async with _server_that_drops_streams() as url, OpenAIEngine([url]) as engine:
        assert engine.info.base_model == "base" and engine.info.max_model_len == 2048
        seen: list[str] = []
        with pytest.raises(EndpointUnreachable, match="dropped|mid-stream"):
            async for event in engine.stream(GenerationRequest("drop", PROMPT, GREEDY)):
                assert isinstance(event, TextDelta)
                seen.append(event.text)
        assert seen == ["Hel"]
        assert engine.endpoint_load() == {url: 0}


# --- a real `bonsai serve` ----------------------------------------------------------------------


@pytest.fixture(scope="session")
async def remote(served: Server, base_model: BaseModel):
    async with OpenAIEngine([served.endpoint], base_model=str(base_model.path)) as engine:
        yield engine


@pytest.mark.serve
async def test_serve_publishes_the_adapter_map(served: Server, remote: OpenAIEngine, lora_adapters: list[Path], base_model: BaseModel) -> None:
    name = inspect_adapter(lora_adapters[0]).name
    assert served.endpoint == f"http://127.0.0.1:{served.port}"
    assert served.adapters == {"pro": name}  # con debates on the bare base
    info = json.loads(serve_info_path(served.home, served.port).read_text())
    assert info["adapters"] == {"pro": name} and info["base_hash"] == base_model.content_hash
    assert remote.info.kind == "openai" and remote.info.base_model == base_model.name
    assert remote.info.max_model_len == 2048 and remote.info.supports_json_schema
    models = httpx.get(f"{served.endpoint}/v1/models").json()["data"]
    assert {m["id"] for m in models} == {base_model.name, name}
    # vLLM names the LoRA wrapper its worker picked: bonsai's, through --worker-cls
    assert "Using MaskedPunicaWrapperCPU" in serve_log_path(served.home, served.port).read_text()


@pytest.mark.serve
async def test_chat_deltas_concatenate_to_the_completion(remote: OpenAIEngine, lora_adapters: list[Path]) -> None:
    ref = inspect_adapter(lora_adapters[0])
    events = [ev async for ev in remote.stream(GenerationRequest("deltas", PROMPT, Sampling(temperature=0.8, seed=7, max_tokens=24), adapter=ref))]
    final = events[-1]
    deltas = [ev for ev in events[:-1] if isinstance(ev, TextDelta)]
    assert isinstance(final, Completion) and len(deltas) == len(events) - 1 > 1
    assert "".join(d.text for d in deltas) == final.text
    assert final.prompt_tokens == remote.count_tokens(PROMPT) and 0 < final.output_tokens <= 24
    assert final.finish_reason in {"stop", "length"} and final.adapter_name == ref.name
    assert final.first_token_s is not None and 0 < final.first_token_s <= final.total_s
    assert remote.endpoint_load() == {remote.endpoint_urls[0]: 0}


@pytest.mark.engine
@pytest.mark.serve
async def test_greedy_output_matches_the_in_process_engine(remote: OpenAIEngine, vllm_engine, lora_adapters: list[Path]) -> None:
    ref = inspect_adapter(lora_adapters[0])
    await vllm_engine.add_adapter(ref)
    for prompt in (PROMPT, TextPrompt("The three most important inventions are")):
        local = await vllm_engine.generate(GenerationRequest("local", prompt, GREEDY, adapter=ref))
        over_http = await remote.generate(GenerationRequest("served", prompt, GREEDY, adapter=ref))
        assert over_http.text == local.text and over_http.text
        assert over_http.prompt_tokens == local.prompt_tokens == vllm_engine.count_tokens(prompt) == remote.count_tokens(prompt)
        assert over_http.output_tokens == local.output_tokens


@pytest.mark.serve
async def test_json_schema_output_parses(remote: OpenAIEngine) -> None:
    schema = {
        "type": "object",
        "properties": {"winner": {"type": "string", "enum": ["A", "B"]}, "reason": {"type": "string", "maxLength": 40}},
        "required": ["winner", "reason"],
        "additionalProperties": False,
    }
    prompt = ChatPrompt.of([{"role": "user", "content": "Team A argued better than team B. Who won? Reply in JSON."}])
    done = await remote.generate(GenerationRequest("json", prompt, Sampling(temperature=0.0, max_tokens=48, json_schema=schema)))
    verdict = json.loads(done.text)
    assert verdict["winner"] in {"A", "B"} and isinstance(verdict["reason"], str)


@pytest.mark.serve
async def test_logprobs_for_chat_and_text(remote: OpenAIEngine) -> None:
    judge = ChatPrompt((*PROMPT.messages, ChatMessage("assistant", "The winner is team")), continue_final_message=True)
    for prompt in (judge, TextPrompt("The capital of France is")):
        done = await remote.generate(GenerationRequest("lp", prompt, Sampling(temperature=0.0, max_tokens=4, logprobs=3)))
        assert done.logprobs is not None and len(done.logprobs) == done.output_tokens and 1 <= done.output_tokens <= 4
        # one entry per generated token, the end-of-turn token included (it is not in the text)
        assert "".join(lp.token for lp in done.logprobs).startswith(done.text)
        for lp in done.logprobs:
            assert lp.logprob <= 0 and lp.token in lp.top and 3 <= len(lp.top) <= 4
            assert lp.top[lp.token] == max(lp.top.values())  # greedy picks the most likely token
    plain = await remote.generate(GenerationRequest("nolp", judge, Sampling(temperature=0.0, max_tokens=2)))
    assert plain.logprobs is None


@pytest.mark.serve
async def test_adapter_added_at_run_time_is_served_by_its_hash_name(remote: OpenAIEngine, served: Server, lora_adapters: list[Path]) -> None:
    ref = inspect_adapter(lora_adapters[1])
    served_ids = lambda: {m["id"] for m in httpx.get(f"{served.endpoint}/v1/models").json()["data"]}  # noqa: E731
    assert ref.name not in served_ids()
    await remote.add_adapter(ref)
    await remote.add_adapter(ref)  # idempotent
    assert ref.name in served_ids()

    sampling = Sampling(temperature=0.0, max_tokens=16, logprobs=1)
    base = await remote.generate(GenerationRequest("base", PROMPT, sampling))
    tuned = await remote.generate(GenerationRequest("tuned", PROMPT, sampling, adapter=ref))
    assert tuned.adapter_name == ref.name
    assert base.logprobs is not None and tuned.logprobs is not None
    # the adapter is applied: the text or at least the model's confidence in it changes
    assert tuned.text != base.text or any(abs(a.logprob - b.logprob) > 1e-3 for a, b in zip(tuned.logprobs, base.logprobs, strict=False))

    # a fresh client finds it served already (the server keeps it; no restart, no reload)
    async with OpenAIEngine([served.endpoint]) as other:
        assert ref.name in other._pool.endpoints[0].adapters


@pytest.mark.serve
async def test_server_errors_surface_with_the_servers_message(remote: OpenAIEngine, served: Server, tmp_path: Path) -> None:
    ghost = AdapterRef(path=tmp_path / "ghost", content_hash="0" * 64, name="lora-" + "0" * 16, rank=8, target_modules=())
    async with OpenAIEngine([served.endpoint]) as engine:  # no local base: only the server can refuse it
        with pytest.raises(AdapterError, match="could not load adapter"):
            await engine.add_adapter(ghost)
    with pytest.raises(PromptTooLong, match="exceeds the context of 2048"):
        await remote.generate(GenerationRequest("long", TextPrompt("word " * 2100), Sampling(max_tokens=8)))
    with pytest.raises(PromptTooLong):
        await remote.generate(GenerationRequest("long2", PROMPT, Sampling(max_tokens=2040)))


@pytest.mark.serve
async def test_requests_go_to_the_least_busy_endpoint(served: Server) -> None:
    # the same server under two spellings: two endpoints as far as the engine can tell
    urls = [served.endpoint, served.endpoint.replace("127.0.0.1", "localhost")]
    async with OpenAIEngine(urls) as engine:
        first = engine.stream(GenerationRequest("one", PROMPT, Sampling(temperature=0.0, max_tokens=8)))
        second = engine.stream(GenerationRequest("two", PROMPT, Sampling(temperature=0.0, max_tokens=8)))
        await anext(first)
        assert sorted(engine.endpoint_load().values()) == [0, 1]
        await anext(second)
        assert engine.endpoint_load() == {normalize_endpoint(u): 1 for u in urls}
        rest = [[ev async for ev in first], [ev async for ev in second]]
        assert all(isinstance(evs[-1], Completion) for evs in rest)
        assert engine.endpoint_load() == {normalize_endpoint(u): 0 for u in urls}


@pytest.mark.serve
async def test_stats_read_the_servers_metrics(remote: OpenAIEngine) -> None:
    # several 128-token blocks long, unique from the first token: the repeat must hit the prefix cache
    history = " ".join(f"Turn {i}: cars crowd the centre, trains move more people per hour." for i in range(30))
    prompt = ChatPrompt.of([{"role": "system", "content": f"Debate {uuid.uuid4().hex}. {history}"}, {"role": "user", "content": "Sum up."}])
    sampling = Sampling(temperature=0.0, max_tokens=4)
    before = await remote.stats()
    assert before.missing_endpoints == () and None not in (before.prefix_cache_queries, before.prefix_cache_hits, before.prompt_tokens, before.generation_tokens, before.requests_finished)
    first = await remote.generate(GenerationRequest("stats-1", prompt, sampling))
    second = await remote.generate(GenerationRequest("stats-2", prompt, sampling))
    delta = (await remote.stats()).since(before)
    assert delta.requests_finished == 2
    assert delta.prompt_tokens == delta.prefix_cache_queries == first.prompt_tokens + second.prompt_tokens
    assert delta.generation_tokens == first.output_tokens + second.output_tokens
    assert delta.prefix_cache_hits is not None and delta.prefix_cache_hits >= second.prompt_tokens // 2  # the repeat, from the cache
    assert remote.endpoint_health() == {remote.endpoint_urls[0]: "up"}


@pytest.mark.serve
@pytest.mark.slow
async def test_same_debate_through_bonsai_serve(remote: OpenAIEngine, served: Server, lora_adapters: list[Path], base_model: BaseModel, tmp_path: Path) -> None:
    """The debate from test_debate_real.py, unchanged, on the OpenAI-compatible engine."""
    from bonsai.debate.runner import DebateRunner, DebateSpec
    from bonsai.personas import PersonaBook
    from bonsai.store.transcripts import TranscriptStore

    spec = DebateSpec(
        motion="Cities should ban private cars from their centres", personas=["advocate", "skeptic", "judge"], format="quick",
        rounds=1, seed=7, max_tokens=16, adapters={"advocate": str(lora_adapters[0]), "skeptic": str(lora_adapters[1])},
    )
    with TranscriptStore(tmp_path / "t.sqlite") as store:
        async with DebateRunner(remote, store, tmp_path / "ck.sqlite", PersonaBook.load(), tmp_path, base_model.name) as runner:
            events = [ev async for ev in runner.run(spec)]
        debate_id = events[0].debate_id
        assert store.get_debate(debate_id).status == "finished"
        turns = store.turns(debate_id)
        assert len(turns) == 4 and all(t.output_tokens > 0 for t in turns)
        names = {t.speaker: t.adapter_name for t in turns}
        assert names["advocate"] == inspect_adapter(lora_adapters[0]).name
        assert names["skeptic"] == inspect_adapter(lora_adapters[1]).name  # registered on the running server by the runner
        v = store.verdicts(debate_id)[0]
        assert v.parsed and all(o["found_labels"] for o in v.orders)


@pytest.mark.serve
def test_cli_debate_against_bonsai_serve(served: Server, tmp_path: Path) -> None:
    store = tmp_path / "t.sqlite"
    done = subprocess.run(
        [sys.executable, "-m", "bonsai", "--home", str(tmp_path / "home"), "debate", "Homework should be abolished", "--endpoint", served.endpoint,
         "--format", "quick", "--rounds", "1", "--max-tokens", "12", "--store", str(store), "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "finished" and summary["turns"] == 4 and summary["store"] == str(store)
