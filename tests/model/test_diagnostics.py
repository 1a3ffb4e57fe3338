"""Diagnostics against independent constructions."""

import math

import torch
import torch.nn.functional as F

from filtertron import build_model
from filtertron.config import model_config
from filtertron.model.diagnostics import attention_entropy, diagnose, token_similarity


def test_token_similarity_against_pair_loop():
    h = torch.randn(2, 6, 5)
    total, n = 0.0, 0
    for b in range(2):
        for i in range(6):
            for j in range(6):
                if i != j:
                    total += F.cosine_similarity(h[b, i], h[b, j], dim=0).item()
                    n += 1
    assert abs(token_similarity(h).item() - total / n) < 1e-6
    same = torch.ones(1, 4, 3)
    assert abs(token_similarity(same).item() - 1.0) < 1e-6


def test_attention_entropy_hand_cases():
    T = 4
    causal_uniform = torch.tril(torch.ones(T, T))
    causal_uniform = (causal_uniform / causal_uniform.sum(-1, keepdim=True))[None, None]
    expected = sum(math.log(i + 1) for i in range(T)) / T
    assert abs(attention_entropy(causal_uniform).item() - expected) < 1e-6
    one_hot = torch.eye(T)[None, None]
    assert attention_entropy(one_hot).item() == 0.0


def test_diagnose_reports_every_layer():
    cfg = model_config(
        n_layers=3,
        d_model=32,
        n_heads=4,
        seq_len=16,
        vocab_size=50,
        position="none",
        attention=dict(kind="twicing", impl="reference", twicing=dict(base="bilateral", layers=1)),
        residual=dict(kind="generalized"),
    )
    model = build_model(cfg)
    d = diagnose(model, torch.randint(0, 50, (2, 16)))
    assert len(d["token_similarity"]) == 4
    assert len(d["attention_entropy"]) == 3 and all(len(e) == 4 for e in d["attention_entropy"])
    assert all(0 <= e <= math.log(16) + 1e-5 for layer in d["attention_entropy"] for e in layer)
    assert set(d["h_p"]) == {0, 1, 2} and len(d["h_p"][0]) == 4
    assert set(d["t"]) == {"0.res1", "1.res1", "2.res1"}
    assert abs(d["t"]["0.res1"] - 0.1) < 1e-6
