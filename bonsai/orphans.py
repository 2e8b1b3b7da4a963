"""What a killed bonsai leaves in its home, removed at the next start of any command.

- half-written files and folders (``.NAME.PID.*.tmp`` / ``.partial``, see :func:`atomic.clean_orphans`);
- ``bonsai train``'s scratch folder in the system temp dir (``bonsai-train-PID-*``, trainer checkpoints)
  whose trainer is gone;
- ``serve-PORT.json`` (``bonsai serve``'s published adapter map, see ``engine/server.py``) whose writer
  and whose vLLM server are both gone: left there, it describes a server that no longer exists;
- vLLM engine processes (engine core, workers) of an in-process engine whose bonsai process was killed:
  they do not notice their parent's death and would hold gigabytes of memory (and, on a GPU, the card)
  until the machine restarts. The engine starts them with :data:`ENGINE_OWNER_ENV` naming its owner;
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
import signal
import tempfile
import time
from pathlib import Path

from bonsai import atomic
from bonsai.pids import pid_alive

log = logging.getLogger(__name__)

#: ``bonsai train`` names its scratch folder with this and its pid, so a killed run's can be told apart
TRAIN_SCRATCH_PREFIX = "bonsai-train-"
_SCRATCH = re.compile(rf"^{TRAIN_SCRATCH_PREFIX}(?P<pid>\d+)-")


#: in the environment of the processes an in-process engine starts: ``PID:START`` of the bonsai process
#: that owns them (the start time tells a reused pid apart)
ENGINE_OWNER_ENV = "BONSAI_ENGINE_OWNER"


def clean(home: Path) -> list[Path]:
    removed = atomic.clean_orphans(home)
    removed += remove_stale_serve_info(home)
    removed += remove_dead_train_scratch()
    kill_orphaned_engines()
    return removed


def _start_time(pid: int | str) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_tag() -> str:
    """This process as an engine's owner: ``PID:START``."""
    return f"{os.getpid()}:{_start_time(os.getpid()) or 0}"


def _owner_alive(tag: str) -> bool:
    pid, _, start = tag.partition(":")
    if not pid.isdigit():
        return True  # not ours to judge
    return _start_time(pid) == start


def kill_orphaned_engines(proc: Path = Path("/proc")) -> list[int]:
    """SIGKILL every process of this user that an in-process engine started for a bonsai process that is
    gone; returns their pids. Linux only (elsewhere there is no /proc to read, and nothing is done)."""
    killed: list[int] = []
    if not proc.is_dir():
        return killed
    marker = f"{ENGINE_OWNER_ENV}=".encode()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()  # another user's process: not readable, skipped
        except OSError:
            continue
        for var in environ.split(b"\0"):
            if var.startswith(marker):
                tag = var[len(marker):].decode(errors="replace")
                if not _owner_alive(tag):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(int(entry.name), signal.SIGKILL)
                        killed.append(int(entry.name))
                break
    if killed:
        log.warning("stopped %d vLLM engine process(es) left by a killed bonsai: %s", len(killed), killed)
    return killed


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
