"""``filtertron convert``: consolidate a TP/PP/ZeRO checkpoint into one file, or reshard it.

    filtertron convert CKPT --out DIR                  # one model.pt, single-device GPT names
    filtertron convert CKPT --out DIR --tp 2 --pp 2    # ... plus DeepSpeed files for tp=2, pp=2

CKPT is a step directory with ``filtertron.json`` (or a run / checkpoints directory: its newest
committed step). The source layout comes from the marker's config (``--config`` for a bare
DeepSpeed directory). What is read and written: :mod:`filtertron.checkpoint.shards`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``convert`` options to ``parser``."""
    parser.add_argument("checkpoint", help="a step directory (or a run / checkpoints directory)")
    parser.add_argument("--out", required=True, help="output step directory")
    parser.add_argument("--tp", type=int, default=1, help="target tensor-parallel size")
    parser.add_argument("--pp", type=int, default=1, help="target pipeline-parallel size")
    parser.add_argument(
        "--zero-stage", type=int, default=None, help="target ZeRO stage (default: the source's)"
    )
    parser.add_argument(
        "--config",
        default=None,
        help="run config YAML, for a DeepSpeed directory without filtertron.json",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``filtertron convert``; config errors propagate (the CLI prints them, exit 2)."""
    from filtertron.checkpoint.shards import convert

    try:
        out = convert(
            Path(args.checkpoint), Path(args.out), args.tp, args.pp, args.zero_stage, args.config
        )
    except (ValueError, FileNotFoundError) as e:
        from filtertron.config import ConfigError

        if isinstance(e, ConfigError):
            raise
        print(f"filtertron convert: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0
