"""Persona rubrics: checks every speech of a persona should pass, each a pure function scoring 0..1.

The API the rest of bonsai uses::

    from bonsai.rubric import RubricContext, rubric_for

    rubric = rubric_for(persona)                     # None when the persona declares no rubric
    s = rubric.score(raw_text, RubricContext(motion, persona.language, opponent_last))
    s.total, s.checks                                # weighted mean 0..1, {check name: 0..1}

``config`` (the YAML models) is imported by :mod:`bonsai.personas`, and the scoring code imports
personas in turn, so the names below load on first use: importing the package to read a persona
never pulls in the scoring code half-initialized.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bonsai.rubric.repairs import Repair, repair
    from bonsai.rubric.rubric import Rubric, RubricContext, RubricScore, last_opponent_answer, rubric_for

_LAZY = {
    "Rubric": "bonsai.rubric.rubric",
    "RubricContext": "bonsai.rubric.rubric",
    "RubricScore": "bonsai.rubric.rubric",
    "rubric_for": "bonsai.rubric.rubric",
    "last_opponent_answer": "bonsai.rubric.rubric",
    "Repair": "bonsai.rubric.repairs",
    "repair": "bonsai.rubric.repairs",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bonsai.rubric' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
