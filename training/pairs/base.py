"""What every pair strategy shares: the turns it reads, the pairs it returns, the engines it generates with.

A strategy only turns a persona's stored turns into (chosen, rejected) completions for the turn's own
stored prompt. Everything done to pairs of every kind (dropping empty or identical ones, deduplicating,
measuring them against ``max_length``, splitting by motion, writing) happens once, in
:mod:`training.dataset`, so the strategies cannot drift apart on those rules.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from bonsai.debate.prompts import prompt_from_json
from bonsai.engine import (
    AdapterRef,
    Completion,
    Engine,
    EngineConfig,
    GenerationRequest,
    Prompt,
    Sampling,
    TextPrompt,
    create_engine,
)
from bonsai.engine.adapters import lora_rank_for
from bonsai.errors import ConfigError, PromptTooLong
from bonsai.personas import Persona, PersonaBook
from bonsai.store.records import CandidateRecord, DebateRecord, TurnRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TurnSource:
    """One stored turn of the persona, with the debate it belongs to and the candidates it was picked from."""

    debate: DebateRecord
    turn: TurnRecord
    candidates: tuple[CandidateRecord, ...] = ()
    #: the other side's last answer before this turn (what the rubric's on_motion check compares with)
    opponent_last: str | None = None

    @property
    def prompt(self) -> Prompt:
        return prompt_from_json(self.turn.prompt)

    @property
    def key(self) -> str:
        return f"{self.debate.debate_id}-t{self.turn.turn_index}"


@dataclass(frozen=True)
class Pair:
    """A preference pair for ``source``'s stored prompt: raw completions, reasoning tags and all."""

    source: TurnSource
    strategy: str
    chosen: str
    rejected: str
    #: what made this pair (scores, which adapter answered, the English original, ...): kept in the row
    meta: dict[str, Any] = field(default_factory=dict)


class StrategyParams(BaseModel):
    """Base for each strategy's parameters (recorded in the dataset card, part of its content hash)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Engines:
    """The engines strategies generate with, started on first use and closed together.

    ``config`` describes the main engine (the persona's base, where adapters are served); an ``engine``
    passed in is used as it is and left open. Strategies that need another model (a teacher base, a
    teacher endpoint) start it through :meth:`start` so it is closed with the rest.
    """

    def __init__(
        self, config: EngineConfig | None = None, *, engine: Engine | None = None, fixed_rank: bool = False, judge_engine: Engine | None = None,
    ) -> None:
        """``judge_engine``: the judge's own engine, started and closed by the caller (``--judge-endpoint``)."""
        self._config = config
        self._main = engine
        self._fixed_rank = fixed_rank
        self._owned: list[Engine] = []
        self._lock = asyncio.Lock()
        self._judge = judge_engine

    def token_counter(self) -> Callable[[str], int] | None:
        """Tokens of a completion's text as the main engine's base counts them: the local base's tokenizer
        when there is one (no engine started for it, and no request per count to a server), else the running
        engine's own count; None for an endpoint not yet used."""
        if self._config is not None and self._config.base_model is not None:
            from bonsai.model.chat_template import load_tokenizer

            tokenizer = load_tokenizer(self._config.base_model, self._config.chat_template)
            return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)
        if self._main is not None:
            engine = self._main
            return lambda text: engine.count_tokens(TextPrompt(text))
        return None

    async def judge(self, *, why: str = "this strategy") -> Engine:
        """The engine a strategy scores with the judge on: its own when one was given, else the main one."""
        return self._judge if self._judge is not None else await self.main(why=why)

    @property
    def config(self) -> EngineConfig | None:
        return self._config

    async def main(self, adapters: Sequence[AdapterRef] = (), *, why: str = "this strategy") -> Engine:
        """The main engine with ``adapters`` loaded; the first call starts it, sized for them."""
        async with self._lock:
            if self._main is None:
                if self._config is None:
                    raise ConfigError(f"{why} generates text at build time, so it needs an engine", "pass the engine flags (--engine hf|vllm, or --endpoint URL)")
                config = self._config
                if not self._fixed_rank and adapters:
                    config = config.model_copy(update={"max_lora_rank": max(config.max_lora_rank, lora_rank_for(adapters))})
                self._main = await self._start(config)
        for ref in adapters:
            await self._main.add_adapter(ref)
        return self._main

    async def start(self, config: EngineConfig) -> Engine:
        """Start another engine (a teacher's base, say), closed with the others."""
        return await self._start(config)

    async def adopt(self, engine: Engine) -> Engine:
        """Start ``engine`` and close it with the others."""
        await engine.start()
        self._owned.append(engine)
        return engine

    async def _start(self, config: EngineConfig) -> Engine:
        engine = create_engine(config)
        log.info("starting the %s engine on %s", config.kind, config.base_model or config.endpoints)
        return await self.adopt(engine)

    async def aclose(self) -> None:
        owned, self._owned = self._owned, []
        for engine in reversed(owned):
            with contextlib.suppress(Exception):
                await engine.close()
            if engine is self._main:
                self._main = None

    async def __aenter__(self) -> Engines:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@dataclass
class PairContext:
    """Everything a strategy reads: the persona, its turns, the engines, and where to count what it drops."""

    persona: Persona
    book: PersonaBook
    home: Path
    sources: list[TurnSource]
    engines: Engines
    seed: int = 0
    #: generation requests in flight at once (the engines batch whatever is in flight)
    concurrency: int = 16
    #: caps every generated completion; None keeps each turn's own budget
    max_tokens: int | None = None
    dropped: Counter[str] = field(default_factory=Counter)

    def drop(self, reason: str, n: int = 1) -> None:
        if n:
            self.dropped[reason] += n


class Strategy(abc.ABC):
    """Turns a persona's stored turns into same-prompt preference pairs."""

    name: ClassVar[str]
    Params: ClassVar[type[StrategyParams]]

    def __init__(self, params: StrategyParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def check(self, persona: Persona) -> None:  # noqa: B027 - optional hook
        """Refuse a persona this strategy cannot serve, before any store is read or engine started."""

    @abc.abstractmethod
    async def build(self, ctx: PairContext) -> list[Pair]: ...

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params.model_dump(mode="json")}


# --- helpers strategies share -------------------------------------------------------------------


def pair_seed(seed: int, *parts: object) -> int:
    """A reproducible sampling seed per (build seed, turn, purpose): the same build samples the same text."""
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31 - 1)


def turn_sampling(turn: TurnRecord, *, seed: int, max_tokens: int | None = None, temperature: float | None = None) -> Sampling:
    """The sampling the turn itself was generated with (stop strings and budget included), reseeded."""
    s = turn.sampling or {}
    return Sampling(
        temperature=float(s.get("temperature", 0.7)) if temperature is None else temperature,
        top_p=float(s.get("top_p", 0.95)),
        max_tokens=max_tokens or int(s.get("max_tokens") or 128),
        seed=seed,
        stop=tuple(s.get("stop") or ()),
        repetition_penalty=float(s.get("repetition_penalty", 1.0)),
    )


async def generate_all(engine: Engine, requests: Sequence[GenerationRequest], *, concurrency: int) -> list[Completion | None]:
    """Run ``requests`` concurrently (the engine batches what is in flight); None where the prompt did not fit."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(request: GenerationRequest) -> Completion | None:
        async with gate:
            try:
                return await engine.generate(request)
            except PromptTooLong as exc:
                log.info("request %s skipped: %s", request.request_id, exc.message)
                return None

    return list(await asyncio.gather(*(one(r) for r in requests)))
