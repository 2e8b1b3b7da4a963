"""``bonsai loop``: debates with candidates -> data -> train -> evaluate -> promote, N generations over.

One engine serves the whole loop: each generation's debates pick up the versions the last one
promoted (they resolve ``current`` when they start), and the gate serves candidate and current side by
side. Each generation debates into its own store, so its dataset is on-policy: made of the adapters
that are current now. The gate debates held-out motions that are never debated for data.

The loop is resumable: its state file ``$BONSAI_HOME/loops/<id>.json`` is rewritten atomically after
every step (and every finished debate), and ``--resume`` skips whatever it records as done. Steps
are idempotent where they can be interrupted: a dataset and an adapter version are content-addressed,
and a half-run debate is resumed from its checkpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bonsai import atomic
from bonsai.registry import current_version
from bonsai.debate.events import DebateEnd
from bonsai.debate.runner import DebateRunner, DebateSpec
from bonsai.engine import Engine
from bonsai.errors import BonsaiError, ConfigError, describe_validation
from bonsai.model.prepare import BaseModel as PreparedBase
from bonsai.personas import PersonaBook, Role
from bonsai.store.records import DebateStatus
from bonsai.store.transcripts import TranscriptStore
from training.evaluation.decision import decide
from training.evaluation.run import EvalConfig, evaluate_version
from training.gate import GateConfig, evaluate_candidate
from training.hotload import promote_version

log = logging.getLogger(__name__)

STEPS = ("debates", "data", "train", "evaluate", "promote")

#: motions the loop debates to make data (rotated through, generation after generation)
TRAIN_MOTIONS = (
    "This house believes that cities should ban private cars from their centres",
    "This house would abolish homework in primary schools",
    "This house believes that social media does more harm than good",
    "This house would make voting compulsory",
    "This house believes that space exploration is a waste of money",
    "This house would ban single-use plastics",
    "This house believes that remote work is better than office work",
    "This house would introduce a four-day working week",
)
#: held-out motions the gate evaluates on (never debated for data)
EVAL_MOTIONS = (
    "This house would close all zoos",
    "This house believes that nuclear power is the answer to climate change",
    "This house would replace exams with coursework",
    "This house believes that museums should return looted artefacts",
)


class StrategyChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class LoopConfig(BaseModel):
    """Everything a loop does, recorded in its state file so a resumed loop does the same."""

    model_config = ConfigDict(extra="forbid")

    personas: list[str] = Field(min_length=1, description="Debaters to train (each needs adapter: registry).")
    generations: int = Field(1, ge=1, le=1000)
    motions: list[str] = Field(default_factory=lambda: list(TRAIN_MOTIONS), min_length=1)
    eval_motions: list[str] = Field(default_factory=lambda: list(EVAL_MOTIONS), min_length=1)
    debates: int = Field(2, ge=1, description="Debates per generation.")
    candidates: int = Field(2, ge=1, le=32, description="Best-of-N candidates per debater turn (1: none; the rubric strategy samples its own).")
    format: str = "quick"
    rounds: int = Field(1, ge=1, le=20)
    max_tokens: int | None = Field(48, ge=1, le=8192)
    strategies: list[StrategyChoice] = Field(
        default_factory=lambda: [StrategyChoice(name="best-of-n", params={"min_gap": 0.02}), StrategyChoice(name="stance")], min_length=1
    )
    min_pairs: int = Field(2, ge=1)
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="Share of each dataset's pairs held out by motion (held-out preference accuracy needs some).")
    max_length: int = Field(1024, ge=64)
    recipe: str = "orpo"
    train_overrides: dict[str, Any] = Field(default_factory=dict, description="TRL trainer keys applied to every stage (--set).")
    gate: GateConfig = Field(default_factory=GateConfig)
    evaluation: EvalConfig = Field(default_factory=lambda: EvalConfig(judge=True), description="How `bonsai eval` measures a candidate when the gate's criteria need it.")
    promote: Literal["gate", "always"] = Field("gate", description="gate: promote only what passes; always: promote every candidate.")
    endpoints: list[str] = Field(default_factory=list, description="Running `bonsai serve` endpoints to hot-load promoted versions on.")
    seed: int = 0


def presets_dir() -> Path:
    return Path(__file__).parent / "presets"


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A preset's loop settings (a built-in name such as ``cpu``, or a YAML file), checked whole."""
    import yaml

    path = Path(name_or_path)
    if not path.suffix:
        path = presets_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in presets_dir().glob("*.yaml")))
            raise ConfigError(f"unknown loop preset {name_or_path!r}", f"built-in presets: {known}; or pass a YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"preset file {path} does not exist") from None
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable YAML preset: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a preset must be a YAML mapping of loop settings")
    try:
        LoopConfig.model_validate({"personas": ["x"], **raw})
    except ValidationError as exc:
        msg = "; ".join(describe_validation(exc))
        raise ConfigError(f"{path}: invalid loop preset: {msg}", f"valid keys: {', '.join(LoopConfig.model_fields)}") from None
    return raw


# --- state --------------------------------------------------------------------------------------


def loops_dir(home: Path) -> Path:
    return home / "loops"


def state_path(home: Path, loop_id: str) -> Path:
    return loops_dir(home) / f"{loop_id}.json"


def new_state(config: LoopConfig) -> dict[str, Any]:
    return {
        "id": time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6],
        "config": config.model_dump(mode="json"),
        "status": "running",
        "created_at": time.time(),
        "generations": [],
    }


def save_state(home: Path, state: dict[str, Any]) -> None:
    state["updated_at"] = time.time()
    atomic.write_text(state_path(home, state["id"]), json.dumps(state, indent=2, ensure_ascii=False) + "\n")


def load_state(home: Path, loop_id: str) -> dict[str, Any]:
    if loop_id == "latest":
        found = sorted(loops_dir(home).glob("*.json"), key=lambda p: p.stat().st_mtime) if loops_dir(home).is_dir() else []
        if not found:
            raise ConfigError("there is no loop to resume", "start one with `bonsai loop --personas A,B --generations N`")
        path = found[-1]
    else:
        path = state_path(home, loop_id)
    if not path.is_file():
        raise ConfigError(f"there is no loop {loop_id!r} (no {path})", f"list them in {loops_dir(home)}")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        LoopConfig.model_validate(state["config"])
    except (json.JSONDecodeError, KeyError, ValidationError) as exc:
        raise ConfigError(f"the loop state {path} is unreadable ({exc})", "start a new loop") from None
    return state


def generation_state(state: dict[str, Any], gen: int) -> dict[str, Any]:
    while len(state["generations"]) < gen:
        state["generations"].append({"generation": len(state["generations"]) + 1, "steps": {}})
    return state["generations"][gen - 1]


def check_personas(config: LoopConfig, book: PersonaBook) -> None:
    """Refuse personas a loop cannot train before any engine starts."""
    teams = set()
    for name in config.personas:
        p = book.get(name)
        if p.role != Role.DEBATER:
            raise ConfigError(f"{name!r} is a {p.role.value}; the loop trains debaters", "pass debater personas to --personas")
        if p.adapter != "registry" and p.adapter != f"registry:{name}":
            raise ConfigError(
                f"persona {name!r} does not debate with its registry adapter (adapter: {p.adapter}), so promoted versions would never be used",
                f"set `adapter: registry` in {name}.yaml",
            )
        teams.add(p.team.value)
    if len(config.personas) != len(set(config.personas)):
        raise ConfigError("a persona is named twice in --personas", "name each persona once")


# --- the runner ---------------------------------------------------------------------------------

Event = dict[str, Any]
AfterStep = Callable[[int, str, dict[str, Any]], None]


class Loop:
    """Drives one loop's generations on an open engine; ``run()`` yields progress events."""

    def __init__(
        self,
        state: dict[str, Any],
        *,
        engine: Engine,
        home: Path,
        book: PersonaBook,
        base: PreparedBase,
        after_step: AfterStep | None = None,
        progress: bool = False,
        judge_engine: Engine | None = None,
        api_key: str | None = None,
    ) -> None:
        """``judge_engine``: the judge's own engine for the debates and the gate (None: ``engine``).
        ``api_key``: the key of the servers promoted versions are hot-loaded on (kept out of the
        saved state; None: $BONSAI_API_KEY)."""
        self.api_key = api_key
        self.state = state
        self.config = LoopConfig.model_validate(state["config"])
        self.engine = engine
        self.judge_engine = judge_engine
        self.home = home
        self.book = book
        self.base = base
        self.after_step = after_step
        self.progress = progress
        self.dir = loops_dir(home) / state["id"]

    @property
    def id(self) -> str:
        return str(self.state["id"])

    def _save(self) -> None:
        save_state(self.home, self.state)

    async def run(self) -> AsyncIterator[Event]:
        check_personas(self.config, self.book)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state["status"] = "running"
        self._save()
        resumed = any(g["steps"] for g in self.state["generations"])
        yield {"event": "loop_start", "loop": self.id, "personas": self.config.personas, "generations": self.config.generations, "resumed": resumed}
        try:
            for gen in range(1, self.config.generations + 1):
                g = generation_state(self.state, gen)
                for step in STEPS:
                    done = g["steps"].get(step)
                    if done and done.get("done"):
                        continue
                    yield {"event": "step_start", "loop": self.id, "generation": gen, "step": step}
                    async for ev in getattr(self, f"_{step}")(gen, g):
                        yield ev
                    g["steps"][step]["done"] = True
                    g["steps"][step]["finished_at"] = time.time()
                    self._save()
                    if self.after_step is not None:
                        self.after_step(gen, step, g["steps"][step])
                if not g.get("summary"):
                    g["summary"] = self._summary(g)
                    self._save()
                plot = self._plot()
                yield {"event": "generation_end", "loop": self.id, "generation": gen, "summary": g["summary"], "plot": plot}
        except BaseException:
            self.state["status"] = "interrupted"
            self._save()
            raise
        self.state["status"] = "finished"
        self._save()
        yield {"event": "loop_end", "loop": self.id, "state": str(state_path(self.home, self.id))}

    def _plot(self) -> str | None:
        """The measured metrics across the generations so far (None when the gate measured none)."""
        from training.evaluation.report import plot_generations

        summaries = [g["summary"] for g in self.state["generations"] if g.get("summary")]
        made = plot_generations(summaries, self.dir / "metrics.png")
        return None if made is None else str(made)

    # --- steps ----------------------------------------------------------------------------------

    def _store(self, gen: int) -> Path:
        return self.dir / f"gen-{gen}.sqlite"

    def _motion(self, gen: int, i: int) -> str:
        motions = self.config.motions
        return motions[((gen - 1) * self.config.debates + i) % len(motions)]

    async def _debates(self, gen: int, g: dict[str, Any]) -> AsyncIterator[Event]:
        cfg = self.config
        step = g["steps"].setdefault("debates", {"finished": [], "store": str(self._store(gen))})
        ids = [f"{self.id}-g{gen}-d{i}" for i in range(cfg.debates)]
        finished: list[Event] = []
        with TranscriptStore(self._store(gen)) as store:
            existing = {d.debate_id: d.status for d in store.list_debates()}
            async with DebateRunner(self.engine, store, self.dir / "checkpoints.sqlite", self.book, self.home, self.base.name,
                                    judge_engine=self.judge_engine) as runner:

                async def one(i: int, debate_id: str) -> None:
                    status = existing.get(debate_id)
                    if status == DebateStatus.FINISHED:
                        return
                    if status is not None:  # interrupted mid-debate: go on from its checkpoint
                        events = runner.resume(debate_id)
                    else:
                        spec = DebateSpec(
                            motion=self._motion(gen, i), personas=cfg.personas, format=cfg.format, rounds=cfg.rounds,
                            candidates=cfg.candidates, seed=cfg.seed * 10_000 + gen * 100 + i, max_tokens=cfg.max_tokens,
                            sweep=f"loop:{self.id}:g{gen}",
                        )
                        events = runner.run(spec, debate_id=debate_id)
                    async for event in events:
                        if isinstance(event, DebateEnd):
                            step["finished"] = sorted({*step["finished"], debate_id})
                            self._save()
                            finished.append({"event": "debate", "loop": self.id, "generation": gen, "debate_id": debate_id, "winner": event.winner})

                await asyncio.gather(*(one(i, d) for i, d in enumerate(ids)))
        for ev in finished:
            yield ev
        step["debate_ids"] = ids

    async def _data(self, gen: int, g: dict[str, Any]) -> AsyncIterator[Event]:
        from training.dataset import BuildOptions, StrategySpec, TooFewPairs, build_dataset
        from training.pairs import Engines

        cfg = self.config
        step = g["steps"].setdefault("data", {"datasets": {}, "skipped": {}})
        engines = Engines(engine=self.engine)
        for persona in cfg.personas:
            if persona in step["datasets"] or persona in step["skipped"]:
                continue
            options = BuildOptions(
                persona=persona,
                strategies=[StrategySpec(name=s.name, params=s.params) for s in cfg.strategies],
                store=self._store(gen),
                max_length=cfg.max_length,
                test_fraction=cfg.test_fraction,
                seed=cfg.seed + gen,
                min_pairs=cfg.min_pairs,
                max_tokens=cfg.max_tokens,
            )
            try:
                built = await build_dataset(options, base=self.base, book=self.book, home=self.home, engines=engines)
            except TooFewPairs as exc:
                step["skipped"][persona] = exc.message
                self._save()
                yield {"event": "dataset", "loop": self.id, "generation": gen, "persona": persona, "skipped": exc.message}
                continue
            step["datasets"][persona] = {"path": str(built.path), "pairs": built.card.counts.kept, "hash": built.card.content_hash}
            self._save()
            yield {"event": "dataset", "loop": self.id, "generation": gen, "persona": persona, "path": str(built.path), "pairs": built.card.counts.kept}

    async def _train(self, gen: int, g: dict[str, Any]) -> AsyncIterator[Event]:
        from training.config import load_recipe, with_overrides
        from training.train import train_adapter

        recipe = with_overrides(load_recipe(self.config.recipe), self.config.train_overrides)
        step = g["steps"].setdefault("train", {"versions": {}})
        for persona, data in g["steps"]["data"]["datasets"].items():
            if persona in step["versions"]:
                continue
            result = await asyncio.to_thread(
                train_adapter, persona, Path(data["path"]), home=self.home, base=self.base, recipe=recipe, progress=self.progress
            )
            stages = result.metrics.get("stages") or [{}]
            step["versions"][persona] = {
                "version": result.version,
                "parent": result.parent,
                "seconds": round(result.seconds, 2),
                "loss": [stages[0].get("first", {}).get("loss"), stages[-1].get("last", {}).get("loss")],
            }
            self._save()
            yield {"event": "trained", "loop": self.id, "generation": gen, "persona": persona, **step["versions"][persona]}

    async def _evaluate(self, gen: int, g: dict[str, Any]) -> AsyncIterator[Event]:
        """Every persona's gate at once (the engine batches their debates), each in its own store."""
        step = g["steps"].setdefault("evaluate", {"results": {}})
        done: list[Event] = []

        async def measured(persona: str, version: str) -> None:
            """The gate on `bonsai eval`'s metrics: the candidate against its parent, judged by the criteria."""
            from training.evaluation.report import save_report
            from bonsai.registry import save_evaluation

            report = (await evaluate_version(
                self.engine, home=self.home, book=self.book, base=self.base, persona=persona, version=version,
                motions=self.config.eval_motions, config=self.config.evaluation.model_copy(update={"max_motions": self.config.gate.max_motions}),
                gate=self.config.gate, store_path=self.dir / f"evaluations-{persona}.sqlite",
                checkpoints=self.dir / f"evaluations-{persona}-checkpoints.sqlite", judge_engine=self.judge_engine,
            )).to_json()
            files = save_report(self.home, report)
            passed, reasons = decide(report, self.config.gate.criteria, threshold=self.config.gate.threshold)
            judge = report.get("judge") or {}
            save_evaluation(self.home, persona, version, {
                **{k: v for k, v in report.items() if k != "samples"}, "candidate": version, "current": current_version(self.home, persona),
                "criteria": self.config.gate.criteria, "reasons": reasons, "passed": passed, "threshold": self.config.gate.threshold,
                "wins": judge.get("wins"), "n": judge.get("n"), "win_rate": judge.get("win_rate"), "ci_low": judge.get("ci_low"), "ci_high": judge.get("ci_high"),
            })
            step["results"][persona] = {
                "version": version,
                "against": report["reference"] if report["reference"] != "base" else None,
                "wins": judge.get("wins"),
                "n": judge.get("n"),
                "win_rate": judge.get("win_rate"),
                "ci": [judge.get("ci_low"), judge.get("ci_high")],
                "vs_previous": judge.get("win_rate"),
                "vs_previous_n": judge.get("n"),
                "passed": passed,
                "reasons": reasons,
                "metrics": report["metrics"],
                "report": files.get("json"),
                "plot": files.get("plot"),
            }
            self._save()
            done.append({"event": "evaluated", "loop": self.id, "generation": gen, "persona": persona, **step["results"][persona]})

        async def one(persona: str, version: str) -> None:
            if self.config.gate.needs_eval:
                await measured(persona, version)
                return
            result = await evaluate_candidate(
                self.engine, home=self.home, book=self.book, base_model=self.base.name, persona=persona,
                candidate=version, motions=self.config.eval_motions, store_path=self.dir / f"evaluations-{persona}.sqlite",
                checkpoints=self.dir / f"evaluations-{persona}-checkpoints.sqlite", config=self.config.gate,
                judge_engine=self.judge_engine,
            )
            vs_current = result["by_opponent"].get("current", {})
            step["results"][persona] = {
                "version": version,
                "against": result["current"],
                "wins": result["wins"],
                "n": result["n"],
                "win_rate": result["win_rate"],
                "ci": [result["ci_low"], result["ci_high"]],
                "vs_previous": vs_current.get("win_rate"),
                "vs_previous_n": vs_current.get("n"),
                "passed": result["passed"],
            }
            self._save()
            done.append({"event": "evaluated", "loop": self.id, "generation": gen, "persona": persona, **step["results"][persona]})

        todo = [(p, t["version"]) for p, t in g["steps"]["train"]["versions"].items() if p not in step["results"]]
        await asyncio.gather(*(one(p, v) for p, v in todo))
        for ev in done:
            yield ev

    async def _promote(self, gen: int, g: dict[str, Any]) -> AsyncIterator[Event]:
        step = g["steps"].setdefault("promote", {"promoted": {}, "kept": {}})
        for persona, result in g["steps"]["evaluate"]["results"].items():
            if persona in step["promoted"] or persona in step["kept"]:
                continue
            version = result["version"]
            if current_version(self.home, persona) == version:
                step["promoted"][persona] = version  # promoted before an interruption
            elif result["passed"] or self.config.promote == "always":
                try:
                    await promote_version(self.home, persona, version, force=self.config.promote == "always", endpoints=self.config.endpoints,
                                          api_key=self.api_key)
                except BonsaiError as exc:
                    step["kept"][persona] = f"promotion refused: {exc.message}"
                    self._save()
                    yield {"event": "kept", "loop": self.id, "generation": gen, "persona": persona, "version": version, "reason": exc.message}
                    continue
                step["promoted"][persona] = version
            else:
                if result.get("reasons"):
                    failed = "; ".join(f"{c} {why.removeprefix('failed: ')}" for c, why in result["reasons"].items() if why.startswith("failed"))
                    step["kept"][persona] = f"did not pass the gate ({failed})"
                else:
                    step["kept"][persona] = f"did not pass the gate (lower bound {result['ci'][0]:.2f} <= {self.config.gate.threshold:.2f})"
                self._save()
                yield {"event": "kept", "loop": self.id, "generation": gen, "persona": persona, "version": version, "reason": step["kept"][persona]}
                continue
            self._save()
            yield {"event": "promoted", "loop": self.id, "generation": gen, "persona": persona, "version": version}

    def _summary(self, g: dict[str, Any]) -> dict[str, Any]:
        steps = g["steps"]
        out: dict[str, Any] = {}
        for persona in self.config.personas:
            ev = steps.get("evaluate", {}).get("results", {}).get(persona)
            out[persona] = {
                "version": steps.get("train", {}).get("versions", {}).get(persona, {}).get("version"),
                "skipped": steps.get("data", {}).get("skipped", {}).get(persona),
                "win_rate": ev["win_rate"] if ev else None,
                "vs_previous": ev["vs_previous"] if ev else None,
                "against": ev["against"] if ev else None,
                "promoted": persona in steps.get("promote", {}).get("promoted", {}),
                "current": current_version(self.home, persona),
                "metrics": ev.get("metrics") if ev else None,
            }
        return out
