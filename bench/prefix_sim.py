"""Prefix-cache hit rate a sweep could reach: vLLM's cache simulated over the sweep's real prompts.

    .venv/bin/python bench/prefix_sim.py [CONCURRENCY] [MOTIONS] [ROUNDS]   # default 1 4 2: the bench's prefix sweep

Runs the standard-format, 2-round sweep of ``sweep_bench.py``'s prefix figure through bonsai's own executor
and graph on a scripted engine (``tests/fakes.py``) that answers with prose (the same words, shuffled per
request, so debates share only what a real sweep's debates share), renders every prompt
with the embedded model's chat template and tokenizer, and replays the prompts in arrival order through a
simulated prefix cache (16-token blocks, hashed in a chain, one namespace per adapter; hits stop at the
first missing block and leave the prompt's last token to compute, as vLLM does). Prints the rate with
sharing between debates, without it, and per kind of request. Each request is assumed to find every
earlier request's blocks cached, so this is the ceiling for requests sent one after another.
"""
import asyncio, sys, tempfile, shutil, argparse, hashlib, random
from pathlib import Path
REPO = Path(__file__).resolve().parent.parent
for p in (REPO, REPO / "tests", REPO / "bench"):
    sys.path.insert(0, str(p))
from fakes import FakeEngine
from bonsai.engine import Completion, TextPrompt
from transformers import AutoTokenizer
from bonsai.model.prepare import prepare_embedded
from bonsai.paths import bonsai_home
BASE = prepare_embedded(bonsai_home(None)).path
tok = AutoTokenizer.from_pretrained(str(BASE))
PROSE = ("Cities that ban cars see cleaner air and safer streets, and shops gain more walkers than they lose drivers; "
         "the evidence from Oslo and Madrid shows trade rising after the change, while buses run faster. ") * 4

class Rec(FakeEngine):
    def __init__(s, **k):
        super().__init__(**k); s.log = []
    def render(s, p):
        if isinstance(p, TextPrompt): return p.text
        return tok.apply_chat_template([{"role": m.role, "content": m.content} for m in p.messages], tokenize=False,
                                       add_generation_prompt=not p.continue_final_message, continue_final_message=p.continue_final_message)
    def count_tokens(s, p): return len(tok(s.render(p), add_special_tokens=False).input_ids)
    async def generate(s, request):
        last = None
        async for ev in s.stream(request): last = ev
        text = last.text
        if request.sampling.max_tokens > 1 and "-json" not in request.request_id:
            # each speech its own word order: debates must not share transcripts by accident
            words = PROSE.split()
            random.Random(request.request_id).shuffle(words)
            text = " ".join(words[: int(request.sampling.max_tokens * 0.75)])
        ids = tok(s.render(request.prompt), add_special_tokens=False).input_ids
        s.log.append((request.adapter.name if request.adapter else None, ids, tok(text, add_special_tokens=False).input_ids, request.request_id))
        return Completion(last.request_id, text, len(ids), len(text.split()), "stop", 0.0, 0.0, last.logprobs, last.adapter_name)

def simulate(log, block=16):
    cache = set(); q = h = 0
    per = {}
    for adapter, ids, out, rid in log:
        def chain(seq):
            keys = []; prev = adapter
            for i in range(0, len(seq) - len(seq) % block, block):
                prev = hashlib.sha1(repr((prev, seq[i:i+block])).encode()).hexdigest(); keys.append(prev)
            return keys
        keys = chain(ids)
        hit = 0
        for k in keys:
            if k in cache: hit += block
            else: break
        hit = min(hit, len(ids) - 1)
        kind = "judge-probe" if "probe" in rid else "judge-json" if "json" in rid else "moderator" if "mod" in rid else "debater"
        a = per.setdefault(kind, [0, 0]); a[0] += len(ids); a[1] += hit
        q += len(ids); h += hit
        cache.update(chain(ids + out))
    return q, h, per

async def main(conc, motions, rounds=2):
    from sweep_bench import write_sweep, make_lora
    from bonsai.personas import PersonaBook
    from bonsai.store.transcripts import TranscriptStore
    from bonsai.debate.runner import DebateRunner
    from bonsai.sweep.config import load_sweep
    from bonsai.sweep.executor import SweepExecutor
    from bonsai.sweep.plan import plan_sweep
    home = Path(tempfile.mkdtemp())
    labels = {"A": [], "B": []}
    for i, (side, name) in enumerate([("A","advocate"),("B","skeptic")]):
        make_lora(BASE, home/"adapters"/name/f"bench{i:02d}", seed=i); labels[side].append(f"{name}@bench{i:02d}")
    path = write_sweep(home, "p", motions, labels["A"], labels["B"], argparse.Namespace(max_tokens=64), concurrency=conc, fmt="standard", rounds=rounds)
    book = PersonaBook.load(); eng = Rec()
    with TranscriptStore(home/"t.sqlite") as store:
        sweep = load_sweep(path); plan = plan_sweep(sweep, book, home)
        async with DebateRunner(eng, store, home/"ck.sqlite", book, home, BASE.name) as runner:
            r = await SweepExecutor(runner, store, plan, concurrency=conc, retries=0, backoff_s=0).run()
    q, h, per = simulate(eng.log)
    iso = [((rid.split("-")[0] + rid.split("-")[1]), a, ids, out, rid) for a, ids, out, rid in eng.log]
    q2, h2, per2 = simulate([(f"{d}|{a}", ids, out, rid) for d, a, ids, out, rid in iso])
    print(f"without sharing between debates: {h2}/{q2} = {h2/q2:.3f}")
    print(f"{r.finished} debates, {len(eng.log)} requests: ideal hit {h}/{q} = {h/q:.3f}")
    for k, (qq, hh) in per.items():
        print(f"  {k:12s} {qq:7d} prompt tokens ({qq/q:.0%}), hit {hh/qq:.3f} (without sharing between debates {per2[k][1]/per2[k][0]:.3f})")
    shutil.rmtree(home)
if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(*(args + [1, 4, 2][len(args):])))
