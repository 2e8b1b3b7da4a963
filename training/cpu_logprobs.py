"""DPO, SFT and GRPO on CPU: a plain-PyTorch stand-in for TRL's Triton log-probability kernel.

TRL 1.15's ``DPOTrainer``, ``SFTTrainer`` and ``GRPOTrainer`` always compute per-token log-probabilities through a fused
LM head whose inner kernel is Triton, which has no CPU driver, so they fail on their first step on a
CPU machine (ORPO does not use it). The stand-in computes the same five per-token outputs with
ordinary tensor ops (autograd does the backward). It is swapped in only around a CPU run and restored
afterwards; on CUDA TRL's kernel is used as it is. The name patched is private to TRL:
``trl==1.15.0`` is pinned, and ``tests/test_train.py`` and ``tests/test_grpo.py`` train DPO, SFT and GRPO steps on CPU, so a TRL
upgrade that moves it fails a test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

OPTIONAL_OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
#: tokens per chunk, so a long batch never holds more than this many rows of full-vocabulary logits
TOKEN_CHUNK = 1024


class TorchChunkedLogProbs:
    """Same call as ``trl.kernels.ChunkedLogProbFunction.apply``."""

    @staticmethod
    def apply(
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        temperature: float,
        chunk_size: int,
        final_logit_softcapping: float | None = None,
        logit_scale: float = 1.0,
        outputs: tuple[str, ...] = OPTIONAL_OUTPUTS,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("log_probs", *OPTIONAL_OUTPUTS)}
        for start in range(0, max(1, hidden.shape[0]), TOKEN_CHUNK):
            h = hidden[start : start + TOKEN_CHUNK].float()
            t = targets[start : start + TOKEN_CHUNK]
            z = h @ weight.float().t()
            if bias is not None:
                z = z + bias.float()
            z = z * logit_scale
            if final_logit_softcapping:
                z = final_logit_softcapping * torch.tanh(z / final_logit_softcapping)
            z = z / temperature
            log_p = torch.log_softmax(z, dim=-1)
            parts["log_probs"].append(log_p.gather(-1, t[:, None]).squeeze(-1))
            if "entropy" in outputs:
                parts["entropy"].append(-(log_p.exp() * log_p).sum(-1))
            if "log_sum_sq_probs" in outputs:
                parts["log_sum_sq_probs"].append(torch.logsumexp(2 * log_p, dim=-1).detach())
            if "mean_logits" in outputs:
                parts["mean_logits"].append(z.mean(-1).detach())
            if "is_top1" in outputs:
                parts["is_top1"].append(z.argmax(-1) == t)
        log_probs = torch.cat(parts["log_probs"])
        extra = [torch.cat(parts[k]) if k in outputs else None for k in OPTIONAL_OUTPUTS]
        return (log_probs, *extra)  # type: ignore[return-value]


@contextlib.contextmanager
def torch_logprobs() -> Iterator[None]:
    """Use :class:`TorchChunkedLogProbs` inside TRL's fused LM head for the duration of the block."""
    from trl.trainer import utils as trl_utils

    previous = trl_utils._ChunkedLogProbFunction
    trl_utils._ChunkedLogProbFunction = TorchChunkedLogProbs
    try:
        yield
    finally:
        trl_utils._ChunkedLogProbFunction = previous
