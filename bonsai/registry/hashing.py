"""Every hash the registry takes of an adapter's files goes through :func:`feed`, one read of a file.

An adapter of an 8B model is ~84 MB: reading it costs real time, so callers hash each file once and
pass what they learnt on (see :func:`bonsai.registry.resolve.open_version`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from bonsai.registry.peft import canonical_config


def feed(h: Any, path: Path) -> None:
    """Read ``path`` into the hash ``h``, a MiB at a time."""
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    feed(h, path)
    return h.hexdigest()


def content_hash(config: dict[str, Any], weights: Path) -> str:
    """An adapter's identity: what its config says the weights mean, then the weights."""
    h = hashlib.sha256()
    h.update(canonical_config(config))
    h.update(b"\0")
    feed(h, weights)
    return h.hexdigest()
