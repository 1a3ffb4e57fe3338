#!/bin/bash
# mpirun recipe: ranks come from Open MPI's OMPI_COMM_WORLD_* variables. On one machine the
# ranks meet on 127.0.0.1 by themselves; across nodes give the rendezvous address (rank 0's
# host, reachable from every node): Open MPI names none, and DeepSpeed's own MPI discovery
# takes it from `hostname -I`, which may be an interface the other nodes cannot reach. Without
# it a multi-node run stops on every rank with one line saying so.
#   MASTER_ADDR=10.0.0.1 launch/mpirun.sh -np 16 --hostfile hosts.mpi configs/gpt2-small/baseline.yaml
#   launch/mpirun.sh -np 2 configs/tiny.yaml --set train.steps=20   # one machine
# MASTER_PORT defaults to one derived from the mpirun job's id. The python that runs is
# $PYTHON, else `python` on PATH (activate the venv first).
set -euo pipefail
MPI_ARGS=()  # everything before the config (the first argument ending in .yaml / .yml)
while [[ $# -gt 0 && "$1" != *.yaml && "$1" != *.yml ]]; do MPI_ARGS+=("$1"); shift; done
CONFIG=${1:?usage: launch/mpirun.sh [mpirun options] CONFIG.yaml [--set ...]}
shift
EXPORTS=(-x PATH -x PYTHONPATH)
[[ -n "${MASTER_ADDR:-}" ]] && EXPORTS+=(-x MASTER_ADDR="$MASTER_ADDR")
[[ -n "${MASTER_PORT:-}" ]] && EXPORTS+=(-x MASTER_PORT="$MASTER_PORT")
ROOT_FLAG=()
[[ "$(id -u)" == 0 ]] && ROOT_FLAG=(--allow-run-as-root)
exec mpirun "${ROOT_FLAG[@]}" "${MPI_ARGS[@]}" "${EXPORTS[@]}" --bind-to none \
  "${PYTHON:-python}" "$(dirname "$0")/train.py" --config "$CONFIG" "$@"
