"""The tokenizer transformers builds from a GGUF, corrected from the GGUF's metadata: read from a tiny GGUF
written here (the real Gemma GGUF is tested in test_gemma_base.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bonsai.errors import ModelError
from bonsai.model.gguf_tokens import (
    BYTE, CONTROL, GgufVocab, control_tokens, end_of_turn_ids, read_vocab, rebuilds_as_bpe, register_control_tokens, spm_bpe_model,
)

NORMAL, USER_DEFINED = 1, 4
# a Gemma-like vocabulary: specials, turn markers, <unusedN> slots, a byte token, pieces; (text, type)
VOCAB = [("<pad>", CONTROL), ("<eos>", CONTROL), ("<bos>", CONTROL), ("<unk>", CONTROL), ("<unused0>", CONTROL),
         ("<start_of_turn>", CONTROL), ("<end_of_turn>", CONTROL), ("<unused1>", CONTROL), ("\n", USER_DEFINED), ("<0x41>", BYTE),
         ("user", NORMAL), ("us", NORMAL), ("er", NORMAL), ("Hi", NORMAL), ("▁", NORMAL)]
VOCAB += [(c, NORMAL) for c in "<>_usertHiofnd"]
TOKENS = [text for text, _ in VOCAB]
ID = {text: i for i, text in enumerate(TOKENS)}
# SentencePiece-BPE scores, as Gemma's: minus the rank, so earlier tokens merge first
SCORES = [-1000.0 if kind != NORMAL else -float(i) for i, (_, kind) in enumerate(VOCAB)]
TURN = "<start_of_turn>user\nHi<end_of_turn>"


def _write_gguf(path: Path, *, with_types: bool = True) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(TOKENS)
    writer.add_token_scores(SCORES)
    if with_types:
        writer.add_token_types([kind for _, kind in VOCAB])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _converted_tokenizer() -> Any:
    """What transformers' Gemma GGUF converter builds: a Unigram over the scores, in a GemmaTokenizer
    (whose markers are plain vocabulary, and which rebuilds a BPE from tokenizer.json on load)."""
    from tokenizers.models import Unigram
    from transformers import GemmaTokenizer

    tok = GemmaTokenizer(vocab=dict(ID), merges=[])
    tok.backend_tokenizer.model = Unigram(list(zip(TOKENS, SCORES)), unk_id=ID["<unk>"], byte_fallback=True)
    return tok


def _specials(tok: Any) -> set[str]:
    return {t.content for t in tok.added_tokens_decoder.values() if t.special}


def _ids(tok: Any, text: str = TURN) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


def test_the_vocabulary_and_its_control_tokens_are_read_without_the_unused_slots(tmp_path: Path) -> None:
    vocab = read_vocab(_write_gguf(tmp_path / "t.gguf"))
    assert vocab.tokens == TOKENS and vocab.scores == SCORES and len(vocab.types) == len(TOKENS)
    found = control_tokens(vocab)
    assert found == {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 5: "<start_of_turn>", 6: "<end_of_turn>"}
    assert end_of_turn_ids(found) == [6]
    assert control_tokens(read_vocab(_write_gguf(tmp_path / "untyped.gguf", with_types=False))) == {}


def test_a_file_that_is_not_gguf_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf at all, just some bytes")
    with pytest.raises(ModelError, match="cannot read .* as GGUF"):
        read_vocab(bad)


def test_turn_markers_become_single_tokens_at_their_own_ids(tmp_path: Path) -> None:
    tok = _converted_tokenizer()
    assert _specials(tok) == {"<pad>", "<eos>", "<bos>", "<unk>", "<mask>"}  # the markers are plain vocabulary
    size = len(tok)
    added = register_control_tokens(tok, control_tokens(read_vocab(_write_gguf(tmp_path / "t.gguf"))))
    assert added == ["<start_of_turn>", "<end_of_turn>"]  # the four named specials were special already
    assert len(tok) == size
    ids = _ids(tok)
    assert ids[0] == ID["<start_of_turn>"] and ids[-1] == ID["<end_of_turn>"] and ids.count(ID["<start_of_turn>"]) == 1
    assert _specials(tok) == {"<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"}  # no <unusedN>
    assert register_control_tokens(tok, {5: "<start_of_turn>"}) == []  # idempotent


def test_a_control_token_at_another_id_is_refused() -> None:
    tok = _converted_tokenizer()
    with pytest.raises(ModelError, match="'<end_of_turn>' is id 9"):
        register_control_tokens(tok, {9: "<end_of_turn>"})
    with pytest.raises(ModelError, match="is id 400 but the tokenizer built from it has None"):
        register_control_tokens(tok, {400: "<missing>"})


def test_the_saved_tokenizer_keeps_its_words_after_the_bpe_merges(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    vocab = read_vocab(_write_gguf(tmp_path / "t.gguf"))
    tok = _converted_tokenizer()
    register_control_tokens(tok, control_tokens(vocab))
    assert rebuilds_as_bpe(tok)
    tok.save_pretrained(tmp_path / "unigram")
    chars = _ids(AutoTokenizer.from_pretrained(str(tmp_path / "unigram")))
    assert ID["user"] not in chars and ID["u"] in chars  # the bug: reloaded as a BPE without merges, one token a character

    tok.backend_tokenizer.model = spm_bpe_model(vocab, "<unk>")
    assert not rebuilds_as_bpe(tok)
    want = [ID["<start_of_turn>"], ID["user"], ID["\n"], ID["Hi"], ID["<end_of_turn>"]]
    assert _ids(tok) == want
    assert _ids(tok, "A") == [ID["<0x41>"]]  # byte fallback for a character the pieces lack
    tok.save_pretrained(tmp_path / "bpe")
    again = AutoTokenizer.from_pretrained(str(tmp_path / "bpe"))
    assert _ids(again) == want and len(again) == len(tok)


def test_merges_follow_the_scores_and_never_spell_a_control_token() -> None:
    tokens = ["<unk>", "a", "b", "c", "ab", "bc", "abc", "<", ">", "<a>"]
    kinds = [CONTROL, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL, CONTROL]
    ranked = GgufVocab(tokens=tokens, types=kinds, scores=[0, -1, -2, -3, -9, -4, -5, -6, -7, 0])  # "bc" outranks "ab"
    from tokenizers import Tokenizer

    bpe = Tokenizer(spm_bpe_model(ranked, "<unk>"))
    assert bpe.encode("abc").ids == [6] and bpe.encode("ab").ids == [4] and bpe.encode("abcab").ids == [6, 4]
    assert bpe.encode("<a>").ids == [7, 1, 8]  # the control token <a> is matched as an added token, never merged
    with pytest.raises(ModelError, match="no tokenizer.ggml.scores"):
        spm_bpe_model(GgufVocab(tokens=tokens, types=kinds, scores=[]), "<unk>")
