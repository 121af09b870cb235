#!/usr/bin/env bash
# The float32 route of the fast recipe against the bfloat16 recipe run in float32, on this CPU, back to back:
#   baseline: time_to_accuracy.py --recipe fast-bf16 --no-amp --no-channels-last
#   route:    time_to_accuracy.py --recipe fast-fp32
# for random seeds 0, 1 and 2, alternating (baseline 0, route 0, baseline 1, ...) so that a machine that slows down
# or speeds up during the check weighs on both alike. Prints each run's seconds and accuracy, and the ratio of the
# two recipes' mean seconds of training + evaluation.
# On a quiet 2-core CPU without bfloat16 units it takes about 30 minutes.
# Usage (from anywhere; the repository's venv built):
#   benchmarks/float32_check.sh [--out DIR] [--force]
# Timings are only worth keeping on a machine with nothing else running: it refuses to start while the 1-minute
# load average is 1 or more (--force starts anyway), samples the load every 10 s while it runs (the runs
# themselves add about 2, one per thread) and says at the end whether it ever passed 2.5. Output, in DIR
# (default benchmarks/results/<date>-cpu-fp32): baseline_s<seed>.log/.json, route_s<seed>.log/.json, load.txt,
# summary.txt. PYTHON overrides the interpreter (default: .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

FORCE=0
OUT="benchmarks/results/$(date -u +%Y-%m-%d)-cpu-fp32"
while [ $# -gt 0 ]; do
  case "$1" in
    --force) FORCE=1 ;;
    --out) [ $# -ge 2 ] || { echo "float32_check.sh: --out needs a folder" >&2; exit 64; }; OUT="$2"; shift ;;
    -h|--help) sed -n '2,/^set /p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "float32_check.sh: unknown argument '$1' (use --out DIR, --force or --help)" >&2; exit 64 ;;
  esac
  shift
done
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
load1() { cut -d' ' -f1 /proc/loadavg; }

if [ "$FORCE" = 0 ] && awk -v l="$(load1)" 'BEGIN { exit !(l >= 1) }'; then
  echo "float32_check.sh: the load average is $(load1) (uptime: $(uptime)): other jobs are running, and their" \
       "share of the cores would be timed too. Wait until it is under 1, or pass --force." >&2
  exit 3
fi
mkdir -p "$OUT"
(while sleep 10; do echo "$(date -u +%H:%M:%S) $(load1)"; done) > "$OUT/load.txt" 2>/dev/null &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null || true' EXIT

run() {   # name, seed, flags...: one recipe on one random seed, its log and JSON in $OUT
  local name=$1 seed=$2; shift 2
  echo "== $name seed $seed: time_to_accuracy.py $* --seed $seed (load $(load1), $(date -u +%H:%M:%S))"
  "$PYTHON" benchmarks/time_to_accuracy.py "$@" --seed "$seed" --json "$OUT/${name}_s$seed.json" 2>&1 \
    | tee "$OUT/${name}_s$seed.log"
}
for seed in 0 1 2; do
  run baseline "$seed" --recipe fast-bf16 --no-amp --no-channels-last
  run route "$seed" --recipe fast-fp32
done

"$PYTHON" - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
mean = {}
for name in ('baseline', 'route'):
    rs = [json.loads((out / f'{name}_s{s}.json').read_text()) for s in (0, 1, 2)]
    runs = [r['runs'][0] for r in rs]
    secs, accs = [x['total_s'] for x in runs], [x['accuracy'] for x in runs]
    mean[name] = statistics.mean(secs)
    cfg = rs[0]['config']
    print(f"{name}: --recipe {cfg['recipe']} (amp={cfg['amp']}, channels_last={cfg['channels_last']}); seconds "
          f"{' '.join(f'{s:.1f}' for s in secs)} (mean {mean[name]:.1f}); accuracy "
          f"{' '.join(f'{a:.4f}' for a in accs)}; past 0.93: {sum(a >= 0.93 for a in accs)} of {len(accs)}")
print(f"ratio route / baseline (mean seconds of training + evaluation): {mean['route'] / mean['baseline']:.3f}")
print(f"machine: {rs[0]['device_name']}, {rs[0]['threads']} threads, torch {rs[0]['torch']}")
loads = [float(line.split()[1]) for line in (out / 'load.txt').read_text().splitlines() if line.strip()]
if loads:
    print(f"load average while running: max {max(loads):.2f}"
          + ("" if max(loads) < 2.5 else " -- over 2.5: other jobs shared the cores, the seconds are not clean"))
EOF
