#!/usr/bin/env bash
# Submit one training run (then its evaluation) to a SLURM cluster, one node with GPUs:
#
#   sbatch --gpus=1 launch/slurm.sh configs/multimnist.py:modalities=4 runs/mm4 [--config.seed=1 ...]
#
# The job resumes from <workdir>'s latest checkpoint when resubmitted (e.g. after preemption:
# add `#SBATCH --requeue`). The batch is sharded over every GPU of the node.
#SBATCH --job-name=mmali
#SBATCH --nodes=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: sbatch launch/slurm.sh CONFIG WORKDIR [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
config=$1
workdir=$2
shift 2
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
python -m mmali_jax.main --config="$config" --workdir="$workdir" "$@"
python -m mmali_jax.classifiers --config="$config" --workdir="$workdir" "$@"
python -m mmali_jax.evaluate --workdir="$workdir"
