"""Corrections to the tokenizer transformers builds from a GGUF, from the GGUF's own tokenizer metadata.

transformers' Gemma GGUF converter drops ``tokenizer.ggml.token_type``: the turn markers
``<start_of_turn>`` and ``<end_of_turn>`` stay plain vocabulary and a rendered chat prompt is split into
their characters (the model, never having seen them that way, echoes fragments of them). llama.cpp
reads the same types and matches CONTROL tokens as single tokens; ``register_control_tokens`` does that.

The same converter builds a Unigram model from the SentencePiece-BPE scores, but the saved folder's
tokenizer class (GemmaTokenizer) rebuilds a BPE from tokenizer.json's vocabulary and merges on load:
with no merges, every word came back split into single characters. ``spm_bpe_model`` gives it the
merges, ranked by the GGUF's scores as SentencePiece and llama.cpp rank them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bonsai.errors import ModelError

#: ``tokenizer.ggml.token_type`` values (llama.cpp's ``llama_token_type``)
CONTROL, UNUSED, BYTE = 3, 5, 6
#: Gemma reserves thousands of ``<unusedN>`` control slots: no text or template ever holds them, and
#: registering them would only grow tokenizer.json and make user text that spells one a control token
_UNUSED = re.compile(r"<unused\d+>")
#: Markers that end a model's turn (llama.cpp's end-of-generation list, the ones a chat template
#: writes): generation must stop on them as on EOS, or a model runs on into a turn of its own
END_OF_TURN = frozenset({"<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end|>", "<|eom_id|>"})


@dataclass(frozen=True)
class GgufVocab:
    """The GGUF's ``tokenizer.ggml.*`` arrays; ``types``/``scores`` are empty when it has none."""

    tokens: list[str]
    types: list[int]
    scores: list[float]


def read_vocab(gguf: Path) -> GgufVocab:
    """The token list, token types and scores of a GGUF file (about 10 s for Gemma's 262k tokens)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(gguf))
    except (ValueError, OSError) as exc:
        raise ModelError(f"cannot read {gguf} as GGUF: {exc}", "pass a .gguf file") from None

    def array(key: str) -> list[Any]:
        field = reader.fields.get(key)
        # array fields keep one part per element; ``data`` indexes the element parts
        return [] if field is None else [field.parts[i] for i in field.data]

    tokens = [bytes(part).decode("utf-8") for part in array("tokenizer.ggml.tokens")]
    types = [int(part[0]) for part in array("tokenizer.ggml.token_type")]
    scores = [float(part[0]) for part in array("tokenizer.ggml.scores")]
    return GgufVocab(tokens=tokens, types=types if len(types) == len(tokens) else [], scores=scores if len(scores) == len(tokens) else [])


def control_tokens(vocab: GgufVocab) -> dict[int, str]:
    """``{id: text}`` of the GGUF's CONTROL tokens other than ``<unusedN>`` slots (empty when it has no
    token types)."""
    return {i: text for i, (text, kind) in enumerate(zip(vocab.tokens, vocab.types)) if kind == CONTROL and not _UNUSED.fullmatch(text)}


def register_control_tokens(tokenizer: Any, tokens: dict[int, str]) -> list[str]:
    """Make ``tokens`` special added tokens of ``tokenizer`` at the ids they already have; returns the
    ones that were not special yet. Ids and vocabulary size stay as they were (the embedding rows are
    the model's): a token missing from the vocabulary, or at another id, is a ModelError."""
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    wrong = {text: (tid, vocab.get(text)) for tid, text in tokens.items() if vocab.get(text) != tid}
    if wrong:
        text, (tid, got) = next(iter(wrong.items()))
        raise ModelError(f"the GGUF's control token {text!r} is id {tid} but the tokenizer built from it has {got}",
                         "transformers' GGUF loader read this tokenizer differently; prepare from another GGUF")
    special = set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    new = [text for text in tokens.values() if text not in special]
    if not new:
        return []
    size = len(tokenizer)
    tokenizer.add_tokens([AddedToken(text, special=True, normalized=False) for text in new], special_tokens=True)
    vocab = tokenizer.get_vocab()
    moved = [text for tid, text in tokens.items() if vocab.get(text) != tid]
    if len(tokenizer) != size or moved:
        raise ModelError(f"registering the GGUF's control tokens changed the tokenizer ({size} -> {len(tokenizer)} tokens, moved: {moved})",
                         "report this: the prepared model would not match its embeddings")
    return new


def end_of_turn_ids(tokens: dict[int, str]) -> list[int]:
    """Ids among ``tokens`` that end a model turn (see ``END_OF_TURN``), in id order."""
    return sorted(tid for tid, text in tokens.items() if text in END_OF_TURN)


def rebuilds_as_bpe(tokenizer: Any) -> bool:
    """Whether the saved tokenizer would come back as another model: a Unigram backend (transformers'
    Gemma GGUF converter) in a class that rebuilds a BPE from tokenizer.json on load (GemmaTokenizer)."""
    model = getattr(type(tokenizer), "model", None)
    return type(tokenizer.backend_tokenizer.model).__name__ == "Unigram" and getattr(model, "__name__", None) == "BPE"


def spm_bpe_model(vocab: GgufVocab, unk_token: str) -> Any:
    """A byte-fallback BPE over the GGUF's tokens at their ids, merging the pair whose joined token has
    the best score first (SentencePiece BPE, as llama.cpp tokenizes an SPM GGUF)."""
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import generate_merges

    if not vocab.scores:
        raise ModelError("the GGUF has no tokenizer.ggml.scores to rank BPE merges by", "prepare from a GGUF with a complete tokenizer")
    ids: dict[str, int] = {}
    for i, token in enumerate(vocab.tokens):
        # as transformers' converter does: the normalizer turns spaces into "▁", so a run of spaces is a run of "▁"
        ids.setdefault("▁" * len(token) if token and not token.strip(" ") else token, i)
    scores = {token: vocab.scores[i] for token, i in ids.items()}
    # control, unused and byte tokens are never spelled out of pieces: no merge may produce them
    skip = {token for token, kind in zip(vocab.tokens, vocab.types) if kind in (CONTROL, UNUSED, BYTE)}
    merges = generate_merges(ids, scores, skip_tokens=skip)
    return BPE(vocab=ids, merges=merges, unk_token=unk_token, fuse_unk=True, byte_fallback=True, dropout=None)
