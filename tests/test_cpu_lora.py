"""bonsai's LoRA wrapper for vLLM's CPU worker (bonsai/engine/cpu_lora.py), against the LoRA formula.

The engine tests (test_engine_vllm.py) check the same on the real model: a base request batched beside
adapters that fill every slot answers as it does alone.
"""

from __future__ import annotations

import pytest
import torch
from vllm.lora.layers.utils import LoRAMapping

from bonsai.engine.cpu_lora import MaskedPunicaWrapperCPU, TokenAdapters

SLOTS, RANK, IN = 3, 4, 8
OUTS = (6, 5)  # two slices, as in a merged q/k/v or gate/up projection
#: slot i holds the adapter with LoRA id i + 1; id 0 is "no adapter"
SLOT_IDS: list[int | None] = [1, 2, 3]


def _weights(seed: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(seed)
    a = tuple(torch.randn(SLOTS, 1, RANK, IN, generator=gen) for _ in OUTS)
    b = tuple(torch.randn(SLOTS, 1, out, RANK, generator=gen) for out in OUTS)
    return a, b


def _reference(y: torch.Tensor, x: torch.Tensor, a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...], ids: tuple[int, ...], scale: float) -> torch.Tensor:
    """y + scale · x Aᵀ Bᵀ per token, with the token's adapter; nothing for a token without one."""
    out = y.clone()
    offset = 0
    for a_slice, b_slice in zip(a, b, strict=True):
        width = b_slice.shape[2]
        for token, lora_id in enumerate(ids):
            if lora_id:
                slot = SLOT_IDS.index(lora_id)
                out[token, offset : offset + width] += (x[token] @ a_slice[slot, 0].T * scale) @ b_slice[slot, 0].T
        offset += width
    return out


def _wrapper(ids: tuple[int, ...], requests: tuple[int, ...], prefill: bool) -> MaskedPunicaWrapperCPU:
    wrapper = MaskedPunicaWrapperCPU(max_num_batched_tokens=64, max_batches=8, device="cpu")
    wrapper.update_metadata(LoRAMapping(ids, requests, is_prefill=prefill), SLOT_IDS, SLOTS + 1, 1000)
    return wrapper


CASES = {
    # decode: one token per request
    "decode, no adapter": ((0, 0, 0), (0, 0, 0), False),
    "decode, the last slot's adapter for every token": ((3, 3), (3, 3), False),
    "decode, base beside the last slot's adapter": ((0, 3, 1, 0), (0, 3, 1, 0), False),
    # prefill: a request's prompt tokens share its adapter
    "prefill, base beside the last slot's adapter": ((0, 0, 3, 3, 3), (0, 3), True),
    "prefill, one adapter": ((2, 2, 2), (2,), True),
    "prefill, no adapter": ((0, 0, 0, 0), (0,), True),
}


@pytest.mark.parametrize("case", CASES)
def test_lora_linear_matches_the_formula(case: str) -> None:
    ids, requests, prefill = CASES[case]
    a, b = _weights(seed=len(case))
    x = torch.randn(len(ids), IN, generator=torch.Generator().manual_seed(1))
    y = torch.randn(len(ids), sum(OUTS), generator=torch.Generator().manual_seed(2))
    expected = _reference(y, x, a, b, ids, scale=0.5)

    _wrapper(ids, requests, prefill).add_lora_linear(y, x, a, b, 0.5, OUTS)

    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_shrink_then_expand_through_separate_calls() -> None:
    """The fully sharded layers call add_shrink and add_expand themselves, with their own buffers."""
    ids = (1, 0, 3)
    a, b = _weights(seed=7)
    x = torch.randn(len(ids), IN, generator=torch.Generator().manual_seed(3))
    y = torch.zeros(len(ids), sum(OUTS))
    wrapper = _wrapper(ids, ids, prefill=False)
    buffer = torch.zeros(len(OUTS), len(ids), RANK)
    wrapper.add_shrink(buffer, x, a, 1.0)
    wrapper.add_expand(y, buffer, b, OUTS, offset_start=0)
    torch.testing.assert_close(y, _reference(torch.zeros_like(y), x, a, b, ids, scale=1.0), rtol=1e-5, atol=1e-5)


def test_a_step_is_classified_once_from_its_token_indices() -> None:
    assert TokenAdapters.of(torch.tensor([-1, -1])).kind == "none"
    assert TokenAdapters.of(torch.tensor([], dtype=torch.long)).kind == "none"
    one = TokenAdapters.of(torch.tensor([2, 2, 2]))
    assert (one.kind, one.slot, one.tokens) == ("one", 2, 3)
    mixed = TokenAdapters.of(torch.tensor([-1, 0, 2]))
    assert mixed.kind == "mixed" and mixed.mask is not None
    assert mixed.mask.squeeze(1).tolist() == [False, True, True]
