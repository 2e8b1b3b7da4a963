"""Time from `bonsai debate` start to its first streamed token, with an engine already running.

    bonsai engine start --port 8000          # once; then:
    .venv/bin/python bench/first_token.py [--endpoint http://127.0.0.1:8000] [--base DIR] [--repeat 3]

Without --endpoint the debate finds the resident engine by itself (started with `bonsai engine start` in
the same $BONSAI_HOME). Each run is a fresh `python -m bonsai debate ... --jsonl` process (imports
included, as a user waits for them). Prints one JSON
line per run and a summary with the median; target on the 2-core CPU machine: <= 2 s. Each debate
is killed once its first token arrives.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MOTION = "This house believes that cities should ban private cars from their centres"


def one_run(endpoint: str | None, store: Path, base: str | None) -> dict[str, float]:
    cmd = [sys.executable, "-m", "bonsai", "debate", MOTION, "--jsonl", "--store", str(store), *(["--base", base] if base else [])]
    if endpoint:
        cmd += ["--engine", "openai", "--endpoint", endpoint]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    first_event = first_token = None
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.perf_counter() - t0
        event = json.loads(line).get("event")
        first_event = first_event if first_event is not None else now
        if event == "token":
            first_token = now
            break
    # measured: no need to wait for a clean Ctrl-C (which lets the turn in flight finish)
    os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    if first_token is None:
        raise SystemExit(f"no token came: {err}")
    return {"first_event_s": round(first_event or 0.0, 3), "first_token_s": round(first_token, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", default=None, help="pass --engine openai --endpoint URL (default: the resident engine)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--base", default=None, help="pass --base DIR to the debate (the folder the engine serves)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for i in range(args.repeat):
            run = one_run(args.endpoint, Path(tmp) / f"store-{i}.sqlite", args.base)
            print(json.dumps(run), flush=True)
            runs.append(run["first_token_s"])
    print(json.dumps({"runs": runs, "median_first_token_s": statistics.median(runs)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
