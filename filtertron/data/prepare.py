"""Turn a text source into a training-ready token dataset (``filtertron prepare``).

Source (:mod:`~filtertron.data.sources`) -> tokenizer (trained SentencePiece BPE on a bounded
sample of the training split, or loaded) -> parallel encoding
(:mod:`~filtertron.data.pipeline`) -> per split ``DIR/{split}.bin/.idx/.json`` plus the
tokenizer (:mod:`~filtertron.data.dataset`). Everything is written into a hidden staging
directory next to DIR and renamed to DIR only when every split is complete, so an
interrupted or failed run never leaves a dataset that looks finished. Bad input raises
:class:`~filtertron.data.errors.DataError`, which the command line (:mod:`filtertron.data.cli`)
prints without a traceback.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filtertron.data.errors import DataError
from filtertron.data.pipeline import write_splits
from filtertron.data.sources import SplitSource, resolve_source
from filtertron.data.tokenizer import (
    DEFAULT_EOD,
    SENTENCEPIECE_FILE,
    load_tokenizer,
    save_tokenizer,
    train_sentencepiece,
)

DEFAULT_VOCAB = 4096
HUB_HOLDOUT_EVERY = 2000  # OpenWebText has no validation split: hold out 0.05% of documents


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
