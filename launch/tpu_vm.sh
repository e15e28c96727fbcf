#!/usr/bin/env bash
# One training run on a Cloud TPU VM slice: the same command on every worker of the slice; JAX's
# distributed runtime finds the other workers itself (--auto_distributed: through the VM's
# metadata server, which only JAX's own detection asks).
#
#   bash launch/tpu_vm.sh TPU_NAME ZONE configs/mnist_svhn.py /mnt/nfs/runs/ms [overrides]
#
# Assumes this repository and its .venv (with jax[tpu]) at ~/mmali_jax on every worker, and a
# WORKDIR on storage every worker sees (e.g. a Filestore NFS mount). Re-running resumes.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: bash launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
name=$1
zone=$2
config=$3
workdir=$4
shift 4
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="\
  cd ~/mmali_jax && . .venv/bin/activate && \
  python -m mmali_jax.main --auto_distributed --config='$config' --workdir='$workdir' $*"
