#!/usr/bin/env bash
# The learning figures on one GPU (docs/benchmarks-train.md), run on the device machine after the kits
# of docs/benchmarks.md (vLLM, to /tmp/kit) and docs/benchmarks-train.md (TRL, Unsloth: /tmp/kit-train)
# were moved there:
#   1. `bonsai loop --preset gpu --personas ronri --generations 3` on the real SmolLM2-135M (bench/learn_bench.py):
#      every metric per generation with its interval, and the plot across generations;
#   2. `bonsai train logician --recipe grpo` with TRL+PEFT and with Unsloth: steps/s, rewards, and the logic
#      teacher's held-out correctness before and after;
#   3. `bonsai serve` with its defaults (the dtype it picks on a GPU) until it answers, then one debate on it;
#   4. sweep/raw (issue 12): bench/sweep_bench.py on a Llama-8B-shaped model with random weights, medians of
#      ${REPEAT:-3} runs at ${RATIO_LEVELS:-256,1024} debates in flight, each from an empty prefix cache, and a
#      profiled extra run per level (PROFILE=0: none);
#   5. beside: two engines on one card. `bonsai serve` with its defaults, a debate on it, then step 4 with its
#      engine started beside the server (each takes the card's free share: gpu_memory_share in
#      bonsai/engine/platform.py), then a second debate on the server, which must have lived through it.
# Usage (repository root there):  bash bench/gpu_learn.sh OUTDIR [all|STEP[,STEP...]]   (STEP: loop, grpo, serve,
#   sweep, beside; steps run in the order given; the kits are installed once per machine)
set -u
out=${1:?usage: gpu_learn.sh OUTDIR [all|STEP[,STEP...]]}
what=${2:-all}
[ "$what" = all ] && what=loop,grpo,serve,sweep
mkdir -p "$out"
exec >>"$out/session.log" 2>&1
repo=$PWD
set -x
for kit in /tmp/kit /tmp/kit-train; do
  [ -d "$kit" ] || continue
  [ -e "$kit/.installed" ] && continue
  if ls "$kit"/part.* >/dev/null 2>&1; then
    (cd "$kit" && cat part.* > kit.tar && tar xf kit.tar && rm -f part.* kit.tar) || exit 1
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$kit"/wheels/*.whl || exit 1
  touch "$kit/.installed"
done
cd "$repo"
# the plugin commands (train, loop, eval) are entry points: register this checkout's, as it is not installed
python3 bench/register_entry_points.py /tmp/site || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false BONSAI_HOME=/tmp/bonsai-home
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -m bonsai.cli.main model prepare

run_loop() {
  echo "== loop: gpu preset, ronri, 3 generations =="
  python3 bench/learn_bench.py --preset gpu --persona ronri --model-home /tmp/bonsai-home --json-out "$out/learn-gpu.json" \
    -- --generations "${GENERATIONS:-3}" > "$out/learn-gpu.log" 2> "$out/learn-gpu.err"
  echo "loop exit $?"
  cp "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["plot"] or "")' "$out/learn-gpu.json")" "$out/loop-metrics.png" 2>/dev/null
}

run_grpo() {
  echo "== GRPO logic teacher: TRL+PEFT and Unsloth =="
  for backend in ${GRPO_BACKENDS:-peft unsloth}; do
    sed "s/^backend:.*/backend: $backend/" training/recipes/grpo.yaml > "/tmp/grpo-$backend.yaml"
    grep -q '^backend:' "/tmp/grpo-$backend.yaml" || echo "backend: $backend" >> "/tmp/grpo-$backend.yaml"
    start=$SECONDS
    python3 -m bonsai.cli.main train logician --recipe "/tmp/grpo-$backend.yaml" --max-steps "${GRPO_STEPS:-40}" \
      $([ "${GRPO_EVAL:-96}" = 0 ] || echo --eval "${GRPO_EVAL:-96}") ${GRPO_ENGINE:+--eval-engine "$GRPO_ENGINE"} --json > "$out/grpo-$backend.json" 2> "$out/grpo-$backend.err"
    echo "grpo $backend exit $? after $((SECONDS - start)) s"
  done
}

run_serve() {
  echo "== bonsai serve with its defaults =="
  start=$SECONDS
  python3 -m bonsai.cli.main serve --port 8011 > "$out/serve.log" 2>&1 &
  pid=$!
  ready=no
  for _ in $(seq 1 300); do
    curl -sf http://127.0.0.1:8011/v1/models > "$out/serve-models.json" && { ready=yes; break; }
    kill -0 $pid 2>/dev/null || break
    sleep 1
  done
  if [ $ready = no ]; then echo "serve did NOT start (after $((SECONDS - start)) s): see serve.log"; return; fi
  echo "serve ready after $((SECONDS - start)) s"
  start=$SECONDS
  python3 -m bonsai.cli.main debate "Cities should ban private cars" --engine openai --endpoint http://127.0.0.1:8011 --rounds 1 --json \
    > "$out/serve-debate.json" 2> "$out/serve-debate.err"
  echo "debate on the served engine: exit $? after $((SECONDS - start)) s"
  kill $pid; wait $pid
}

wait_ready() {  # wait_ready PID PORT NAME: 0 once the server on PORT answers, 1 if PID died or 300 s passed
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$2/v1/models" > "$out/$3-models.json" && return 0
    kill -0 "$1" 2>/dev/null || return 1
    sleep 1
  done
  return 1
}

card_memory() {  # card_memory LABEL: the card's use and each process's, appended to beside-memory.txt
  { echo "-- $1"; nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader; } >> "$out/beside-memory.txt"
}

run_beside() {
  echo "== two engines on one card: bonsai serve with its defaults, then the sweep's engine beside it =="
  start=$SECONDS
  python3 -m bonsai.cli.main serve --port 8011 > "$out/beside-serve.log" 2>&1 &
  spid=$!
  if ! wait_ready $spid 8011 beside-serve; then echo "serve did NOT start (after $((SECONDS - start)) s)"; return; fi
  echo "serve ready after $((SECONDS - start)) s"
  card_memory "serve alone"
  for n in 1 2; do
    if [ $n = 2 ]; then run_sweep; card_memory "after the sweep (its engine gone)"; fi
    start=$SECONDS
    python3 -m bonsai.cli.main debate "Cities should ban private cars" --engine openai --endpoint http://127.0.0.1:8011 \
      --rounds 1 --json > "$out/beside-debate-$n.json" 2> "$out/beside-debate-$n.err"
    echo "debate $n on the served engine: exit $? after $((SECONDS - start)) s"
  done
  kill $spid; wait $spid
}

run_sweep() {
  echo "== sweep/raw: 8B shape, random weights, ${RATIO_LEVELS:-256,1024} x ${REPEAT:-3} =="
  start=$SECONDS
  ( sleep 150; card_memory "during the sweep" ) &
  python3 bench/sweep_bench.py --shape 8b --levels "" --ratio-levels "${RATIO_LEVELS:-256,1024}" --repeat "${REPEAT:-3}" --adapters 4 \
    --max-tokens 64 --kv-cache-gib 40 --prefix-motions 2 --model-home /tmp/bonsai-home $([ "${PROFILE:-1}" = 0 ] || echo --profile-dir "$out/prof") \
    --json-out "$out/sweep-ratio.json" > "$out/sweep-ratio.log" 2>&1
  echo "sweep exit $? after $((SECONDS - start)) s"
}

for step in ${what//,/ }; do
  case $step in
    loop|grpo|serve|sweep|beside) "run_$step" ;;
    *) echo "unknown step $step (loop, grpo, serve, sweep, beside)"; exit 2 ;;
  esac
done
echo DONE
