"""``bonsai eval``: a version against a reference (its parent, the bare base or another version).

Three measurements, each on motions no version of the persona trained on, each with a 95% interval:

1. the persona's rubric (``bonsai.rubric``) on speeches both adapters give in the persona's seat, with
   the same prompts and sampling seeds, plus tokens per turn;
2. held-out preference accuracy and log-odds margin on the test split of the version's dataset;
3. the judge's win rate of the version against the reference, each playing both seats (the gate's
   mini-sweep), ties counting half.

The rubric and preference measurements need no judge: they are the evidence that does not depend on
a 135M model reading a debate. The report is saved beside the version (``evaluations/``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bonsai.registry import current_version, persona_dir, read_manifest, verify_version
from bonsai.engine import AdapterRef, Engine
from bonsai.registry.identity import inspect_adapter
from bonsai.errors import AdapterError, ConfigError
from bonsai.model.prepare import BaseModel as PreparedBase
from bonsai.personas import PersonaBook
from bonsai.rubric import RubricContext, rubric_for
from training.evaluation.heldout import check_held_out
from training.evaluation.speeches import Speech, plan_speeches, sample_speeches
from training.evaluation.stats import Estimate, clustered_delta, mean_interval, proportion
from bonsai.registry import resolve_version

log = logging.getLogger(__name__)

class EvalConfig(BaseModel):
    """What ``bonsai eval`` measures and how much."""

    model_config = ConfigDict(extra="forbid")

    against: str = Field("parent", description="parent (the version it was trained from), base, or a version of the persona.")
    max_motions: int = Field(8, ge=1, description="Held-out motions used at most.")
    samples: int = Field(4, ge=1, le=64, description="Speech samples per motion and adapter for the rubric.")
    turns: int = Field(1, ge=1, le=8, description="The persona's turns per sample (later turns answer the opponent).")
    format: str = Field("quick", description="Debate format the speeches and judged debates follow.")
    max_tokens: int | None = Field(None, ge=1, le=8192, description="Caps every speech (default: the persona's and the format's).")
    seed: int = 0
    judge: bool = Field(True, description="Also judge debates against the reference (slow on CPU).")
    preference: bool = Field(True, description="Also score the test split's pairs (needs the version's dataset).")
    concurrency: int = Field(16, ge=1)


@dataclass(frozen=True)
class MetricRow:
    name: str
    candidate: Estimate
    reference: Estimate
    delta: Estimate

    def as_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate.as_dict(), "reference": self.reference.as_dict(), "delta": self.delta.as_dict()}


@dataclass
class EvalReport:
    persona: str
    version: str
    reference: str  # a version name or "base"
    motions: list[str]
    metrics: list[MetricRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    judge: dict[str, Any] | None = None
    seconds: float = 0.0
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def metric(self, name: str) -> MetricRow | None:
        return next((m for m in self.metrics if m.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "persona": self.persona,
            "version": self.version,
            "reference": self.reference,
            "motions": self.motions,
            "metrics": {m.name: m.as_dict() for m in self.metrics},
            "judge": self.judge,
            "notes": self.notes,
            "seconds": round(self.seconds, 2),
            "samples": self.samples,
            "created_at": time.time(),
        }


# --- the reference ------------------------------------------------------------------------------


def resolve_reference(home: Path, persona: str, version: str, against: str) -> tuple[str, Path | None]:
    """(label, adapter folder or None for the bare base) of what ``version`` is compared with."""
    if against == "base":
        return "base", None
    if against == "parent":
        manifest = read_manifest(persona_dir(home, persona) / version)
        parent = manifest.parent if manifest else None
        if not parent:
            return "base", None
        against = parent
    ref = resolve_version(home, persona, against)
    if ref == version:
        raise ConfigError(f"{persona}@{version} cannot be evaluated against itself", "pass --against parent, base or another version")
    path = persona_dir(home, persona) / ref
    verify_version(path)
    return ref, path


def default_motions(home: Path, persona: str, version: str, dataset: Path | None) -> list[str]:
    from training.gate import held_out_motions

    return held_out_motions(home, persona, version, dataset=dataset)


# --- measurements -------------------------------------------------------------------------------


def rubric_rows(persona_obj: Any, cand: list[Speech], ref: list[Speech], *, seed: int) -> tuple[list[MetricRow], dict[str, list[dict[str, Any]]]]:
    rubric = rubric_for(persona_obj)
    rows: list[MetricRow] = []
    scored: dict[str, list[dict[str, Any]]] = {"candidate": [], "reference": []}
    per: dict[str, dict[str, list[tuple[str, float]]]] = {"candidate": {}, "reference": {}}
    for side, speeches in (("candidate", cand), ("reference", ref)):
        for s in speeches:
            entry: dict[str, Any] = {"motion": s.motion, "sample": s.sample, "turn": s.turn, "text": s.text, "tokens": s.output_tokens}
            per[side].setdefault("tokens_per_turn", []).append((s.motion, float(s.output_tokens)))
            if rubric is not None:
                result = rubric.score(s.text, RubricContext(motion=s.motion, language=persona_obj.language, opponent_last=s.opponent_last))
                entry["rubric"] = result.total
                entry["checks"] = dict(result.checks)
                per[side].setdefault("rubric", []).append((s.motion, result.total))
                for check, value in result.checks.items():
                    per[side].setdefault(f"rubric.{check}", []).append((s.motion, value))
            scored[side].append(entry)
    names = [n for n in per["candidate"] if n != "tokens_per_turn"] + ["tokens_per_turn"]
    for name in names:
        a, b = per["candidate"].get(name, []), per["reference"].get(name, [])
        rows.append(MetricRow(name, mean_interval([v for _, v in a]), mean_interval([v for _, v in b]), clustered_delta(a, b, seed=seed)))
    return rows, scored


def preference_rows(base: PreparedBase, dataset: Path, cand_path: Path, ref_path: Path | None) -> tuple[list[MetricRow], str | None]:
    from training.evaluation.preference import load_test_split, score_preferences, summarize_pairs

    rows, fmt = load_test_split(dataset)
    if not rows:
        return [], f"the dataset at {dataset} has no test pairs, so held-out preference is not measured"
    scores = score_preferences(base, rows, fmt, {"candidate": cand_path, "reference": ref_path})
    cand, ref = summarize_pairs(scores["candidate"]), summarize_pairs(scores["reference"])
    acc_delta = clustered_delta(
        [(s.motion, 1.0 if s.margin > 0 else 0.0) for s in scores["candidate"]], [(s.motion, 1.0 if s.margin > 0 else 0.0) for s in scores["reference"]]
    )
    margin_delta = clustered_delta([(s.motion, s.margin) for s in scores["candidate"]], [(s.motion, s.margin) for s in scores["reference"]])
    return [
        MetricRow("preference_accuracy", cand.accuracy, ref.accuracy, acc_delta),
        MetricRow("preference_margin", cand.margin, ref.margin, margin_delta),
    ], None


# --- the whole evaluation -----------------------------------------------------------------------


async def evaluate_version(
    engine: Engine,
    *,
    home: Path,
    book: PersonaBook,
    base: PreparedBase,
    persona: str,
    version: str,
    motions: list[str] | None = None,
    dataset: Path | None = None,
    config: EvalConfig | None = None,
    gate: Any = None,
    store_path: Path | None = None,
    checkpoints: Path | None = None,
    on_progress: Callable[[str], None] | None = None,
    judge_engine: Engine | None = None,
) -> EvalReport:
    """Measure ``persona@version`` against its reference on held-out motions (see the module doc)."""
    config = config or EvalConfig()
    say = on_progress or (lambda _msg: None)
    t0 = time.monotonic()
    version = resolve_version(home, persona, version)
    cand_path = persona_dir(home, persona) / version
    manifest = verify_version(cand_path)
    ref_label, ref_path = resolve_reference(home, persona, version, config.against)
    dataset = dataset or (Path(manifest.dataset) if manifest and manifest.dataset else None)
    if motions is None:
        motions = default_motions(home, persona, version, dataset)
    motions = list(dict.fromkeys(motions))[: config.max_motions]
    check_held_out(home, persona, motions)
    persona_obj = book.get(persona)
    plan = plan_speeches(book, persona, format_name=config.format, turns=config.turns)
    report = EvalReport(persona=persona, version=version, reference=ref_label, motions=motions)
    if rubric_for(persona_obj) is None:
        report.notes.append(f"persona {persona} declares no rubric: only tokens per turn are measured on its speeches")

    cand_ref = inspect_adapter(cand_path)
    ref_ref: AdapterRef | None = inspect_adapter(ref_path) if ref_path is not None else None
    shared: dict[tuple[str, int], dict[str, Any]] = {}
    say(f"sampling {config.samples} speeches per motion on {len(motions)} held-out motions from {version} and {ref_label}")
    kwargs = {"samples": config.samples, "seed": config.seed, "max_tokens": config.max_tokens, "concurrency": config.concurrency, "shared": shared}
    cand = await sample_speeches(engine, plan, motions, cand_ref, **kwargs)
    ref = await sample_speeches(engine, plan, motions, ref_ref, **kwargs)
    rows, scored = rubric_rows(persona_obj, cand, ref, seed=config.seed)
    report.metrics.extend(rows)
    report.samples = scored

    if config.preference:
        if dataset is None:
            report.notes.append(f"{persona}@{version} records no dataset: held-out preference is not measured")
        else:
            say(f"scoring the held-out pairs of {dataset}")
            pref, note = preference_rows(base, dataset, cand_path, ref_path)
            report.metrics.extend(pref)
            if note:
                report.notes.append(note)

    if config.judge:
        from training.gate import GateConfig, evaluate_candidate

        gate_config = (gate or GateConfig()).model_copy(update={"opponent": ref_label if ref_path is not None else "base", "format": config.format})
        say(f"judging debates of {version} against {ref_label} on both sides")
        result = await evaluate_candidate(
            engine, home=home, book=book, base_model=base.name, persona=persona, candidate=version, motions=motions,
            store_path=store_path or home / "evaluations.sqlite", checkpoints=checkpoints or home / "evaluations-checkpoints.sqlite",
            config=gate_config, only_fixed=True, save=False, judge_engine=judge_engine,
        )
        win = proportion(result["wins"], result["n"])
        report.judge = {
            "win_rate": win.mean, "ci_low": win.low, "ci_high": win.high, "n": result["n"], "wins": result["wins"],
            "ties": result.get("ties", 0), "debates": [m["debate_id"] for m in result["matches"]],
        }
        report.metrics.append(MetricRow("judge_win_rate", win, Estimate(0.5, 0.5, 0.5, 0), Estimate(
            None if win.mean is None else win.mean - 0.5, None if win.low is None else win.low - 0.5, None if win.high is None else win.high - 0.5, win.n)))
    report.seconds = time.monotonic() - t0
    return report


def current_or(home: Path, persona: str, version: str | None) -> str:
    if version:
        return resolve_version(home, persona, version)
    cur = current_version(home, persona)
    if cur is None:
        raise AdapterError(f"{persona} has no current version to evaluate", f"name one: `bonsai eval {persona} VERSION` (see `bonsai adapters list {persona}`)")
    return cur
