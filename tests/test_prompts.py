"""Debater prompts rendered with the real SmolLM2 tokenizer over a simulated multi-turn debate.

The property that matters for vLLM's per-adapter prefix cache: a speaker's prompt for its next turn
starts with its previous prompt followed by its previous raw output, as text and as token ids.
"""

from __future__ import annotations

from typing import Any

import pytest

from bonsai.debate.formats import load_format
from bonsai.debate.graph import turn_summary
from bonsai.debate.prompts import (
    ALPACA_STOP,
    LANGUAGE_HINT,
    debater_prompt,
    moderator_prompt,
    prompt_to_json,
    render_item,
    stop_strings,
)
from bonsai.reasoning import FORMAT_INSTRUCTIONS, parse
from bonsai.debate.schedule import Cast, Slot, build_schedule
from bonsai.engine import ChatPrompt, Prompt, TextPrompt
from bonsai.personas import PersonaBook, ReasoningFormat

MOTION = "This house would plant a bonsai in every classroom"


@pytest.fixture(scope="module")
def tokenizer(base_model):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base_model.path))


def render(tokenizer: Any, prompt: Prompt) -> str:
    if isinstance(prompt, TextPrompt):
        return prompt.text
    return tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in prompt.messages], tokenize=False, add_generation_prompt=True
    )


def raw_output(speaker: str, fmt: ReasoningFormat, n: int) -> str:
    """What the speaker's model 'said' on its n-th turn, in its own reasoning format."""
    if fmt == ReasoningFormat.XML:
        return f"<reasoning>SECRET-{speaker}-{n}: weigh the cost.</reasoning>\n<answer>{speaker} answer {n}: 費用は下がる。</answer>"
    if fmt == ReasoningFormat.ALPACA:
        return f"### Reasoning\nSECRET-{speaker}-{n}: find the weak assumption.\n### Answer\n{speaker} answer {n}: it is unproven."
    return f"{speaker} answer {n}: one concrete point."


def simulate(book: PersonaBook, names: list[str], rounds: int) -> tuple[dict[str, list[tuple[Slot, Prompt, str]]], list[dict[str, Any]]]:
    """Play the schedule as the graph does: each debater's prompt is built from the turns so far."""
    cast = Cast.from_names(book, names)
    schedule = build_schedule(load_format("standard"), rounds, cast)
    history: list[dict[str, Any]] = []
    own: dict[str, list[tuple[Slot, Prompt, str]]] = {}
    for slot in schedule:
        if slot.kind == "moderator":
            text = f"{slot.title.capitalize()}. {slot.instruction}"
            history.append(turn_summary(slot, text, text))
            continue
        persona = book.get(slot.speaker)
        prompt = debater_prompt(persona, MOTION, history, slot)
        text = raw_output(persona.name, persona.reasoning, len(own.get(persona.name, [])))
        own.setdefault(persona.name, []).append((slot, prompt, text))
        history.append(turn_summary(slot, text, parse(text, persona.reasoning).answer))
    return own, history


@pytest.fixture(scope="module")
def debate() -> tuple[PersonaBook, dict[str, list[tuple[Slot, Prompt, str]]], list[dict[str, Any]]]:
    book = PersonaBook.load()
    own, history = simulate(book, ["advocate", "ronri", "skeptic", "bianlun"], rounds=4)
    return book, own, history


def test_every_debater_speaks_at_least_three_times(debate) -> None:  # type: ignore[no-untyped-def]
    _, own, _ = debate
    assert set(own) == {"advocate", "ronri", "skeptic", "bianlun"}
    assert all(len(turns) >= 3 for turns in own.values())
    assert isinstance(own["advocate"][0][1], ChatPrompt) and isinstance(own["ronri"][0][1], ChatPrompt)
    assert isinstance(own["skeptic"][0][1], TextPrompt)  # Alpaca renders its own text


@pytest.mark.parametrize("speaker", ["advocate", "ronri", "skeptic", "bianlun"])
def test_prompts_only_append(debate, tokenizer, speaker: str) -> None:  # type: ignore[no-untyped-def]
    _, own, _ = debate
    turns = own[speaker]
    for (_, prev, prev_out), (_, nxt, _) in zip(turns, turns[1:]):
        before, after = render(tokenizer, prev), render(tokenizer, nxt)
        assert after.startswith(before + prev_out), (before, after)
        assert len(after) > len(before + prev_out)  # the others' new turns and the next task follow
        # and as token ids, which is what the prefix cache compares
        ids_before = tokenizer(before, add_special_tokens=False)["input_ids"]
        ids_after = tokenizer(after, add_special_tokens=False)["input_ids"]
        assert ids_after[: len(ids_before)] == ids_before


def test_chat_prompt_ends_with_an_open_assistant_turn(debate, tokenizer) -> None:  # type: ignore[no-untyped-def]
    _, own, _ = debate
    rendered = render(tokenizer, own["advocate"][1][1])
    assert rendered.startswith("<|im_start|>system\nYou are Advocate")
    assert rendered.endswith("<|im_start|>assistant\n")
    # its own earlier output is kept verbatim as an assistant message
    assert f"<|im_start|>assistant\n{own['advocate'][0][2]}<|im_end|>" in rendered


def test_alpaca_prompt_layout(debate) -> None:  # type: ignore[no-untyped-def]
    book, own, _ = debate
    text = own["skeptic"][2][1].text
    assert text.startswith(book.get("skeptic").system_prompt.strip() + "\n\n### Instruction:\n")
    assert text.endswith("### Response:\n")
    assert text.count("### Instruction:") == 3 and text.count("### Response:") == 3
    assert stop_strings(book.get("skeptic")) == ALPACA_STOP
    assert stop_strings(book.get("advocate")) == ()


def test_other_speakers_reasoning_never_appears(debate, tokenizer) -> None:  # type: ignore[no-untyped-def]
    _, own, _ = debate
    speakers = list(own)
    for speaker, turns in own.items():
        for i, (_, prompt, _) in enumerate(turns):
            rendered = render(tokenizer, prompt)
            for other in speakers:
                if other != speaker:
                    assert f"SECRET-{other}" not in rendered, (speaker, other)
            # other speakers' public answers do reach it (after the first speaker's first turn)
            if i > 0:
                assert any(f"{o} answer" in rendered for o in speakers if o != speaker)
    # a reasoning speaker still sees its own reasoning, verbatim, in its own history
    assert "SECRET-ronri-0" in render(tokenizer, own["ronri"][1][1])
    assert "SECRET-skeptic-1" in render(tokenizer, own["skeptic"][2][1])


def test_motion_only_in_the_first_user_message(debate) -> None:  # type: ignore[no-untyped-def]
    _, own, _ = debate
    for speaker in ("advocate", "ronri", "bianlun"):
        last = own[speaker][-1][1]
        users = [m.content for m in last.messages if m.role == "user"]
        assert len(users) == len(own[speaker])
        assert MOTION in users[0]
        assert not any(MOTION in u for u in users[1:])
        assert not any(MOTION in m.content for m in last.messages if m.role != "user")
    text = own["skeptic"][-1][1].text
    assert text.count(MOTION) == 1
    first_instruction = text.split("### Instruction:")[1]
    assert MOTION in first_instruction


def test_side_and_stance_are_stated_once(debate) -> None:  # type: ignore[no-untyped-def]
    _, own, _ = debate
    users = [m.content for m in own["advocate"][-1][1].messages if m.role == "user"]
    assert "You are on team A, arguing for the motion." in users[0]
    assert all("You are on team" not in u for u in users[1:])
    text = own["skeptic"][-1][1].text
    assert text.count("You are on team B, arguing against the motion.") == 1


def test_language_and_format_hints(debate) -> None:  # type: ignore[no-untyped-def]
    book, own, _ = debate

    def last_user(speaker: str) -> str:
        prompt = own[speaker][-1][1]
        if isinstance(prompt, TextPrompt):
            return prompt.text.rsplit("### Instruction:\n", 1)[1]
        return prompt.messages[-1].content

    assert LANGUAGE_HINT["ja"] == "日本語で答えてください。"
    assert last_user("ronri").rstrip().endswith(LANGUAGE_HINT["ja"])
    assert FORMAT_INSTRUCTIONS[ReasoningFormat.XML] in last_user("ronri")
    assert last_user("bianlun").rstrip().endswith(LANGUAGE_HINT["zh"])
    assert FORMAT_INSTRUCTIONS[ReasoningFormat.ALPACA] in last_user("skeptic")
    for hint in (LANGUAGE_HINT["ja"], LANGUAGE_HINT["zh"]):
        assert hint not in last_user("advocate") and hint not in last_user("skeptic")
    assert "<reasoning>" not in last_user("advocate")
    # every own turn carries its language hint, not only the first
    for _, prompt, _ in own["ronri"]:
        assert prompt.messages[-1].content.count(LANGUAGE_HINT["ja"]) == 1


def test_user_message_carries_everything_said_since_the_last_own_turn(debate) -> None:  # type: ignore[no-untyped-def]
    _, own, history = debate
    slot, prompt, _ = own["advocate"][1]
    users = [m.content for m in prompt.messages if m.role == "user"]
    first_slot = own["advocate"][0][0]
    between = [t for t in history if first_slot.index < t["index"] < slot.index]
    assert between  # the others spoke in between
    for t in between:
        assert render_item(t) in users[-1]
    assert users[-1].endswith(f"Your turn ({slot.title}): {slot.instruction}")
    assert "skeptic (team B, against the motion)" in users[-1]


def test_first_speaker_first_prompt_has_no_history() -> None:
    book = PersonaBook.load()
    cast = Cast.from_names(book, None)
    slot = next(s for s in build_schedule(load_format("quick"), 1, cast) if s.kind == "debater")
    prompt = debater_prompt(book.get(slot.speaker), MOTION, [], slot)
    assert [m.role for m in prompt.messages] == ["system", "user"]
    assert prompt.messages[1].content == (
        f'Motion: "{MOTION}"\nYou are on team A, arguing for the motion.\n\nYour turn (opening): {slot.instruction}'
    )


def test_moderator_prompt_and_json_forms(debate, tokenizer) -> None:  # type: ignore[no-untyped-def]
    book, own, _ = debate
    cast = Cast.from_names(book, None)
    slot = build_schedule(load_format("standard"), 1, cast)[0]
    prompt = moderator_prompt(book.get("moderator"), MOTION, slot, ["advocate (team A)", "skeptic (team B)"])
    assert "advocate (team A), skeptic (team B)" in prompt.messages[1].content
    assert render(tokenizer, prompt).endswith("<|im_start|>assistant\n")
    chat = prompt_to_json(own["advocate"][1][1])
    assert chat["format"] == "chat" and chat["continue_final_message"] is False
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant", "user"]
    text = prompt_to_json(own["skeptic"][1][1])
    assert text == {"format": "text", "text": own["skeptic"][1][1].text}
