"""Perplexity metrics against hand computations and direct per-token evaluation."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from filtertron.data import open_split
from filtertron.data.prepare import prepare
from filtertron.eval.perplexity import (
    Totals,
    Window,
    load_span,
    nll_from_hidden,
    score,
    sliding_windows,
)
from filtertron.model.gpt import CrossEntropy
from tests.eval.conftest import VOCAB, tiny_model


class Bigram(nn.Module):
    """p(x_t | context) = P[x_{t-1}, x_t]: a model whose NLLs are computable by hand."""

    def __init__(self, probs: list[list[float]]) -> None:
        super().__init__()
        logp = torch.tensor(probs, dtype=torch.float64).log().float()  # (V, V)
        V = logp.shape[0]
        self.wte = nn.Embedding(V, V)
        self.wte.weight.data = torch.eye(V)
        self.blocks = nn.ModuleList()
        self.norm_f = nn.Identity()
        self.lm_head = nn.Linear(V, V, bias=False)
        self.lm_head.weight.data = logp.T.contiguous()  # logits = onehot(x) @ logp
        self.criterion = CrossEntropy()

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        return self.wte(idx)

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        return self.embed(idx)


BIGRAM = [[0.5, 0.5], [0.25, 0.75]]


def test_windows_hand_cases():
    # 10 targets, L=4, S=2: the first window scores 4 targets, then 2 per window.
    assert sliding_windows(10, 4, 2) == [Window(0, 4, 0), Window(2, 4, 2), Window(4, 4, 2),
                                         Window(6, 4, 2)]
    # 9 targets, L=4, S=3: the last window is cut to the stream and scores 2 targets.
    assert sliding_windows(9, 4, 3) == [Window(0, 4, 0), Window(3, 4, 1), Window(6, 3, 1)]
    # S = L: disjoint windows, the last one shorter.
    assert sliding_windows(10, 4) == [Window(0, 4, 0), Window(4, 4, 0), Window(8, 2, 0)]
    assert sliding_windows(3, 8) == [Window(0, 3, 0)]
    with pytest.raises(ValueError, match="stride"):
        sliding_windows(10, 4, 5)


@pytest.mark.parametrize("n,L,S", [(1, 1, 1), (97, 16, 16), (97, 16, 5), (97, 16, 1),
                                   (50, 64, 7), (64, 8, 8)])
def test_windows_score_every_target_once_with_context(n, L, S):
    covered = []
    for w in sliding_windows(n, L, S):
        targets = range(w.start + w.score_from + 1, w.start + w.length + 1)
        covered += list(targets)
        if w.start > 0:
            assert w.score_from >= L - S  # at least L - S tokens of context
        assert w.length <= L
    assert covered == list(range(1, n + 1))


def test_hand_computed_token_word_ppl_and_bits_per_byte():
    stream = np.array([0, 1, 1, 0, 1])
    # targets 1, 1, 0, 1 after 0, 1, 1, 0: NLL = ln 2 + ln 4/3 + ln 4 + ln 2 = ln 64/3
    tot = score(Bigram(BIGRAM), stream, sliding_windows(4, 4))
    assert tot.tokens == 4
    assert abs(tot.nll_sum - math.log(64 / 3)) < 1e-6
    assert abs(tot.token_ppl - 2.1491398) < 1e-6        # (64/3)^(1/4)
    assert abs(tot.word_ppl(2) - 4.6188022) < 1e-6      # (64/3)^(1/2), 2 words
    assert abs(tot.bits_per_byte(8) - 0.5518797) < 1e-6  # (6 - log2 3) / 8, 8 bytes
    # Context-free model: any windowing scores the same tokens with the same NLL.
    for L, S in ((1, 1), (2, 1), (3, 2)):
        other = score(Bigram(BIGRAM), stream, sliding_windows(4, L, S), batch_size=2)
        assert other.tokens == 4 and abs(other.nll_sum - tot.nll_sum) < 1e-6


def test_uniform_model_perplexity_is_vocab_size():
    model = tiny_model()
    nn.init.zeros_(model.lm_head.weight)  # tied: logits are all zero
    stream = np.arange(40) % 7
    tot = score(model, stream, sliding_windows(39, 16, 4))
    assert tot.tokens == 39
    assert abs(tot.token_ppl - model.config.vocab_size) < 1e-3
    assert abs(tot.bits_per_byte(39) - math.log2(model.config.vocab_size)) < 1e-5


def _window_start(t: int, L: int, S: int) -> int:
    """Start of the window that scores target t (independent of sliding_windows)."""
    return 0 if t <= L else math.ceil((t - L) / S) * S


@pytest.mark.parametrize("L,S", [(16, 16), (16, 5), (12, 1)])
def test_sliding_windows_equal_direct_per_token_computation(dataset, L, S):
    stream = load_span(dataset, "test").tokens[:60]
    model = tiny_model()
    tot = score(model, stream, sliding_windows(len(stream) - 1, L, S), batch_size=3)
    direct = 0.0
    with torch.no_grad():
        for t in range(1, len(stream)):
            ctx = torch.from_numpy(stream[_window_start(t, L, S):t])[None]
            logp = torch.log_softmax(model(ctx)[0, -1].double(), -1)
            direct -= float(logp[int(stream[t])])
    assert tot.tokens == len(stream) - 1
    assert abs(tot.nll_sum - direct) <= 1e-5 * abs(direct)


def test_batch_size_and_rank_split_do_not_change_the_sums(dataset):
    stream = load_span(dataset, "test").tokens[:300]
    model = tiny_model()
    windows = sliding_windows(len(stream) - 1, 32, 8)
    ref = score(model, stream, windows, batch_size=1)
    big = score(model, stream, windows, batch_size=8)
    parts = [score(model, stream, windows, batch_size=4, rank=r, world=3) for r in range(3)]
    assert big.tokens == ref.tokens == sum(p.tokens for p in parts)
    assert abs(big.nll_sum - ref.nll_sum) <= 1e-6 * ref.nll_sum
    assert abs(sum(p.nll_sum for p in parts) - ref.nll_sum) <= 1e-6 * ref.nll_sum


def test_chunked_lm_head_equals_full_logits(monkeypatch):
    model = tiny_model()
    idx = torch.randint(0, VOCAB, (2, 20))
    tg = torch.randint(0, VOCAB, (2, 20))
    with torch.no_grad():
        full = model(idx, tg, reduction="none")[:, 3:].double().sum(-1)
        monkeypatch.setattr("filtertron.eval.perplexity.LOGIT_CHUNK", 2 * VOCAB * 3)  # 3 tokens
        chunked = nll_from_hidden(model, model.hidden_states(idx), tg, score_from=3)
    torch.testing.assert_close(chunked, full, rtol=1e-6, atol=1e-6)


def test_whole_split_span_matches_metadata(dataset):
    span = load_span(dataset, "test")
    meta = open_split(dataset, "test").metadata
    assert (span.words, span.bytes, len(span.tokens)) == (meta["words"], meta["bytes"],
                                                          meta["tokens"])
    assert span.whole_split and span.num_targets == meta["tokens"] - 1


def test_word_ppl_on_a_constructed_dataset(dataset, tmp_path):
    # Two documents with 3 + 4 = 7 whitespace-split words and 17 + 27 = 44 UTF-8 bytes
    # (ï and ü are 2 bytes each; the double space and the tab separate words too).
    docs = ["alpha beta gamma\n", "naïve  ünïcode\twords ok\n"]
    (tmp_path / "doc.txt").write_text("\n".join(docs))
    out = tmp_path / "ds"
    prepare(str(tmp_path / "doc.txt"), out, tokenizer=str(dataset), split="test", fmt="txt",
            workers=0, no_progress=True)
    model = tiny_model()
    span = load_span(out, "test")
    assert (span.words, span.bytes) == (7, 44)
    tot = score(model, span.tokens, sliding_windows(span.num_targets, 64))
    x = torch.from_numpy(span.tokens)[None]
    with torch.no_grad():
        nll = float(model(x[:, :-1], x[:, 1:], reduction="none").double().sum())
    assert abs(tot.nll_sum - nll) <= 1e-6 * nll
    assert abs(tot.word_ppl(span.words) - math.exp(nll / 7)) <= 1e-5 * math.exp(nll / 7)
    assert abs(tot.bits_per_byte(span.bytes) - nll / math.log(2) / 44) < 1e-6
    # A prefix is cut at a document boundary and counts the words of exactly those documents.
    first = open_split(out, "test").document(0)
    pre = load_span(out, "test", max_tokens=len(first) + 1)
    assert (pre.documents, pre.words, pre.bytes, len(pre.tokens)) == (1, 3, 17, len(first))
    assert not pre.whole_split
    with pytest.raises(ValueError, match="document boundaries"):
        load_span(out, "test", max_tokens=len(first) - 1)


def test_prefix_counts_equal_metadata_when_all_documents_fit(dataset):
    meta = open_split(dataset, "test").metadata
    # max_tokens one short of the split: all but the last document, counted from text.
    pre = load_span(dataset, "test", max_tokens=meta["tokens"] - 1)
    last = open_split(dataset, "test").document(meta["documents"] - 1)
    assert pre.documents == meta["documents"] - 1
    assert len(pre.tokens) == meta["tokens"] - len(last)
    assert pre.words < meta["words"] and pre.bytes < meta["bytes"]


def test_totals_formulas():
    t = Totals(nll_sum=10.0, tokens=5)
    assert t.token_ppl == pytest.approx(math.exp(2.0))
    assert t.word_ppl(4) == pytest.approx(math.exp(2.5))
    assert t.bits_per_byte(20) == pytest.approx(10.0 / math.log(2) / 20)
