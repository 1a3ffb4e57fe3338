"""Training samples: fixed-length windows across documents, blending, data-parallel batches.

- :class:`SequenceDataset`: a split's token stream cut into windows of ``seq_len + 1`` tokens
  starting at multiples of ``seq_len`` (the extra token is the last target and the next
  window's first input, as in Megatron's GPT dataset), so windows run across document
  boundaries and EOD tokens. ``ds[i]`` for ``i`` in epoch ``e = i // len(ds)`` is window
  ``perm_e[i % len(ds)]``, ``perm_e`` a permutation seeded by ``(seed, e)``: deterministic,
  every index valid, each epoch reshuffled.
- :class:`BlendedDataset`: sample ``i`` comes from the dataset whose realised share lags its
  weight the most, Megatron's blending rule, so proportions hold in every prefix.
- :func:`batch_iterator`: global sample indices in order from ``start_sample``; of each global
  micro-batch of ``micro_batch_size * dp_size`` samples, rank ``r`` takes the ``r``-th slice.
  Shards are disjoint, and resuming at the number of samples consumed continues exactly.

What comes from megatron-core and why: the blending order is megatron's own C++
``build_blending_indices`` (CPU-only code; its greedy choice does not depend on the total
size, so the index is built for a prefix and doubled on demand). Megatron's ``GPTDataset`` and
``BlendedDataset`` classes are not used: they need the number of samples up front, build and
cache their indices through ``torch.distributed`` rank 0, and shuffle documents before
cutting windows. Windows at fixed stream offsets need no sample index at all (window ``j``
starts at ``j * seq_len``), and a per-epoch permutation keeps any sample index valid. Memory:
one permutation (8 bytes per window) and 10 bytes per blended sample requested so far.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from filtertron.data.dataset import TokenDataset


class SequenceDataset(torch.utils.data.Dataset):
    """Shuffled (seq_len + 1)-token windows of one split's token stream.

    Args:
        token_dataset: An opened split (:func:`~filtertron.data.open_split`).
        seq_len: Model context length; samples hold ``seq_len + 1`` tokens.
        seed: Shuffle seed.
    """

    def __init__(self, token_dataset: TokenDataset, seq_len: int, seed: int = 0) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len={seq_len}: must be >= 1")
        self.data = token_dataset
        self.seq_len = seq_len
        self.seed = seed
        self.num_windows = (token_dataset.num_tokens - 1) // seq_len
        if self.num_windows < 1:
            raise ValueError(
                f"{token_dataset}: {token_dataset.num_tokens} tokens cannot fill "
                f"one window of {seq_len + 1}"
            )
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        """Windows per epoch."""
        return self.num_windows

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:  # keep the current and the previous epoch only
                self._perms.pop(min(self._perms))
            rng = np.random.default_rng([self.seed, epoch])
            self._perms[epoch] = rng.permutation(self.num_windows)
        return self._perms[epoch]

    def window(self, i: int) -> int:
        """Index of the window that sample ``i`` reads (any ``i >= 0``)."""
        if i < 0:
            raise IndexError(f"sample index {i} < 0")
        epoch, j = divmod(int(i), self.num_windows)
        return int(self._perm(epoch)[j])

    def __getitem__(self, i: int) -> torch.Tensor:
        start = self.window(i) * self.seq_len
        return torch.from_numpy(self.data.tokens(start, self.seq_len + 1).astype(np.int64))


class BlendedDataset(torch.utils.data.Dataset):
    """Datasets mixed by weight, deterministically, following Megatron's blending rule.

    Args:
        datasets: Map-style datasets accepting any index >= 0 (e.g. :class:`SequenceDataset`).
        weights: Non-negative weights, one per dataset; normalised.
        seed: Accepted for symmetry with :class:`SequenceDataset`; the blending order is
            deterministic and does not depend on it (shuffling happens inside the datasets).
    """

    def __init__(
        self, datasets: Sequence[torch.utils.data.Dataset], weights: Sequence[float], seed: int = 0
    ) -> None:
        if len(datasets) != len(weights) or not datasets:
            raise ValueError(f"{len(datasets)} datasets but {len(weights)} weights")
        w = np.asarray(weights, dtype=np.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights={list(weights)}: must be >= 0 with a positive sum")
        if len(datasets) > np.iinfo(np.int16).max:
            raise ValueError("too many datasets to blend")
        self.datasets = list(datasets)
        self.weights = w / w.sum()
        self.seed = seed
        self._dataset_index = np.zeros(0, dtype=np.int16)
        self._sample_index = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        """Nominal epoch: the datasets' lengths summed (any index is valid)."""
        return sum(len(d) for d in self.datasets)

    def _grow(self, size: int) -> None:
        with warnings.catch_warnings():  # megatron warns that Apex/TE are missing
            warnings.simplefilter("ignore")
            from megatron.core.datasets import helpers

        n = max(4096, 1 << (size - 1).bit_length())
        dataset_index = np.zeros(n, dtype=np.int16)
        sample_index = np.zeros(n, dtype=np.int64)
        helpers.build_blending_indices(
            dataset_index, sample_index, self.weights, len(self.datasets), n, False
        )
        self._dataset_index, self._sample_index = dataset_index, sample_index

    def source(self, i: int) -> tuple[int, int]:
        """(dataset, index within it) of blended sample ``i``."""
        if i < 0:
            raise IndexError(f"sample index {i} < 0")
        if i >= len(self._dataset_index):
            self._grow(i + 1)
        return int(self._dataset_index[i]), int(self._sample_index[i])

    def __getitem__(self, i: int) -> torch.Tensor:
        d, j = self.source(i)
        return self.datasets[d][j]


class ShardedBatchSampler(torch.utils.data.Sampler):
    """Infinite index batches of one data-parallel rank (a ``DataLoader`` ``batch_sampler``).

    Args:
        micro_batch_size: Samples per rank per micro-batch.
        dp_rank: This rank.
        dp_size: Data-parallel world size.
        start_sample: Global samples already consumed (a multiple of
            ``micro_batch_size * dp_size``).
    """

    def __init__(
        self, micro_batch_size: int, dp_rank: int = 0, dp_size: int = 1, start_sample: int = 0
    ) -> None:
        if micro_batch_size < 1 or dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(
                f"micro_batch_size={micro_batch_size}, dp_rank={dp_rank}, "
                f"dp_size={dp_size}: need sizes >= 1 and 0 <= dp_rank < dp_size"
            )
        global_batch = micro_batch_size * dp_size
        if start_sample < 0 or start_sample % global_batch:
            raise ValueError(
                f"start_sample={start_sample}: must be a non-negative multiple of "
                f"micro_batch_size * dp_size = {global_batch}"
            )
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.global_batch = global_batch
        self.start_sample = start_sample

    def __iter__(self) -> Iterator[list[int]]:
        first = self.start_sample + self.dp_rank * self.micro_batch_size
        while True:
            yield list(range(first, first + self.micro_batch_size))
            first += self.global_batch


def batch_iterator(
    dataset: torch.utils.data.Dataset,
    micro_batch_size: int,
    dp_rank: int = 0,
    dp_size: int = 1,
    start_sample: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[torch.Tensor]:
    """Infinite micro-batches of one data-parallel rank.

    Args:
        dataset: A map-style dataset accepting any index >= 0 (sequence or blended).
        micro_batch_size: Samples per rank per micro-batch.
        dp_rank: This rank.
        dp_size: Data-parallel world size.
        start_sample: Global samples consumed before (resumption); a multiple of
            ``micro_batch_size * dp_size``.
        num_workers: ``DataLoader`` worker processes (0: load in this process).
        pin_memory: Return page-locked tensors (faster, asynchronous copies to a GPU).

    Returns:
        An iterator of LongTensors of shape (micro_batch_size, seq_len + 1).
    """
    sampler = ShardedBatchSampler(micro_batch_size, dp_rank, dp_size, start_sample)
    if num_workers > 0:
        yield from torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory
        )
        return
    for indices in sampler:
        batch = torch.stack([dataset[i] for i in indices])
        yield batch.pin_memory() if pin_memory else batch
