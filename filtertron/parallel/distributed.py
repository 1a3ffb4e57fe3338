"""Process-group set-up for every launcher: deepspeed, torchrun, mpirun, SLURM, or none.

The backend follows the device: NCCL with CUDA, gloo otherwise; nothing else differs.
Rank discovery:
- deepspeed / torchrun set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT;
- mpirun (Open MPI) sets OMPI_COMM_WORLD_*; we read rank and size from mpi4py but keep the
  rendezvous address explicit (MASTER_ADDR must be given, e.g. ``mpirun -x MASTER_ADDR=...``),
  because DeepSpeed's own MPI discovery takes it from ``hostname -I``, which can pick an
  interface the other nodes cannot reach;
- SLURM's srun sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID (MASTER_ADDR from the batch
  script, see launch/slurm.sbatch);
- none of these: a single process on 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger("filtertron")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _discover_env() -> None:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return
    if "OMPI_COMM_WORLD_RANK" in env:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        env["RANK"], env["WORLD_SIZE"] = str(comm.Get_rank()), str(comm.Get_size())
        env["LOCAL_RANK"] = env.get("OMPI_COMM_WORLD_LOCAL_RANK", "0")
        if "MASTER_ADDR" not in env:
            raise RuntimeError(
                "mpirun: set the rendezvous address explicitly, e.g. "
                "`mpirun -np 2 -x MASTER_ADDR=<rank-0 host> -x MASTER_PORT=29500 ...` "
                "(see launch/README.md)"
            )
    elif "SLURM_PROCID" in env and "MASTER_ADDR" in env:
        env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    else:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(free_port()))
    env.setdefault("MASTER_PORT", "29500")


def init_distributed() -> DistInfo:
    """Initialise torch.distributed (via DeepSpeed) once; return this process's place.

    With CUDA the local device is selected before the process group exists, so NCCL binds
    each rank to its own GPU. DeepSpeed's CPU shared-memory buffers are unlinked as soon as
    every rank has mapped them (:func:`~filtertron.parallel.deepspeed_workarounds.
    unlink_shm_buffer`), so no run leaves them in /dev/shm, however it ends.
    """
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        _discover_env()
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        import deepspeed

        from filtertron.parallel.deepspeed_workarounds import unlink_shm_buffer

        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
        unlink_shm_buffer(dist.get_rank())
    elif torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo(
        dist.get_rank(),
        dist.get_world_size(),
        int(os.environ.get("LOCAL_RANK", 0)),
        dist.get_backend(),
    )
