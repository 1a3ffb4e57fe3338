"""``filtertron prepare``: the command line of :func:`filtertron.data.prepare.prepare`.

    filtertron prepare --source NAME_OR_PATH --output DIR [--vocab-size N | --tokenizer PATH]
                       [--workers N] [--splits train,validation] [--field text] ...

Also ``python -m filtertron.data.cli`` and ``tools/prepare_data.py``. Bad input prints one
line naming the file or source (a :class:`~filtertron.data.errors.DataError`), exit status 2.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys

from filtertron.data.errors import DataError
from filtertron.data.prepare import DEFAULT_VOCAB, HUB_HOLDOUT_EVERY, prepare
from filtertron.data.sources import SPLITS
from filtertron.data.tokenizer import DEFAULT_EOD


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``prepare`` options to ``parser``."""
    p = parser
    p.add_argument(
        "--source",
        required=True,
        help="hub name (wikitext, wikitext-103-raw-v1, openwebtext, owner/name) or a "
        "local file or directory (.raw WikiText, .txt, .jsonl, .parquet)",
    )
    p.add_argument("--output", required=True, help="dataset directory to create")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help=f"train a SentencePiece BPE tokenizer of this size (default {DEFAULT_VOCAB})",
    )
    tok.add_argument(
        "--tokenizer",
        default=None,
        help="use an existing tokenizer: a SentencePiece .model, a Hugging Face "
        "tokenizer.json, or a prepared dataset directory",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="tokenizer processes (0: in this process; default: CPU count)",
    )
    p.add_argument(
        "--splits",
        default=None,
        help="comma-separated splits to prepare (default: all the source has)",
    )
    p.add_argument(
        "--split", default=None, choices=SPLITS, help="put every local input file into this split"
    )
    p.add_argument(
        "--format",
        dest="fmt",
        default=None,
        choices=["wikitext", "txt", "jsonl", "parquet"],
        help="local file format (default: from the file suffix)",
    )
    p.add_argument(
        "--field",
        "--jsonl-field",
        dest="field",
        default=None,
        help="text field of .jsonl records, .parquet columns and hub rows (default: text)",
    )
    p.add_argument("--hub-config", default=None, help="hub dataset configuration name")
    p.add_argument(
        "--txt-docs",
        default="paragraph",
        choices=["paragraph", "line", "file"],
        help=".txt documents: blank-line separated, one per line, or whole files",
    )
    p.add_argument(
        "--encoding-errors",
        default="strict",
        choices=["strict", "replace"],
        help="bytes that are not UTF-8: fail (default) or replace with U+FFFD",
    )
    p.add_argument(
        "--eod-token",
        default=None,
        help=f"end-of-document token (default {DEFAULT_EOD} when training; the "
        "tokenizer's own end token when loading)",
    )
    p.add_argument(
        "--no-byte-fallback",
        action="store_true",
        help="train without byte tokens (unseen characters become <unk>)",
    )
    p.add_argument(
        "--sample-docs",
        type=int,
        default=200_000,
        help="tokenizer training sample: at most this many training documents",
    )
    p.add_argument(
        "--sample-mb",
        type=float,
        default=20.0,
        help="tokenizer training sample: at most this many MB of text",
    )
    p.add_argument(
        "--holdout-every",
        type=int,
        default=None,
        help="move every N-th training document to a validation split (default: "
        f"{HUB_HOLDOUT_EVERY} for hub sources without one, else off)",
    )
    p.add_argument(
        "--max-docs",
        type=int,
        default=None,
        help="read at most this many documents per split (for quick trials)",
    )
    p.add_argument("--chunk-mb", type=float, default=1.0, help="text per worker task")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Run ``filtertron prepare``; returns the exit status (2 for bad input)."""
    try:
        known = inspect.signature(prepare).parameters
        metas = prepare(**{k: v for k, v in vars(args).items() if k in known})
    except DataError as e:
        print(f"filtertron prepare: error: {e}", file=sys.stderr)
        return 2
    for split, m in metas.items():
        print(
            f"{split}: {m['documents']} documents, {m['tokens']} tokens, {m['words']} words, "
            f"{m['bytes']} bytes ({m['tokens'] / max(m['words'], 1):.3f} tokens/word)"
        )
    print(f"wrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tools/prepare_data.py`` and ``python -m filtertron.data.cli``."""
    parser = argparse.ArgumentParser(
        prog="filtertron prepare", description="tokenize a corpus into Megatron .bin/.idx datasets"
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
