#!/usr/bin/env bash
# Table 1 of the paper as one sweep: MultiMNIST with 2, 3, 4 modalities, factorized and monolithic
# discriminators, each a SLURM job (launch/slurm.sh). Extra arguments go to every run.
#
#   bash launch/sweep.sh runs/table1 --config.seed=0
set -euo pipefail
root=${1:?usage: bash launch/sweep.sh ROOT [--config.FIELD=VALUE ...]}
shift
for m in 2 3 4; do
  for d in factorized monolithic; do
    sbatch --gpus=1 --job-name="mm${m}_${d}" "$(dirname "$0")/slurm.sh" \
      "configs/multimnist.py:modalities=${m},discriminator=${d}" "${root}/mm${m}_${d}" "$@"
  done
done
