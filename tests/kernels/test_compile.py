"""torch.compile(model) around the attention custom ops: no graph break, same losses as eager.

A tiny GPT with bilateral layers, a bilateral-twicing layer and GRC residuals (impl "auto":
the tiled engine's custom op on CPU). torch._dynamo.explain counts the graph breaks of the
whole forward (so none inside the attention op) and shows the op in the graph; then a few
SGD steps compiled and eager from the same weights must give the same losses within 1e-5.
The default run compiles with backend "aot_eager" (dynamo + AOTAutograd: the fake impls and
the registered autograd are traced, the op runs as itself); the slow run uses inductor.
"""

from __future__ import annotations

import copy

import pytest
import torch

from filtertron import build_model
from filtertron.config import model_config


def tiny_model():
    cfg = model_config(
        n_layers=3,
        d_model=48,
        n_heads=3,
        seq_len=40,
        vocab_size=61,
        position="none",
        attention=dict(kind="twicing", twicing=dict(base="bilateral", layers=1)),
        residual=dict(kind="generalized", apply_to="both"),
    )
    torch.manual_seed(0)
    return build_model(cfg)


def test_model_has_bilateral_twicing_and_grc_layers():
    model = tiny_model()
    cores = [type(b.attn.core).__name__ for b in model.blocks]
    assert cores == ["BilateralAttention", "BilateralAttention", "TwicingAttention"]
    assert all(type(b.res1).__name__ == "GeneralizedResidual" for b in model.blocks)


def test_no_graph_break_and_the_op_is_in_the_graph():
    model = tiny_model()
    idx = torch.randint(0, 61, (2, 37))
    explained = torch._dynamo.explain(model)(idx, idx)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    code = explained.graphs[0].code
    assert code.count("torch.ops.filtertron.tiled") == 3  # one call per layer


def _train(model, idx, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        loss = model(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_training_matches_eager(backend):
    torch._dynamo.reset()
    model = tiny_model()
    eager = copy.deepcopy(model)
    idx = torch.randint(0, 61, (2, 37))
    compiled = _train(torch.compile(model, backend=backend), idx, steps=3)
    reference = _train(eager, idx, steps=3)
    assert len(set(reference)) == 3  # the weights moved
    for a, b in zip(compiled, reference, strict=True):
        assert abs(a - b) <= 1e-5, (compiled, reference)
