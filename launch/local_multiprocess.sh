#!/usr/bin/env bash
# A multi-process job on this machine: N processes with K CPU devices each, joined by JAX's
# distributed runtime through a coordinator on localhost. For trying multi-process training
# (and its checkpoints and resumption) without a cluster:
#
#   bash launch/local_multiprocess.sh 2 4 configs/multimnist.py runs/mp --config.num_train_steps=100
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: bash launch/local_multiprocess.sh N K CONFIG WORKDIR [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
n=$1
k=$2
config=$3
workdir=$4
shift 4
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
port=$(python -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')
pids=()
for ((i = 0; i < n; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$k" JAX_PLATFORMS=cpu \
    python -m mmali_jax.main --config="$config" --workdir="$workdir" \
    --coordinator_address="localhost:$port" --num_processes="$n" --process_id="$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
