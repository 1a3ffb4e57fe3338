"""Prepare a token dataset: a thin wrapper over ``filtertron prepare``.

    python tools/prepare_data.py --source corpus/sample --output data/sample --vocab-size 4096

Options: see ``filtertron prepare --help`` (:mod:`filtertron.data.cli`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from filtertron.data.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
