"""Atomic writes: a crash leaves either the old file/directory or the new one, never half of either.

Each write is staged beside its target (a hidden ``.NAME.*.tmp`` file or ``.NAME.*.partial`` folder),
fsynced, renamed into place, and then the parent directory is fsynced too: the rename is a change to the
directory, and without that fsync an OS crash can forget it even though the file's bytes are on disk.

A stage's name carries the pid of the process writing it (``.NAME.PID.RANDOM.tmp``), so a process killed
with SIGKILL leaves something :func:`clean_orphans` can recognise as dead at the next start, while a live
writer's stage (a long training, another command) is left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time

from bonsai.pids import pid_alive
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_UMASK = os.umask(0o22)
os.umask(_UMASK)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    with staged_file(path) as tmp:
        with tmp.open("wb") as fh:
            fh.write(data)


@contextlib.contextmanager
def staged_file(final: Path, *, suffix: str = ".tmp", shared: bool = False) -> Iterator[Path]:
    """Yield an empty temp file beside ``final`` to fill; on success it replaces ``final`` in one step.

    The file is private (0600, as mkstemp makes it) unless ``shared``: then it gets the mode any new file
    gets under the umask (an export meant for other tools and people). Files that may hold secrets stay private.

    On any exception (KeyboardInterrupt included) the temp file is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=stage_prefix(final.name), suffix=suffix, dir=final.parent)
    try:
        if shared:
            os.fchmod(fd, 0o666 & ~_UMASK)
    finally:
        os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb+") as fh:  # on disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(final.parent)


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield a temp directory beside ``final``; on success it is renamed into place in one step.

    If ``final`` appears meanwhile (another process won the race) the staged copy is dropped.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=stage_prefix(final.name), suffix=".partial", dir=final.parent))
    try:
        yield tmp
        fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if final.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(final.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in (or the entries of) ``path`` durable; a no-op where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def stage_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}."


_STAGE = re.compile(r"^\..+\.(?P<pid>\d+)\.[^.]+\.(?:tmp|partial)$")
#: a stage whose writer is gone is removed after this long (the rename it waited for is never coming);
#: one whose writer cannot be told (an older name, or another host on a shared disk) after a week
DEAD_AFTER_S = 60.0
UNKNOWN_AFTER_S = 7 * 86400.0


def clean_orphans(root: Path, *, depth: int = 3, now: float | None = None) -> list[Path]:
    """Remove stages that a killed process left under ``root`` (up to ``depth`` folders down); returns them.

    Only hidden ``*.tmp`` / ``*.partial`` entries are candidates, and only when the pid in their name is
    not running (and they are a minute old), or when they are a week old.
    """
    now = time.time() if now is None else now
    removed: list[Path] = []
    folders = [(Path(root), 0)]
    while folders:
        folder, level = folders.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith(".") and entry.name.endswith((".tmp", ".partial")):
                if _orphaned(entry, now):
                    with contextlib.suppress(OSError):
                        shutil.rmtree(path) if entry.is_dir(follow_symlinks=False) else path.unlink()
                        removed.append(path)
                        log.info("removed %s, left by an interrupted write", path)
            elif level < depth and entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                folders.append((path, level + 1))
    return removed


def _orphaned(entry: os.DirEntry[str], now: float) -> bool:
    try:
        age = now - entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return False
    m = _STAGE.match(entry.name)
    if m is None:
        return age > UNKNOWN_AFTER_S
    return age > UNKNOWN_AFTER_S or (age > DEAD_AFTER_S and not pid_alive(int(m["pid"])))
