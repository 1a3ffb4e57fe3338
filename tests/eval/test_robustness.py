"""Contamination and embedding attacks against hand computations and independent autograd."""

import math

import numpy as np
import pytest
import torch

from filtertron.eval.perplexity import Batch, load_span, score, sliding_windows, window_nll
from filtertron.eval.robustness import (
    attack_scorer,
    contaminate,
    contamination_mask,
    contamination_scorer,
    embedding_attack,
    hidden_from_embeddings,
)
from tests.eval.conftest import VOCAB, tiny_model
from tests.eval.test_perplexity import BIGRAM, Bigram


def test_contamination_rate_and_nesting():
    pos = np.arange(200_000)
    for p in (0.0, 0.05, 0.2, 1.0):
        frac = contamination_mask(pos, p, seed=1).mean()
        assert abs(frac - p) < 0.005, (p, frac)  # binomial sd <= 0.0012
    low, high = contamination_mask(pos, 0.05, 1), contamination_mask(pos, 0.2, 1)
    assert not (low & ~high).any()  # positions hit at 5% are hit at 20% too
    assert (contamination_mask(pos, 0.2, 2) != high).mean() > 0.2  # the seed matters


def test_contamination_depends_on_stream_position_only():
    stream = torch.arange(100) % 50
    whole = contaminate(stream[None], np.array([0]), 0.3, token=99, seed=5)[0]
    # The same positions inside two overlapping windows are contaminated identically.
    w1 = contaminate(stream[None, 10:40], np.array([10]), 0.3, token=99, seed=5)[0]
    w2 = contaminate(stream[None, 30:60], np.array([30]), 0.3, token=99, seed=5)[0]
    assert torch.equal(w1, whole[10:40]) and torch.equal(w2, whole[30:60])
    hit = whole != stream
    assert (whole[hit] == 99).all() and 15 <= int(hit.sum()) <= 45


def test_random_contamination_draws_in_vocab():
    x = torch.zeros(4, 1000, dtype=torch.long)
    bad = contaminate(x, np.array([0, 1000, 2000, 3000]), 1.0, "random", vocab_size=7, seed=0)
    assert bad.min() >= 0 and bad.max() < 7
    assert len(torch.unique(bad)) == 7  # every token drawn over 4000 draws
    with pytest.raises(ValueError, match="mode"):
        contaminate(x, np.zeros(4), 0.1, "swap")


def test_fixed_contamination_hand_case():
    # Every input becomes token 0, targets stay clean: NLL = 4 ln 2 under p(. | 0) = (1/2, 1/2).
    stream = np.array([0, 1, 1, 0, 1])
    tot = score(Bigram(BIGRAM), stream, sliding_windows(4, 4),
                scorer=contamination_scorer(1.0, "fixed", token=0))
    assert tot.tokens == 4 and abs(tot.token_ppl - 2.0) < 1e-6
    clean = score(Bigram(BIGRAM), stream, sliding_windows(4, 4),
                  scorer=contamination_scorer(0.0, "fixed", token=0))
    assert abs(clean.nll_sum - math.log(64 / 3)) < 1e-6


def test_contaminated_gpt_equals_direct_computation(dataset):
    stream = load_span(dataset, "test").tokens[:200]
    model = tiny_model()
    p, tok = 0.3, 5
    tot = score(model, stream, sliding_windows(199, 24, 8), batch_size=4,
                scorer=contamination_scorer(p, "fixed", tok, seed=3))
    # Directly: contaminate the whole stream once, then the same windows on clean targets.
    hit = contamination_mask(np.arange(199), p, seed=3)
    inputs = np.where(hit, tok, stream[:199])
    direct = 0.0
    with torch.no_grad():
        for w in sliding_windows(199, 24, 8):
            x = torch.from_numpy(inputs[w.start:w.start + w.length])[None]
            y = torch.from_numpy(stream[w.start + 1:w.start + w.length + 1])[None]
            direct += float(model(x, y, reduction="none")[0, w.score_from:].double().sum())
    assert abs(tot.nll_sum - direct) <= 1e-6 * direct
    clean = score(model, stream, sliding_windows(199, 24, 8)).nll_sum
    assert abs(tot.nll_sum - clean) > 1e-4 * clean  # (a random model need not get worse)


@pytest.mark.parametrize("kind,position", [("softmax", "alibi"), ("twicing", "learned")])
def test_forward_from_embeddings_equals_model(kind, position):
    extra = {"residual": {"kind": "generalized"}} if kind == "twicing" else {}
    model = tiny_model(position=position, kind=kind, **extra)
    idx = torch.randint(0, VOCAB, (2, 17))
    with torch.no_grad():
        ref = model.hidden_states(idx)
        got = hidden_from_embeddings(model, model.embed(idx))
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_fgsm_on_bigram_matches_closed_form_gradient():
    # Stub: logits z = e @ logp with e the embedding (one-hot + delta); for NLL J = -log
    # softmax(z)_y, dJ/de = logp @ (softmax(z) - onehot(y)), so FGSM moves e by eps sign of it.
    table = [[0.2, 0.3, 0.5], [0.6, 0.1, 0.3], [0.15, 0.35, 0.5]]
    model = Bigram(table)
    logp = np.log(np.array(table))
    idx, tg = torch.tensor([[0, 1, 2, 0]]), torch.tensor([[1, 2, 0, 2]])
    eps = 0.1
    delta = embedding_attack(model, model.embed(idx), tg, 0, eps)
    for t in range(4):
        z = logp[idx[0, t].item()]
        g = logp @ (np.exp(z) / np.exp(z).sum() - np.eye(3)[tg[0, t].item()])
        np.testing.assert_allclose(delta[0, t].numpy(), eps * np.sign(g), atol=1e-7)
    # score_from: unscored positions get no gradient, so no perturbation.
    delta = embedding_attack(model, model.embed(idx), tg, 2, eps)
    assert delta[0, :2].abs().max() == 0 and delta[0, 2:].abs().min() == eps


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_fgsm_equals_independent_autograd_through_model_forward(monkeypatch, impl):
    model = tiny_model(impl=impl)
    idx, tg = torch.randint(0, VOCAB, (2, 16)), torch.randint(0, VOCAB, (2, 16))
    eps = 0.05
    emb = model.embed(idx).detach()
    delta = embedding_attack(model, emb, tg, 4, eps)
    # Independent: differentiate the model's own forward with its embedding replaced.
    y0 = emb.clone().requires_grad_(True)
    monkeypatch.setattr(model, "embed", lambda _idx: y0)
    model(idx, tg, reduction="none")[:, 4:].sum().backward()
    torch.testing.assert_close(delta, eps * y0.grad.sign(), rtol=0, atol=0)
    assert all(p.requires_grad for p in model.parameters())  # restored after the attack


def test_pgd_one_step_is_fgsm_and_stays_in_the_ball():
    model = tiny_model(kind="bilateral", position="none")
    idx, tg = torch.randint(0, VOCAB, (2, 16)), torch.randint(0, VOCAB, (2, 16))
    emb = model.embed(idx)
    eps = 0.03
    fgsm = embedding_attack(model, emb, tg, 0, eps)
    torch.testing.assert_close(embedding_attack(model, emb, tg, 0, eps, steps=1, alpha=eps),
                               fgsm)
    pgd = embedding_attack(model, emb, tg, 0, eps, steps=5)
    assert pgd.abs().max() <= eps + 1e-7
    batch = Batch(idx, tg, np.zeros(2, dtype=np.int64), 0)
    with torch.no_grad():
        clean = window_nll(model, batch).sum()
    f = attack_scorer("fgsm", eps)(model, batch).sum()
    p = attack_scorer("pgd", eps, steps=5)(model, batch).sum()
    assert clean < f <= p * (1 + 1e-4), (clean, f, p)  # PGD at least as strong here


def test_attack_scorer_in_score_raises_perplexity(dataset):
    stream = load_span(dataset, "test").tokens[:130]
    model = tiny_model()
    w = sliding_windows(129, 32, 16)
    clean = score(model, stream, w, batch_size=4)
    zero = score(model, stream, w, batch_size=4, scorer=attack_scorer("fgsm", 0.0),
                 needs_grad=True)
    hit = score(model, stream, w, batch_size=4, scorer=attack_scorer("pgd", 0.05, 3),
                needs_grad=True)
    assert zero.tokens == clean.tokens == hit.tokens == 129
    assert abs(zero.nll_sum - clean.nll_sum) <= 1e-6 * clean.nll_sum  # eps = 0 is clean
    assert hit.token_ppl > clean.token_ppl
