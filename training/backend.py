"""Which training backend is installed, and importing Unsloth early enough for its patches to apply.

Kept free of heavy imports on purpose: Unsloth must be imported before transformers, peft and trl,
so the command line calls :func:`preload_backend` from here before it imports the rest of ``training``
(``training.train`` pulls in transformers through its metrics callback).
"""

from __future__ import annotations

import importlib.util


def unsloth_available() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def preload_backend(requested: str = "auto") -> None:
    """Import Unsloth before anything imports trl or transformers (CUDA only; a no-op elsewhere).

    Only for a recipe that may train with it (``requested`` auto or unsloth): importing Unsloth patches
    TRL's trainers in place for every caller, and TRL's GRPO then expects an Unsloth model (a
    ``backend: peft`` GRPO run on a GPU with Unsloth installed failed with "'LlamaForCausalLM' object has
    no attribute 'for_training'", docs/benchmarks-train.md).
    """
    if requested in ("auto", "unsloth") and unsloth_available():
        import torch

        # NVML-based check: it does not initialise CUDA in this process (vLLM may fork later)
        if torch.cuda.is_available():
            import unsloth  # noqa: F401
