#!/usr/bin/env bash
# A multi-process job on this machine: N processes with K CPU devices each, joined by JAX's
# distributed runtime through a coordinator on localhost. For trying multi-process training
# (and its checkpoints and resumption) without a cluster:
#
#   bash launch/local_multiprocess.sh 2 4 configs/multimnist.py runs/mp --config.num_train_steps=100
#
# Ctrl-C (or a SIGTERM to this script) stops every process at the same step, after a checkpoint
# of that step; the same command then resumes. PYTHON names the interpreter (default: python).
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
port=$(${PYTHON:-python} -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')
pids=()
stopping=0
stop() {
  # The processes run in the background, where Ctrl-C does not reach them: a SIGTERM to each
  # makes them write a checkpoint of one step and exit with status 75 (run this again to resume).
  if [ $stopping = 0 ]; then
    stopping=1
    echo "Stopping: every process writes a checkpoint of the current step, then exits." >&2
    if [ ${#pids[@]} -gt 0 ]; then kill -TERM "${pids[@]}" 2>/dev/null || true; fi
  fi
}
trap stop INT TERM
for ((i = 0; i < n && stopping == 0; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$k" JAX_PLATFORMS=cpu \
    ${PYTHON:-python} -m mmali_jax.main --config="$config" --workdir="$workdir" \
    --coordinator_address="localhost:$port" --num_processes="$n" --process_id="$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  while true; do
    s=0
    wait "$pid" || s=$?
    # Over 128 with the process still there: the wait was cut short by a signal trapped above.
    if [ $s -gt 128 ] && kill -0 "$pid" 2>/dev/null; then continue; fi
    break
  done
  if [ $s != 0 ]; then status=$s; fi
done
exit $status
