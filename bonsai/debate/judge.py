"""The judge: a verdict that always parses, with a confidence read from the winner token's logprobs.

Position must not decide a verdict. A small model prefers the label "A", and prefers whichever side it
reads first (or last); a verdict decided by either means nothing. So each judge reads the debate four
times: in two layouts (the speeches in speaking order, and "mirrored": each phase's speakers in reverse
order, so the side that opened is read second) x two labellings ("A"/"B" swapped between the sides).
P(team A wins) is the mean of the four readings; label bias cancels within each layout and position
bias between the layouts. The verdict is a **tie** when the two layouts lean to different sides (the
position decided it), or when P lies within the tie band (``|P(A) - 0.5| < tie_band``, set per format:
``judge.tie_band``). Ratings count a tie as half a win for each side.

The probability comes from a one-token probe (the assistant message is pre-filled with
``{"winner": "`` and the next token's logprobs are read), so it exists even when the JSON verdict is
malformed. Each layout also asks for one JSON verdict (schema-guided where the engine supports it) for
the per-criterion scores and the rationale, with opposite labellings in the two layouts, so a bias for
the label "A" and one for the side read first both cancel in the mean scores too.

Prefix cache: within a layout the two labellings share everything up to the closing question (the labels
are assigned only in its last sentence), so each layout's first probe is sent alone and the other two
requests find its transcript cached. The spoken layout only grows as the debate does, so best-of-N
scoring (which reads that layout turn by turn) keeps hitting the cache.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bonsai.debate.schedule import SIDE_STANCE
from bonsai.debate.usage import Metered
from bonsai.engine import AdapterRef, ChatMessage, ChatPrompt, Engine, GenerationRequest, Sampling
from bonsai.personas import Persona
from bonsai.store.records import VerdictRecord

log = logging.getLogger(__name__)

#: labelling: in "AB" team A is called "A", in "BA" team B is
Order = Literal["AB", "BA"]
ORDERS: tuple[Order, ...] = ("AB", "BA")
#: how the speeches are listed: in speaking order, or each phase's speakers reversed
Layout = Literal["spoken", "mirrored"]
LAYOUTS: tuple[Layout, ...] = ("spoken", "mirrored")
#: the labelling of each layout that also writes the JSON verdict: opposite ones, so the mean scores
#: carry neither a label nor a position bias (the other labelling is a one-token probe only)
JSON_ORDER: dict[Layout, Order] = {"spoken": "AB", "mirrored": "BA"}
TIE = "tie"
DEFAULT_TIE_BAND = 0.05
WINNER_PREFIX = '{"winner": "'
PROBE_TOP = 20


def labels_for(order: Order) -> dict[str, str]:
    """team -> label asked for. In "BA" team B (against the motion) is called "A"."""
    return {"A": "A", "B": "B"} if order == "AB" else {"A": "B", "B": "A"}


def verdict_schema(criteria: Sequence[str]) -> dict[str, Any]:
    side = {
        "type": "object",
        "properties": {c: {"type": "integer", "minimum": 1, "maximum": 10} for c in criteria},
        "required": list(criteria),
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "winner": {"type": "string", "enum": ["A", "B"]},
            "scores": {"type": "object", "properties": {"A": side, "B": side}, "required": ["A", "B"], "additionalProperties": False},
            "rationale": {"type": "string", "maxLength": 300},
        },
        "required": ["winner", "scores", "rationale"],
        "additionalProperties": False,
    }


def mirrored(turns: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The debater turns with each phase's speakers in reverse order (a phase is a run of consecutive
    turns with the same title): the side that spoke first in a phase is read second, and the side that
    closed the debate is no longer read last."""
    speeches = [t for t in turns if t["kind"] == "debater"]
    out: list[dict[str, Any]] = []
    start = 0
    for end in range(1, len(speeches) + 1):
        if end == len(speeches) or speeches[end]["title"] != speeches[start]["title"]:
            out.extend(reversed(speeches[start:end]))
            start = end
    return out


HEADERS: dict[Layout, str] = {
    "spoken": "The speeches, in the order they were given:",
    "mirrored": "The speeches, phase by phase, with each phase's speakers in reverse order:",
}


def judge_messages(
    judge: Persona, motion: str, turns: Sequence[dict[str, Any]], order: Order, criteria: Sequence[str], layout: Layout = "spoken"
) -> list[ChatMessage]:
    """Everything before the closing question is the same in both labellings of a layout, and in the
    spoken layout it only grows as the debate does (best-of-N scoring reads it turn by turn), so it
    stays in the prefix cache."""
    labels = labels_for(order)
    if layout == "mirrored":
        turns = mirrored(turns)
    speeches = [
        f"{t['title'].capitalize()}, {t['speaker']} ({SIDE_STANCE[t['team']]} the motion):\n{t['answer']}"
        for t in turns
        if t["kind"] == "debater"
    ]
    silent = [f"The side {SIDE_STANCE[team]} the motion has not spoken." for team in ("A", "B") if not any(
        t["kind"] == "debater" and t["team"] == team for t in turns)]
    # Placeholders rather than sample numbers: a small model copies concrete example values verbatim.
    per_side = ", ".join(f'"{c}": <1-10>' for c in criteria)
    example = f'{{"winner": "<A or B>", "scores": {{"A": {{{per_side}}}, "B": {{{per_side}}}}}, "rationale": "<one sentence>"}}'
    by_label = sorted(labels, key=lambda team: labels[team])
    naming = " and ".join(f'the side {SIDE_STANCE[team]} the motion "{labels[team]}"' for team in by_label)
    # the labels come last: the part both readings share ends just before them
    user = (
        f'Motion: "{motion}"\n\n{HEADERS[layout]}\n\n' + "\n\n".join(speeches or ["(none)"]) + "\n\n"
        + "".join(f"{line}\n\n" for line in silent)
        + f"Which side argued better? Score each side from 1 to 10 on: {', '.join(criteria)}. "
        f"Answer with JSON only, in this form: {example}\nIn this answer, call {naming}."
    )
    return [ChatMessage("system", judge.system_prompt.strip()), ChatMessage("user", user)]


def _logaddexp(a: float, b: float) -> float:
    """log(e^a + e^b) without underflowing to log(0) for very negative logprobs."""
    m = max(a, b)
    if m == -math.inf:
        return m
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def _label_probs(top: dict[str, float]) -> tuple[dict[str, float], bool]:
    """P(label) renormalised over the two labels; False if neither label was among the top tokens."""
    best: dict[str, float] = {}
    for token, lp in top.items():
        t = token.strip().strip('"').upper()
        if t in ("A", "B"):
            best[t] = lp if t not in best else _logaddexp(best[t], lp)
    if not best:
        return {"A": 0.5, "B": 0.5}, False
    floor = min(top.values()) if top else -20.0
    la, lb = best.get("A", floor - math.log(2)), best.get("B", floor - math.log(2))
    m = max(la, lb)
    if not math.isfinite(m):  # both labels at -inf (or NaN): no information
        return {"A": 0.5, "B": 0.5}, False
    pa = math.exp(la - m) / (math.exp(la - m) + math.exp(lb - m))
    return {"A": pa, "B": 1.0 - pa}, True


async def probe_labels(engine: Engine, adapter: AdapterRef | None, messages: list[ChatMessage], request_id: str) -> tuple[dict[str, float], bool]:
    prompt = ChatPrompt((*messages, ChatMessage("assistant", WINNER_PREFIX)), continue_final_message=True)
    result = await engine.generate(
        GenerationRequest(request_id, prompt, Sampling(temperature=0.0, top_p=1.0, max_tokens=1, logprobs=PROBE_TOP), adapter)
    )
    if not result.logprobs:
        return {"A": 0.5, "B": 0.5}, False
    return _label_probs(result.logprobs[0].top)


def _score(value: Any) -> float | None:
    """A number clamped to 1..10, else None (bools, strings, NaN; huge ints must not overflow a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int):
        return float(min(10, max(1, value)))
    return None if math.isnan(value) else min(10.0, max(1.0, value))


def close_truncated(text: str) -> str | None:
    """The JSON object that ``text`` starts, closed where the token limit cut it inside a string: the
    string ended and open brackets closed. A verdict cut inside its rationale keeps its winner and scores
    this way. ``None`` when nothing was cut, or the cut fell outside a string (a number may be incomplete)."""
    start = text.find("{")
    if start < 0:
        return None
    stack: list[str] = []
    in_string = escaped = False
    for ch in text[start:]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not stack or stack.pop() != ch:
                return None
            if not stack:
                return None  # the object was complete: nothing was cut
    if not in_string:
        return None  # cut in a number or between tokens: a score "1" may have been going to be "10"
    body = text[start:]
    return (body[:-1] if escaped else body) + '"' + "".join(reversed(stack))


def parse_verdict(text: str, criteria: Sequence[str]) -> tuple[str | None, dict[str, dict[str, float]], str, str | None]:
    """(winner label, scores by label, rationale, error). Never raises: a tiny model's JSON is often broken."""
    data: Any = None
    error = None
    candidate = text.strip()
    if not candidate.startswith("{"):
        candidate = WINNER_PREFIX + candidate if candidate[:1] in "AB" else candidate
    closed = close_truncated(candidate)
    attempts = [candidate, candidate[candidate.find("{") : candidate.rfind("}") + 1] if "{" in candidate else "", closed or ""]
    for attempt in attempts:
        try:
            data = json.loads(attempt)
            break
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            error = error or f"invalid JSON: {exc}"
    truncated = closed is not None and attempt is closed
    if not isinstance(data, dict):
        data = {}
    else:
        error = None
    winner = data.get("winner") if data.get("winner") in ("A", "B") else None
    if winner is None:
        m = re.search(r'"winner"\s*:\s*"([AB])"', candidate)
        winner = m.group(1) if m else None
    scores: dict[str, dict[str, float]] = {}
    raw_scores = data.get("scores") if isinstance(data.get("scores"), dict) else {}
    for label in ("A", "B"):
        side = raw_scores.get(label) if isinstance(raw_scores.get(label), dict) else {}
        vals = {c: v for c in criteria if (v := _score(side.get(c))) is not None}
        if vals:
            scores[label] = vals
    rationale = data.get("rationale") if isinstance(data.get("rationale"), str) else ""
    if rationale and truncated:
        rationale = rationale.rstrip() + "…"  # cut by the token limit
    if not rationale:
        m = re.search(r'"rationale"\s*:\s*"([^"]*)', candidate)
        rationale = m.group(1) if m else ""
    if error is None and (winner is None or len(scores) < 2):
        error = "JSON lacks winner or scores"
    return winner, scores, rationale.strip(), error


@dataclass
class OrderReading:
    """One reading: a layout, a labelling, the probe's probabilities and (for one labelling per layout) the
    JSON verdict. ``order`` keeps its stored name: it is the labelling."""

    order: Order
    prob_team_a: float
    label_probs: dict[str, float]
    found_labels: bool
    text: str
    winner_team: str | None
    scores: dict[str, dict[str, float]]  # by team
    rationale: str
    error: str | None
    layout: Layout = "spoken"
    asked_json: bool = True  # False: a probe-only reading (no text, scores or rationale)

    def as_dict(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "layout": self.layout,
            "prob_team_a": self.prob_team_a,
            "label_probs": self.label_probs,
            "found_labels": self.found_labels,
            "json": self.asked_json,
            "text": self.text,
            "winner_team": self.winner_team,
            "error": self.error,
        }


def _probe_only(order: Order, layout: Layout, probed: tuple[dict[str, float], bool]) -> OrderReading:
    probs, found = probed
    return OrderReading(order, probs[labels_for(order)["A"]], probs, found, "", None, {}, "", None, layout, asked_json=False)


async def read_once(
    engine: Engine,
    judge: Persona,
    adapter: AdapterRef | None,
    motion: str,
    turns: Sequence[dict[str, Any]],
    order: Order,
    criteria: Sequence[str],
    max_tokens: int,
    request_id: str,
    seed: int | None,
    probed: tuple[dict[str, float], bool] | None = None,
    layout: Layout = "spoken",
) -> OrderReading:
    """A probe and a JSON verdict. ``probed``: this reading's label probe, when the caller already sent it."""
    messages = judge_messages(judge, motion, turns, order, criteria, layout)
    labels = labels_for(order)
    team_of = {v: k for k, v in labels.items()}
    sampling = Sampling(
        temperature=judge.sampling.temperature,
        top_p=judge.sampling.top_p,
        max_tokens=max_tokens,
        seed=seed,
        json_schema=verdict_schema(criteria) if engine.info.supports_json_schema else None,
    )
    # The probe first, then the verdict: the probe is one token, so it costs little more than its prefill,
    # and the verdict's prompt (the whole transcript) is then served from the prefix cache. Sent together,
    # both were prefilled in the same engine step and neither could reuse the other's blocks.
    probs, found = probed if probed is not None else await probe_labels(engine, adapter, messages, f"{request_id}-probe")
    verdict = await engine.generate(GenerationRequest(f"{request_id}-json", ChatPrompt(tuple(messages)), sampling, adapter))
    winner_label, scores_by_label, rationale, error = parse_verdict(verdict.text, criteria)
    return OrderReading(
        order=order,
        prob_team_a=probs[labels["A"]],
        label_probs=probs,
        found_labels=found,
        text=verdict.text,
        winner_team=team_of.get(winner_label) if winner_label else None,
        scores={team_of[label]: s for label, s in scores_by_label.items()},
        rationale=rationale,
        error=error,
        layout=layout,
    )


async def read_layout(
    engine: Engine,
    judge: Persona,
    adapter: AdapterRef | None,
    motion: str,
    turns: Sequence[dict[str, Any]],
    layout: Layout,
    criteria: Sequence[str],
    max_tokens: int,
    request_id: str,
    seed: int | None,
) -> list[OrderReading]:
    """Both labellings of one layout: the first probe alone, then the JSON verdict and the other probe at
    once. The transcript is prefilled once, and the two later requests (sent together, they would all have
    been prefilled in the same engine step) find it in the prefix cache."""
    first = JSON_ORDER[layout]
    second: Order = "BA" if first == "AB" else "AB"
    rid = f"{request_id}-{layout}" if layout != "spoken" else request_id  # spoken keeps the old request ids
    first_probe = await probe_labels(engine, adapter, judge_messages(judge, motion, turns, first, criteria, layout), f"{rid}-{first}-probe")
    with_json, second_probe = await asyncio.gather(
        read_once(engine, judge, adapter, motion, turns, first, criteria, max_tokens, f"{rid}-{first}", seed, probed=first_probe, layout=layout),
        probe_labels(engine, adapter, judge_messages(judge, motion, turns, second, criteria, layout), f"{rid}-{second}-probe"),
    )
    return [with_json, _probe_only(second, layout, second_probe)]


async def read_all(
    engine: Engine,
    judge: Persona,
    adapter: AdapterRef | None,
    motion: str,
    turns: Sequence[dict[str, Any]],
    criteria: Sequence[str],
    max_tokens: int,
    request_id: str,
    seed: int | None,
) -> list[OrderReading]:
    """The four readings of one judge (two layouts x two labellings); the layouts' chains run at once."""
    per_layout = await asyncio.gather(
        *(read_layout(engine, judge, adapter, motion, turns, layout, criteria, max_tokens, request_id, seed) for layout in LAYOUTS)
    )
    return [r for readings in per_layout for r in readings]


def _mean_scores(readings: Sequence[OrderReading]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for team in ("A", "B"):
        per_crit: dict[str, list[float]] = {}
        for r in readings:
            for c, v in r.scores.get(team, {}).items():
                per_crit.setdefault(c, []).append(v)
        if per_crit:
            out[team] = {c: sum(v) / len(v) for c, v in per_crit.items()}
    return out


def _side(prob_a: float) -> str | None:
    return "A" if prob_a > 0.5 else "B" if prob_a < 0.5 else None


def layout_leans(readings: Sequence[OrderReading]) -> dict[str, float]:
    """P(team A) per layout, its labellings averaged (so the label bias is gone), from probes that saw a label."""
    by_layout: dict[str, list[float]] = {}
    for r in readings:
        if r.found_labels:
            by_layout.setdefault(r.layout, []).append(r.prob_team_a)
    return {layout: sum(ps) / len(ps) for layout, ps in by_layout.items()}


def decide(prob_a: float, sides: Sequence[str | None], tie_band: float, *, informative: bool) -> str:
    """"A", "B" or "tie".

    ``sides``: what each part of the verdict leans to (a layout's P, or a panel member's verdict). Parts that
    lean to opposite sides make a tie: the verdict would depend on the layout (or on the judge). With
    probabilities (``informative``), a P within ``tie_band`` of 0.5 is a tie too. Without any (an engine
    that returns no logprobs), ``sides`` are the JSON winners, and only a unanimous one wins."""
    if "A" in sides and "B" in sides:
        return TIE
    if informative:
        if abs(prob_a - 0.5) < tie_band or prob_a == 0.5:
            return TIE
        return "A" if prob_a > 0.5 else "B"
    voted = set(sides)
    return voted.pop() if len(voted) == 1 and None not in voted and TIE not in voted else TIE


def tie_reason(prob_a: float, tie_band: float | None) -> str:
    """Why a verdict is a tie, in words, from what the verdict stores."""
    if tie_band is not None and (abs(prob_a - 0.5) < tie_band or prob_a == 0.5):
        return f"P(A wins) {prob_a:.2f} is within the tie band (0.5 ± {tie_band:g})"
    return "the readings leaned to different sides depending on the order the speeches were read in"


def combine(judge_name: str, debate_id: str, readings: Sequence[OrderReading], tie_band: float = DEFAULT_TIE_BAND) -> VerdictRecord:
    prob_a = sum(r.prob_team_a for r in readings) / len(readings)
    scores = _mean_scores(readings)
    if any(r.found_labels for r in readings):
        winner = decide(prob_a, [_side(p) for p in layout_leans(readings).values()], tie_band, informative=True)
    else:
        winner = decide(prob_a, [r.winner_team for r in readings if r.asked_json], tie_band, informative=False)
    rationale = next((r.rationale for r in readings if r.rationale), "")
    return VerdictRecord(
        debate_id=debate_id,
        judge=judge_name,
        winner=winner,
        prob_a=prob_a,
        # a server that returns no logprobs gives no probe: the verdict then says it has no confidence
        confidence=max(prob_a, 1 - prob_a) if any(r.found_labels for r in readings) else None,
        scores=scores,
        rationale=rationale,
        parsed=any(r.error is None for r in readings if r.asked_json),
        orders=[r.as_dict() for r in readings],
        created_at=time.time(),
        tie_band=tie_band,
    )


async def judge_debate(
    engine: Engine,
    judges: Sequence[Persona],
    adapters: dict[str, AdapterRef | None],
    debate_id: str,
    motion: str,
    turns: Sequence[dict[str, Any]],
    criteria: Sequence[str],
    max_tokens: int,
    seed: int | None,
    tie_band: float = DEFAULT_TIE_BAND,
) -> tuple[list[VerdictRecord], VerdictRecord]:
    """One verdict per judge (four readings each), and the panel's combined verdict (the judge's own if alone)."""
    meters = [Metered(engine) for _ in judges]  # each judge's readings and probes, counted as its verdict's tokens
    per_judge_readings = await asyncio.gather(
        *(read_all(m, j, adapters.get(j.name), motion, turns, criteria, max_tokens, f"{debate_id}-judge-{j.name}", seed)  # type: ignore[arg-type]
          for j, m in zip(judges, meters, strict=True))
    )
    per_judge = [
        dataclasses.replace(combine(j.name, debate_id, readings, tie_band), output_tokens=m.tokens)
        for j, readings, m in zip(judges, per_judge_readings, meters, strict=True)
    ]
    if len(per_judge) == 1:
        return per_judge, per_judge[0]
    prob_a = sum(v.prob_a for v in per_judge) / len(per_judge)
    readings = [r for rs in per_judge_readings for r in rs]
    informative = any(r.found_labels for r in readings)
    panel = VerdictRecord(
        debate_id=debate_id,
        judge="panel",
        # judges that disagree make a tie, as layouts do within one judge
        winner=decide(prob_a, [v.winner for v in per_judge], tie_band, informative=informative),
        prob_a=prob_a,
        confidence=max(prob_a, 1 - prob_a) if any(v.confidence is not None for v in per_judge) else None,
        scores=_mean_scores(readings),
        rationale=per_judge[0].rationale,
        parsed=any(v.parsed for v in per_judge),
        orders=[o for v in per_judge for o in v.orders],
        created_at=time.time(),
        tie_band=tie_band,
    )
    return per_judge, panel


async def side_win_probability(
    engine: Engine,
    judge: Persona,
    adapter: AdapterRef | None,
    motion: str,
    turns: Sequence[dict[str, Any]],
    side: str,
    criteria: Sequence[str],
    request_id: str,
) -> float:
    """P(``side`` wins | the debate so far), both labellings averaged: the best-of-N score of a candidate.

    A continuous score, never snapped to a tie: it ranks the candidates of one turn, and a small gap
    between two of them is information. Only the spoken layout is read: every candidate of a turn sits
    in the same position, so a position bias shifts them all alike and cannot change which is kept,
    and the spoken layout's prompts only grow turn by turn (prefix cache)."""
    # one labelling after the other: the second finds the transcript in the prefix cache
    probs = [await probe_labels(engine, adapter, judge_messages(judge, motion, turns, order, criteria), f"{request_id}-{order}") for order in ORDERS]
    return sum(p[labels_for(order)[side]] for (p, _), order in zip(probs, ORDERS, strict=True)) / len(ORDERS)
