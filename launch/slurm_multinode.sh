#!/usr/bin/env bash
# One training run over several nodes of a SLURM GPU cluster: the same command in every task;
# JAX's distributed runtime reads the job layout from SLURM (no flags needed).
#
#   sbatch --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 launch/slurm_multinode.sh \
#     configs/mnist_svhn.py runs/ms [--config.FIELD=VALUE ...]
#   # or one task per node driving all its GPUs: --ntasks-per-node=1 --gpus-per-node=8
#
# One task per GPU is JAX's own SLURM layout (task k of a node drives GPU k); with one task per
# node, or with --gpus-per-task=1, mmali_jax.distributed.slurm_local_device_ids gives each task
# the GPUs it sees. The log's "N devices in the job, M here" line shows what each task drives.
#
# WORKDIR must be on a filesystem every node sees. --requeue: a preempted job is requeued and the
# same command resumes from the latest checkpoint. The global batch (config.batch_size) must be
# divisible by the total number of GPUs.
#SBATCH --job-name=mmali
#SBATCH --requeue
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: sbatch [--nodes=N ...] launch/slurm_multinode.sh CONFIG WORKDIR [overrides]" >&2
  exit 2
fi
config=$1
workdir=$2
shift 2
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
srun python -m mmali_jax.main --config="$config" --workdir="$workdir" "$@"
