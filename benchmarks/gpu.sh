#!/usr/bin/env bash
# The GPU measurements of docs/performance.md ("The GPU path"), most wanted first, on a time
# budget: each phase ends by its share of it, so a time-limited machine still returns what was
# measured. benchmarks/run.py writes each case's results as soon as it is measured.
#
#   bash benchmarks/gpu.sh OUT_DIR DATA_DIR REFERENCE_DIR [REFERENCE_PYTHON] [SECONDS]
#
# DATA_DIR: a TFDS data dir with mnist and svhn_cropped (the loop's speed does not depend on the
#   images: a stand-in svhn_cropped with fewer examples times it as well).
# REFERENCE_DIR: a checkout of the authors' code (6b5d/mmali); REFERENCE_PYTHON has torch.
# SECONDS: what the whole script may take (default 1800).
#
# Phases, each ending by the cumulative share of SECONDS in brackets (one that ends early leaves
# its time to the next):
#   m2        [30%]  MultiMNIST M=2 factorized: step, training loop, reference (the cheapest
#                    target to compile comes first)
#   svhn      [55%]  MNIST-SVHN factorized: the same
#   precision [68%]  both targets' step in TF32 and with per-phase spectral-norm estimates
#                    (opt-in modes)
#   cases     [84%]  the other four cases: step, training loop, reference
#   batching  [93%]  what the exact batching bought: each of its two settings off
#   profile  [100%]  benchmarks/profile_step.py on MNIST-SVHN, two calls of the step
# Each phase writes OUT_DIR/<phase>/ and OUT_DIR/<phase>.log. The script ends within SECONDS.
# Compiled programs go to JAX's persistent cache (JAX_COMPILATION_CACHE_DIR, by default the
# training command's ~/.cache/mmali_jax/xla), so a program one phase compiled, the next loads:
# a case's "compile s" is then the load's time.
set -uo pipefail
if (( $# < 3 )); then
  sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
mkdir -p "$1"
out=$(realpath "$1") data=$(realpath "$2") reference=$(realpath "$3")
reference_python=${4:-python3} budget=${5:-1800}
cd "$(dirname "$0")/.."
start=$SECONDS
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1  # a phase stopped by a signal keeps its log's last lines
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/mmali_jax/xla}

phase() {  # phase NAME SHARE_PERCENT COMMAND...
  local name=$1 share=$2
  shift 2
  # What its deadline leaves, less the 20 s a stopped phase may take to end and the 5 s after it.
  local cap=$(( start + budget * share / 100 - SECONDS - 25 ))
  if (( cap < 30 )); then
    echo "== $name: skipped, ${cap}s of its time left" | tee "$out/$name.log"
    return
  fi
  echo "== $name: up to ${cap}s: $*" | tee "$out/$name.log"
  timeout --signal=INT --kill-after=20 "$cap" "$@" 2>&1 | tee -a "$out/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]} after $(( SECONDS - start ))s in all" | tee -a "$out/$name.log"
  # timeout signals the phase's whole process group, its training loop and reference included;
  # should one outlive that, it must not share the GPU with the next phase's timings.
  local children='mmali_jax[.]main --config=|benchmarks/reference_step[.]py --reference_dir='
  pkill -KILL -f "$children" && sleep 5
  true
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
  > "$out/gpu.csv" 2>&1
reference=(--reference_dir="$reference" --reference_python="$reference_python")
targets='MNIST-SVHN factorized,M=2 factorized'
phase m2 30 "$py" benchmarks/run.py --cases='M=2 factorized' --seconds=5 --data_dir="$data" \
  "${reference[@]}" --out_dir="$out/m2"
phase svhn 55 "$py" benchmarks/run.py --cases='MNIST-SVHN factorized' --seconds=5 \
  --data_dir="$data" "${reference[@]}" --out_dir="$out/svhn"
phase precision 68 "$py" benchmarks/run.py --cases="$targets" --seconds=3 \
  --variants=matmul_precision=tensorfloat32,spectral_norm_estimates=per_phase,spectral_norm_estimates=per_phase+matmul_precision=tensorfloat32 \
  --out_dir="$out/precision"
phase cases 84 "$py" benchmarks/run.py --cases='MNIST-SVHN monolithic,M=2 monolithic,M=4' \
  --seconds=3 --data_dir="$data" "${reference[@]}" --out_dir="$out/cases"
phase batching 93 "$py" benchmarks/run.py --cases="$targets" --seconds=3 \
  --variants=batch_discriminator_calls=false,power_iterations_up_front=false \
  --out_dir="$out/batching"
phase profile 100 "$py" benchmarks/profile_step.py --config=configs/mnist_svhn.py --steps=2 \
  --trace_dir="$out/profile"
