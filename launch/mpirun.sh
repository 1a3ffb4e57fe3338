#!/bin/bash
# mpirun recipe: ranks come from Open MPI (read through mpi4py), the rendezvous address stays
# explicit -- DeepSpeed's own MPI discovery would take it from `hostname -I`, which may be an
# interface the other nodes cannot reach.
#   MASTER_ADDR=10.0.0.1 launch/mpirun.sh -np 16 --hostfile hosts.mpi configs/gpt2-small/baseline.yaml
#   MASTER_ADDR=127.0.0.1 launch/mpirun.sh -np 2 configs/tiny.yaml --set train.steps=20   # one machine
# The python that runs is $PYTHON, else `python` on PATH (activate the venv first).
set -euo pipefail
: "${MASTER_ADDR:?set MASTER_ADDR to the address of rank 0, reachable from every node}"
MASTER_PORT=${MASTER_PORT:-29500}
MPI_ARGS=()
while [[ $# -gt 0 && "$1" == -* ]]; do MPI_ARGS+=("$1" "$2"); shift 2; done
CONFIG=${1:?usage: launch/mpirun.sh [mpirun options] CONFIG.yaml [--set ...]}
shift
ROOT_FLAG=()
[[ "$(id -u)" == 0 ]] && ROOT_FLAG=(--allow-run-as-root)
exec mpirun "${ROOT_FLAG[@]}" "${MPI_ARGS[@]}" -x MASTER_ADDR="$MASTER_ADDR" -x MASTER_PORT="$MASTER_PORT" \
  -x PATH -x PYTHONPATH --bind-to none \
  "${PYTHON:-python}" "$(dirname "$0")/train.py" --config "$CONFIG" "$@"
