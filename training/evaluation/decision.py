"""Whether a saved evaluation report passes the gate's criteria: the one decision ``bonsai eval``, the
gate and the loop share (so the gate needs nothing else of the evaluation)."""

from __future__ import annotations

from typing import Any, Literal

from bonsai.errors import ConfigError

Criterion = Literal["win_rate", "win_rate_not_worse", "rubric", "preference"]
CRITERIA: dict[str, str] = {
    "win_rate": "the judge's win rate: 95% lower bound above the threshold",
    "win_rate_not_worse": "the judge's win rate: 95% upper bound at least 0.5 (not significantly worse)",
    "rubric": "rubric score: the version's 95% lower bound above the reference's mean",
    "preference": "held-out preference accuracy: 95% lower bound above 0.5",
}


def decide(report: dict[str, Any], criteria: list[str], *, threshold: float = 0.5) -> tuple[bool, dict[str, str]]:
    """Whether a saved report passes every criterion, with a line per criterion saying why."""
    metrics = report.get("metrics") or {}
    judge = report.get("judge") or {}
    reasons: dict[str, str] = {}
    ok = True
    for criterion in criteria:
        if criterion in ("win_rate", "win_rate_not_worse"):
            if judge.get("n") is None or judge.get("ci_low") is None:
                passed, why = False, "no judged debates"
            elif criterion == "win_rate":
                passed = judge["ci_low"] > threshold
                why = f"win rate {judge['win_rate']:.2f}, 95% CI {judge['ci_low']:.2f}-{judge['ci_high']:.2f}; the lower bound must be above {threshold:.2f}"
            else:
                passed = judge["ci_high"] >= 0.5
                why = f"win rate {judge['win_rate']:.2f}, 95% CI {judge['ci_low']:.2f}-{judge['ci_high']:.2f}; the upper bound must reach 0.50"
        elif criterion == "rubric":
            row = metrics.get("rubric")
            if not row or row["candidate"]["low"] is None or row["reference"]["mean"] is None:
                passed, why = False, "no rubric scores (does the persona declare a rubric?)"
            else:
                passed = row["candidate"]["low"] > row["reference"]["mean"]
                why = f"rubric {row['candidate']['mean']:.3f} (95% lower bound {row['candidate']['low']:.3f}) vs the reference's {row['reference']['mean']:.3f}"
        elif criterion == "preference":
            row = metrics.get("preference_accuracy")
            if not row or row["candidate"]["low"] is None:
                passed, why = False, "no held-out preference pairs"
            else:
                passed = row["candidate"]["low"] > 0.5
                why = f"preference accuracy {row['candidate']['mean']:.2f} (95% lower bound {row['candidate']['low']:.2f}); the lower bound must be above 0.50"
        else:
            raise ConfigError(f"unknown gate criterion {criterion!r}", f"use any of: {', '.join(CRITERIA)}")
        ok = ok and passed
        reasons[criterion] = ("passed: " if passed else "failed: ") + why
    return ok, reasons
