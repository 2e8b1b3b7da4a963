"""The debate as a LangGraph state machine: moderator, debater and judge nodes, routed by the schedule.

The graph is compiled once per process and reused for every debate (``thread_id`` = debate id). What
differs per debate (engine, store, cast, schedule, adapters) travels in the run's context, so the
graph itself holds no state and the checkpointer holds only the small :class:`DebateState`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from bonsai.debate import judge as judging
from bonsai.debate.usage import Metered
from bonsai.debate import events as ev
from bonsai.debate.formats import DebateFormat
from bonsai.debate.prompts import debater_prompt, moderator_prompt, prompt_to_json, stop_strings
from bonsai.reasoning import StreamSplitter, parse
from bonsai.debate.schedule import Cast, Slot
from bonsai.debate.state import DebateState
from bonsai.engine import AdapterRef, Completion, Engine, GenerationRequest, Prompt, Sampling, TextDelta, TextPrompt
from bonsai.personas import Persona, ReasoningFormat
from bonsai.store.records import CandidateRecord, DebateStatus, TurnRecord
from bonsai.store.transcripts import TranscriptStore

log = logging.getLogger(__name__)


@dataclass
class DebateContext:
    """Everything a debate's nodes need that is not state. Built by the runner, never checkpointed."""

    engine: Engine
    store: TranscriptStore
    cast: Cast
    fmt: DebateFormat
    schedule: list[Slot]
    adapters: dict[str, AdapterRef | None]
    base_model: str
    candidates: int = 1
    seed: int | None = None
    max_tokens: int | None = None
    personas: dict[str, Persona] = field(default_factory=dict)
    #: Asked before each slot (and before the judge) with the step about to run: True holds the debate
    #: there (a LangGraph ``interrupt`` in the ``steer`` node) until it is resumed, possibly with a
    #: moderator note. None (the CLI) never holds. Lets a front end pause, step and take notes.
    gate: Callable[[int], bool] | None = None
    #: False: no token events, whole completions only (a sweep has no one to show tokens to, and at
    #: hundreds of debates per event loop the per-token events cost more than the engine's decoding)
    stream_tokens: bool = True
    #: the judge's own engine (another model or server); None: the judge runs on ``engine``
    judge_engine: Engine | None = None

    def __post_init__(self) -> None:
        self.personas = {p.name: p for p in self.cast.everyone()}

    @property
    def judge(self) -> Engine:
        """The engine the judge reads with (its own, or the debaters')."""
        return self.judge_engine or self.engine

    @property
    def judge_adapters(self) -> dict[str, AdapterRef | None]:
        """A judge persona's adapter fits the debaters' base only: on an engine of its own it judges bare."""
        return self.adapters if self.judge_engine is None else {}


def derive_seed(seed: int | None, step: int, candidate: int = 0) -> int | None:
    """A distinct, reproducible seed per turn and candidate, so a re-run turn samples the same text."""
    if seed is None:
        return None
    return (seed * 1_000_003 + step * 7_919 + candidate * 104_729) % (2**31 - 1)


def route(state: DebateState) -> str:
    step = state.get("step", 0)
    plan = state.get("plan", [])
    if step < len(plan):
        return plan[step]
    if state.get("verdict") is None:
        return "judge"
    return END


def route_steered(state: DebateState, runtime: Runtime[DebateContext]) -> str:
    """``route``, but held at the ``steer`` node when the run's gate asks for it (never before END)."""
    nxt = route(state)
    gate = runtime.context.gate if runtime.context is not None else None
    if nxt != END and gate is not None and gate(state.get("step", 0)):
        return "steer"
    return nxt


def note_summary(step: int, note: str) -> dict[str, Any]:
    """A moderator note as a turn in the state: debaters see it as a moderator line after the turns so
    far (so every prompt still only appends); the judge reads debater turns only."""
    return {
        "index": step,
        "kind": "moderator",
        "phase": "note",
        "title": "moderator note",
        "round": 0,
        "speaker": "moderator",
        "team": "none",
        "instruction": "",
        "text": note,
        "answer": note,
        "note": True,
    }


async def steer_node(state: DebateState, runtime: Runtime[DebateContext]) -> dict[str, Any]:
    """Wait between turns: the run stops here (checkpointed) until resumed with ``{"note": str | None}``."""
    step = state.get("step", 0)
    answer = interrupt({"debate_id": state["debate_id"], "step": step})
    note = (answer or {}).get("note") if isinstance(answer, dict) else None
    if not note or not str(note).strip():
        return {}
    note = str(note).strip()
    runtime.stream_writer(ev.Note(state["debate_id"], step, note))
    return {"turns": [note_summary(step, note)], "notes": [note]}


def turn_summary(slot: Slot, text: str, answer: str) -> dict[str, Any]:
    return {
        "index": slot.index,
        "kind": slot.kind,
        "phase": slot.phase,
        "title": slot.title,
        "round": slot.round,
        "speaker": slot.speaker,
        "team": slot.team,
        "instruction": slot.instruction,
        "text": text,
        "answer": answer,
    }


async def _stream_one(
    ctx: DebateContext,
    request: GenerationRequest,
    fmt: ReasoningFormat,
    emit: Callable[[ev.DebateEvent], None],
    tags: dict[str, Any],
    candidate: int = 0,
) -> Completion:
    if not ctx.stream_tokens:
        return await ctx.engine.generate(request)
    splitter = StreamSplitter(fmt)
    final: Completion | None = None
    async for out in ctx.engine.stream(request):
        if isinstance(out, TextDelta):
            for kind, piece in splitter.feed(out.text):
                emit(ev.Token(**tags, kind=kind, text=piece, candidate=candidate))
        else:
            final = out
    for kind, piece in splitter.flush():
        emit(ev.Token(**tags, kind=kind, text=piece, candidate=candidate))
    assert final is not None
    return final


async def moderator_node(state: DebateState, runtime: Runtime[DebateContext]) -> dict[str, Any]:
    ctx = runtime.context
    step = state["step"]
    slot = ctx.schedule[step]
    debate_id = state["debate_id"]
    persona = ctx.personas[slot.speaker]
    speakers = [f"{s.speaker} (team {s.team})" for s in ctx.schedule[step + 1 :] if s.kind == "debater" and s.phase == slot.phase and s.round == slot.round]
    adapter = ctx.adapters.get(persona.name)
    emit = runtime.stream_writer
    tags = {"debate_id": debate_id, "turn": step, "speaker": persona.name, "team": "none", "phase": slot.title, "role": "moderator"}
    emit(ev.TurnStart(**tags, candidates=1))
    t0 = time.monotonic()
    if ctx.fmt.moderator == "llm":
        prompt: Prompt = moderator_prompt(persona, state["motion"], slot, speakers)
        max_tokens = persona.sampling.max_tokens
        sampling = Sampling(
            temperature=persona.sampling.temperature,
            top_p=persona.sampling.top_p,
            max_tokens=max_tokens,
            seed=derive_seed(ctx.seed, step),
            repetition_penalty=persona.sampling.repetition_penalty,
        )
        result = await _stream_one(
            ctx, GenerationRequest(f"{debate_id}-t{step}", prompt, sampling, adapter), ReasoningFormat.NONE, emit, tags,
        )
    else:
        # A fixed line: a 135M model's improvised introductions mostly pollute the debaters' context.
        text = f"{slot.title.capitalize()}. Speaking in order: {', '.join(speakers)}. {slot.instruction}"
        prompt, sampling = TextPrompt(""), Sampling(temperature=0.0, max_tokens=1)
        emit(ev.Token(**tags, kind="answer", text=text))
        result = Completion(f"{debate_id}-t{step}", text, 0, 0, "template", None, 0.0)
        adapter = None
    answer = result.text.strip()
    ctx.store.record_turn(_turn_record(ctx, debate_id, slot, persona, adapter, prompt, sampling, result, answer, None, time.monotonic() - t0,
                                       result.output_tokens))
    emit(ev.TurnEnd(debate_id, turn=step, speaker=persona.name, team="none", role="moderator", phase=slot.title, answer=answer, reasoning=None,
                    output_tokens=result.output_tokens, latency_s=result.total_s, adapter=adapter.name if adapter else None, candidates=[]))
    return {"step": step + 1, "turns": [turn_summary(slot, result.text, answer)]}


def _turn_record(
    ctx: DebateContext,
    debate_id: str,
    slot: Slot,
    persona: Persona,
    adapter: AdapterRef | None,
    prompt: Prompt,
    sampling: Sampling,
    result: Completion,
    answer: str,
    reasoning: str | None,
    latency: float,
    generated: int,
) -> TurnRecord:
    return TurnRecord(
        debate_id=debate_id,
        turn_index=slot.index,
        phase=slot.title,
        round=slot.round,
        speaker=persona.name,
        team=slot.team,
        role=slot.kind,
        text=result.text,
        answer=answer,
        reasoning=reasoning,
        adapter_name=adapter.name if adapter else None,
        adapter_hash=adapter.content_hash if adapter else None,
        base_model=ctx.base_model,
        prompt_tokens=result.prompt_tokens,
        output_tokens=result.output_tokens,
        latency_s=latency,
        first_token_s=result.first_token_s,
        sampling=sampling.as_dict(),
        seed=sampling.seed,
        finish_reason=result.finish_reason,
        prompt=prompt_to_json(prompt),
        created_at=time.time(),
        generated_tokens=generated,
    )


async def debater_node(state: DebateState, runtime: Runtime[DebateContext]) -> dict[str, Any]:
    ctx = runtime.context
    step = state["step"]
    slot = ctx.schedule[step]
    debate_id = state["debate_id"]
    persona = ctx.personas[slot.speaker]
    adapter = ctx.adapters.get(persona.name)
    prompt = debater_prompt(persona, state["motion"], state.get("turns", []), slot)
    # its length is checked by the engine, once per request (see Engine.check_room)
    max_tokens = ctx.max_tokens or slot.max_tokens or persona.sampling.max_tokens
    emit = runtime.stream_writer
    k = ctx.candidates
    tags = {"debate_id": debate_id, "turn": step, "speaker": persona.name, "team": slot.team, "phase": slot.title, "role": "debater"}
    emit(ev.TurnStart(**tags, candidates=k, adapter=adapter.name if adapter else None))
    samplings = [
        Sampling(
            temperature=persona.sampling.temperature,
            top_p=persona.sampling.top_p,
            max_tokens=max_tokens,
            seed=derive_seed(ctx.seed, step, i),
            stop=stop_strings(persona),
            repetition_penalty=persona.sampling.repetition_penalty,
        )
        for i in range(k)
    ]
    t0 = time.monotonic()
    results = await asyncio.gather(
        *(
            _stream_one(
                ctx,
                GenerationRequest(f"{debate_id}-t{step}-c{i}", prompt, samplings[i], adapter),
                persona.reasoning,
                emit,
                tags,
                i,
            )
            for i in range(k)
        )
    )
    parsed = [parse(r.text, persona.reasoning) for r in results]
    scores: list[float] = []
    best = 0
    scorer = Metered(ctx.judge)  # the probes that score the candidates are generated tokens too
    if k > 1:
        judge = ctx.cast.judges[0]
        history = state.get("turns", [])
        scores = list(
            await asyncio.gather(
                *(
                    judging.side_win_probability(
                        scorer,  # type: ignore[arg-type]
                        judge,
                        ctx.judge_adapters.get(judge.name),
                        state["motion"],
                        [*history, turn_summary(slot, r.text, p.answer)],
                        slot.team,
                        ctx.fmt.judge.criteria,
                        f"{debate_id}-t{step}-c{i}-score",
                    )
                    for i, (r, p) in enumerate(zip(results, parsed, strict=True))
                )
            )
        )
        best = max(range(k), key=lambda i: scores[i])
    latency = time.monotonic() - t0
    result, chosen = results[best], parsed[best]
    generated = sum(r.output_tokens for r in results) + scorer.tokens
    ctx.store.record_turn(_turn_record(ctx, debate_id, slot, persona, adapter, prompt, samplings[best], result, chosen.answer, chosen.reasoning, latency,
                                       generated))
    if k > 1:
        ctx.store.record_candidates(
            [
                CandidateRecord(
                    debate_id=debate_id,
                    turn_index=step,
                    candidate_index=i,
                    text=r.text,
                    answer=p.answer,
                    reasoning=p.reasoning,
                    score=scores[i],
                    chosen=i == best,
                    output_tokens=r.output_tokens,
                    finish_reason=r.finish_reason,
                    seed=samplings[i].seed,
                )
                for i, (r, p) in enumerate(zip(results, parsed, strict=True))
            ]
        )
    emit(
        ev.TurnEnd(
            debate_id,
            turn=step,
            speaker=persona.name,
            team=slot.team,
            role="debater",
            phase=slot.title,
            answer=chosen.answer,
            reasoning=chosen.reasoning,
            output_tokens=generated,
            latency_s=latency,
            adapter=adapter.name if adapter else None,
            chosen=best,
            candidates=[{"index": i, "score": s, "answer": p.answer} for i, (s, p) in enumerate(zip(scores, parsed, strict=False))],
        )
    )
    return {"step": step + 1, "turns": [turn_summary(slot, result.text, chosen.answer)]}


async def judge_node(state: DebateState, runtime: Runtime[DebateContext]) -> dict[str, Any]:
    ctx = runtime.context
    debate_id = state["debate_id"]
    emit = runtime.stream_writer
    emit(ev.Judging(debate_id, [j.name for j in ctx.cast.judges]))
    per_judge, panel = await judging.judge_debate(
        ctx.judge,
        ctx.cast.judges,
        ctx.judge_adapters,
        debate_id,
        state["motion"],
        state.get("turns", []),
        ctx.fmt.judge.criteria,
        ctx.fmt.judge.max_tokens,
        derive_seed(ctx.seed, len(ctx.schedule)),
        tie_band=ctx.fmt.judge.tie_band,
    )
    for v in per_judge:
        ctx.store.record_verdict(v)
    if panel.judge == "panel":
        ctx.store.record_verdict(panel)
    ctx.store.set_status(debate_id, DebateStatus.FINISHED, winner=panel.winner)
    emit(ev.Verdict(debate_id, panel, list(per_judge)))
    return {"verdict": panel.to_dict()}


def build_graph() -> StateGraph:
    builder = StateGraph(DebateState, context_schema=DebateContext)
    builder.add_node("moderator", moderator_node)
    builder.add_node("debater", debater_node)
    builder.add_node("judge", judge_node)
    builder.add_node("steer", steer_node)
    targets = ["moderator", "debater", "judge", "steer", END]
    for source in (START, "moderator", "debater", "judge", "steer"):
        builder.add_conditional_edges(source, route_steered, targets)
    return builder
