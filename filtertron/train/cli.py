"""``filtertron train CONFIG.yaml [--set section.key=value ...] [--nproc N] [--resume]``.

With ``--nproc N > 1`` (and not already inside a launcher) this re-launches itself through the
deepspeed launcher on this machine: ``deepspeed --num_gpus N --module filtertron.train.entry``
(:mod:`filtertron.parallel.launcher`). Across nodes use ``deepspeed --hostfile HOSTS
launch/train.py --config CONFIG.yaml`` (see launch/README.md). The console shows the progress
bar, the interval lines, warnings and errors; DeepSpeed's and megatron-core's lines go to
``train.out_dir/logs/`` unless ``--verbose``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from filtertron.config import load_config


def add_arguments(p: argparse.ArgumentParser, config_flag: bool = False) -> None:
    """Add the ``train`` options (``--config`` instead of a positional for launchers)."""
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
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show DeepSpeed's and megatron-core's log lines (default: train.out_dir/logs/)",
    )
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)


def entry_argv(args: argparse.Namespace) -> list[str]:
    """The arguments of :mod:`filtertron.train.entry` for the same run."""
    argv = ["--config", args.config]
    for o in args.overrides:
        argv += ["--set", o]
    return argv + ["--resume"] * args.resume + ["--verbose"] * args.verbose


def run(args: argparse.Namespace) -> int:
    """Run ``filtertron train``; returns the exit status."""
    from filtertron.parallel import launcher
    from filtertron.train.entry import train

    cfg = load_config(args.config, args.overrides)  # fail fast, before any process starts
    if args.nproc > 1 and not launcher.inside_launcher():
        cmd, port = launcher.deepspeed_command(
            "filtertron.train.entry", entry_argv(args), args.nproc, args.master_port
        )
        return launcher.run_child(cmd, Path(cfg.train.out_dir) / "logs", args.verbose, port)
    return train(cfg, args.resume, args.verbose)
