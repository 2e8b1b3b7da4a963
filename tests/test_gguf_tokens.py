"""A GGUF's CONTROL tokens, read from a tiny GGUF written here, become special tokens at their own ids
(the real Gemma GGUF is tested in test_gemma_base.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bonsai.errors import ModelError
from bonsai.model.gguf_tokens import CONTROL, control_tokens, end_of_turn_ids, register_control_tokens

# a Gemma-like vocabulary: specials, turn markers, <unusedN> slots, single characters
TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<unused0>", "<start_of_turn>", "<end_of_turn>", "<unused1>",
          "<", ">", "s", "t", "a", "r", "_", "o", "f", "u", "n", "e", "d", "H", "i", "\n", "<b>"]
NORMAL, USER_DEFINED = 1, 4


def _types() -> list[int]:
    return [CONTROL if t.startswith("<") and t.endswith(">") and len(t) > 1 and t != "<b>" else USER_DEFINED if t == "<b>" else NORMAL for t in TOKENS]


def _write_gguf(path: Path, *, with_types: bool = True) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(TOKENS)
    if with_types:
        writer.add_token_types(_types())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _tokenizer() -> object:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = Tokenizer(models.WordPiece({t: i for i, t in enumerate(TOKENS)}, unk_token="<unk>", max_input_chars_per_word=100))
    model.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one character a token, as Gemma's GGUF tokenizer split the markers
    return PreTrainedTokenizerFast(tokenizer_object=model, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def test_control_tokens_are_read_without_the_unused_slots(tmp_path: Path) -> None:
    found = control_tokens(_write_gguf(tmp_path / "t.gguf"))
    assert found == {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 5: "<start_of_turn>", 6: "<end_of_turn>"}
    assert end_of_turn_ids(found) == [6]
    assert control_tokens(_write_gguf(tmp_path / "untyped.gguf", with_types=False)) == {}


def test_a_file_that_is_not_gguf_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf at all, just some bytes")
    with pytest.raises(ModelError, match="cannot read .* as GGUF"):
        control_tokens(bad)


def test_turn_markers_become_single_tokens_at_their_own_ids(tmp_path: Path) -> None:
    tok = _tokenizer()
    text = "<start_of_turn>user\nHi<end_of_turn>"
    before = tok(text, add_special_tokens=False).input_ids  # type: ignore[operator]
    assert len(before) > 20  # split into characters, as transformers' Gemma GGUF tokenizer did
    size = len(tok)  # type: ignore[arg-type]
    added = register_control_tokens(tok, control_tokens(_write_gguf(tmp_path / "t.gguf")))
    assert added == ["<start_of_turn>", "<end_of_turn>"]  # the four named specials were special already
    assert len(tok) == size  # type: ignore[arg-type]
    assert tok(text, add_special_tokens=False).input_ids == [5, 17, 10, 19, 13, 23, 21, 22, 6]  # type: ignore[operator]
    assert tok("<unused0>", add_special_tokens=False).input_ids[0] != 4  # type: ignore[operator]
    assert register_control_tokens(tok, {5: "<start_of_turn>"}) == []  # idempotent


def test_a_control_token_at_another_id_is_refused() -> None:
    tok = _tokenizer()
    with pytest.raises(ModelError, match="'<end_of_turn>' is id 9"):
        register_control_tokens(tok, {9: "<end_of_turn>"})
    with pytest.raises(ModelError, match="is id 40 but the tokenizer built from it has None"):
        register_control_tokens(tok, {40: "<missing>"})
