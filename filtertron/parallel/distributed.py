"""Process-group set-up for every launcher: deepspeed, torchrun, mpirun, SLURM's srun, or none.

The backend follows the device: NCCL with CUDA, gloo otherwise; nothing else differs.
:func:`discover` reads this process's place from what the launcher set, in this order:

- ``RANK`` and ``WORLD_SIZE`` (deepspeed, torchrun, or you): taken as they are, with
  ``MASTER_ADDR`` / ``MASTER_PORT``;
- mpirun (Open MPI): ``OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK``. Rendezvous at
  ``MASTER_ADDR``; without it 127.0.0.1 when every rank is on one node
  (``OMPI_COMM_WORLD_LOCAL_SIZE == OMPI_COMM_WORLD_SIZE``), else every rank stops with one
  line saying to pass ``-x MASTER_ADDR`` (Open MPI names no host that all nodes can reach).
  ``MASTER_PORT`` defaults to one derived from the mpirun job's id (:func:`mpirun_port`);
- srun (SLURM): ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` (else ``SLURM_NTASKS``),
  ``SLURM_LOCALID``. Rendezvous at ``MASTER_ADDR``; without it 127.0.0.1 when the step has one
  node, else the first host of ``SLURM_STEP_NODELIST`` (else ``SLURM_JOB_NODELIST``) through
  ``scontrol show hostnames``, where srun's task 0 runs. Not ``SLURM_LAUNCH_NODE_IPADDR``:
  that is the host srun ran on, a login node when srun is called from outside the
  allocation. ``MASTER_PORT`` defaults to 15000 + the last four digits of ``SLURM_JOB_ID``
  (PyTorch Lightning's rule), the same on every task and different between jobs;
- none of these: a single process on 127.0.0.1.

A world the launcher's own counts contradict never starts: ``WORLD_SIZE`` (or ``RANK``) set
by hand against srun's or mpirun's task count (or task id), a SLURM allocation of N > 1 tasks
read by a process srun did not start (python run directly in a batch script has
``SLURM_PROCID=0`` and the allocation's ``SLURM_NTASKS``, but no ``SLURM_STEP_ID``: it would wait
for N - 1 ranks that never come), a rank outside the world. Each stops every rank with one
:class:`LaunchError` line naming the variables and what to set. Under torchrun or the deepspeed
launcher started inside srun (one task per node), their RANK / WORLD_SIZE win.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# Launchers that start the per-node processes themselves (inside an srun or mpirun task) and
# set RANK / WORLD_SIZE over all nodes: torchrun (TORCHELASTIC_RUN_ID, LOCAL_WORLD_SIZE),
# deepspeed's launch.py (LOCAL_SIZE).
_SUB_LAUNCHER_VARS = ("TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE", "LOCAL_SIZE")


class LaunchError(RuntimeError):
    """The launcher's environment does not describe one world; the message says what to set."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class Rendezvous:
    """Where this process stands and where the ranks meet, as :func:`discover` read it."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "env", "mpirun", "srun" or "none"
    address_from: str  # how master_addr was found, for the log line

    def environ(self) -> dict[str, str]:
        """The variables torch.distributed's ``env://`` rendezvous reads."""
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise LaunchError(f"{name}={env[name]!r}: expected an integer") from None


def _first(env: Mapping[str, str], *names: str) -> str | None:
    return next((n for n in names if env.get(n, "") != ""), None)


def first_slurm_host(nodelist: str) -> str:
    """The first hostname of a SLURM node list (``node[01-04],gpu7``), via ``scontrol``."""
    exe = shutil.which("scontrol")
    if exe is None:
        raise LaunchError(
            f"srun across several nodes without MASTER_ADDR, and `scontrol` is not on PATH to "
            f"name the first node of {nodelist!r}: export MASTER_ADDR=<first node's hostname> "
            "before srun (launch/slurm.sbatch shows how)"
        )
    proc = subprocess.run(
        [exe, "show", "hostnames", nodelist], capture_output=True, text=True, timeout=60
    )
    hosts = proc.stdout.split()
    if proc.returncode != 0 or not hosts:
        why = (proc.stderr.strip().splitlines() or ["no output"])[0]
        raise LaunchError(
            f"`scontrol show hostnames {nodelist}` failed ({why}): export MASTER_ADDR=<first "
            "node's hostname> before srun"
        )
    return hosts[0]


def _check_task_count(env: Mapping[str, str], world: int, launcher: str, count_var: str) -> None:
    if "WORLD_SIZE" in env and _int(env, "WORLD_SIZE") != world:
        raise LaunchError(
            f"WORLD_SIZE={env['WORLD_SIZE']} but {launcher} started {world} tasks "
            f"({count_var}={world}): unset WORLD_SIZE (filtertron reads {launcher}'s count) or "
            "start as many tasks as the world should have"
        )


def _explicit(env: Mapping[str, str]) -> Rendezvous:
    rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
    if not any(v in env for v in _SUB_LAUNCHER_VARS):
        # A process srun or mpirun started directly: RANK / WORLD_SIZE set by hand must agree.
        for task, count, who in (
            ("SLURM_PROCID", _first(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"), "srun"),
            ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "mpirun"),
        ):
            if task in env and count and count in env and _int(env, count) > 1:
                if (_int(env, task), _int(env, count)) != (rank, world):
                    raise LaunchError(
                        f"RANK={rank}, WORLD_SIZE={world}, but this is {who} task "
                        f"{env[task]} of {env[count]} ({task}, {count}): unset RANK and "
                        f"WORLD_SIZE (filtertron reads {who}'s), or set them per task to agree"
                    )
    addr = env.get("MASTER_ADDR")
    if addr is None and world > 1:
        raise LaunchError(
            f"RANK={rank}, WORLD_SIZE={world} but no MASTER_ADDR: set MASTER_ADDR (and "
            "MASTER_PORT) to the host of rank 0"
        )
    port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else None
    if port is None:
        port = free_port() if world == 1 else 29500
    return Rendezvous(
        rank,
        world,
        _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
        addr or "127.0.0.1",
        port,
        "env",
        "MASTER_ADDR" if addr else "one process",
    )


def _mpirun(env: Mapping[str, str]) -> Rendezvous:
    rank, world = _int(env, "OMPI_COMM_WORLD_RANK"), _int(env, "OMPI_COMM_WORLD_SIZE")
    _check_task_count(env, world, "mpirun", "OMPI_COMM_WORLD_SIZE")
    local_size = (
        _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE") if "OMPI_COMM_WORLD_LOCAL_SIZE" in env else 0
    )
    addr, how = env.get("MASTER_ADDR"), "MASTER_ADDR"
    if addr is None:
        if local_size != world:
            raise LaunchError(
                f"mpirun across nodes ({world} ranks, {local_size or '?'} on this node) without "
                "MASTER_ADDR: pass -x MASTER_ADDR=<rank 0's host> -x MASTER_PORT=29500 to "
                "mpirun (launch/mpirun.sh does)"
            )
        addr, how = "127.0.0.1", "one node"
    return Rendezvous(
        rank,
        world,
        _int(env, "OMPI_COMM_WORLD_LOCAL_RANK") if "OMPI_COMM_WORLD_LOCAL_RANK" in env else 0,
        addr,
        _int(env, "MASTER_PORT") if "MASTER_PORT" in env else mpirun_port(env),
        "mpirun",
        how,
    )


def mpirun_port(env: Mapping[str, str]) -> int:
    """A port the same on every rank of one mpirun job and (mostly) different between jobs:
    20000 + crc32 of the job's PMIx namespace (Open MPI 5) or jobid (Open MPI 4) mod 10000."""
    job = _first(env, "PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid")
    return 20000 + zlib.crc32(env[job].encode()) % 10000 if job else 29500


def _srun(env: Mapping[str, str], count_var: str) -> Rendezvous:
    rank, world = _int(env, "SLURM_PROCID"), _int(env, count_var)
    # slurmstepd sets SLURM_STEP_ID only for srun's steps (src/common/env.c, setup_env: the
    # batch script's and the interactive step's ids are negative as an int and left out).
    if world > 1 and not env.get("SLURM_STEP_ID", "").isdigit():
        raise LaunchError(
            f"SLURM allocation of {world} tasks ({count_var}={world}) but this process was not "
            "started by srun (no SLURM_STEP_ID): run `srun python launch/train.py --config ...` "
            "(launch/slurm.sbatch does); for a single process run it with `env -u SLURM_PROCID`"
        )
    _check_task_count(env, world, "srun", count_var)
    if not 0 <= rank < world:
        raise LaunchError(f"SLURM_PROCID={rank} is outside the {world} tasks of {count_var}")
    nodes_var = _first(env, "SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
    nodes = _int(env, nodes_var) if nodes_var else 1
    addr, how = env.get("MASTER_ADDR"), "MASTER_ADDR"
    if addr is None and nodes == 1:
        addr, how = "127.0.0.1", "one node"
    elif addr is None:
        list_var = _first(env, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
        if list_var is None:
            raise LaunchError(
                f"srun across {nodes} nodes without MASTER_ADDR or SLURM_JOB_NODELIST: export "
                "MASTER_ADDR=<first node's hostname> before srun"
            )
        addr, how = first_slurm_host(env[list_var]), f"first host of {list_var}"
    if "MASTER_PORT" in env:
        port = _int(env, "MASTER_PORT")
    elif env.get("SLURM_JOB_ID", "").isdigit():
        port = 15000 + int(env["SLURM_JOB_ID"][-4:])
    else:
        port = 29500
    local = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
    return Rendezvous(rank, world, local, addr, port, "srun", how)


def discover(env: Mapping[str, str]) -> Rendezvous:
    """This process's rank, world and rendezvous from a launcher's environment ``env``.

    Raises:
        LaunchError: the variables contradict each other, or a multi-node world has no
            rendezvous address that can be derived (the message says what to set).
    """
    if "RANK" in env and "WORLD_SIZE" in env:
        return _explicit(env)
    if "OMPI_COMM_WORLD_RANK" in env and "OMPI_COMM_WORLD_SIZE" in env:
        return _mpirun(env)
    count_var = _first(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")
    if "SLURM_PROCID" in env and count_var is not None:
        return _srun(env, count_var)
    if "WORLD_SIZE" in env and _int(env, "WORLD_SIZE") != 1:
        raise LaunchError(
            f"WORLD_SIZE={env['WORLD_SIZE']} without RANK, and no launcher (torchrun, "
            "deepspeed, mpirun, srun) set one: set RANK on every process, or use a launcher"
        )
    return Rendezvous(
        0,
        1,
        0,
        env.get("MASTER_ADDR", "127.0.0.1"),
        _int(env, "MASTER_PORT") if "MASTER_PORT" in env else free_port(),
        "none",
        "one process",
    )


def cuda_device_index(local_rank: int, device_count: int) -> int:
    """The CUDA device of the rank with ``local_rank`` when it sees ``device_count`` devices.

    One device per rank either way: every task sees all the node's GPUs (index = local rank),
    or SLURM / the site gives each task its own (``--gpus-per-task=1``: the one visible, 0).
    """
    if local_rank < device_count:
        return local_rank
    if device_count == 1:
        return 0
    raise LaunchError(
        f"LOCAL_RANK={local_rank} but this process sees {device_count} GPUs "
        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): start one "
        "process per GPU (SLURM: --ntasks-per-node equal to --gpus-per-node)"
    )


def _discover_env() -> None:
    r = discover(os.environ)
    os.environ.update(r.environ())
    if torch.cuda.is_available():
        # DeepSpeed takes LOCAL_RANK as the device index.
        os.environ["LOCAL_RANK"] = str(cuda_device_index(r.local_rank, torch.cuda.device_count()))
    if r.rank == 0 and r.world_size > 1:
        log.info(
            "rendezvous (%s): %d ranks at %s:%d (%s)",
            r.launcher,
            r.world_size,
            r.master_addr,
            r.master_port,
            r.address_from,
        )


def init_distributed() -> DistInfo:
    """Initialise torch.distributed (via DeepSpeed) once; return this process's place.

    With CUDA the local device is selected before the process group exists, so NCCL binds
    each rank to its own GPU. DeepSpeed's CPU shared-memory buffers are unlinked as soon as
    every rank has mapped them (:func:`~filtertron.parallel.deepspeed_workarounds.
    unlink_shm_buffer`), so no run leaves them in /dev/shm, however it ends.

    Raises:
        LaunchError: the launcher's variables do not describe one world (see the module
            docstring); nothing has started.
    """
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        _discover_env()
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
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
