"""Atomic writes: a crash leaves either the old file/directory or the new one, never half of either.

Each write is staged beside its target (a hidden ``.NAME.*.tmp`` file or ``.NAME.*.partial`` folder),
fsynced, renamed into place, and then the parent directory is fsynced too: the rename is a change to the
directory, and without that fsync an OS crash can forget it even though the file's bytes are on disk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    with staged_file(path) as tmp:
        with tmp.open("wb") as fh:
            fh.write(data)


@contextlib.contextmanager
def staged_file(final: Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield an empty temp file beside ``final`` to fill; on success it replaces ``final`` in one step.

    On any exception (KeyboardInterrupt included) the temp file is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent)
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
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
