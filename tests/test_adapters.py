"""Adapter identity and validation against the real base, with real PEFT adapters (no engine)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from bonsai.engine.adapters import AdapterRegistry, lora_rank_for, validate_adapter
from bonsai.registry.identity import AdapterInspector, inspect_adapter
from bonsai.errors import AdapterError
from bonsai.model.prepare import BaseModel


def synthetic_lora(base: Path, out: Path, *, rank: int, layers: int | None = None) -> Path:
    """A PEFT-format LoRA adapter shaped for ``base`` (zeros), written without loading the model."""
    cfg = json.loads((base / "config.json").read_text())
    hidden, inter, head_dim = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim
    shapes = {
        "self_attn.q_proj": (q, hidden),
        "self_attn.k_proj": (kv, hidden),
        "self_attn.v_proj": (kv, hidden),
        "self_attn.o_proj": (hidden, q),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }
    tensors = {}
    for i in range(layers if layers is not None else cfg["num_hidden_layers"]):
        for mod, (out_f, in_f) in shapes.items():
            prefix = f"base_model.model.model.layers.{i}.{mod}"
            tensors[f"{prefix}.lora_A.weight"] = np.zeros((rank, in_f), dtype=np.float32)
            tensors[f"{prefix}.lora_B.weight"] = np.zeros((out_f, rank), dtype=np.float32)
    out.mkdir(parents=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": [m.split(".")[1] for m in shapes],
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "task_type": "CAUSAL_LM",
    }
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def _edit_config(folder: Path, **changes: object) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_content_hash_names_follow_weights(lora_adapters: list[Path], tmp_path: Path) -> None:
    a, b = (inspect_adapter(p) for p in lora_adapters)
    copy = tmp_path / "copy"
    shutil.copytree(lora_adapters[0], copy)
    # PEFT writes target_modules from a set: a reordered list is the same adapter
    config = json.loads((copy / "adapter_config.json").read_text())
    _edit_config(copy, target_modules=list(reversed(config["target_modules"])), base_model_name_or_path="/elsewhere")
    c = inspect_adapter(copy)

    assert a.content_hash == c.content_hash and a.name == c.name
    assert a.path != c.path
    assert a.name != b.name and a.content_hash != b.content_hash
    assert a.name == "lora-" + a.content_hash[:16]
    assert a.rank == 8
    assert set(a.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert a.base_model is None

    # same weights, another scaling: it computes something else, so it is another adapter
    _edit_config(copy, lora_alpha=32)
    assert inspect_adapter(copy).name != a.name


def test_real_adapters_validate_against_the_base(lora_adapters: list[Path], base_model: BaseModel) -> None:
    for path in lora_adapters:
        validate_adapter(inspect_adapter(path), base_dir=base_model.path, base_hash=base_model.content_hash, max_rank=16)


def test_rank_above_engine_max(base_model: BaseModel, tmp_path: Path) -> None:
    ref = inspect_adapter(synthetic_lora(base_model.path, tmp_path / "r32", rank=32))
    assert ref.rank == 32
    validate_adapter(ref, base_dir=base_model.path, base_hash=None, max_rank=32)
    with pytest.raises(AdapterError, match="rank 32") as err:
        validate_adapter(ref, base_dir=base_model.path, base_hash=None, max_rank=16)
    assert err.value.hint and "max-lora-rank" in err.value.hint


def test_rank_pattern_raises_the_rank(lora_adapters: list[Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(lora_adapters[0], copy)
    _edit_config(copy, rank_pattern={"q_proj": 64})
    assert inspect_adapter(copy).rank == 64


def test_wrong_in_features_is_another_base(lora_adapters: list[Path], base_model: BaseModel, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(lora_adapters[0], bad)
    weights = bad / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    name = "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"
    assert tensors[name].shape == (8, 576)
    tensors[name] = np.zeros((8, 512), dtype=np.float32)
    save_file(tensors, str(weights))
    ref = inspect_adapter(bad)
    with pytest.raises(AdapterError, match=r"another base model \(expected .*q_proj.lora_A \[8, 576\], got \[8, 512\]\)"):
        validate_adapter(ref, base_dir=base_model.path, base_hash=None, max_rank=16)


def test_shapes_from_config_when_the_base_has_no_safetensors(lora_adapters: list[Path], base_model: BaseModel, tmp_path: Path) -> None:
    base = tmp_path / "config-only"
    base.mkdir()
    config = json.loads((base_model.path / "config.json").read_text())
    (base / "config.json").write_text(json.dumps(config))
    ref = inspect_adapter(lora_adapters[0])
    validate_adapter(ref, base_dir=base, base_hash=None, max_rank=16)
    (base / "config.json").write_text(json.dumps({**config, "intermediate_size": 1024}))
    with pytest.raises(AdapterError, match=r"expected .*down_proj.lora_A \[8, 1024\], got \[8, 1536\]"):
        validate_adapter(ref, base_dir=base, base_hash=None, max_rank=16)


def test_target_module_missing_from_base(base_model: BaseModel, tmp_path: Path) -> None:
    folder = synthetic_lora(base_model.path, tmp_path / "gpt2ish", rank=8, layers=1)
    _edit_config(folder, target_modules=["q_proj", "c_attn"])
    with pytest.raises(AdapterError, match="c_attn"):
        validate_adapter(inspect_adapter(folder), base_dir=base_model.path, base_hash=None, max_rank=16)


def test_base_hash_mismatch(lora_adapters: list[Path], base_model: BaseModel, tmp_path: Path) -> None:
    folder = tmp_path / "trained"
    shutil.copytree(lora_adapters[0], folder)
    (folder / "bonsai_adapter.json").write_text(json.dumps({"base_hash": base_model.content_hash}))
    ok = inspect_adapter(folder)
    assert ok.base_model == base_model.content_hash
    validate_adapter(ok, base_dir=base_model.path, base_hash=base_model.content_hash, max_rank=16)

    (folder / "bonsai_adapter.json").write_text(json.dumps({"base_hash": "f" * 64}))
    other = inspect_adapter(folder)
    with pytest.raises(AdapterError, match="trained on another base"):
        validate_adapter(other, base_dir=base_model.path, base_hash=base_model.content_hash, max_rank=16)
    # an engine that does not know its base's hash cannot tell, and only checks shapes
    validate_adapter(other, base_dir=base_model.path, base_hash=None, max_rank=16)


def test_unsupported_adapters_are_refused(lora_adapters: list[Path], base_model: BaseModel, tmp_path: Path) -> None:
    dora = tmp_path / "dora"
    shutil.copytree(lora_adapters[0], dora)
    _edit_config(dora, use_dora=True)
    with pytest.raises(AdapterError, match="DoRA"):
        validate_adapter(inspect_adapter(dora), base_dir=base_model.path, base_hash=None, max_rank=16)

    saved = tmp_path / "saved"
    shutil.copytree(lora_adapters[0], saved)
    _edit_config(saved, modules_to_save=["lm_head"])
    with pytest.raises(AdapterError, match="modules_to_save|lm_head"):
        validate_adapter(inspect_adapter(saved), base_dir=base_model.path, base_hash=None, max_rank=16)

    ia3 = tmp_path / "ia3"
    shutil.copytree(lora_adapters[0], ia3)
    _edit_config(ia3, peft_type="IA3")
    with pytest.raises(AdapterError, match="not LoRA"):
        inspect_adapter(ia3)


def test_missing_or_broken_folders(lora_adapters: list[Path], tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="does not exist") as err:
        inspect_adapter(tmp_path / "nowhere")
    assert err.value.hint

    no_weights = tmp_path / "no-weights"
    shutil.copytree(lora_adapters[0], no_weights)
    (no_weights / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="no adapter_model.safetensors"):
        inspect_adapter(no_weights)

    broken = tmp_path / "broken"
    shutil.copytree(lora_adapters[0], broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="not a readable safetensors"):
        inspect_adapter(broken)

    bad_json = tmp_path / "bad-json"
    shutil.copytree(lora_adapters[0], bad_json)
    (bad_json / "adapter_config.json").write_text("{")
    with pytest.raises(AdapterError, match="cannot be read"):
        inspect_adapter(bad_json)


def test_registry_ids_are_unique_and_stable(lora_adapters: list[Path], tmp_path: Path) -> None:
    a, b = (inspect_adapter(p) for p in lora_adapters)
    copy = tmp_path / "copy"
    shutil.copytree(lora_adapters[0], copy)
    a_copy = inspect_adapter(copy)

    registry = AdapterRegistry()
    assert a.name not in registry
    id_a = registry.register(a)
    id_b = registry.register(b)
    assert id_a >= 1 and id_b >= 1 and id_a != id_b
    assert registry.register(a) == id_a
    assert registry.register(a_copy) == id_a  # same weights, same id
    assert a.name in registry and b in registry
    assert registry.get(a.name).path == a_copy.path  # the newest path wins, for reloads
    assert registry.id_of(b.name) == id_b
    with pytest.raises(AdapterError, match="not registered"):
        registry.get("lora-0000000000000000")


def test_lora_rank_for(lora_adapters: list[Path], base_model: BaseModel, tmp_path: Path) -> None:
    small = inspect_adapter(lora_adapters[0])
    big = inspect_adapter(synthetic_lora(base_model.path, tmp_path / "r40", rank=40, layers=1))
    assert lora_rank_for([]) == 8
    assert lora_rank_for([small]) == 8
    assert lora_rank_for([small, big]) == 64
    huge = inspect_adapter(synthetic_lora(base_model.path, tmp_path / "r600", rank=600, layers=1))
    with pytest.raises(AdapterError, match="above vLLM's largest"):
        lora_rank_for([huge])


def test_inspector_hashes_a_folder_once_until_its_files_change(lora_adapters: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep inspects the same adapters at every debate start: hashing them each time held the event loop."""
    import asyncio
    import os

    import bonsai.registry.identity as adapters_mod

    calls: list[Path] = []
    real = adapters_mod.inspect_adapter

    def counting(path: Path) -> Any:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(adapters_mod, "inspect_adapter", counting)
    folder = shutil.copytree(lora_adapters[0], tmp_path / "a")
    inspector = AdapterInspector()
    first = inspector.inspect(folder)
    assert inspector.inspect(folder) is first
    assert asyncio.run(inspector.ainspect(folder)) is first
    assert len(calls) == 1

    # new weights, written the way the registry writes them (a new file renamed over the old one)
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, str(folder / "new.safetensors"))
    os.replace(folder / "new.safetensors", weights)
    changed = inspector.inspect(folder)
    assert changed.content_hash != first.content_hash and len(calls) == 2

    # a `current` link moved to another version is another adapter
    other = shutil.copytree(lora_adapters[1], tmp_path / "b")
    link = tmp_path / "current"
    link.symlink_to(folder)
    assert inspector.inspect(link).content_hash == changed.content_hash
    link.unlink()
    link.symlink_to(other)
    assert inspector.inspect(link).content_hash == inspect_adapter(other).content_hash

    # a missing folder is refused every time, never remembered
    for _ in range(2):
        with pytest.raises(AdapterError, match="does not exist"):
            inspector.inspect(tmp_path / "gone")


def test_inspector_hashes_once_for_debates_that_start_together(lora_adapters: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import time

    import bonsai.registry.identity as adapters_mod

    calls: list[Path] = []
    real = adapters_mod.inspect_adapter

    def slow(path: Path) -> Any:
        calls.append(path)
        time.sleep(0.2)  # long enough that every caller arrives while the first is still hashing
        return real(path)

    monkeypatch.setattr(adapters_mod, "inspect_adapter", slow)
    inspector = AdapterInspector()

    async def main() -> list[Any]:
        return await asyncio.gather(*(inspector.ainspect(lora_adapters[0]) for _ in range(20)), inspector.ainspect(tmp_path / "gone"),
                                    return_exceptions=True)

    *refs, missing = asyncio.run(main())
    assert len({r.content_hash for r in refs}) == 1 and all(not isinstance(r, BaseException) for r in refs)
    assert isinstance(missing, AdapterError)
    assert len([c for c in calls if c == lora_adapters[0]]) == 1
