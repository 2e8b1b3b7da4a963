#!/usr/bin/env bash
# One GPU session's figures, run detached on the device machine after the kit parts were moved to /tmp/kit
# (see docs/benchmarks.md, "Sweeps on the GPU"): installs the kits, then runs, in order,
#   1. bench/sweep_bench.py on a Llama-8B-shaped model with random weights and 4 adapters;
#   2. the closed training loop (`bonsai loop`, 2 generations) on the real embedded SmolLM2-135M.
# Usage (from the repository root there):  setsid nohup bash bench/gpu_session.sh /tmp/gpu-out [all|sweep|loop|prefix-tiny|sweep+prefix-tiny] >/dev/null 2>&1 &
# LEVELS=1,4,...  and SWEEP_ARGS="--max-num-seqs 512" change the sweep bench's levels and engine;
# PROFILE=1 writes a cProfile of the top level (which slows that level: not for the figures).
set -u
out=${1:?usage: gpu_session.sh OUTDIR [all|sweep|loop|prefix-tiny|sweep+prefix-tiny]}
what=${2:-all}
mkdir -p "$out"
exec >"$out/session.log" 2>&1
repo=$PWD
set -x
cd /tmp/kit && cat part.* > kit.tar && tar xf kit.tar && rm -f part.* kit.tar || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site wheels/*.whl || exit 1
if [ -d /tmp/kit-train ]; then
  (cd /tmp/kit-train && cat part.* > kit.tar && tar xf kit.tar && rm -f part.* kit.tar) || exit 1
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/kit-train/wheels/*.whl || exit 1
fi
cd "$repo"
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false BONSAI_HOME=/tmp/bonsai-home
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -m bonsai.cli.main model prepare
if [ "$what" = all ] || [ "$what" = sweep ] || [ "$what" = sweep+prefix-tiny ]; then
echo "== sweep bench (8B shape, random weights) =="
python3 bench/sweep_bench.py --shape 8b --levels ${LEVELS:-1,4,16,64,256} --adapters 4 --max-tokens 64 --kv-cache-gib 40 \
  --model-home /tmp/bonsai-home ${PROFILE:+--profile-dir "$out/prof"} --json-out "$out/sweep-bench.json" ${SWEEP_ARGS:-} > "$out/sweep-bench.log" 2>&1
echo "sweep bench exit $?"
fi
if [ "$what" = prefix-tiny ] || [ "$what" = sweep+prefix-tiny ]; then
echo "== prefix cache on the real SmolLM2-135M (readable text, so a turn's own words re-tokenize as generated) =="
python3 bench/sweep_bench.py --shape tiny --prefix-only --adapters 2 --max-tokens 64 --kv-cache-gib 8 \
  --model-home /tmp/bonsai-home --json-out "$out/prefix-tiny.json" > "$out/prefix-tiny.log" 2>&1
echo "prefix tiny exit $?"
fi
if [ "$what" = all ] || [ "$what" = loop ]; then
echo "== closed loop (SmolLM2-135M, 2 generations) =="
start=$SECONDS
python3 -m bonsai.cli.main loop --personas advocate,skeptic --generations 2 --max-steps 2 --debates 8 \
  --eval-max-motions 4 --json > "$out/loop.jsonl" 2> "$out/loop.err"
echo "loop exit $? after $((SECONDS - start)) s"
fi
echo DONE
