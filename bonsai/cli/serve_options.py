"""The server's options and the plan read from them, shared by ``bonsai serve`` and ``bonsai engine start``.

A module of their own so that neither command imports the other for them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bonsai.engine.auth import API_KEY_ENV, env_api_key
from bonsai.errors import ConfigError
from bonsai.serve.server import DEFAULT_HOST, DEFAULT_PORT, ServePlan, plan_serve


def add_serve_options(p: argparse.ArgumentParser) -> None:
    """The server's options, shared by ``bonsai serve`` and ``bonsai engine start``."""
    p.add_argument("--base", help="a local model folder or a cached hub id instead of the embedded model")
    p.add_argument(
        "--chat-template", type=Path, default=None, metavar="FILE",
        help="Jinja chat template for a base without one of its own (passed to vLLM's --chat-template)",
    )
    p.add_argument("--personas-dir", type=Path, default=None, help="folder of persona YAML files (default: the shipped personas)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=None, help=f"port to bind (default {DEFAULT_PORT})")
    p.add_argument(
        "--api-key", default=None, metavar="KEY",
        help=f"clients must send this key (vLLM's own check); required for a --host other machines can reach (default: ${API_KEY_ENV}, "
        "which keeps the key out of the process list)",
    )
    p.add_argument(
        "--allow-any-adapter-path", action="store_true",
        help="let clients load adapters at run time from any folder or hub id (default: only folders under $BONSAI_HOME)",
    )
    p.add_argument("--max-model-len", type=int, default=4096, help="context length in tokens (default 4096)")
    p.add_argument("--max-lora-rank", type=int, default=None, help="largest adapter rank servable (default: the adapters', at least 16)")
    p.add_argument("--max-loras", type=int, default=None, help="adapters in one batch (default: the number of adapters, at least 4)")
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="KV cache size in GiB (default 1)")
    p.add_argument(
        "--gpu-memory-utilization", type=float, default=None, metavar="SHARE",
        help="share of the GPU vLLM may claim (default: what is free at start, at most 0.92; ignored on CPU)",
    )
    p.add_argument("--dtype", default="auto", help="weights dtype (default auto: float32 on CPU, as the adapters were checked against; bfloat16 on a GPU)")
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="PERSONA=DIR",
        help="serve DIR as PERSONA's adapter (adds a persona or overrides its `adapter:`); repeatable",
    )
    p.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for the server to be healthy (default 600)")
    p.add_argument("--json", action="store_true", help="print the endpoint and the persona -> adapter-name map as JSON once healthy")
    p.add_argument("--dry-run", action="store_true", help="check the adapters and print the command instead of running it")


def plan_from_args(args: argparse.Namespace, home: Path) -> ServePlan:
    return plan_serve(
        home,
        base=args.base,
        personas_dir=args.personas_dir,
        host=args.host,
        port=args.port or DEFAULT_PORT,
        max_model_len=args.max_model_len,
        max_lora_rank=args.max_lora_rank,
        max_loras=args.max_loras,
        extra_adapters=_parse_adapters(args.adapter),
        kv_cache_gib=args.kv_cache_gib,
        dtype=args.dtype,
        gpu_memory_utilization=args.gpu_memory_utilization,
        chat_template=args.chat_template,
        api_key=args.api_key or env_api_key(),
        allow_any_adapter_path=args.allow_any_adapter_path,
    )


def _parse_adapters(items: list[str]) -> dict[str, Path]:
    adapters: dict[str, Path] = {}
    for item in items:
        persona, sep, folder = item.partition("=")
        if not sep or not persona or not folder:
            raise ConfigError(f"--adapter {item!r} is not PERSONA=DIR", "for example: --adapter advocate=./adapters/advocate-v2")
        adapters[persona.strip()] = Path(folder)
    return adapters
