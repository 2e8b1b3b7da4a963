"""What a killed bonsai leaves in its home, removed at the next start of any command.

- half-written files and folders (``.NAME.PID.*.tmp`` / ``.partial``, see :func:`atomic.clean_orphans`);
- ``bonsai train``'s scratch folder in the system temp dir (``bonsai-train-PID-*``, trainer checkpoints)
  whose trainer is gone;
- ``serve-PORT.json`` (``bonsai serve``'s published adapter map, see ``engine/server.py``) whose writer
  and whose vLLM server are both gone: left there, it describes a server that no longer exists;
- lock files (``locks/*.lock``) are not touched: the kernel drops a dead holder's ``flock`` by itself,
  and the next run takes the lock over (see ``locks.py``).

Kept apart from ``engine/server.py`` so that every command's start stays cheap (no engine imports).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from bonsai import atomic
from bonsai.pids import pid_alive

log = logging.getLogger(__name__)

#: ``bonsai train`` names its scratch folder with this and its pid, so a killed run's can be told apart
TRAIN_SCRATCH_PREFIX = "bonsai-train-"
_SCRATCH = re.compile(rf"^{TRAIN_SCRATCH_PREFIX}(?P<pid>\d+)-")


def clean(home: Path) -> list[Path]:
    removed = atomic.clean_orphans(home)
    removed += remove_stale_serve_info(home)
    removed += remove_dead_train_scratch()
    return removed


def remove_dead_train_scratch(tmp: Path | None = None, *, now: float | None = None) -> list[Path]:
    removed = []
    now = time.time() if now is None else now
    for path in Path(tmp or tempfile.gettempdir()).glob(f"{TRAIN_SCRATCH_PREFIX}*"):
        m = _SCRATCH.match(path.name)
        try:
            old = now - path.stat().st_mtime > atomic.DEAD_AFTER_S
        except OSError:
            continue
        if m and old and path.is_dir() and not pid_alive(int(m["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            log.info("removed %s, left by a bonsai train that was killed", path)
    return removed


def remove_stale_serve_info(home: Path) -> list[Path]:
    removed = []
    for path in Path(home).glob("serve-*.json"):
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # half-read or foreign: not ours to judge
        pids = [p for p in (info.get("pid"), info.get("server_pid")) if isinstance(p, int) and p > 0] if isinstance(info, dict) else []
        if pids and not any(pid_alive(p) for p in pids):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
                log.info("removed %s: the bonsai serve that wrote it (pid %s) is gone", path, pids[0])
    return removed
