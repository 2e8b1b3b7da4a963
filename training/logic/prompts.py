"""How a logic problem is put to a persona: its system prompt, then the question and the tag format.

Training and evaluation build prompts here and nowhere else, so held-out correctness is measured on
exactly the prompt shape GRPO trained on.
"""

from __future__ import annotations

from bonsai.errors import ConfigError
from bonsai.personas import Persona, ReasoningFormat
from training.logic.problems import Problem

FORMAT_HINT = {
    "en": "Think step by step inside <reasoning>...</reasoning>, then write only the final answer inside <answer>...</answer>.",
    "ja": "<reasoning>...</reasoning> の中で順に考え、最終的な答えだけを <answer>...</answer> の中に書いてください。",
    "zh": "请先在 <reasoning>...</reasoning> 中逐步思考,再只把最终答案写在 <answer>...</answer> 中。",
}


def require_tag_format(persona: Persona) -> None:
    """GRPO's format rewards read ``<reasoning>``/``<answer>`` tags: a persona must write them."""
    if persona.reasoning == ReasoningFormat.XML:
        return
    what = "has no reasoning format" if persona.reasoning == ReasoningFormat.NONE else f"writes the {persona.reasoning.value} format"
    raise ConfigError(
        f"persona {persona.name!r} {what}, and GRPO's format rewards read <reasoning>…</reasoning><answer>…</answer> tags",
        "train the logician persona (`bonsai train logician --recipe grpo`), or give the persona `reasoning: xml-tags`",
    )


def messages(problem: Problem, persona: Persona) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": persona.system_prompt.strip()},
        {"role": "user", "content": f"{problem.question}\n\n{FORMAT_HINT[problem.lang]}"},
    ]
