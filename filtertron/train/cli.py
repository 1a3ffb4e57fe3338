"""``filtertron train CONFIG.yaml [--set section.key=value ...] [--nproc N] [--resume]``.

With ``--nproc N > 1`` (and not already inside a launcher) this re-launches itself through the
deepspeed launcher on this machine: ``deepspeed --num_gpus N --module filtertron.train.entry``.
Across nodes use ``deepspeed --hostfile HOSTS launch/train.py --config CONFIG.yaml`` (see
launch/README.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from filtertron.config import load_config


def add_arguments(p: argparse.ArgumentParser, config_flag: bool = False) -> None:
    if config_flag:
        p.add_argument("--config", required=True, help="run config YAML")
    else:
        p.add_argument("config", help="run config YAML (e.g. configs/tiny.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest committed checkpoint in train.out_dir",
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes on this machine (started through the deepspeed launcher)",
    )
    p.add_argument("--master-port", type=int, default=None)
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)


def launcher_command(args: argparse.Namespace) -> list[str]:
    """The deepspeed launcher invocation that runs this training on ``args.nproc`` processes."""
    from filtertron.parallel.distributed import free_port

    cmd = [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        str(args.nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(args.master_port or free_port()),
        "--module",
        "filtertron.train.entry",
        "--config",
        args.config,
    ]
    for o in args.overrides:
        cmd += ["--set", o]
    if args.resume:
        cmd.append("--resume")
    return cmd


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)  # fail fast, before any process starts
    if args.nproc > 1 and "RANK" not in os.environ:
        env = dict(os.environ)
        # One process per core share: without this every rank starts a thread per core and
        # they fight (measured: 4x slower steps for 2 ranks on 2 cores).
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
        return subprocess.call(launcher_command(args), env=env)
    from filtertron.train.trainer import Trainer

    final = Trainer(cfg, resume=args.resume).run()
    print(
        f"done: step {final['step']}, loss {final.get('loss', float('nan')):.4f}, "
        f"val_loss {final['val_loss']:.4f}"
    )
    return 0
