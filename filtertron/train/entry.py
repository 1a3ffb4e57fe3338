"""Per-process entry point for launchers: ``python -m filtertron.train.entry --config C.yaml``.

deepspeed, torchrun, mpirun and srun start one of these per process; launch/train.py is the
same thing as a script path (``deepspeed --hostfile H launch/train.py --config C.yaml``).
"""

from __future__ import annotations

import argparse
import sys

from filtertron.cli import configure_logging
from filtertron.config import ConfigError, load_config
from filtertron.train.cli import add_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="filtertron-train", description=__doc__.splitlines()[0])
    add_arguments(parser, config_flag=True)
    args = parser.parse_args(argv)
    configure_logging()
    try:
        cfg = load_config(args.config, args.overrides)
        from filtertron.train.trainer import Trainer

        Trainer(cfg, resume=args.resume).run()
    except ConfigError as e:
        print(f"filtertron train: config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
