"""Evaluate checkpoints: a thin wrapper over ``filtertron eval``.

    python tools/eval.py runs/tiny/baseline runs/tiny/bilateral --data data/sample \
        --lengths 1x,2x,4x,8x,16x --contamination 0,0.05,0.1,0.2 --diagnostics --out runs/eval

Options: see ``filtertron eval --help`` (:mod:`filtertron.eval.cli`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from filtertron.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
