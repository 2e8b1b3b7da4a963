"""`bonsai debate` with bad input: one clear message, a non-zero exit, nothing stored, and (except for
the unreachable endpoint) no engine ever created: every check runs before start-up."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import yaml

import bonsai.engine.session as session
from bonsai.cli.main import main
from bonsai.personas import default_personas_dir
from bonsai.store.transcripts import TranscriptStore

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_lora(base: Path, out: Path, *, seed: int, rank: int = 8, scale: float = 0.02) -> Path:
    """A real PEFT LoRA adapter (the pattern of tests/conftest.py's make_lora)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

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


@pytest.fixture(scope="module")
def rank32_adapter(base_model, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    return make_lora(base_model.path, tmp_path_factory.mktemp("rank32") / "lora", seed=7, rank=32)


def foreign_adapter(folder: Path) -> Path:
    """A well-formed LoRA folder whose matrices fit a base with hidden size 64, not 576."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"})
    )
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file(
        {f"{prefix}.lora_A.weight": np.zeros((8, 64), np.float32), f"{prefix}.lora_B.weight": np.zeros((64, 8), np.float32)},
        str(folder / "adapter_model.safetensors"),
    )
    return folder


@pytest.fixture
def env(tmp_path: Path, base_model, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Paths for one run, and a guard that fails the test if an engine is created."""
    for k in ("VLLM_LOGGING_LEVEL", "TRANSFORMERS_VERBOSITY"):  # main() setdefaults these
        monkeypatch.setenv(k, os.environ.get(k, "WARNING"))
    created: list[object] = []

    def no_engine(config):  # type: ignore[no-untyped-def]
        created.append(config)
        raise AssertionError("an engine was created before the input was validated")

    monkeypatch.setattr(session, "create_engine", no_engine)
    personas = tmp_path / "personas"
    shutil.copytree(default_personas_dir(), personas, ignore=shutil.ignore_patterns("__*", "*.py"))

    class Env:
        home = tmp_path / "home"
        store = tmp_path / "store" / "t.sqlite"
        personas_dir = personas
        base = base_model.path

        def set_adapter(self, persona: str, adapter: str) -> None:
            path = personas / f"{persona}.yaml"
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            data["adapter"] = adapter
            path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")

        def run(self, *args: str, personas_dir: bool = False) -> int:
            argv = ["--home", str(self.home), "debate", *args, "--store", str(self.store), "--base", str(self.base)]
            if personas_dir:
                argv += ["--personas-dir", str(self.personas_dir)]
            return main(argv)

    return Env()


def assert_clean_failure(env, capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> str:  # type: ignore[no-untyped-def]
    cap = capsys.readouterr()
    assert code != 0
    assert cap.out == ""
    errors = [line for line in cap.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, cap.err
    assert "Traceback" not in cap.err
    for needle in needles:
        assert needle in cap.err, cap.err
    # nothing stored: no store, no checkpoints
    if env.store.exists():
        with TranscriptStore(env.store) as store:
            assert store.list_debates() == []
    assert not env.store.exists()
    assert not (env.home / "checkpoints.sqlite").exists()
    assert not (env.home / "transcripts.sqlite").exists()
    return cap.err


def test_unknown_persona(env, capsys) -> None:  # type: ignore[no-untyped-def]
    code = env.run("Tea beats coffee", "--personas", "advocate,nobody")
    err = assert_clean_failure(env, capsys, code, "unknown persona 'nobody'", "hint: known personas:")
    assert code == 2 and "skeptic" in err


def test_malformed_persona_yaml(env, capsys) -> None:  # type: ignore[no-untyped-def]
    bad = env.personas_dir / "broken.yaml"
    bad.write_text("name: broken\nteam: [A\n", encoding="utf-8")
    code = env.run("Tea beats coffee", personas_dir=True)
    assert code == 2
    assert_clean_failure(env, capsys, code, str(bad), "not valid YAML")


def test_unknown_key_in_persona_yaml(env, capsys) -> None:  # type: ignore[no-untyped-def]
    path = env.personas_dir / "advocate.yaml"
    path.write_text(path.read_text(encoding="utf-8") + "voice: loud\n", encoding="utf-8")
    code = env.run("Tea beats coffee", personas_dir=True)
    assert code == 2
    assert_clean_failure(env, capsys, code, "advocate.yaml", "voice: unknown key")


@pytest.mark.parametrize("motion", ["", "   ", "\n\t"])
def test_empty_motion(env, capsys, motion: str) -> None:  # type: ignore[no-untyped-def]
    code = env.run(motion)
    assert code == 2
    assert_clean_failure(env, capsys, code, "the motion is empty")


def test_no_motion(env, capsys) -> None:  # type: ignore[no-untyped-def]
    code = env.run()
    assert code == 2
    assert_clean_failure(env, capsys, code, "no motion given", "--resume")


def test_unknown_format(env, capsys) -> None:  # type: ignore[no-untyped-def]
    code = env.run("Tea beats coffee", "--format", "parliamentary")
    assert code == 2
    assert_clean_failure(env, capsys, code, "unknown debate format 'parliamentary'", "quick", "standard")


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--rounds", "0", "--rounds must be between 1 and 50, not 0"),
        ("--candidates", "-1", "--candidates must be between 1 and 32, not -1"),
        ("--max-tokens", "0", "--max-tokens must be between 1 and 8192, not 0"),
        ("--max-model-len", "0", "--max-model-len must be at least 256, not 0"),
        ("--max-lora-rank", "-4", "--max-lora-rank must be at least 1, not -4"),
    ],
)
def test_out_of_range_settings(env, capsys, flag: str, value: str, message: str) -> None:  # type: ignore[no-untyped-def]
    code = env.run("Tea beats coffee", flag, value)
    assert code == 2
    assert_clean_failure(env, capsys, code, message)


def test_translator_seated(env, capsys) -> None:  # type: ignore[no-untyped-def]
    code = env.run("Tea beats coffee", "--personas", "advocate,translator")
    assert code == 2
    assert_clean_failure(env, capsys, code, "'translator' is a translator")


def test_openai_engine_without_endpoint(env, capsys) -> None:  # type: ignore[no-untyped-def]
    code = env.run("Tea beats coffee", "--engine", "openai")
    assert code == 2
    assert_clean_failure(env, capsys, code, "--engine openai needs --endpoint")


def test_adapter_directory_missing(env, capsys) -> None:  # type: ignore[no-untyped-def]
    env.set_adapter("advocate", "/nonexistent/bonsai-adapter")
    code = env.run("Tea beats coffee", personas_dir=True)
    assert code == 2
    assert_clean_failure(env, capsys, code, "/nonexistent/bonsai-adapter", "does not exist", "advocate")


def test_registry_version_missing(env, capsys) -> None:  # type: ignore[no-untyped-def]
    env.set_adapter("advocate", "registry:advocate@v9")
    code = env.run("Tea beats coffee", personas_dir=True)
    assert code == 2
    assert_clean_failure(env, capsys, code, "advocate@v9 does not exist")


def test_folder_that_is_not_an_adapter(env, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "empty-adapter").mkdir()
    env.set_adapter("skeptic", str(tmp_path / "empty-adapter"))
    code = env.run("Tea beats coffee", personas_dir=True)
    assert code == 2
    assert_clean_failure(env, capsys, code, "has no adapter_config.json")


def test_adapter_for_another_base(env, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = foreign_adapter(tmp_path / "foreign")
    env.set_adapter("advocate", str(folder))
    code = env.run("Tea beats coffee", personas_dir=True)
    assert code == 2
    assert_clean_failure(env, capsys, code, "trained for another base model", "[8, 576]", "[8, 64]", "hint:")


@pytest.mark.slow
def test_adapter_rank_above_max_lora_rank(env, capsys, rank32_adapter: Path) -> None:  # type: ignore[no-untyped-def]
    env.set_adapter("skeptic", str(rank32_adapter))
    code = env.run("Tea beats coffee", "--max-lora-rank", "16", personas_dir=True)
    assert code == 2
    assert_clean_failure(env, capsys, code, "rank 32", "max_lora_rank 16", "--max-lora-rank")


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint(env, capsys, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from bonsai.engine import create_engine

    monkeypatch.setattr(session, "create_engine", create_engine)  # this one does create an engine
    url = f"http://127.0.0.1:{_closed_port()}"
    code = env.run("Tea beats coffee", "--engine", "openai", "--endpoint", url)
    assert code == 3
    cap = capsys.readouterr()
    errors = [line for line in cap.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and url in errors[0], cap.err
    assert "Traceback" not in cap.err and cap.out == ""
    assert not env.store.exists()
    assert not (env.home / "checkpoints.sqlite").exists()
