"""filtertron's data tools: sources, tokenizers, Megatron indexed datasets and samplers.

``filtertron prepare`` (:mod:`filtertron.data.prepare`) turns WikiText, OpenWebText or local
text into ``DIR/{train,validation,test}.{bin,idx,json}`` plus the tokenizer; training and
evaluation read it back with::

    from filtertron.data import open_split, SequenceDataset, batch_iterator
    train = SequenceDataset(open_split("data/sample", "train"), seq_len=128, seed=0)
    batches = batch_iterator(train, micro_batch_size=8, dp_rank=rank, dp_size=world)

Names are imported on first use, so ``filtertron prepare`` and the corpus generator start
without importing torch (the samplers need it) or megatron-core (the reader needs it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "TokenDataset": "dataset",
    "check_tokenizer_hash": "dataset",
    "list_splits": "dataset",
    "open_split": "dataset",
    "read_metadata": "dataset",
    "DataError": "errors",
    "DatasetNotFoundError": "errors",
    "HubUnavailableError": "errors",
    "TokenizerMismatchError": "errors",
    "BlendedDataset": "sampler",
    "SequenceDataset": "sampler",
    "ShardedBatchSampler": "sampler",
    "batch_iterator": "sampler",
    "Tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "train_sentencepiece": "tokenizer",
}
__all__ = [
    "BlendedDataset",
    "DataError",
    "DatasetNotFoundError",
    "HubUnavailableError",
    "SequenceDataset",
    "ShardedBatchSampler",
    "TokenDataset",
    "Tokenizer",
    "TokenizerMismatchError",
    "batch_iterator",
    "check_tokenizer_hash",
    "list_splits",
    "load_tokenizer",
    "open_split",
    "read_metadata",
    "train_sentencepiece",
]

if TYPE_CHECKING:
    from filtertron.data.dataset import (
        TokenDataset,
        check_tokenizer_hash,
        list_splits,
        open_split,
        read_metadata,
    )
    from filtertron.data.errors import (
        DataError,
        DatasetNotFoundError,
        HubUnavailableError,
        TokenizerMismatchError,
    )
    from filtertron.data.sampler import (
        BlendedDataset,
        SequenceDataset,
        ShardedBatchSampler,
        batch_iterator,
    )
    from filtertron.data.tokenizer import Tokenizer, load_tokenizer, train_sentencepiece


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'filtertron.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"filtertron.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
