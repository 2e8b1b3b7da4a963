"""A GGUF's control tokens, made special in the tokenizer transformers builds from it.

transformers' GGUF loader turns the GGUF's token list into a tokenizer, but for some architectures
(Gemma's converter) it drops ``tokenizer.ggml.token_type``: the turn markers ``<start_of_turn>`` and
``<end_of_turn>`` then stay plain vocabulary, a rendered chat prompt is split into their characters,
and the model, never having seen them that way, echoes fragments of them. llama.cpp reads the same
types and matches CONTROL tokens as single tokens; this does the same on the prepared tokenizer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bonsai.errors import ModelError

#: ``tokenizer.ggml.token_type`` values (llama.cpp's ``llama_token_type``): 3 is CONTROL
CONTROL = 3
#: Gemma reserves thousands of ``<unusedN>`` control slots: no text or template ever holds them, and
#: registering them would only grow tokenizer.json and make user text that spells one a control token
_UNUSED = re.compile(r"<unused\d+>")
#: Markers that end a model's turn (llama.cpp's end-of-generation list, the ones a chat template
#: writes): generation must stop on them as on EOS, or a model runs on into a turn of its own
END_OF_TURN = frozenset({"<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end|>", "<|eom_id|>"})


def control_tokens(gguf: Path) -> dict[int, str]:
    """``{id: text}`` of the GGUF's CONTROL tokens other than ``<unusedN>`` slots (empty when it has no
    token types)."""
    import numpy as np
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(gguf))
    except (ValueError, OSError) as exc:
        raise ModelError(f"cannot read {gguf} as GGUF: {exc}", "pass a .gguf file") from None
    types_field = reader.fields.get("tokenizer.ggml.token_type")
    tokens_field = reader.fields.get("tokenizer.ggml.tokens")
    if types_field is None or tokens_field is None:
        return {}
    # array fields keep one part per element; ``data`` indexes the element parts
    types = np.concatenate([types_field.parts[i] for i in types_field.data]) if types_field.data else np.empty(0)
    found: dict[int, str] = {}
    for idx in np.flatnonzero(types == CONTROL):
        text = bytes(tokens_field.parts[tokens_field.data[idx]]).decode("utf-8")
        if not _UNUSED.fullmatch(text):
            found[int(idx)] = text
    return found


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
