"""Prompts for each seat, built so that a speaker's consecutive prompts only ever append.

vLLM's prefix cache is per adapter, and each debater has its own adapter, so the cache only helps if
speaker X's prompt for turn n+1 starts with its prompt for turn n. Each debater therefore sees the
debate as its own conversation: one user message carrying everything said since its last turn, its
own previous outputs verbatim as assistant messages (raw, reasoning included), never a re-summary.
Opponents, teammates and the judge see answers only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bonsai.reasoning import FORMAT_INSTRUCTIONS
from bonsai.debate.schedule import SIDE_STANCE, Slot
from bonsai.engine import ChatMessage, ChatPrompt, Prompt, TextPrompt
from bonsai.personas import Persona, ReasoningFormat

LANGUAGE_HINT = {"en": "", "ja": "日本語で答えてください。", "zh": "请用中文回答。"}

#: Alpaca personas stop before they start writing the next instruction themselves.
ALPACA_STOP = ("### Instruction:",)

Turn = dict[str, Any]  # a turn summary as kept in the graph state (see bonsai.debate.state)


def render_item(turn: Turn) -> str:
    if turn["kind"] == "moderator":
        return f"Moderator: {turn['answer']}"
    stance = SIDE_STANCE[turn["team"]]
    return f"{turn['speaker']} (team {turn['team']}, {stance} the motion), {turn['title']}:\n{turn['answer']}"


def _user_message(persona: Persona, motion: str, slot_like: Turn | Slot, items: list[str], first: bool) -> str:
    title = slot_like["title"] if isinstance(slot_like, dict) else slot_like.title
    instruction = slot_like["instruction"] if isinstance(slot_like, dict) else slot_like.instruction
    parts: list[str] = []
    if first:
        side = persona.team.value
        parts.append(f'Motion: "{motion}"\nYou are on team {side}, arguing {SIDE_STANCE[side]} the motion.')
    if items:
        parts.append("\n\n".join(items))
    task = f"Your turn ({title}): {instruction}"
    extra = " ".join(x for x in (FORMAT_INSTRUCTIONS[persona.reasoning], LANGUAGE_HINT[persona.language]) if x)
    parts.append(f"{task} {extra}".strip())
    return "\n\n".join(parts)


def _exchanges(persona: Persona, motion: str, history: Sequence[Turn], slot: Slot) -> list[tuple[str, str | None]]:
    """(user message, own raw output) pairs; the last pair is the current turn with output None."""
    out: list[tuple[str, str | None]] = []
    pending: list[str] = []
    for turn in history:
        if turn["speaker"] == persona.name and turn["kind"] == "debater":
            out.append((_user_message(persona, motion, turn, pending, first=not out), turn["text"]))
            pending = []
        else:
            pending.append(render_item(turn))
    out.append((_user_message(persona, motion, slot, pending, first=not out), None))
    return out


def debater_prompt(persona: Persona, motion: str, history: Sequence[Turn], slot: Slot) -> Prompt:
    exchanges = _exchanges(persona, motion, history, slot)
    if persona.reasoning == ReasoningFormat.ALPACA:
        text = persona.system_prompt.strip() + "\n\n"
        for user, own in exchanges:
            text += f"### Instruction:\n{user}\n\n### Response:\n"
            if own is not None:
                text += f"{own}\n\n"
        return TextPrompt(text)
    messages = [ChatMessage("system", persona.system_prompt.strip())]
    for user, own in exchanges:
        messages.append(ChatMessage("user", user))
        if own is not None:
            messages.append(ChatMessage("assistant", own))
    return ChatPrompt(tuple(messages))


def stop_strings(persona: Persona) -> tuple[str, ...]:
    return ALPACA_STOP if persona.reasoning == ReasoningFormat.ALPACA else ()


def moderator_prompt(moderator: Persona, motion: str, slot: Slot, speakers: list[str]) -> Prompt:
    user = (
        f'Motion: "{motion}"\nNext phase: {slot.title}. Speakers in order: {", ".join(speakers)}.\n'
        f"The speakers are asked: {slot.instruction}\nIntroduce this phase in one sentence."
    )
    return ChatPrompt((ChatMessage("system", moderator.system_prompt.strip()), ChatMessage("user", user)))


def prompt_to_json(prompt: Prompt) -> Any:
    """The prompt as stored with each turn (training rebuilds preference pairs from it)."""
    if isinstance(prompt, TextPrompt):
        return {"format": "text", "text": prompt.text}
    return {
        "format": "chat",
        "messages": [{"role": m.role, "content": m.content} for m in prompt.messages],
        "continue_final_message": prompt.continue_final_message,
    }



def prompt_from_json(data: Any) -> Prompt:
    """The inverse of :func:`prompt_to_json`: a stored turn's prompt, ready to send again."""
    if not isinstance(data, dict) or data.get("format") not in ("chat", "text"):
        raise ValueError(f"not a stored prompt: {data!r:.80}")
    if data["format"] == "text":
        return TextPrompt(str(data["text"]))
    return ChatPrompt.of(data["messages"], continue_final_message=bool(data.get("continue_final_message", False)))
