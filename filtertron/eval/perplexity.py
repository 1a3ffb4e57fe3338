"""Perplexity over a token stream: token-level, word-level and bits per byte, sliding windows.

The scored span is a token stream x_0 .. x_{N-1}: whole documents of a split, each followed
by the end-of-document token (EOD). Targets are x_1 .. x_{N-1}; x_0 has no context and is not
scored, so a span of N tokens scores N - 1 targets (EOD targets included). With NLL_t the
model's -log p(x_t | context):

    token_ppl     = exp(sum_t NLL_t / (N - 1))
    word_ppl      = exp(sum_t NLL_t / words)       words: whitespace-split words of the span's
                                                   original text (WikiText-103 convention)
    bits_per_byte = sum_t NLL_t / ln 2 / bytes     bytes: UTF-8 bytes of that text

Sliding windows (the Hugging Face convention): window i has inputs x[b_i : e_i] with
b_i = i S and e_i = min(b_i + L, N - 1), targets x[b_i + 1 : e_i + 1], and scores only the
targets after the previous window's end (the first window scores all of its targets), so every
target is scored exactly once, with at least L - S tokens of context. S = L gives disjoint
windows; the last window may be shorter than L. Shapes: a batch of windows is (B, T) ids.

One shape per length: every batch of a length is (B, T), T the longest window and B the
batch size (or the number of windows, if fewer). A short last batch repeats its last window
(the repeats are not counted) and a window cut short by the stream's end is padded with token
0 (its padded targets are not scored; the models are causal, so real positions do not see
the padding). A compiled model or FlexAttention therefore compiles once per length, not once
for each ragged batch and window.

Sums are accumulated in float64 per window; under data parallelism each rank scores every
``world``-th window and the sums (NLL, tokens) are all-reduced, so the result is
exp(sum NLL / sum tokens) over all ranks.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

LOGIT_CHUNK = 1 << 23  # logits materialised at once (elements): the LM head runs in chunks


@dataclass(frozen=True)
class Window:
    """One evaluation window: inputs x[start : start + length], targets shifted by one.

    ``score_from`` is the first scored position inside the window: targets
    x[start + score_from + 1 : start + length + 1] are scored.
    """

    start: int
    length: int
    score_from: int

    @property
    def scored(self) -> int:
        return self.length - self.score_from


def sliding_windows(num_targets: int, length: int, stride: int | None = None) -> list[Window]:
    """The windows that score targets 1 .. ``num_targets`` of a stream (HF convention).

    Args:
        num_targets: Number of targets, N - 1 for a stream of N tokens.
        length: Window length L (input tokens per window).
        stride: Stride S, 1 <= S <= L; None means S = L (disjoint windows).

    Returns:
        The windows in stream order; their scored counts sum to ``num_targets``.
    """
    stride = length if stride is None else stride
    if length < 1:
        raise ValueError(f"length: expected >= 1, got {length}")
    if not 1 <= stride <= length:
        raise ValueError(
            f"stride: expected 1 <= stride <= length={length}, got {stride} "
            "(a stride above the length would leave tokens unscored)"
        )
    windows, prev_end, begin = [], 0, 0
    while prev_end < num_targets:
        end = min(begin + length, num_targets)
        windows.append(Window(begin, end - begin, prev_end - begin))
        prev_end, begin = end, begin + stride
    return windows


@dataclass(frozen=True)
class Span:
    """The scored text: a token stream and the word and byte counts of its original text."""

    tokens: np.ndarray  # (N,) ids, whole documents each ending in EOD
    words: int
    bytes: int
    documents: int
    whole_split: bool
    tokenizer_hash: str
    vocab_size: int

    @property
    def num_targets(self) -> int:
        return max(len(self.tokens) - 1, 0)


def load_span(
    dataset_dir: str | os.PathLike, split: str = "test", max_tokens: int | None = None
) -> Span:
    """The stream to score: a whole split, or its longest prefix of whole documents.

    A whole split takes its word and byte counts from the metadata. A prefix
    (``max_tokens``) is cut at a document boundary, and its counts come from the decoded text
    of exactly those documents (filtertron's tokenizers round-trip text exactly).

    Args:
        dataset_dir: A directory written by ``filtertron prepare``.
        split: Split name (train, validation, test).
        max_tokens: Score at most this many tokens, or None for the whole split.

    Returns:
        The :class:`Span`.
    """
    from filtertron.data import load_tokenizer, open_split

    ds = open_split(dataset_dir, split)
    meta = ds.metadata
    common = {"tokenizer_hash": ds.tokenizer_hash, "vocab_size": ds.vocab_size}
    if max_tokens is None or max_tokens >= ds.num_tokens:
        return Span(
            np.asarray(ds.tokens(0, ds.num_tokens), dtype=np.int64),
            int(meta["words"]),
            int(meta["bytes"]),
            ds.num_documents,
            True,
            **common,
        )
    ends = np.cumsum(np.asarray(ds.indexed.sequence_lengths, dtype=np.int64))
    n_docs = int(np.searchsorted(ends, max_tokens, side="right"))
    if n_docs == 0:
        raise ValueError(
            f"--max-tokens {max_tokens}: the first document of {split} alone has "
            f"{int(ends[0])} tokens; prefixes are cut at document boundaries"
        )
    tok = load_tokenizer(Path(dataset_dir))
    words = nbytes = 0
    for i in range(n_docs):
        text = tok.decode(ds.document(i)[:-1])
        words += len(text.split())
        nbytes += len(text.encode("utf-8"))
    tokens = np.asarray(ds.tokens(0, int(ends[n_docs - 1])), dtype=np.int64)
    return Span(tokens, words, nbytes, n_docs, False, **common)


@dataclass(frozen=True)
class Totals:
    """Summed NLL (nats) and scored-target count, with the metrics derived from them."""

    nll_sum: float
    tokens: int

    @property
    def token_ppl(self) -> float:
        return math.exp(self.nll_sum / self.tokens)

    def word_ppl(self, words: int) -> float:
        """exp(sum NLL / words)."""
        return math.exp(self.nll_sum / words)

    def bits_per_byte(self, nbytes: int) -> float:
        """sum NLL / ln 2 / bytes."""
        return self.nll_sum / math.log(2) / nbytes


@dataclass
class Batch:
    """Windows of one shape: inputs and targets (B, T), stream starts (B,), shared score_from.

    Positions score_from .. score_to - 1 of the first ``rows`` windows are scored (None: up
    to T, all windows); the rest pad the batch to its length's shape (see the module
    docstring).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    starts: np.ndarray
    score_from: int
    score_to: int | None = None
    rows: int | None = None

    @property
    def scored(self) -> int:
        """Targets this batch scores."""
        rows = self.inputs.shape[0] if self.rows is None else self.rows
        end = self.inputs.shape[1] if self.score_to is None else self.score_to
        return rows * (end - self.score_from)


def nll_from_hidden(
    model: nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    score_from: int = 0,
    score_to: int | None = None,
) -> torch.Tensor:
    """Per-window NLL sums of the scored positions, from final hidden states.

    The LM head and the model's criterion run on chunks of positions so that at most
    ``LOGIT_CHUNK`` logits exist at a time (memory stays linear in T for any vocabulary).

    Args:
        model: The GPT (uses ``lm_head`` and ``criterion``).
        hidden: (B, T, C) states after the final norm.
        targets: (B, T) next-token ids.
        score_from: First scored position.
        score_to: End of the scored positions (exclusive); None for T.

    Returns:
        (B,) float64 sums of NLL over positions score_from .. score_to - 1.
    """
    h, tg = hidden[:, score_from:score_to], targets[:, score_from:score_to]
    B, S = tg.shape
    step = max(1, LOGIT_CHUNK // max(1, B * model.lm_head.out_features))
    total = torch.zeros(B, dtype=torch.float64, device=hidden.device)
    for i in range(0, S, step):
        logits = model.lm_head(h[:, i : i + step])  # (B, chunk, V)
        total += model.criterion(logits, tg[:, i : i + step], "none").double().sum(-1)
    return total


def window_nll(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The clean scorer: (B,) float64 NLL sums of a batch's scored targets."""
    return nll_from_hidden(
        model, model.hidden_states(batch.inputs), batch.targets, batch.score_from, batch.score_to
    )


Scorer = Callable[[nn.Module, Batch], torch.Tensor]


def batches(stream: np.ndarray, windows: list[Window], batch_size: int) -> Iterator[Batch]:
    """Consecutive windows of equal (length, score_from) stacked into batches of one shape.

    Every batch is (B, T): T the longest of ``windows``, B = min(batch_size, len(windows));
    a short group repeats its last window and a short window is padded with token 0
    (``Batch.rows`` and ``Batch.score_to`` say what is real, see the module docstring).
    """
    if not windows:
        return
    T = max(w.length for w in windows)
    B = min(batch_size, len(windows))
    group: list[Window] = []

    def emit() -> Batch:
        w0 = group[0]
        rows = np.stack([stream[w.start : w.start + w.length + 1] for w in group])
        rows = np.pad(rows, ((0, B - len(group)), (0, T - w0.length)), mode="edge")
        rows[:, w0.length + 1 :] = 0  # past the stream's end: any token, never scored
        starts = np.array([w.start for w in group] + [group[-1].start] * (B - len(group)))
        ids = torch.from_numpy(rows.astype(np.int64))
        end = None if w0.length == T else w0.length
        return Batch(ids[:, :-1], ids[:, 1:], starts, w0.score_from, end, len(group))

    for w in windows:
        if group and (
            (w.length, w.score_from) != (group[0].length, group[0].score_from)
            or len(group) == batch_size
        ):
            yield emit()
            group = []
        group.append(w)
    if group:
        yield emit()


def all_reduce_sums(values: list[float]) -> list[float]:
    """Sum float64 values over the default process group (identity without one); the tensor
    goes to the backend's device (CUDA under NCCL), see :mod:`filtertron.parallel.collectives`."""
    from filtertron.parallel import collectives

    return collectives.all_reduce_floats(values, "sum")


@torch.no_grad()
def _no_grad_score(scorer: Scorer, model: nn.Module, batch: Batch) -> torch.Tensor:
    return scorer(model, batch)


def score(
    model: nn.Module,
    stream: np.ndarray,
    windows: list[Window],
    batch_size: int = 1,
    scorer: Scorer = window_nll,
    rank: int = 0,
    world: int = 1,
    progress: bool | str = False,
    needs_grad: bool = False,
) -> Totals:
    """Sum the NLL of every window's scored targets; this rank takes every ``world``-th window.

    Args:
        model: The GPT, in eval mode.
        stream: (N,) token ids.
        windows: From :func:`sliding_windows`.
        batch_size: Windows per forward pass.
        scorer: Maps a :class:`Batch` to (B,) NLL sums (clean, contaminated or attacked).
        rank: This process's rank.
        world: Number of data-parallel processes; the sums are all-reduced over them.
        progress: False, or a description for a tqdm bar (shown on rank 0).
        needs_grad: Run the scorer with autograd enabled (embedding attacks).

    Returns:
        The global :class:`Totals` (identical on every rank).
    """
    mine = windows[rank::world]
    bar = tqdm(
        total=sum(w.scored for w in mine),
        unit="tok",
        unit_scale=True,
        leave=False,
        desc=progress if isinstance(progress, str) else None,
        disable=not progress or rank != 0,
    )
    nll, count = 0.0, 0
    model.eval()
    device = next(model.parameters()).device
    for batch in batches(stream, mine, batch_size):
        batch = dataclasses.replace(
            batch, inputs=batch.inputs.to(device), targets=batch.targets.to(device)
        )
        sums = scorer(model, batch) if needs_grad else _no_grad_score(scorer, model, batch)
        nll += float(sums[: batch.rows].sum())
        n = batch.scored
        count += n
        bar.update(n)
    bar.close()
    nll, count = all_reduce_sums([nll, float(count)])
    return Totals(nll, int(round(count)))
