"""One lock per sweep name and per resumed debate, so two processes never run the same debates at once.

A lock is ``fcntl.flock`` on ``$BONSAI_HOME/locks/NAME.lock``: the kernel releases it when its holder
exits, SIGKILL and crashes included, so a dead holder never blocks the next run. The file also says who
holds it (pid, command, start time), for the message a refused run prints. A lock still held although
the pid written in it is dead (a child that inherited the descriptor outlived its parent) is taken over
by replacing the file: the old holder keeps a lock on an inode nobody looks at any more.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from bonsai.errors import LockHeld
from bonsai.pids import pid_alive

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def lock_path(home: Path, name: str) -> Path:
    return home / "locks" / f"{_SAFE.sub('_', name)}.lock"


class Lock:
    """``with Lock(home, "sweep-NAME", what="sweep 'NAME'"):`` — refused with :class:`LockHeld` if taken."""

    def __init__(self, home: Path, name: str, *, what: str) -> None:
        self.path = lock_path(home, name)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> Lock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):  # only loops while other processes replace or remove the file under us
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                if holder.get("pid") and holder.get("host") == socket.gethostname() and not pid_alive(int(holder["pid"])):
                    log.warning("taking over the lock of %s from pid %s, which is gone", self.what, holder["pid"])
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    continue
                raise LockHeld(f"{self.what} is in use by another bonsai process ({describe(holder)}).",
                               hint=f"wait for it to finish{' or stop it (kill ' + str(holder['pid']) + ')' if holder.get('pid') else ''}, "
                                    "then run again; a lock whose process has died is taken over by itself") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder we waited on removed (released) the file: lock the one there now
                os.close(fd)
                continue
            info = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(), "since": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            self._fd = fd
            return self
        raise LockHeld(f"{self.what}: could not take its lock file {self.path} (it keeps changing).", hint="run again")

    def release(self) -> None:
        if self._fd is None:
            return
        # removed while still locked, so nobody can lock the old inode and think it the current one
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def sweep_lock(home: Path, name: str) -> Lock:
    return Lock(home, f"sweep-{name}", what=f"sweep {name!r}")


def debate_lock(home: Path, debate_id: str) -> Lock:
    return Lock(home, f"debate-{debate_id}", what=f"debate {debate_id}")


def describe(holder: dict[str, object]) -> str:
    if not holder.get("pid"):
        return "its details are not written yet"
    since = float(holder.get("since") or 0)
    ago = max(0, int(time.time() - since))
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
    return f"pid {holder['pid']}, `{holder.get('command', '?')}`, since {when} ({ago // 60} min {ago % 60} s ago)"


def _read(fd: int) -> dict[str, object]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _command() -> str:
    args = [a if len(a) < 200 else a[:200] + "..." for a in sys.argv[1:]]
    return " ".join(["bonsai", *args])[:500]
