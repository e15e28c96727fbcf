#!/usr/bin/env bash
# Table 1 of the paper on a SLURM cluster, as the same runs `python -m mmali_jax.reproduce` makes:
# one job trains the shared coherence classifiers, then one GPU job per run (M = 2, 3, 4;
# factorized and monolithic; every seed), then one job writes ROOT/table1.md and table1.png.
#
#   bash launch/sweep.sh ROOT SEEDS [--config.FIELD=VALUE ...]
#   bash launch/sweep.sh runs/table1 3 --config.data.tfds_data_dir=/data/tfds
#
# Resubmitting resumes: finished runs are skipped, interrupted ones resume from their checkpoints.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash launch/sweep.sh ROOT SEEDS [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
root=$1
seeds=$2
shift 2
cd "$(dirname "$0")/.."
mkdir -p "$root"
venv='if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi'
reproduce="python -m mmali_jax.reproduce --table=1 --root=$root --seeds=$seeds $*"
classifiers=$(sbatch --parsable --job-name=mmali_classifiers --cpus-per-task=8 --time=4:00:00 \
  --output="$root/slurm-%x-%j.out" --wrap="$venv; $reproduce --classifiers_only")
jobs=()
for m in 2 3 4; do
  for kind in factorized monolithic; do
    for ((s = 0; s < seeds; s++)); do
      name="mm${m}_${kind}_seed${s}"
      jobs+=("$(sbatch --parsable --job-name="$name" --gpus=1 --cpus-per-task=8 --time=24:00:00 \
        --requeue --dependency="afterok:$classifiers" --output="$root/slurm-%x-%j.out" \
        --wrap="$venv; $reproduce --runs=$name")")
    done
  done
done
ids=$(IFS=:; echo "${jobs[*]}")
sbatch --job-name=mmali_table1 --dependency="afterany:$ids" --output="$root/slurm-%x-%j.out" \
  --wrap="$venv; $reproduce --aggregate_only"
echo "Submitted $((${#jobs[@]} + 2)) jobs; the table will be in $root/table1.md."
