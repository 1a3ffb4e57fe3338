"""Launcher entry point: ``deepspeed --hostfile HOSTS launch/train.py --config C.yaml``.

A thin script over :mod:`filtertron.train.entry`, for launchers that want a script path
(deepspeed, torchrun, mpirun, srun). See launch/README.md for the recipes.
"""

import sys

from filtertron.train.entry import main

if __name__ == "__main__":
    sys.exit(main())
