#!/usr/bin/env bash
# Two `bench/debate_bench.py --repeat 2` at once, each with its own in-process vLLM engine, as the test suite
# runs engines side by side on a small machine: the wall time of both and each one's CPU time (its engine's
# processes included), under the environment given, e.g.
#   bash bench/two_debates_at_once.sh /tmp/pair bound                                       # bonsai's default
#   bash bench/two_debates_at_once.sh /tmp/pair onethread VLLM_CPU_OMP_THREADS_BIND=nobind OMP_NUM_THREADS=1
# (docs/benchmarks.md, "Test suite": the tests' engines run the second way)
set -u
out=${1:?usage: two_debates_at_once.sh OUTDIR LABEL [VAR=VALUE ...]}
label=${2:?usage: two_debates_at_once.sh OUTDIR LABEL [VAR=VALUE ...]}
shift 2
mkdir -p "$out"
python=${PYTHON:-.venv/bin/python}
start=$(date +%s.%N)
for i in 1 2; do
  env "$@" /usr/bin/time -f "%e s wall, %U s user, %S s system" "$python" bench/debate_bench.py --repeat 2 \
    > "$out/$label-$i.out" 2> "$out/$label-$i.err" &
done
wait
echo "$label: both finished after $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
for i in 1 2; do
  grep -h '"summary"' "$out/$label-$i.out"
  tail -n 1 "$out/$label-$i.err"
done
