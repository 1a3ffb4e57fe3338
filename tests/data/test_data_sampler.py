"""Training samples: windows, determinism, resumption, data-parallel shards, blending."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from filtertron.data import BlendedDataset, SequenceDataset, batch_iterator, open_split

SEQ = 32


@pytest.fixture(scope="module")
def train(prepared: Path) -> SequenceDataset:
    return SequenceDataset(open_split(prepared, "train"), SEQ, seed=5)


def test_windows_cover_the_stream(train: SequenceDataset) -> None:
    data = train.data
    assert len(train) == (data.num_tokens - 1) // SEQ
    windows = [train.window(i) for i in range(len(train))]
    assert sorted(windows) == list(range(len(train)))  # one epoch = every window once
    assert windows != sorted(windows)
    for i in (0, 1, len(train) - 1):
        w = train.window(i)
        assert torch.equal(
            train[i], torch.from_numpy(data.tokens(w * SEQ, SEQ + 1).astype(np.int64))
        )
        assert train[i].dtype == torch.int64 and train[i].shape == (SEQ + 1,)
    # the last target of window j is the first input of window j + 1
    inv = {w: i for i, w in enumerate(windows)}
    assert train[inv[3]][-1] == train[inv[4]][0]
    # windows run across documents: some hold an EOD token inside
    assert any((train[i][:-1] == data.eod_id).any() for i in range(50))


def test_determinism_and_epochs(train: SequenceDataset) -> None:
    again = SequenceDataset(train.data, SEQ, seed=5)
    other = SequenceDataset(train.data, SEQ, seed=6)
    n = len(train)
    first = [train.window(i) for i in range(n)]
    assert first == [again.window(i) for i in range(n)]
    assert first != [other.window(i) for i in range(n)]
    second = [train.window(n + i) for i in range(n)]
    assert sorted(second) == sorted(first) and second != first
    assert torch.equal(train[10 * n + 3], again[10 * n + 3])


def _stream(
    ds: torch.utils.data.Dataset, mbs: int, rank: int, size: int, start: int, steps: int
) -> list[torch.Tensor]:
    return list(itertools.islice(batch_iterator(ds, mbs, rank, size, start), steps))


def test_data_parallel_shards_are_disjoint(train: SequenceDataset) -> None:
    mbs, size, steps = 3, 2, 4
    single = torch.cat(_stream(train, mbs * size, 0, 1, 0, steps))
    ranks = [_stream(train, mbs, r, size, 0, steps) for r in range(size)]
    assert all(b.shape == (mbs, SEQ + 1) for r in ranks for b in r)
    # step s of rank r is slice r of global micro-batch s
    rebuilt = torch.cat([torch.cat([ranks[r][s] for r in range(size)]) for s in range(steps)])
    assert torch.equal(rebuilt, single)
    seen = [train.window(i) for i in range(mbs * size * steps)]
    assert len(set(seen)) == len(seen)


def test_resume_reproduces_the_stream(train: SequenceDataset) -> None:
    mbs, size = 2, 2
    full = _stream(train, mbs, 1, size, 0, 6)
    resumed = _stream(train, mbs, 1, size, 2 * mbs * size, 4)  # after 2 steps
    assert all(torch.equal(a, b) for a, b in zip(full[2:], resumed, strict=True))
    with pytest.raises(ValueError, match="multiple of micro_batch_size"):
        next(batch_iterator(train, mbs, 0, size, start_sample=3))
    with pytest.raises(ValueError, match="dp_rank"):
        next(batch_iterator(train, mbs, 2, size))


def test_dataloader_workers_give_the_same_batches(train: SequenceDataset) -> None:
    plain = list(itertools.islice(batch_iterator(train, 4, 0, 1, 8), 3))
    loaded = list(itertools.islice(batch_iterator(train, 4, 0, 1, 8, num_workers=1), 3))
    assert all(torch.equal(a, b) for a, b in zip(plain, loaded, strict=True))


def test_blending_proportions(prepared: Path, train: SequenceDataset) -> None:
    val = SequenceDataset(open_split(prepared, "validation"), SEQ, seed=1)
    test = SequenceDataset(open_split(prepared, "test"), SEQ, seed=2)
    weights = [0.6, 0.3, 0.1]
    blend = BlendedDataset([train, val, test], [6, 3, 1])
    n = 10_000
    picks = np.array([blend.source(i)[0] for i in range(n)])
    for k in (10, 100, 1000, n):  # every prefix follows the weights to within one sample
        counts = np.bincount(picks[:k], minlength=3)
        assert np.all(np.abs(counts - np.array(weights) * k) <= 1.0), (k, counts)
    # each dataset is read in its own order: its j-th pick is its sample j
    for d in range(3):
        js = [blend.source(i)[1] for i in np.flatnonzero(picks == d)]
        assert js == list(range(len(js)))
    d, j = blend.source(7)
    assert torch.equal(blend[7], [train, val, test][d][j])
    again = BlendedDataset([train, val, test], [6, 3, 1])
    assert [again.source(i) for i in range(500)] == [blend.source(i) for i in range(500)]


def test_blending_edge_cases(train: SequenceDataset) -> None:
    blend = BlendedDataset([train, train], [1.0, 0.0])
    assert {blend.source(i)[0] for i in range(200)} == {0}
    assert blend.source(100_000)[1] == 100_000  # indices beyond the first block grow the index
    with pytest.raises(ValueError, match="weights"):
        BlendedDataset([train], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive sum"):
        BlendedDataset([train, train], [0.0, 0.0])
    with pytest.raises(ValueError, match="cannot fill one window"):
        SequenceDataset(train.data, train.data.num_tokens)


def test_arrays_outlive_their_dataset(prepared: Path) -> None:
    """megatron-core closes its memory map when the dataset is collected; our arrays must not
    point into it. Run in a subprocess: a dangling view is a segfault, not an exception."""
    code = f"""
import gc, sys
import numpy as np
from filtertron.data import open_split
ds = open_split({str(prepared)!r}, "train")
doc, win = ds.document(0), ds.tokens(5, 40)
want = (doc.tolist(), win.tolist())
del ds
gc.collect()
junk = [np.ones(1 << 16) for _ in range(64)]
sys.exit(0 if (doc.tolist(), win.tolist()) == want else 3)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-2000:]}"
