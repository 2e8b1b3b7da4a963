"""Where the TUI's engine comes from: built from the command's options on first use, or handed in ready."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from bonsai.engine import AdapterRef, Engine
from bonsai.engine.session import EngineOptions, plan_engine, start_engine
from bonsai.errors import BonsaiError, EngineError


@contextlib.contextmanager
def process_stdio() -> Iterator[None]:
    """Real ``sys.stdout``/``sys.stderr`` while an engine starts its processes.

    Textual swaps them for objects without a file descriptor (``fileno() == -1``), and starting a
    process (vLLM's engine core, multiprocessing's resource tracker) hands those descriptors on, so it
    fails with "bad value(s) in fds_to_keep". The process-level descriptors 1 and 2 are used instead
    (`bonsai tui` points them at its log file, so a child process never writes over the screen).
    """
    out = open(1, "w", closefd=False)  # noqa: SIM115 - closed below, the descriptors stay open
    err = open(2, "w", closefd=False)  # noqa: SIM115
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    finally:
        for stream in (out, err):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
            stream.close()


class EngineSource(Protocol):
    """Hands out the one engine of the session, started on first use."""

    async def acquire(self, refs: list[AdapterRef | None]) -> tuple[Engine, str]: ...

    async def close(self) -> None: ...


class ConfiguredEngine:
    """The engine `bonsai debate` would build from the same options, sized by the first debate's adapters."""

    def __init__(self, options: EngineOptions, home: Path) -> None:
        self.options = options
        self.home = home
        self._engine: Engine | None = None
        self._base_name = ""
        self._stack = contextlib.AsyncExitStack()

    async def acquire(self, refs: list[AdapterRef | None]) -> tuple[Engine, str]:
        if self._engine is not None:
            return self._engine, self._base_name
        # later debates of the session may bring other adapters: leave room for a few
        setup = await asyncio.to_thread(plan_engine, self.options, self.home, refs, min_loras=4)
        stack = contextlib.AsyncExitStack()
        try:
            with process_stdio():
                session = await stack.enter_async_context(start_engine(setup))
        except BaseException as exc:
            await stack.aclose()
            if isinstance(exc, BonsaiError) or not isinstance(exc, Exception):
                raise
            raise EngineError(f"the {setup.config.kind} engine did not start: {exc}", "run `bonsai debate` with -v to see the engine's log") from exc
        self._stack, self._engine, self._base_name = stack, session.engine, session.base_name
        return session.engine, session.base_name

    async def close(self) -> None:
        if self._engine is not None:
            stack, self._engine = self._stack, None
            await stack.aclose()


class ReadyEngine:
    """An engine the caller made and started (tests, embedding); closed by its owner, not here."""

    def __init__(self, engine: Engine, base_name: str) -> None:
        self.engine = engine
        self.base_name = base_name

    async def acquire(self, refs: list[AdapterRef | None]) -> tuple[Engine, str]:
        return self.engine, self.base_name

    async def close(self) -> None:
        pass
