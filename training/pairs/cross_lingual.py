"""``cross-lingual``: for a Japanese or Chinese persona, its English self translated, against its native answer.

A 135M model argues far better in English than in Japanese or Chinese. So each stored turn's prompt is
asked again in English, the English answer is translated by the translator persona into the persona's
language, and that translation is chosen over the persona's own native answer (rejected).

How the prompt is asked in English (the rest of the prompt is kept verbatim: the motion, the other
speakers' answers and the persona's own earlier turns, whatever their language):

* the system prompt (chat) or the text before the first ``### Instruction:`` (Alpaca) is replaced by
  :func:`english_system_prompt`: the persona's name, team and side, in English (or ``system_prompt``);
* in every user message / instruction, the language hint that :mod:`bonsai.debate.prompts` appends
  (``LANGUAGE_HINT``, e.g. ``日本語で答えてください。``) becomes ``Answer in English.``; the last one gets
  it appended if it had no hint.

The English answer comes from the persona's own adapter. Its reasoning and answer are translated
separately and put back in the persona's reasoning format, so the tags survive translation intact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import Field

from bonsai.registry import resolve_persona_adapter
from bonsai.debate.prompts import LANGUAGE_HINT
from bonsai.reasoning import parse
from bonsai.engine import ChatMessage, ChatPrompt, Completion, GenerationRequest, Prompt, Sampling, TextPrompt
from bonsai.registry.identity import inspect_adapter
from bonsai.errors import ConfigError
from bonsai.personas import Persona, ReasoningFormat, Role, Team
from training.pairs.base import Pair, PairContext, Strategy, StrategyParams, TurnSource, generate_all, pair_seed, turn_sampling

log = logging.getLogger(__name__)

ENGLISH_HINT = "Answer in English."
LANGUAGE_NAMES = {"ja": "Japanese", "zh": "Simplified Chinese"}
_INSTRUCTION = "### Instruction:"
_RESPONSE = "\n\n### Response:\n"


class CrossLingualParams(StrategyParams):
    translator: str = Field("translator", description="Persona (role: translator) that translates the English answers.")
    translation_max_tokens: int | None = Field(None, ge=1, le=8192, description="Token budget per translation (default: the translator's max_tokens).")
    system_prompt: str | None = Field(None, description="English system prompt to ask with (default: built from the persona's name and side).")


def english_system_prompt(persona: Persona) -> str:
    side = "FOR" if persona.team == Team.A else "AGAINST"
    return (
        f"You are {persona.name.capitalize()}, a debater on team {persona.team.value}. You argue {side} the motion, in English. "
        "Make one or two concrete, well-supported points per turn, answer the other side's strongest point directly, "
        f"and keep it short. Never argue {'against' if side == 'FOR' else 'for'} the motion."
    )


def _to_english(text: str, hint: str) -> str:
    return text.replace(hint, ENGLISH_HINT) if hint else text


def english_prompt(prompt: Prompt, persona: Persona, system_prompt: str | None = None) -> Prompt:
    """``prompt`` asked in English (see the module docstring for exactly what changes)."""
    hint = LANGUAGE_HINT.get(persona.language, "")
    system = system_prompt or english_system_prompt(persona)
    if isinstance(prompt, TextPrompt):
        head, sep, rest = prompt.text.partition(_INSTRUCTION)
        if not sep:
            return TextPrompt(prompt.text)
        rest = _to_english(rest, hint)
        start = max(rest.rfind(_INSTRUCTION), 0)  # the last instruction: the turn being asked
        end = rest.rfind(_RESPONSE)
        if end > start and ENGLISH_HINT not in rest[start:end]:
            rest = f"{rest[:end]} {ENGLISH_HINT}{rest[end:]}"
        return TextPrompt(f"{system}\n\n{sep}{rest}")
    messages = [
        ChatMessage(m.role, system if m.role == "system" else _to_english(m.content, hint) if m.role == "user" else m.content)
        for m in prompt.messages
    ]
    if not messages or messages[0].role != "system":
        messages.insert(0, ChatMessage("system", system))
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last_user is not None and ENGLISH_HINT not in messages[last_user].content:
        messages[last_user] = ChatMessage("user", f"{messages[last_user].content} {ENGLISH_HINT}".strip())
    return ChatPrompt(tuple(messages), prompt.continue_final_message)


def in_format(fmt: ReasoningFormat, reasoning: str | None, answer: str) -> str:
    """Reasoning and answer laid out the way a persona of format ``fmt`` writes them."""
    if fmt == ReasoningFormat.XML:
        return f"<reasoning>{reasoning}</reasoning>\n<answer>{answer}</answer>" if reasoning else f"<answer>{answer}</answer>"
    if fmt == ReasoningFormat.ALPACA:
        return f"### Reasoning\n{reasoning}\n\n### Answer\n{answer}" if reasoning else f"### Answer\n{answer}"
    return answer


def translation_prompt(translator: Persona, text: str, language: str) -> ChatPrompt:
    return ChatPrompt(
        (
            ChatMessage("system", translator.system_prompt.strip()),
            ChatMessage("user", f"Translate the following text into {LANGUAGE_NAMES[language]}.\n\n{text}"),
        )
    )


@dataclass
class _Job:
    src: TurnSource
    english: Completion | None = None
    reasoning: str | None = None
    answer: str = ""


class CrossLingual(Strategy):
    name = "cross-lingual"
    Params = CrossLingualParams
    params: CrossLingualParams

    def check(self, persona: Persona) -> None:
        if persona.language not in LANGUAGE_NAMES:
            raise ConfigError(
                f"cross-lingual pairs are for Japanese or Chinese personas; {persona.name!r} speaks {persona.language!r}",
                f"use it for a ja/zh persona (e.g. ronri, bianlun), or pick another strategy for {persona.name}",
            )

    def _translator(self, ctx: PairContext) -> Persona:
        translator = ctx.book.get(self.params.translator)
        if translator.role != Role.TRANSLATOR:
            raise ConfigError(f"persona {translator.name!r} is a {translator.role.value}, not a translator", "pass --translator with a persona of role: translator")
        return translator

    async def build(self, ctx: PairContext) -> list[Pair]:
        self.check(ctx.persona)
        translator = self._translator(ctx)
        if not ctx.sources:
            return []
        own_path = resolve_persona_adapter(ctx.persona, ctx.home)
        own = inspect_adapter(own_path) if own_path else None
        tr_path = resolve_persona_adapter(translator, ctx.home)
        tr_ref = inspect_adapter(tr_path) if tr_path else None
        engine = await ctx.engines.main([r for r in (own, tr_ref) if r is not None], why="the cross-lingual strategy")

        jobs = [_Job(src) for src in ctx.sources]
        asks = [
            GenerationRequest(
                f"xl-en-{job.src.key}",
                english_prompt(job.src.prompt, ctx.persona, self.params.system_prompt),
                turn_sampling(job.src.turn, seed=pair_seed(ctx.seed, self.name, job.src.key), max_tokens=ctx.max_tokens),
                own,
            )
            for job in jobs
        ]
        log.info("cross-lingual: asking %d prompts in English", len(asks))
        for job, result in zip(jobs, await generate_all(engine, asks, concurrency=ctx.concurrency), strict=True):
            job.english = result
            if result is not None:
                parsed = parse(result.text, ctx.persona.reasoning)
                job.reasoning, job.answer = parsed.reasoning, parsed.answer

        tr_sampling = translator.sampling
        pieces: list[tuple[_Job, str]] = []  # (job, "reasoning" | "answer")
        requests: list[GenerationRequest] = []
        for job in jobs:
            if job.english is None:
                ctx.drop("generation_prompt_too_long")
                continue
            if not job.answer.strip():
                ctx.drop("empty_generation")
                continue
            for part in ("reasoning", "answer"):
                text = getattr(job, part)
                if not text:
                    continue
                pieces.append((job, part))
                requests.append(
                    GenerationRequest(
                        f"xl-tr-{job.src.key}-{part}",
                        translation_prompt(translator, text, ctx.persona.language),
                        Sampling(
                            temperature=tr_sampling.temperature,
                            top_p=tr_sampling.top_p,
                            max_tokens=self.params.translation_max_tokens or tr_sampling.max_tokens,
                            seed=pair_seed(ctx.seed, self.name, job.src.key, part),
                            repetition_penalty=tr_sampling.repetition_penalty,
                        ),
                        tr_ref,
                    )
                )
        log.info("cross-lingual: %d translations by %s", len(requests), translator.name)
        translated: dict[int, dict[str, str | None]] = {}
        for (job, part), result in zip(pieces, await generate_all(engine, requests, concurrency=ctx.concurrency), strict=True):
            translated.setdefault(id(job), {})[part] = result.text.strip() if result is not None else None

        pairs = []
        for job in jobs:
            parts = translated.get(id(job))
            if parts is None:
                continue  # dropped above
            answer, reasoning = parts.get("answer"), parts.get("reasoning")
            if not answer or ("reasoning" in parts and not reasoning):
                ctx.drop("empty_translation")
                continue
            assert job.english is not None
            pairs.append(
                Pair(
                    source=job.src,
                    strategy=self.name,
                    chosen=in_format(ctx.persona.reasoning, reasoning, answer),
                    rejected=job.src.turn.text,
                    meta={
                        "english": job.english.text,
                        "english_adapter": own.name if own else None,
                        "translator": translator.name,
                        "translator_adapter": tr_ref.name if tr_ref else None,
                        "language": ctx.persona.language,
                    },
                )
            )
        return pairs


STRATEGY = CrossLingual
