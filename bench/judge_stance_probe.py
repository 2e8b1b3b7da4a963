"""Where does a judge's residual lean come from? Re-probe a sweep's stored debates with the sides' stance
words swapped in the judge's prompt only (team A described as against the motion, team B as for it).

    flock /tmp/bonsai-heavy.lock python bench/judge_stance_probe.py STORE SWEEP

For each debate, P(team A) from the one-token probes of both labellings, in speaking order and mirrored,
with the true stance words and with them swapped. If the lean follows the words "for the motion", the
judge prefers a stance label; if it stays with team A, it is what team A said (or its seat). Greedy
probes on the same engine as the sweep; single-rounds formats only (titles are the phase names).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bonsai.debate import judge as judging  # noqa: E402
from bonsai.model.prepare import resolve_base  # noqa: E402
from bonsai.paths import bonsai_home  # noqa: E402
from bonsai.personas import PersonaBook  # noqa: E402
from bonsai.store.transcripts import TranscriptStore  # noqa: E402


async def main(store_path: Path, sweep: str) -> dict:
    from bonsai.engine.vllm_local import VLLMEngine

    base = resolve_base(None, bonsai_home(None))
    judge = PersonaBook.load().get("judge")
    with TranscriptStore(store_path, create=False) as store:
        debates = [(d, [{"kind": t.role, "team": t.team, "title": t.phase, "speaker": t.speaker, "answer": t.answer} for t in store.turns(d.debate_id)])
                   for d, _v, _t in store.sweep_results(sweep)]
    criteria = ["logic", "rebuttal"]
    out: dict[str, list[float]] = {}
    async with VLLMEngine(base.path, base_hash=base.content_hash, max_model_len=4096, log_stats=False) as engine:
        for stance_name, stance in (("true", {"A": "for", "B": "against"}), ("swapped", {"A": "against", "B": "for"})):
            judging.SIDE_STANCE.clear()
            judging.SIDE_STANCE.update(stance)
            for layout in judging.LAYOUTS:
                leans = []
                for d, turns in debates:
                    ps = []
                    for order in judging.ORDERS:
                        msgs = judging.judge_messages(judge, d.motion, turns, order, criteria, layout)
                        probs, _found = await judging.probe_labels(engine, None, msgs, f"{d.debate_id}-{stance_name}-{layout}-{order}")
                        ps.append(probs[judging.labels_for(order)["A"]])
                    leans.append(sum(ps) / 2)
                out[f"{stance_name}/{layout}"] = leans
    judging.SIDE_STANCE.update({"A": "for", "B": "against"})
    summary = {k: {"mean_p_team_a": statistics.fmean(v), "team_a_ahead": sum(p > 0.5 for p in v), "n": len(v)} for k, v in out.items()}
    return {"store": str(store_path), "sweep": sweep, "summary": summary, "per_debate": out}


if __name__ == "__main__":
    result = asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
    for k, v in result["summary"].items():
        print(f"{k:18s} mean P(team A) {v['mean_p_team_a']:.4f}, team A ahead in {v['team_a_ahead']}/{v['n']}")
    if len(sys.argv) > 3:
        Path(sys.argv[3]).write_text(json.dumps(result, indent=2))
