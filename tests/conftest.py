"""Shared fixtures: the real embedded model, two small real LoRA adapters, one vLLM engine and one real
`bonsai serve` per session.

An engine start costs ~30 CPU-seconds on a 2-core machine (docs/benchmarks.md, "Test suite: where the time
goes"): a test that needs a running engine or server takes these shared ones, and starts its own only when
the start itself (or killing the server) is what it tests.

Every test gets its own empty BONSAI_HOME; the prepared base model is read from the ambient one
(``make test`` prepares it first), so it is dequantized once per machine, not once per test.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bonsai.model.prepare import BaseModel, resolve_base
from bonsai.paths import bonsai_home

_AMBIENT_HOME = bonsai_home()  # read before any test points BONSAI_HOME elsewhere

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

#: The tests' vLLM engines each run their model on one OpenMP thread that no core is bound to. A lone
#: debate is faster with the worker's threads on both cores (what bonsai gives it: platform.cpu_worker_env),
#: but the suite runs two or three engines at once beside training and servers, and two engines whose
#: threads are all bound to cores 0 and 1 stall each other: two debate benches at once took 296 s and 558
#: CPU-seconds with the binding, 212 s and 420 CPU-seconds like this (docs/benchmarks.md, "Test suite").
#: Set before any engine starts, so that every worker process vLLM spawns (in-process engines, `bonsai
#: serve` children, CLI subprocesses) inherits it; a value already in the environment stands.
TEST_ENGINE_THREADS = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}


def pytest_configure(config: pytest.Config) -> None:
    for name, value in TEST_ENGINE_THREADS.items():
        os.environ.setdefault(name, value)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "bonsai-home"
    home.mkdir()
    monkeypatch.setenv("BONSAI_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def base_model() -> BaseModel:
    return resolve_base(None, _AMBIENT_HOME)


def make_lora(base: Path, out: Path, *, seed: int, rank: int = 8, scale: float = 0.02) -> Path:
    """A real PEFT LoRA adapter with small non-zero B matrices (so it changes the output a little)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)  # lora_A's init is random too: the same adapter every session
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    peft_model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def lora_adapters(base_model: BaseModel, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("loras")
    return [make_lora(base_model.path, root / f"lora{i}", seed=100 + i) for i in range(2)]


def _new_vllm_engine(base_model: BaseModel):
    from servekit import TEST_KV_CACHE_GIB

    from bonsai.engine.vllm_local import VLLMEngine

    return VLLMEngine(base_model.path, base_hash=base_model.content_hash, max_loras=4, max_lora_rank=16, max_model_len=4096, kv_cache_gib=TEST_KV_CACHE_GIB)


@pytest.fixture(scope="session")
async def vllm_engine(base_model: BaseModel, early_starts: dict[str, Any]):
    """One in-process vllm-cpu engine for the whole session (start-up costs ~35 s, mostly overlapped with
    the first tests: see ``early_starts``)."""
    started = early_starts.get("vllm_engine")
    if started is not None:
        engine = await asyncio.to_thread(started.result)
    else:
        engine = _new_vllm_engine(base_model)
        await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


@pytest.fixture(scope="session")
def quick_short_judge(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The built-in ``quick`` format with a 24-token JSON verdict, as a format file (its path).

    In a test-sized debate most of the decoding is the judge's JSON verdict (up to 96 tokens per layout
    in ``quick``, against 4 x 12 for the debaters). The winner, P(A) and the readings' probabilities come
    from the one-token label probes, not from that JSON: tests that check those, and not the verdict's
    text, use this format. Tests of the JSON verdict itself keep the built-in formats."""
    import yaml

    from bonsai.debate.formats import builtin_formats_dir

    raw = yaml.safe_load((builtin_formats_dir() / "quick.yaml").read_text(encoding="utf-8"))
    raw["name"] = "quick-short-judge"
    raw["judge"]["max_tokens"] = 24
    path = tmp_path_factory.mktemp("formats") / "quick-short-judge.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(path)


def _write_persona(folder: Path, name: str, team: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    side = "for" if team == "A" else "against"
    (folder / f"{name}.yaml").write_text(f"name: {name}\nteam: {team}\nrole: debater\nsystem_prompt: You argue {side} the motion.\n")


def _start_shared_server(base_model: BaseModel, lora_adapters: list[Path], tmp_path_factory: pytest.TempPathFactory):
    from servekit import start_serve

    root = tmp_path_factory.mktemp("serve")
    personas = root / "personas"
    _write_persona(personas, "pro", "A")  # its adapter comes from --adapter
    _write_persona(personas, "con", "B")
    return start_serve(root, base_model.path, "--personas-dir", str(personas), "--max-model-len", "2048", "--adapter", f"pro={lora_adapters[0]}",
                       "--allow-any-adapter-path")  # the tests load adapters from their temp folders


@pytest.fixture(scope="session")
def served(base_model: BaseModel, lora_adapters: list[Path], tmp_path_factory: pytest.TempPathFactory, early_starts: dict[str, Any]):
    """One real `bonsai serve` for the session (vLLM in a child process, max_model_len 2048): personas
    ``pro`` (on ``lora_adapters[0]``, from ``--adapter``) and ``con`` (bare base). Tests that only need a
    server to talk to share it; requests they count are read as differences of its metrics."""
    server = early_starts.get("served") or _start_shared_server(base_model, lora_adapters, tmp_path_factory)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


class _StartInBackground:
    """``engine.start()`` in a thread of its own, on an event loop of its own, while the first tests run.

    vLLM builds its engine in a worker thread anyway (``VLLMEngine.start`` hands it to ``asyncio.to_thread``)
    and starts its output handler lazily, on the loop of the first request: nothing of it is tied to the
    loop that started it, so the session's loop can take it over."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="early-vllm-start", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self.engine.start())
        except BaseException as exc:  # handed to the test that needs the engine
            self.error = exc

    def result(self) -> Any:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.engine

    def close(self) -> None:
        """Shut the engine down if nothing did (closing twice is harmless), on a loop of its own again:
        ``asyncio.run`` in the main thread would unset the loop pytest-asyncio keeps there."""
        self.thread.join()
        closer = threading.Thread(target=lambda: asyncio.run(self.engine.close()), name="early-vllm-close")
        closer.start()
        closer.join()


def _import_shared_modules() -> None:
    """Import, before the background start, the packages that both it and the tests import (~7 s here).

    Two threads importing one package graph at once can meet a module half initialised: with a few engine
    tests selected, a test's ``import peft`` failed on "partially initialized module 'accelerate.hooks'"
    while the background start was importing transformers."""
    import importlib

    for name in ("transformers", "transformers.modeling_utils", "peft", "accelerate.hooks", "vllm.engine.arg_utils", "vllm.v1.engine.async_llm"):
        importlib.import_module(name)


#: the shared engines that the selected tests need (filled at collection)
_WANTED: set[str] = set()


@pytest.fixture(scope="session", autouse=True)
def early_starts(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Iterator[dict[str, Any]]:
    """Start the session's shared engine and server at the first test, in the background, when any
    selected test needs them: the engine tests run last (see ``pytest_collection_modifyitems``), and the
    ~35-60 s each start takes then overlaps with the logic tests, which leave the second core idle.
    After ``one_torch_thread``: vLLM forks its engine process from this one, as it always did, and this
    process's torch has then used one thread only."""
    started: dict[str, Any] = {}
    if _WANTED and os.environ.get("BONSAI_TEST_EARLY_START", "1") != "0":
        base_model = request.getfixturevalue("base_model")
        if "served" in _WANTED:
            started["served"] = _start_shared_server(base_model, request.getfixturevalue("lora_adapters"), tmp_path_factory)
        if "vllm_engine" in _WANTED:
            _import_shared_modules()
            started["vllm_engine"] = _StartInBackground(_new_vllm_engine(base_model))
    try:
        yield started
    finally:
        # normally the fixtures that used them stopped them already; this is for a session cut short
        if "served" in started:
            started["served"].stop()
        if "vllm_engine" in started:
            started["vllm_engine"].close()


#: the xdist groups (see ``pytest_collection_modifyitems``): the tests that share the session's vLLM engine
#: or server, and those that start vLLM engines of their own (with their modules' slow tests, which share
#: those modules' fixtures, e.g. Gemma's preparation)
VLLM_GROUP, OWN_VLLM_GROUP = "vllm", "vllm-own"
_SHARED_ENGINES = {"vllm_engine", "served"}


def _shares_vllm(item: pytest.Item) -> bool:
    return bool(_SHARED_ENGINES & set(getattr(item, "fixturenames", ())))


def _needs_vllm(item: pytest.Item) -> bool:
    return bool(item.get_closest_marker("engine") or item.get_closest_marker("serve") or _shares_vllm(item))


def _xdist_group(item: pytest.Item, own_vllm_modules: set[str]) -> str | None:
    if _shares_vllm(item):
        return VLLM_GROUP
    module = item.module.__name__ if getattr(item, "module", None) else ""
    if _needs_vllm(item) or (module in own_vllm_modules and item.get_closest_marker("slow")):
        return OWN_VLLM_GROUP
    return module if item.get_closest_marker("slow") and module else None


def _xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _suffix_group(item: pytest.Item, group: str) -> None:
    """Append ``@group`` to the node id, the way xdist's loadgroup scheduler reads groups.

    xdist 3.8 does it by setting ``item._nodeid``, which pytest 9 no longer reads (the id lives in
    ``item._id``), so on pytest 9 its groups are silently ignored and a group's tests spread over workers
    (measured: the shared engine started on both)."""
    from _pytest.nodeid import coerce_node_id

    if hasattr(item, "_id") and not item.nodeid.endswith(f"@{group}"):
        item._id = coerce_node_id(f"{item.nodeid}@{group}")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the groups into node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not (_xdist_worker(config) and config.getvalue("loadgroup")):
        # Engine-backed tests share one engine: run the fast logic tests first so failures show early.
        items.sort(key=lambda it: 1 if _needs_vllm(it) else 0)
        return
    # ``make test`` runs two xdist workers (``--dist loadgroup --no-loadscope-reorder``). On 2 cores the suite
    # is mostly one core busy: vLLM's worker has both, but training and the transformers engine run torch on
    # one thread, and process starts, imports and waits on servers on one. The scheduler hands out units of
    # work in this order, each to the next free worker:
    # 1. the tests that share the session's engine and server, as one unit (they start once, on one worker);
    # 2. the tests that start vLLM engines of their own, as one unit, so they run beside the start of unit 1
    #    and not beside its own extra servers later: at most the serial run's engines at once (memory);
    # 3. each other slow module as one unit (its module fixtures are built once);
    # 4. the fast tests one by one, to even out the end.
    own_vllm_modules = {it.module.__name__ for it in items if getattr(it, "module", None) and _needs_vllm(it) and not _shares_vllm(it)}
    groups = {}
    for it in items:
        group = _xdist_group(it, own_vllm_modules)
        groups[it] = group
        if group and it.get_closest_marker("xdist_group") is None:
            it.add_marker(pytest.mark.xdist_group(group))
            _suffix_group(it, group)
    order = {VLLM_GROUP: 0, OWN_VLLM_GROUP: 1}
    items.sort(key=lambda it: order.get(groups[it] or "", 2 if groups[it] else 3))


def pytest_collection_finish(session: pytest.Session) -> None:
    # after -m/-k deselection (which runs after the hook above): only what the selected tests need
    _WANTED.clear()
    if _xdist_worker(session.config):
        return  # decided at this worker's first test: only the worker given the vLLM group starts them
    for it in session.items:
        _WANTED.update(_SHARED_ENGINES & set(getattr(it, "fixturenames", ())))


_FIRST_TEST_SEEN: list[bool] = []


@pytest.hookimpl(tryfirst=True)  # before the autouse ``early_starts`` is set up for the worker's first test
def pytest_runtest_setup(item: pytest.Item) -> None:
    if _FIRST_TEST_SEEN or not _xdist_worker(item.config):
        return
    _FIRST_TEST_SEEN.append(True)
    # a group is one unit of work: a worker whose first test shares the session's engines runs all of those
    if _shares_vllm(item):
        for it in item.session.items:
            _WANTED.update(_SHARED_ENGINES & set(getattr(it, "fixturenames", ())))


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# vLLM's log handler binds the stream object it finds at import. The shared engine imports vLLM in a background
# thread while other tests run, so ``sys.stdout`` could then be one test's capsys buffer (it was, once, in CI):
# the original stderr is never swapped, and pytest's fd capture still files what lands there under its test.
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.__stderr__")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> None:
    """In-process torch (PEFT references, the transformers engine, training) on one thread.

    On 2 cores shared with vLLM's engine process, torch's two spinning OpenMP threads stall each other:
    a 32-token decode measured 173 s on two threads against 11 s on one.
    """
    import torch

    torch.set_num_threads(1)
