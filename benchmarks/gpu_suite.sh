#!/usr/bin/env bash
# Every GPU figure of miniai's benchmarks in one call on one NVIDIA GPU, written to one file. It takes at most
# 5.5 minutes plus start-up: the steps' time limits add up to 330 s. The steps:
#   1. the CUDA tests of the suite (pytest -k cuda: every CUDA test has "cuda" in its name);
#   2. bench_loop.py --device cuda: the course CNN recipe (5 epochs) as a hand-written loop and as miniai's
#      TrainLearner, and their ratio;
#   3. time_to_accuracy.py --device cuda --recipe fast, 3 seeds (bf16 autocast + channels_last, CUDA's default);
#   4. the same recipe, one seed, with mixed precision and channels_last off, then with torch.compile on;
#   5. the 4.9M-parameter ResNet recipe (--recipe resnet), one seed, evaluated after every epoch;
#   6. `miniai train --device cuda` (the command line's 5-epoch course recipe), timed end to end.
# Usage (from the repository root, its venv built):
#   benchmarks/gpu_suite.sh [--out FILE] [--dry-run]
# --dry-run prints each step and checks that every script exists and accepts the flags used (through --help);
# it needs no GPU. Without a GPU the real run stops at once with exit status 2. PYTHON overrides the interpreter
# (default: .venv/bin/python, else python3). Each step has its own time limit; the exit status is that of the
# first failing step (the file says which), 0 if all passed.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
OUT="benchmarks/results/gpu-$(date -u +%Y-%m-%d-%H%M).txt"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) [ $# -ge 2 ] || { echo "gpu_suite.sh: --out needs a file name" >&2; exit 64; }; OUT="$2"; shift ;;
    -h|--help) sed -n '2,/^set /p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_suite.sh: unknown argument '$1' (use --dry-run, --out FILE or --help)" >&2; exit 64 ;;
  esac
  shift
done
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT

# name | time limit (s) | command (python steps start with a script path; flags are checked in the dry run)
STEPS=(
  "cuda-tests|60|-m pytest -q -k cuda tests"
  "bench-loop|60|benchmarks/bench_loop.py --device cuda --repeats 3 --skip-hf"
  "tta-fast-3-seeds|60|benchmarks/time_to_accuracy.py --device cuda --recipe fast --seeds 0 1 2 --json $TMP/fast.json"
  "tta-fast-fp32|30|benchmarks/time_to_accuracy.py --device cuda --recipe fast --no-amp --no-channels-last"
  "tta-fast-compile|60|benchmarks/time_to_accuracy.py --device cuda --recipe fast --compile"
  "tta-resnet-5-epochs|30|benchmarks/time_to_accuracy.py --device cuda --recipe resnet"
  "miniai-train-cli|30|-m miniai train --device cuda --epochs 5 --out $TMP/train"
)

declare -A HELP   # each script's --help, asked once
help_of() {       # the --help text of "python ARGS...", cached; fails when the command does not run
  local key="$*"
  if [ -z "${HELP[$key]+x}" ]; then HELP[$key]=$("$PYTHON" "$@" --help 2>&1) || { unset "HELP[$key]"; return 1; }; fi
}

check_step() {   # dry run: the script (or module) exists and its --help lists every flag used
  local cmd="$1" key flag
  set -- $cmd
  if [ "$1" = "-m" ] && [ "$2" = "pytest" ]; then
    grep -lq "def test_[a-z_]*cuda" tests/*.py || { echo "  MISSING: no test named *cuda* in tests/"; return 1; }
    key="-m pytest --noconftest"   # pytest's own flags: its --help without tests/conftest.py (and torch) is enough
  elif [ "$1" = "-m" ]; then key="-m $2 $3"
  else
    [ -f "$1" ] || { echo "  MISSING: $1"; return 1; }
    key="$1"
  fi
  help_of $key || { echo "  FAILED: $PYTHON $key --help"; return 1; }
  for flag in $cmd; do
    case "$flag" in
      --*) grep -q -- "$flag\b" <<<"${HELP[$key]}" || { echo "  UNKNOWN FLAG: $flag"; return 1; } ;;
    esac
  done
  echo "  ok"
}

if [ $DRY = 1 ]; then
  bad=0
  for s in "${STEPS[@]}"; do
    IFS='|' read -r name limit cmd <<<"$s"
    echo "[$name] timeout ${limit}s: $PYTHON $cmd"
    check_step "$cmd" || bad=1
  done
  [ $bad = 0 ] && echo "dry run: all ${#STEPS[@]} steps found" || echo "dry run: some steps are broken" >&2
  exit $bad
fi

# fail fast without a GPU: nothing below means anything on a CPU
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_suite.sh: no NVIDIA GPU here (nvidia-smi is missing or finds no device); run it on a machine with" \
       "one, or use --dry-run to check the steps" >&2
  exit 2
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_suite.sh: nvidia-smi sees a GPU but torch.cuda.is_available() is False for $PYTHON" \
       "(a CPU-only torch build, or a driver too old for it)" >&2
  exit 2
fi

mkdir -p "$(dirname "$OUT")"
{
  echo "# miniai GPU suite, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
} | tee "$OUT"
first_rc=0; t_all=$SECONDS
for s in "${STEPS[@]}"; do
  IFS='|' read -r name limit cmd <<<"$s"
  echo -e "\n## $name: $PYTHON $cmd" | tee -a "$OUT"
  t0=$SECONDS
  timeout "$limit" "$PYTHON" $cmd 2>&1 | grep -v -i "warning" | tee -a "$OUT"
  rc=${PIPESTATUS[0]}
  echo "## $name: exit $rc$([ $rc = 124 ] && echo ' (time limit)') after $((SECONDS - t0)) s" | tee -a "$OUT"
  [ $rc != 0 ] && [ $first_rc = 0 ] && first_rc=$rc
done
echo -e "\n# all steps: $((SECONDS - t_all)) s; first failing exit status: $first_rc" | tee -a "$OUT"
echo "results: $OUT"
exit $first_rc
