"""Persona rubrics: checks every speech of a persona should pass, each a pure function scoring 0..1.

The API the rest of bonsai uses::

    from bonsai.rubric import RubricContext, rubric_for

    rubric = rubric_for(persona)                     # None when the persona declares no rubric
    s = rubric.score(raw_text, RubricContext(motion, persona.language, opponent_last))
    s.total, s.checks                                # weighted mean 0..1, {check name: 0..1}

The package stands below :mod:`bonsai.personas` (which reads ``config``, the YAML models) and imports
nothing above it, so its names load eagerly.
"""

from __future__ import annotations

from bonsai.rubric.repairs import Repair, repair
from bonsai.rubric.rubric import Rubric, RubricContext, RubricOwner, RubricScore, last_opponent_answer, rubric_for

__all__ = ["Repair", "Rubric", "RubricContext", "RubricOwner", "RubricScore", "last_opponent_answer", "repair", "rubric_for"]
