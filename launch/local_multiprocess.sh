#!/usr/bin/env bash
# A multi-process job on this machine: N processes with K CPU devices each, joined by JAX's
# distributed runtime through a coordinator on localhost. For trying multi-process training
# (and its checkpoints and resumption) without a cluster:
#
#   bash launch/local_multiprocess.sh 2 4 configs/multimnist.py runs/mp --config.num_train_steps=100
#
# Ctrl-C (or a SIGTERM to this script) stops every process at the same step, after a checkpoint
# of that step (exit status 75); the same command then resumes. A second Ctrl-C kills them at once.
# PYTHON names the interpreter (default: python).
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
signals=0
stop() {
  # The processes run in the background, where Ctrl-C does not reach them: a SIGTERM to each
  # makes them write a checkpoint of one step and exit with status 75 (run this again to resume).
  # A second Ctrl-C kills them at once (the steps since their last checkpoint are lost).
  signals=$((signals + 1))
  if [ ${#pids[@]} -gt 0 ]; then
    kill -"$([ $signals = 1 ] && echo TERM || echo KILL)" "${pids[@]}" 2>/dev/null || true
  fi
  if [ $signals = 1 ]; then
    echo "Stopping: every process writes a checkpoint of the current step, then exits" \
      "(Ctrl-C again kills them at once)." >&2 || true
  fi
}
trap stop INT TERM
for ((i = 0; i < n && signals == 0; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$k" JAX_PLATFORMS=cpu \
    ${PYTHON:-python} -m mmali_jax.main --config="$config" --workdir="$workdir" \
    --coordinator_address="localhost:$port" --num_processes="$n" --process_id="$i" "$@" &
  pids+=($!)
done
# A signal between starting a process and noting its pid: that process gets its SIGTERM now.
if [ $signals -gt 0 ] && [ ${#pids[@]} -gt 0 ]; then kill -TERM "${pids[@]}" 2>/dev/null || true; fi
status=0
for pid in ${pids[@]+"${pids[@]}"}; do
  while true; do
    before=$signals
    s=0
    wait "$pid" || s=$?
    # Cut short by a signal trapped above (bash keeps the process's status for the next wait).
    if [ $s -gt 128 ] && [ $signals != "$before" ]; then continue; fi
    break
  done
  # The first failure other than a stop on request (75) is the job's status.
  if [ $s != 0 ] && { [ $status = 0 ] || [ $status = 75 ]; }; then status=$s; fi
done
exit $status
