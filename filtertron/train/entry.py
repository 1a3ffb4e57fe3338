"""Per-process entry point for launchers: ``python -m filtertron.train.entry --config C.yaml``.

deepspeed, torchrun, mpirun and srun start one of these per process; launch/train.py is the
same thing as a script path (``deepspeed --hostfile H launch/train.py --config C.yaml``).
A known error (bad config, bad data, a launcher environment that describes no single world,
divergence) prints as one line naming its cause, and its traceback goes to
``train.out_dir/logs/rank{r}.log``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from filtertron import logs
from filtertron.config import ConfigError, RunConfig, load_config
from filtertron.train.cli import add_arguments

PROG = "filtertron train"


def known_errors() -> dict[type[BaseException], tuple[str, int]]:
    """Exception type -> (what the one-line message calls it, exit status)."""
    from filtertron.data import DataError
    from filtertron.parallel.distributed import LaunchError
    from filtertron.train.trainer import TrainingDiverged

    return {
        ConfigError: ("config error", 2),
        DataError: ("data error", 2),
        LaunchError: ("launch error", 2),
        TrainingDiverged: ("training diverged", 1),
    }


def train(cfg: RunConfig, resume: bool = False, verbose: bool = False) -> int:
    """Train ``cfg`` in this process (one rank of a launched run, or the only one).

    Returns:
        0, or the exit status of a known error (printed as one line).
    """
    rank = int(os.environ.get("RANK", "0"))
    logs.setup(Path(cfg.train.out_dir) / "logs", rank, verbose)
    try:
        from filtertron.train.trainer import Trainer

        final = Trainer(cfg, resume=resume).run()
    except tuple(known_errors()) as e:
        kind, status = next(v for t, v in known_errors().items() if isinstance(e, t))
        logs.report_error(PROG, kind, e)
        return status
    if rank == 0:
        print(
            f"done: step {final['step']}, loss {final.get('loss', float('nan')):.4f}, "
            f"val_loss {final['val_loss']:.4f}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="filtertron-train", description=__doc__.splitlines()[0])
    add_arguments(parser, config_flag=True)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"{PROG}: config error: {e}", file=sys.stderr)
        return 2
    return train(cfg, args.resume, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
