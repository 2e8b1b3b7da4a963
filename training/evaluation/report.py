"""An evaluation on the terminal, as JSON beside the version, and as a plot of each metric's change."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

from bonsai import atomic
from bonsai.registry import evaluation_path

log = logging.getLogger(__name__)

#: metrics shown first, in this order; the rubric's checks follow
HEADLINE = ("rubric", "preference_accuracy", "preference_margin", "judge_win_rate", "tokens_per_turn")


def ordered(metrics: dict[str, Any]) -> list[str]:
    head = [m for m in HEADLINE if m in metrics]
    return head + sorted(m for m in metrics if m not in head)


def _cell(est: dict[str, Any]) -> str:
    if est.get("mean") is None:
        return "n/a"
    if est.get("n", 0) == 0 and est.get("low") == est.get("mean"):
        return f"{est['mean']:.3f}"
    return f"{est['mean']:.3f} [{est['low']:.3f}, {est['high']:.3f}]"


def format_table(report: dict[str, Any]) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['persona']}@{report['version']} vs {report['reference']} on {len(report['motions'])} held-out motions (95% intervals)")
    table.add_column("metric")
    table.add_column(report["version"], justify="right")
    table.add_column(report["reference"], justify="right")
    table.add_column("change", justify="right")
    for name in ordered(report["metrics"]):
        row = report["metrics"][name]
        delta = row["delta"]
        sign = ""
        if delta.get("low") is not None and delta["low"] > 0:
            sign = " ▲"
        elif delta.get("high") is not None and delta["high"] < 0:
            sign = " ▼"
        table.add_row(name, _cell(row["candidate"]), _cell(row["reference"]), _cell(delta) + sign)
    console = Console(width=140, record=True, force_terminal=False)
    with console.capture() as cap:
        console.print(table)
        for note in report.get("notes", []):
            console.print(f"note: {note}")
        if report.get("gate"):
            gate = report["gate"]
            console.print(f"gate: {'passes' if gate['passed'] else 'does not pass'}")
            for criterion, why in gate["reasons"].items():
                console.print(f"  {criterion}: {why}")
    return cap.get()


def plot_changes(report: dict[str, Any], out: Path) -> Path | None:
    """One row per metric: the change against the reference with its 95% interval (zero marked)."""
    names = [n for n in ordered(report["metrics"]) if report["metrics"][n]["delta"].get("mean") is not None and n != "tokens_per_turn"]
    if not names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.4))
    for i, name in enumerate(names):
        d = report["metrics"][name]["delta"]
        colour = "tab:green" if d["low"] > 0 else "tab:red" if d["high"] < 0 else "tab:gray"
        ax.errorbar(d["mean"], i, xerr=[[d["mean"] - d["low"]], [d["high"] - d["mean"]]], fmt="o", color=colour, capsize=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"change vs {report['reference']} (95% interval)")
    ax.set_title(f"{report['persona']}@{report['version']}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    atomic.write_bytes(out, buf.getvalue())
    return out


def eval_paths(home: Path, persona: str, version: str, reference: str) -> tuple[Path, Path]:
    folder = evaluation_path(home, persona, version).parent
    stem = f"{version}-eval-vs-{reference}"
    return folder / f"{stem}.json", folder / f"{stem}.png"


def save_report(home: Path, report: dict[str, Any], *, plot: bool = True) -> dict[str, str]:
    json_path, png_path = eval_paths(home, report["persona"], report["version"], report["reference"])
    json_path.parent.mkdir(parents=True, exist_ok=True)
    written = {"json": str(json_path)}
    if plot:
        made = plot_changes(report, png_path)
        if made is not None:
            written["plot"] = str(made)
    atomic.write_text(json_path, json.dumps({**report, "files": written}, ensure_ascii=False, indent=1))
    return written


def load_reports(home: Path, persona: str, version: str) -> list[dict[str, Any]]:
    folder = evaluation_path(home, persona, version).parent
    out = []
    for path in sorted(folder.glob(f"{version}-eval-vs-*.json")):
        try:
            out.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("cannot read the evaluation %s: %s", path, exc)
    return out


def plot_generations(summaries: list[dict[str, Any]], out: Path) -> Path | None:
    """Each persona's headline metrics across a loop's generations (candidate with its 95% interval,
    the reference it was measured against as a hollow marker)."""
    series: dict[tuple[str, str], list[tuple[int, dict[str, Any], dict[str, Any]]]] = {}
    for gen, summary in enumerate(summaries, 1):
        for persona, s in summary.items():
            for name, row in (s.get("metrics") or {}).items():
                if name in HEADLINE and name != "tokens_per_turn" and row["candidate"].get("mean") is not None:
                    series.setdefault((persona, name), []).append((gen, row["candidate"], row["reference"]))
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({name for _, name in series}, key=HEADLINE.index)
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.3 * len(names)), squeeze=False, sharex=True)
    for ax, name in zip(axes[:, 0], names, strict=True):
        for (persona, metric), points in sorted(series.items()):
            if metric != name:
                continue
            gens = [g for g, _, _ in points]
            means = [c["mean"] for _, c, _ in points]
            err = [[c["mean"] - c["low"] for _, c, _ in points], [c["high"] - c["mean"] for _, c, _ in points]]
            line = ax.errorbar(gens, means, yerr=err, marker="o", capsize=3, label=persona)
            refs = [(g, r["mean"]) for g, _, r in points if r.get("mean") is not None]
            if refs:
                ax.plot([g for g, _ in refs], [m for _, m in refs], linestyle="none", marker="o", mfc="none", color=line[0].get_color())
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    last = max(g for points in series.values() for g, _, _ in points)
    axes[-1, 0].set_xticks(range(1, last + 1))
    axes[-1, 0].set_xlim(0.5, last + 0.5)
    axes[-1, 0].set_xlabel("generation (filled: new version, hollow: what it was measured against)")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    atomic.write_bytes(out, buf.getvalue())
    return out
