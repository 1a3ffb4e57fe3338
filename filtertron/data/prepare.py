"""``filtertron prepare``: turn a text source into a training-ready token dataset.

    filtertron prepare --source NAME_OR_PATH --output DIR [--vocab-size N | --tokenizer PATH]
                       [--workers N] [--splits train,validation] [--field text] ...

Source (:mod:`~filtertron.data.sources`) -> tokenizer (trained SentencePiece BPE on a bounded
sample of the training split, or loaded) -> parallel encoding
(:mod:`~filtertron.data.pipeline`) -> per split ``DIR/{split}.bin/.idx/.json`` plus the
tokenizer (:mod:`~filtertron.data.dataset`). Everything is written into a hidden staging
directory next to DIR and renamed to DIR only when every split is complete, so an
interrupted or failed run never leaves a dataset that looks finished. Bad input raises
:class:`~filtertron.data.errors.DataError`, which ``run`` prints without a traceback.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filtertron.data.errors import DataError
from filtertron.data.pipeline import write_splits
from filtertron.data.sources import SPLITS, SplitSource, resolve_source
from filtertron.data.tokenizer import (
    DEFAULT_EOD,
    SENTENCEPIECE_FILE,
    load_tokenizer,
    save_tokenizer,
    train_sentencepiece,
)

DEFAULT_VOCAB = 4096
HUB_HOLDOUT_EVERY = 2000  # OpenWebText has no validation split: hold out 0.05% of documents


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


def prepare(
    source: str,
    output: str | os.PathLike,
    *,
    vocab_size: int | None = None,
    tokenizer: str | None = None,
    workers: int = 1,
    splits: str | None = None,
    split: str | None = None,
    fmt: str | None = None,
    field: str | None = None,
    hub_config: str | None = None,
    txt_docs: str = "paragraph",
    encoding_errors: str = "strict",
    eod_token: str | None = None,
    no_byte_fallback: bool = False,
    sample_docs: int = 200_000,
    sample_mb: float = 20.0,
    holdout_every: int | None = None,
    max_docs: int | None = None,
    chunk_mb: float = 1.0,
    overwrite: bool = False,
    no_progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Prepare a dataset directory; the keyword arguments mirror the command-line options.

    Returns:
        The metadata written for each split.

    Raises:
        DataError: bad input; nothing is left at ``output`` (an existing one is untouched).
    """
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise DataError(f"{out} exists and is not empty; pass --overwrite to replace it")
    sources = resolve_source(source, fmt, split, field, hub_config, txt_docs, encoding_errors)
    if splits:
        wanted = [s.strip() for s in splits.split(",") if s.strip()]
        missing = [s for s in wanted if s not in sources]
        if missing:
            raise DataError(f"{source} has no split(s) {missing} (it has {sorted(sources)})")
        sources = {s: sources[s] for s in wanted}
    if holdout_every is None:
        holdout_every = HUB_HOLDOUT_EVERY if not Path(source).exists() else 0
    if "validation" in sources or "train" not in sources:
        holdout_every = 0

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        if tokenizer is not None:
            tok = load_tokenizer(tokenizer, eod_token)
            save_tokenizer(tok, staging, origin=str(tokenizer))
        else:
            if "train" not in sources:
                raise DataError(
                    f"{source} has no train split to train a tokenizer on; pass --tokenizer"
                )
            size = vocab_size or DEFAULT_VOCAB
            docs = _training_sample(sources["train"], holdout_every)
            first = next(docs, None)
            if first is None:
                raise DataError(
                    f"{sources['train'].name}: empty input, no documents for split 'train'"
                )
            docs = itertools.chain([first], docs)
            if not no_progress:
                print(
                    f"training a SentencePiece BPE tokenizer (vocab {size}) on up to "
                    f"{sample_docs} documents / {sample_mb:g} MB of {sources['train'].name}",
                    file=sys.stderr,
                )
            tok = train_sentencepiece(
                docs,
                staging / SENTENCEPIECE_FILE,
                size,
                max_docs=sample_docs,
                max_bytes=int(sample_mb * 1e6),
                byte_fallback=not no_byte_fallback,
                eod_token=eod_token or DEFAULT_EOD,
                threads=max(workers, 1),
            )
            save_tokenizer(
                tok,
                staging,
                trained={
                    "source": sources["train"].name,
                    "vocab_size": size,
                    "model_type": "bpe",
                    "byte_fallback": not no_byte_fallback,
                    "sample_docs": sample_docs,
                    "sample_mb": sample_mb,
                },
            )
        metas = write_splits(
            sources,
            tok,
            staging,
            workers=workers,
            holdout_every=holdout_every,
            max_docs=max_docs,
            chunk_chars=int(chunk_mb * 1e6),
            encoding_errors=encoding_errors,
            progress=not no_progress,
        )
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return metas


def _training_sample(train: SplitSource, holdout_every: int) -> Iterator[str]:
    for i, doc in enumerate(train.open(None)):
        held = holdout_every and i % holdout_every == holdout_every - 1
        if not held and doc and not doc.isspace():
            yield doc


def _publish(staging: Path, out: Path) -> None:
    """Move the finished staging directory to ``out`` (replacing it), in renames only."""
    if not out.exists():
        os.rename(staging, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.rename(out, old)
    os.rename(staging, out)
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tools/prepare_data.py`` and ``python -m filtertron.data.prepare``."""
    parser = argparse.ArgumentParser(
        prog="filtertron prepare", description=__doc__.split("\n")[0].strip("`")
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
