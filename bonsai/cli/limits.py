"""Ranges of the numeric command-line options, checked once for every command before it runs.

One table instead of a check in each command: an option keeps the same meaning (and the same range)
wherever it appears, and a new command gets the checks for free. Options a command does not have are
skipped; an unset option (None) keeps its default.
"""

from __future__ import annotations

import argparse
import math

from bonsai.errors import ConfigError

#: dest -> (lowest allowed, highest allowed, the lowest is allowed itself)
LIMITS: dict[str, tuple[float, float | None, bool]] = {
    "rounds": (1, 50, True),
    "candidates": (1, 32, True),
    "max_tokens": (1, 8192, True),
    "translation_max_tokens": (1, 8192, True),
    "max_model_len": (256, None, True),
    "max_lora_rank": (1, None, True),
    "max_loras": (1, None, True),
    "max_num_seqs": (1, None, True),
    "kv_cache_gib": (0, None, False),
    "concurrency": (1, 4096, True),
    "retries": (0, 50, True),
    "budget_tokens": (1, None, True),
    "budget_time": (0, None, False),
    "tokens_per_s": (0, None, False),
    "ray_workers": (1, None, True),
    "bootstrap": (1, 1_000_000, True),
    "port": (1, 65535, True),
    "generations": (1, None, True),
    "max_steps": (1, None, True),
    "max_motions": (1, None, True),
    "eval_max_motions": (1, None, True),
    "replay_delay": (0, None, True),
    "start_timeout": (0, None, False),
    "max_length": (1, None, True),
}


def check_numeric_options(args: argparse.Namespace) -> None:
    """Raise one ConfigError naming the first option out of its range (NaN and infinity included)."""
    for dest, (low, high, low_ok) in LIMITS.items():
        value = getattr(args, dest, None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # absent, unset, or a same-named option of another kind (a list of ids, say)
        flag = "--" + dest.replace("_", "-")
        if not math.isfinite(value):
            raise ConfigError(f"{flag} must be a finite number, not {value}", f"see `bonsai {args.command} --help`")
        if value < low or (value == low and not low_ok) or (high is not None and value > high):
            if high is not None:
                want = f"between {low:g} and {high:g}"
            else:
                want = f"at least {low:g}" if low_ok else f"more than {low:g}"
            raise ConfigError(f"{flag} must be {want}, not {value:g}", f"see `bonsai {args.command} --help`")
