"""The same verdicts under the old judge rule and the new one, from a sweep's store (no engine needed).

    python bench/judge_fairness.py STORE SWEEP [--json]

Old rule (before ties): P(team A) = the mean of the two spoken-layout readings (labels swapped), and
the sign of P - 0.5 decides. The spoken layout's prompts are byte for byte the old judge's, so the old
verdict of each debate is recomputed exactly from the readings the new judge stored. New rule: the
stored verdict (four readings; a tie when the layouts lean to different sides or P is in the band).
Prints side A's win rate under each rule with a Wilson 95% interval (ties count half), the mean
P(team A) per layout, and why the ties are ties.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from bonsai.store.transcripts import TranscriptStore
from bonsai.stats import wilson_interval


def _lean(orders: list[dict], layout: str) -> float | None:
    ps = [o["prob_team_a"] for o in orders if o.get("layout", "spoken") == layout]
    return sum(ps) / len(ps) if ps else None


def analyse(store_path: Path, sweep: str) -> dict:
    rows = []
    with TranscriptStore(store_path, create=False) as store:
        for debate, verdicts, _tokens in store.sweep_results(sweep):
            if not verdicts:
                continue
            v = verdicts[-1]
            spoken, mirrored = _lean(v.orders, "spoken"), _lean(v.orders, "mirrored")
            rows.append({
                "debate_id": debate.debate_id, "old_winner": "A" if spoken > 0.5 else "B" if spoken < 0.5 else "tie",
                "new_winner": v.winner, "p_spoken": spoken, "p_mirrored": mirrored, "prob_a": v.prob_a, "tie_band": v.tie_band,
                "layouts_disagree": mirrored is not None and (spoken - 0.5) * (mirrored - 0.5) < 0,
            })
    n = len(rows)

    def side_a(key: str) -> dict:
        points = sum(1.0 if r[key] == "A" else 0.5 if r[key] == "tie" else 0.0 for r in rows)
        low, high = wilson_interval(points, n)
        return {"wins_a": points, "n": n, "rate_a": points / n if n else None, "ci": [low, high],
                "ties": sum(r[key] == "tie" for r in rows), "contains_half": low <= 0.5 <= high}

    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows if r[key] is not None]
        return statistics.fmean(vals) if vals else None

    return {
        "store": str(store_path), "sweep": sweep, "debates": n,
        "old": side_a("old_winner"), "new": side_a("new_winner"),
        "mean_p_team_a": {"spoken": mean("p_spoken"), "mirrored": mean("p_mirrored"), "all": mean("prob_a")},
        "range_p_team_a": {"spoken": [min(r["p_spoken"] for r in rows), max(r["p_spoken"] for r in rows)] if rows else None,
                           "mirrored": [min(r["p_mirrored"] for r in rows), max(r["p_mirrored"] for r in rows)] if rows and rows[0]["p_mirrored"] is not None else None},
        "ties_because_layouts_disagree": sum(r["new_winner"] == "tie" and r["layouts_disagree"] for r in rows),
        "ties_in_band_only": sum(r["new_winner"] == "tie" and not r["layouts_disagree"] for r in rows),
        "debates_detail": rows,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("sweep")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = analyse(args.store, args.sweep)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for rule in ("old", "new"):
        r = result[rule]
        print(f"{rule}: side A {r['wins_a']:g}/{r['n']} = {r['rate_a']:.1%} (95% CI {r['ci'][0]:.1%}-{r['ci'][1]:.1%}), {r['ties']} ties")
    m, rng = result["mean_p_team_a"], result["range_p_team_a"]
    print(f"mean P(team A): spoken {m['spoken']:.4f} {rng['spoken']}, mirrored {m['mirrored']:.4f} {rng['mirrored']}, all four {m['all']:.4f}")
    print(f"ties: {result['ties_because_layouts_disagree']} layouts disagree, {result['ties_in_band_only']} in the band only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
