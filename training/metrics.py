"""Training metrics: every log line the trainer emits goes to ``metrics.jsonl``, then to a PNG plot.

The JSONL file is the record (it travels with the adapter version); the plot is for a person. Steps
run on across stages, so an ORPO→SFT recipe reads as one curve with a marker where SFT starts.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

#: what the plot shows, panel by panel (keys as TRL logs them)
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("loss", "nll_loss")),
    ("rewards", ("rewards/chosen", "rewards/rejected", "rewards/margins")),
    ("log-odds", ("log_odds_ratio", "log_odds_chosen")),
    ("accuracy", ("rewards/accuracies", "mean_token_accuracy")),
    # GRPO: the summed reward and each reward function's mean (as TRL names them)
    (
        "GRPO reward",
        (
            "reward",
            "rewards/correctness_reward/mean",
            "rewards/strict_format_reward/mean",
            "rewards/soft_format_reward/mean",
            "rewards/tag_count_reward/mean",
        ),
    ),
)

SUMMARY_KEYS = (
    "loss",
    "nll_loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "log_odds_ratio",
    "log_odds_chosen",
    "mean_token_accuracy",
    "reward",
    "reward_std",
    "rewards/correctness_reward/mean",
    "rewards/strict_format_reward/mean",
    "rewards/soft_format_reward/mean",
    "rewards/tag_count_reward/mean",
    "completions/mean_length",
)


class MetricsLog(TrainerCallback):
    """Appends each ``on_log`` record as one JSON line, tagged with the stage it came from."""

    def __init__(self, path: Path, *, stage: int, method: str, step_offset: int = 0) -> None:
        self.path = path
        self.stage = stage
        self.method = method
        self.step_offset = step_offset
        self.records: list[dict[str, Any]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs:
            return
        record: dict[str, Any] = {
            "stage": self.stage,
            "method": self.method,
            "step": self.step_offset + int(state.global_step),
            "stage_step": int(state.global_step),
            "epoch": state.epoch,
            "time": time.time(),
        }
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                record[key] = float(value) if math.isfinite(float(value)) else None
        self.records.append(record)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per stage: steps, and the first and last value of each metric (training rows only)."""
    stages: dict[int, dict[str, Any]] = {}
    for rec in records:
        stage = stages.setdefault(rec["stage"], {"method": rec["method"], "steps": 0, "first": {}, "last": {}, "eval": {}})
        stage["steps"] = max(stage["steps"], rec.get("stage_step", 0))
        for key, value in rec.items():
            if value is None:
                continue
            if key.startswith("eval_"):
                stage["eval"][key.removeprefix("eval_")] = value
            elif key in SUMMARY_KEYS:
                stage["first"].setdefault(key, value)
                stage["last"][key] = value
            elif key == "train_runtime":
                stage["seconds"] = value
    return {"stages": [stages[k] for k in sorted(stages)]}


def plot_metrics(records: list[dict[str, Any]], out: Path, *, title: str) -> Path | None:
    """A PNG with one panel per metric family; ``None`` when there is nothing to plot."""
    rows = [r for r in records if not any(k.startswith("eval_") for k in r)]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: this runs in servers and tests
    import matplotlib.pyplot as plt

    panels = [(name, [k for k in keys if any(r.get(k) is not None for r in rows)]) for name, keys in PANELS]
    panels = [(name, keys) for name, keys in panels if keys]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels)), sharex=True, squeeze=False)
    for ax, (name, keys) in zip(axes[:, 0], panels, strict=True):
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=key)
        for rec in rows:
            if rec.get("stage_step") == 1 and rec["stage"] > 1:
                ax.axvline(rec["step"] - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
