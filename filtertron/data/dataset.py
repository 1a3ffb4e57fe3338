"""Prepared datasets: metadata, the tokenizer check, and token access to one split.

A prepared dataset directory holds, per split (``train``, ``validation``, ``test``):
``{split}.bin`` / ``{split}.idx`` (Megatron indexed format, each document followed by the
end-of-document token) and ``{split}.json`` metadata::

    {"format": "filtertron-indexed/1", "source", "split", "tokenizer_hash", "vocab_size",
     "eod_id", "dtype", "documents", "tokens", "words", "bytes", "encoding_errors"}

``tokens`` counts the EOD tokens too; ``words`` (whitespace-split words) and ``bytes``
(UTF-8) count the documents' original text, for word-level perplexity and bits per byte.
The tokenizer sits next to the splits (see :mod:`filtertron.data.tokenizer`).

Token access goes through megatron-core's ``IndexedDataset`` reader (memory-mapped, so a
split of any size costs no RAM), after :func:`~filtertron.data.indexed.validate_files`.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from filtertron.data.errors import DataError, DatasetNotFoundError, TokenizerMismatchError
from filtertron.data.indexed import validate_files
from filtertron.data.tokenizer import DESCRIPTION

FORMAT = "filtertron-indexed/1"


def write_metadata(path: str | os.PathLike, metadata: dict[str, Any]) -> None:
    """Write a metadata JSON through a temporary name, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def list_splits(dataset_dir: str | os.PathLike) -> list[str]:
    """Names of the splits a prepared dataset directory holds metadata for."""
    d = Path(dataset_dir)
    return sorted(
        p.stem for p in d.glob("*.json") if p.name != DESCRIPTION and p.with_suffix(".idx").exists()
    )


def read_metadata(dataset_dir: str | os.PathLike, split: str) -> dict[str, Any]:
    """The metadata of one split.

    Raises:
        DatasetNotFoundError: the directory or the split's metadata is missing.
        DataError: the metadata is not valid JSON of this format.
    """
    d = Path(dataset_dir)
    if not d.is_dir():
        raise DatasetNotFoundError(f"{d}: no such dataset directory (run `filtertron prepare`)")
    path = d / f"{split}.json"
    if not path.exists():
        raise DatasetNotFoundError(
            f"{path}: no split {split!r} in {d} (it has: {', '.join(list_splits(d)) or 'none'})"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable metadata ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path}: not filtertron dataset metadata (format {FORMAT})")
    return meta


def check_tokenizer_hash(dataset_dir: str | os.PathLike, expected_hash: str) -> None:
    """Raise unless every split of a dataset was tokenized with the expected tokenizer.

    Args:
        dataset_dir: A prepared dataset directory.
        expected_hash: The tokenizer hash the model was trained with (``Tokenizer.hash``).

    Raises:
        TokenizerMismatchError: a split or the directory's tokenizer has another hash.
        DatasetNotFoundError: the directory holds no prepared split.
    """
    d = Path(dataset_dir)
    found: list[tuple[str, str]] = []
    desc = d / DESCRIPTION
    if desc.exists():
        found.append((str(desc), json.loads(desc.read_text(encoding="utf-8")).get("hash", "")))
    splits = list_splits(d) if d.is_dir() else []
    if not splits:
        raise DatasetNotFoundError(f"{d}: no prepared splits (run `filtertron prepare`)")
    found += [(str(d / f"{s}.json"), read_metadata(d, s)["tokenizer_hash"]) for s in splits]
    for where, got in found:
        if got != expected_hash:
            raise TokenizerMismatchError(
                f"{where}: tokenized with tokenizer {got[:12]}..., but the model expects "
                f"{expected_hash[:12]}...; prepare the data again with the model's tokenizer "
                "(`filtertron prepare --tokenizer CHECKPOINT_OR_DATASET_DIR ...`)"
            )


class TokenDataset:
    """One prepared split: documents and the concatenated token stream, memory-mapped.

    Args:
        prefix: Path of the split without suffix (``DIR/train``).
        metadata: The split's metadata; its counts must match the files.
    """

    def __init__(self, prefix: str | os.PathLike, metadata: dict[str, Any]) -> None:
        self.prefix = Path(prefix)
        self.metadata = metadata
        info = validate_files(self.prefix)
        for key, got in (("documents", info.num_documents), ("tokens", info.num_tokens)):
            if metadata[key] != got:
                raise DataError(
                    f"{self.prefix}.idx holds {got} {key}, its metadata says "
                    f"{metadata[key]}: the files do not belong together"
                )
        if info.dtype.name != metadata["dtype"]:
            raise DataError(
                f"{self.prefix}.idx stores {info.dtype.name}, metadata says {metadata['dtype']}"
            )
        self.dtype = info.dtype
        self._indexed = None

    @property
    def eod_id(self) -> int:
        return int(self.metadata["eod_id"])

    @property
    def vocab_size(self) -> int:
        return int(self.metadata["vocab_size"])

    @property
    def tokenizer_hash(self) -> str:
        return str(self.metadata["tokenizer_hash"])

    @property
    def num_tokens(self) -> int:
        return int(self.metadata["tokens"])

    @property
    def num_documents(self) -> int:
        return int(self.metadata["documents"])

    def __len__(self) -> int:
        return self.num_documents

    @property
    def indexed(self) -> Any:
        """megatron-core's ``IndexedDataset`` over the split, opened on first use."""
        if self._indexed is None:
            with warnings.catch_warnings():  # megatron warns that Apex/TE are missing
                warnings.simplefilter("ignore")
                from megatron.core.datasets.indexed_dataset import IndexedDataset
            self._indexed = IndexedDataset(str(self.prefix), mmap=True)
        return self._indexed

    # Both readers return copies: megatron-core's IndexedDataset closes its memory map in
    # __del__, so a view of it outliving this dataset would read unmapped memory (a segfault).
    def document(self, i: int) -> np.ndarray:
        """Tokens of document ``i``, ending in the EOD token (a copy)."""
        if not -self.num_documents <= i < self.num_documents:
            raise IndexError(f"document {i} out of range for {self.num_documents} documents")
        return np.array(self.indexed[i % self.num_documents])

    def tokens(self, start: int, length: int) -> np.ndarray:
        """``length`` tokens of the split's token stream from position ``start``."""
        if start < 0 or length < 0 or start + length > self.num_tokens:
            raise IndexError(
                f"tokens [{start}, {start + length}) out of range for {self.num_tokens} tokens"
            )
        return np.array(
            self.indexed.bin_reader.read(self.dtype, length, start * self.dtype.itemsize)
        )

    def __getstate__(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "metadata": self.metadata, "dtype": self.dtype}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _indexed=None)

    def __repr__(self) -> str:
        return (
            f"TokenDataset({self.prefix}, documents={self.num_documents}, tokens={self.num_tokens})"
        )


def open_split(dataset_dir: str | os.PathLike, split: str) -> TokenDataset:
    """Open one split of a prepared dataset directory.

    Args:
        dataset_dir: Output directory of ``filtertron prepare``.
        split: ``train``, ``validation`` or ``test``.

    Returns:
        The split's :class:`TokenDataset`.

    Raises:
        DatasetNotFoundError: the directory, split or one of its files is missing.
        DataError: a file is truncated or the files disagree with each other.
    """
    d = Path(dataset_dir)
    meta = read_metadata(d, split)
    desc = d / DESCRIPTION
    if desc.exists():
        tok_hash = json.loads(desc.read_text(encoding="utf-8")).get("hash")
        if tok_hash != meta["tokenizer_hash"]:
            raise TokenizerMismatchError(
                f"{d / split}.json was tokenized with {meta['tokenizer_hash'][:12]}..., but "
                f"{desc} is {str(tok_hash)[:12]}...: the directory mixes tokenizers"
            )
    return TokenDataset(d / split, meta)
