"""Start this machine's processes through a launcher, and clean up after them.

``filtertron train --nproc N`` runs the deepspeed launcher and ``filtertron eval --nproc N``
runs torchrun; both build the command here and hand it to :func:`run_child`, which

- gives each rank its share of the cores (OMP_NUM_THREADS; without it 2 ranks on 2 cores ran
  4x slower steps),
- relays the launcher's output through :class:`filtertron.logs.Relay` (library lines to
  ``LOG_DIR/launcher.log``) unless ``verbose``,
- forwards SIGTERM and Ctrl-C to the launcher and waits for it, and
- removes whatever DeepSpeed shared-memory buffers of this run's port are still in /dev/shm
  (a rank that died before unlinking its own), saying so.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from filtertron.logs import Relay

log = logging.getLogger(__name__)
MASTER_ADDR = "127.0.0.1"


def inside_launcher() -> bool:
    """True in a process a launcher started (RANK and WORLD_SIZE are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def free_port() -> int:
    from filtertron.parallel.distributed import free_port as _free

    return _free()


def argv_from_namespace(
    args: argparse.Namespace, positional: str, skip: tuple[str, ...] = ()
) -> list[str]:
    """The command line that parses back into ``args`` (options as ``--dashed-names``).

    ``positional`` names the argument given without a flag; ``None`` and ``False`` values
    are left out, lists become one flag followed by its values.
    """
    argv = [str(v) for v in getattr(args, positional)]
    for key, value in vars(args).items():
        if key in (positional, *skip) or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def deepspeed_command(
    module: str, argv: list[str], nproc: int, port: int | None = None
) -> tuple[list[str], int]:
    """``python -m deepspeed.launcher.runner --num_gpus N ... --module MODULE ARGV``."""
    port = port or free_port()
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        str(nproc),
        "--master_addr",
        MASTER_ADDR,
        "--master_port",
        str(port),
        "--module",
        module,
        *argv,
    ]
    return cmd, port


def torchrun_command(argv: list[str], nproc: int, port: int | None = None) -> tuple[list[str], int]:
    """``python -m torch.distributed.run --nproc-per-node N ... ARGV``."""
    port = port or free_port()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        MASTER_ADDR,
        "--master-port",
        str(port),
        *argv,
    ]
    return cmd, port


def child_env(nproc: int) -> dict[str, str]:
    """The launcher's environment: each rank gets its share of this machine's cores."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _cleanup_shm(port: int, launcher_log) -> None:
    from filtertron.parallel.deepspeed_workarounds import remove_shm_buffers

    removed = remove_shm_buffers(MASTER_ADDR, port)
    if removed:
        msg = f"removed {len(removed)} shared-memory buffers left by this run: {removed}"
        log.info(msg)
        if launcher_log is not None:
            launcher_log.write(msg + "\n")


def run_child(
    cmd: list[str], log_dir: str | Path, verbose: bool, port: int, nproc: int | None = None
) -> int:
    """Run a launcher command to completion; returns its exit status (130 on Ctrl-C).

    Args:
        cmd: From :func:`deepspeed_command` or :func:`torchrun_command`.
        log_dir: Where ``launcher.log`` goes (created).
        verbose: Show everything the launcher prints instead of relaying it.
        port: The rendezvous port (names the run's shared-memory buffers).
        nproc: Processes started (sets OMP_NUM_THREADS); default from ``cmd``.
    """
    if nproc is None:
        flag = "--num_gpus" if "--num_gpus" in cmd else "--nproc-per-node"
        nproc = int(cmd[cmd.index(flag) + 1])
    env = child_env(nproc)
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    launcher_log = None if verbose else open(log_dir / "launcher.log", "a", encoding="utf-8")
    pipe = None if verbose else subprocess.PIPE
    proc = subprocess.Popen(cmd, env=env, stdout=pipe, stderr=pipe)
    pumps = []
    if launcher_log is not None:
        relay = Relay(launcher_log)
        pumps = [
            threading.Thread(target=relay.pump, args=(src, dst), daemon=True)
            for src, dst in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr))
        ]
        for t in pumps:
            t.start()

    def forward(signum, _frame):
        proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)  # also when only this process got it
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            rc = 130
        for t in pumps:
            t.join(timeout=10)
    finally:
        signal.signal(signal.SIGTERM, previous)
        _cleanup_shm(port, launcher_log)
        if launcher_log is not None:
            launcher_log.close()
    return rc
