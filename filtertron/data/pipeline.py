"""Parallel tokenization of document streams into indexed splits, with bounded memory.

:func:`write_splits` runs :func:`encode_stream` over the splits of a source and writes each
split's .bin/.idx (:class:`~filtertron.data.indexed.IndexedWriter`) and metadata JSON, with a
tqdm progress bar over the input bytes.

The reading process cuts the document stream into chunks of about ``chunk_chars``
characters; worker processes encode a chunk into one flat token array (each document
followed by the end-of-document token), its per-document lengths, and the chunk's word and
UTF-8 byte counts. At most ``in_flight`` chunks are out at any time, and results come back in
submission order, so memory is a few chunks whatever the input size, and the output is the
same for any number of workers. (``multiprocessing.Pool.imap`` would read ahead without
limit.)

Documents longer than ``LONG_DOCUMENT`` characters are encoded in pieces cut after a newline
that is followed by a word (optionally after one space). Neither SentencePiece (whose pieces
start at a space and never contain a newline it has not seen in training) nor byte-level BPE
pre-tokenization (GPT-2's regex ends a whitespace run there too) lets a token cross such a
point, so the ids are those of the whole document (tested), at bounded cost per call.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from filtertron.data.dataset import FORMAT, write_metadata
from filtertron.data.errors import DataError
from filtertron.data.indexed import IndexedWriter, token_dtype
from filtertron.data.sources import SplitSource
from filtertron.data.tokenizer import Tokenizer, load_tokenizer

LONG_DOCUMENT = 1 << 16
_CUT = re.compile(r"\n(?= ?\S)")


@dataclass
class EncodedChunk:
    """Encoded documents: flat tokens (each document + EOD), lengths, word and byte counts."""

    tokens: np.ndarray
    lengths: np.ndarray
    words: int
    bytes: int


def split_long(text: str, size: int = LONG_DOCUMENT) -> list[str]:
    """Cut ``text`` into pieces of about ``size`` characters after newlines (see module)."""
    pieces, start = [], 0
    while len(text) - start > size:
        m = _CUT.search(text, start + size // 2)
        if m is None:
            break
        pieces.append(text[start : m.end()])
        start = m.end()
    pieces.append(text[start:])
    return pieces


def encode_documents(tokenizer: Tokenizer, texts: list[str]) -> EncodedChunk:
    """Encode documents into one flat array, appending the EOD token to each.

    Args:
        tokenizer: The tokenizer.
        texts: Documents.

    Returns:
        The :class:`EncodedChunk`.
    """
    if any(len(t) > LONG_DOCUMENT for t in texts):
        pieces = [split_long(t) for t in texts]
        flat = tokenizer.encode_batch([p for ps in pieces for p in ps])
        ids, k = [], 0
        for ps in pieces:
            ids.append(list(chain.from_iterable(flat[k : k + len(ps)])))
            k += len(ps)
    else:
        ids = tokenizer.encode_batch(texts)
    lengths = np.fromiter((len(x) + 1 for x in ids), np.int32, len(ids))
    eod = (tokenizer.eod_id,)
    tokens = np.fromiter(
        chain.from_iterable(chain(x, eod) for x in ids),
        token_dtype(tokenizer.vocab_size),
        int(lengths.sum()),
    )
    words = sum(len(t.split()) for t in texts)
    nbytes = sum(len(t) if t.isascii() else len(t.encode("utf-8")) for t in texts)
    return EncodedChunk(tokens, lengths, words, nbytes)


_worker_tokenizer: Tokenizer | None = None


def _init_worker(path: str, eod_token: str) -> None:
    global _worker_tokenizer
    # One thread per worker process: the worker count is the parallelism asked for.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    _worker_tokenizer = load_tokenizer(path, eod_token)


def _encode_in_worker(texts: list[str]) -> EncodedChunk:
    assert _worker_tokenizer is not None, "worker not initialised"
    return encode_documents(_worker_tokenizer, texts)


def encode_stream(
    items: Iterable[tuple[Any, list[str]]],
    tokenizer: Tokenizer,
    workers: int,
    in_flight: int | None = None,
) -> Iterator[tuple[Any, EncodedChunk]]:
    """Encode ``(tag, documents)`` items in worker processes, yielding results in order.

    Args:
        items: Chunks of documents with a tag passed through to the result.
        tokenizer: The tokenizer; workers load it again from its file.
        workers: Worker processes; 0 encodes in this process.
        in_flight: Most chunks submitted but not yet yielded (default ``2 * workers + 1``).

    Returns:
        An iterator of ``(tag, EncodedChunk)`` in the order of ``items``.
    """
    if workers <= 0:
        for tag, texts in items:
            yield tag, encode_documents(tokenizer, texts)
        return
    in_flight = in_flight or 2 * workers + 1
    methods = multiprocessing.get_all_start_methods()
    # fork starts workers in milliseconds; spawn would re-import torch in each of them.
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ctx.Pool(workers, _init_worker, (str(tokenizer.path), tokenizer.eod_token)) as pool:
        pending: deque = deque()
        for tag, texts in items:
            pending.append((tag, pool.apply_async(_encode_in_worker, (texts,))))
            if len(pending) >= in_flight:
                tag0, result = pending.popleft()
                yield tag0, result.get()
        while pending:
            tag0, result = pending.popleft()
            yield tag0, result.get()


def write_splits(
    sources: dict[str, SplitSource],
    tok: Tokenizer,
    out_dir: Path,
    *,
    workers: int,
    holdout_every: int = 0,
    max_docs: int | None = None,
    chunk_chars: int = 1_000_000,
    encoding_errors: str = "strict",
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Encode every source split into ``out_dir/{split}.bin/.idx/.json``.

    Args:
        sources: Split sources (:func:`~filtertron.data.sources.resolve_source`).
        tok: The tokenizer.
        out_dir: An existing directory (``prepare`` passes its staging directory).
        workers: Worker processes (0: encode in this process).
        holdout_every: Move every N-th training document to ``validation`` (0: off).
        max_docs: Read at most this many documents per source split.
        chunk_chars: Characters of text per worker task.
        encoding_errors: Recorded in the metadata ("strict" or "replace").
        progress: Show a tqdm bar per source split (input bytes).

    Returns:
        The metadata written for each output split.

    Raises:
        DataError: a source split is empty or unreadable (files written so far are removed).
    """
    dtype = token_dtype(tok.vocab_size)
    writers: dict[str, IndexedWriter] = {}
    counts: dict[str, dict[str, int]] = {}
    names: dict[str, str] = {}

    def chunks() -> Iterator[tuple[tuple[str, str, int], list[str]]]:
        for src in sources.values():
            pos = [0]  # input bytes read so far, for the progress bar
            buffers: dict[str, list[str]] = {}
            sizes: dict[str, int] = {}
            read = 0

            def advance(n: int, pos: list[int] = pos) -> None:
                pos[0] += n

            for i, doc in enumerate(src.open(advance)):
                if max_docs is not None and i >= max_docs:
                    break
                if not doc or doc.isspace():
                    continue
                read += 1
                held = holdout_every and i % holdout_every == holdout_every - 1
                target = "validation" if held else src.split
                names.setdefault(
                    target, src.name + (f" (every {holdout_every}th document)" if held else "")
                )
                buffers.setdefault(target, []).append(doc)
                sizes[target] = sizes.get(target, 0) + len(doc)
                if sizes[target] >= chunk_chars:
                    yield (target, src.split, pos[0]), buffers.pop(target)
                    sizes[target] = 0
            for target, docs in buffers.items():
                yield (target, src.split, pos[0]), docs
            if read == 0:
                raise DataError(f"{src.name}: empty input, no documents for split {src.split!r}")

    bars: dict[str, tqdm] = {}
    try:
        for (target, src_split, pos), enc in encode_stream(chunks(), tok, workers):
            if target not in writers:
                writers[target] = IndexedWriter(out_dir / target, dtype)
                counts[target] = {"words": 0, "bytes": 0}
            writers[target].add(enc.tokens, enc.lengths)
            counts[target]["words"] += enc.words
            counts[target]["bytes"] += enc.bytes
            if progress:
                if src_split not in bars:
                    for bar in bars.values():
                        bar.close()
                    bars[src_split] = tqdm(
                        total=sources[src_split].total_bytes,
                        unit="B",
                        unit_scale=True,
                        desc=f"tokenize {src_split}",
                        file=sys.stderr,
                    )
                bar = bars[src_split]
                bar.update(pos - bar.n)
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        for bar in bars.values():
            bar.close()

    metas = {}
    for split, w in writers.items():
        w.finalize()
        metas[split] = {
            "format": FORMAT,
            "source": names[split],
            "split": split,
            "tokenizer_hash": tok.hash,
            "vocab_size": tok.vocab_size,
            "eod_id": tok.eod_id,
            "dtype": dtype.name,
            "documents": w.num_documents,
            "tokens": w.num_tokens,
            "words": counts[split]["words"],
            "bytes": counts[split]["bytes"],
            "encoding_errors": encoding_errors,
        }
        write_metadata(out_dir / f"{split}.json", metas[split])
    return metas
