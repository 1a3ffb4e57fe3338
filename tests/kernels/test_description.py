"""The kernel description and the impl registry.

The description's terms are checked against SPEC.md's formulas written out here; the band
against its defining inequality; the materialised impl, with a band, against the literal
reference with the band mask built by hand; every impl against every other on one banded
kernel whose band drops visible weight (so a different band anywhere would show).
"""

from __future__ import annotations

import logging
import math
import os

import pytest
import torch

from filtertron.kernels import IMPLS, describe, registry
from filtertron.kernels.description import band_width
from filtertron.model.attention import reference
from filtertron.model.attention.functional import attention

B, H, T, D = 2, 3, 97, 16
H_P = torch.tensor([1.5, 7.0, 300.0], dtype=torch.float64)
H_Y = torch.tensor([2.0, 2.6, 3.0], dtype=torch.float64)
SLOPES = torch.tensor([0.5, 0.125, 0.01], dtype=torch.float64)


def qkv(dtype=torch.float64, T=T):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, H, T, D, generator=g, dtype=torch.float64).to(dtype) for _ in range(3)]


def test_terms_are_the_spec_formulas():
    q, k, v = qkv()
    dot = describe(q, k, v, "bilateral", h_y=H_Y, h_p=H_P)
    assert torch.equal(dot.scale, 1 / H_Y) and dot.key_bias is None
    assert dot.position == "square" and torch.allclose(dot.coef, 1 / (2 * H_P**2))
    gauss = describe(q, k, v, "bilateral", h_y=H_Y, h_p=H_P, content="gaussian")
    assert torch.allclose(gauss.scale, 1 / H_Y**2)
    assert torch.allclose(gauss.key_bias, -(k * k).sum(-1) / 2, rtol=1e-14)  # in units of s
    # s (q.k + b) = -||q - k||^2 / (2 h_y^2) + a per-row constant
    content = gauss.scale[:, None, None] * (q @ k.transpose(-1, -2) + gauss.key_bias[..., None, :])
    literal = -(q[..., :, None, :] - k[..., None, :, :]).square().sum(-1) / (
        2 * H_Y[:, None, None] ** 2
    )
    diff = content - literal
    assert torch.allclose(diff, diff[..., :1].expand_as(diff), atol=1e-10)
    alibi = describe(q, k, v, "softmax", alibi_slopes=SLOPES)
    assert alibi.position == "linear" and torch.equal(alibi.coef, SLOPES)
    assert alibi.scalar_scale == 1 / math.sqrt(D) and not alibi.plain
    plain = describe(q, k, v, "softmax")
    assert plain.plain and plain.band is None and plain.family == "softmax"
    twice = describe(q, k, v, "twicing", base="bilateral", h_p=H_P)
    assert twice.twice and twice.family == "twicing"
    default = describe(q, k, v, "bilateral", h_p=H_P)  # h_y = sqrt(D): scale 1/sqrt(D)
    assert torch.allclose(default.scale, torch.full((H,), 1 / math.sqrt(D), dtype=q.dtype))


def test_band_is_the_default_e30_window():
    q, k, v = qkv()
    bil = describe(q, k, v, "bilateral", h_p=H_P).band
    assert bil.tolist() == [math.ceil(math.sqrt(60) * 1.5), math.ceil(math.sqrt(60) * 7.0), T]
    ali = describe(q, k, v, "softmax", alibi_slopes=SLOPES).band
    assert ali.tolist() == [60, T, T]  # ceil(30 / m) = 60, 240, 3000, clamped to T
    assert describe(q, k, v, "bilateral", h_p=H_P, band_eps=None).band is None


@pytest.mark.parametrize("position", ["square", "linear"])
@pytest.mark.parametrize("eps", [1e-3, math.exp(-30), 1e-200])
def test_band_edge_is_where_the_weight_falls_below_eps(position, eps):
    """exp(-c f(w - 1)) > eps >= exp(-c f(w)): every dropped key (d > w) weighs below eps,
    and w is the smallest such band (the key at d = w - 1 weighs more)."""
    coef = torch.tensor([0.7, 0.013, 2.5e-5, 3.0], dtype=torch.float64)
    w = band_width(position, coef, eps, 10**9)
    f = (lambda d: d * d) if position == "square" else (lambda d: d)
    for c, wi in zip(coef.tolist(), w.tolist(), strict=True):
        assert math.exp(-c * f(wi - 1)) > eps >= math.exp(-c * f(wi)) * (1 - 1e-12)
    assert band_width(position, torch.tensor([0.0, -1.0]), eps, 50).tolist() == [50, 50]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kind", ["bilateral", "alibi", "twicing"])
def test_materialised_band_is_the_literal_masked_kernel(kind, causal):
    """impl='reference' with a band = the literal logits with |i - j| > w_h set to -inf."""
    q, k, v = qkv()
    eps = 1e-3  # a band that drops visible weight
    if kind == "alibi":
        args, base = {"alibi_slopes": SLOPES}, "softmax"
    else:
        args, base = {"h_y": H_Y, "h_p": H_P, "content": "gaussian"}, "bilateral"
    logits = reference.logits(q, k, base, causal, **args)
    w = describe(q, k, v, "bilateral" if base == "bilateral" else "softmax", **args, band_eps=eps)
    d = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    A = torch.softmax(logits.masked_fill(d.abs() > w.band[:, None, None], -math.inf), -1)
    expected = (2 * A - A @ A) @ v if kind == "twicing" else A @ v
    kw = {"kind": "twicing", "base": base} if kind == "twicing" else {"kind": base}
    out = attention(q, k, v, impl="reference", causal=causal, band_eps=eps, **kw, **args)
    assert (out - expected).abs().max() < 1e-12
    dense = attention(q, k, v, impl="reference", causal=causal, band_eps=None, **kw, **args)
    assert (dense - expected).abs().max() > 1e-6  # the band mattered


@pytest.mark.parametrize("kind", ["bilateral", "twicing"])
def test_every_impl_uses_the_same_band(kind, monkeypatch):
    """With eps = 1e-3 the band drops weight visible in float32: impls still agree."""
    import torch.nn.attention.flex_attention as fa

    monkeypatch.setattr(fa, "_validate_device", lambda *args: None)  # flex eager backward
    q, k, v = qkv(torch.float32)
    args = {"h_p": H_P.float(), "band_eps": 1e-3}
    if kind == "twicing":
        args["base"] = "bilateral"
    outs = {}
    impls = ["reference", "tiled", "sdpa", "flex"]
    if os.environ.get("TRITON_INTERPRET") == "1":  # tests/kernels/conftest.py, no GPU
        impls.append("triton")
    for impl in impls:
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = attention(*leaves, kind, impl, **args)
        outs[impl] = [out, *torch.autograd.grad(out, leaves, torch.ones_like(out))]
    dense = attention(q, k, v, kind, "reference", **{**args, "band_eps": None})
    assert (dense - outs["reference"][0]).abs().max() > 1e-4
    for impl, got in outs.items():
        for a, b in zip(got, outs["reference"], strict=True):
            assert (a - b).abs().max() <= 1e-5 * b.abs().max(), impl


def test_explicit_impl_never_falls_back_and_names_the_ones_that_can():
    q, k, v = (t.float().requires_grad_() for t in qkv())
    with pytest.raises(NotImplementedError, match=r"no backward on CPU.*can: reference, sdpa"):
        attention(q, k, v, "bilateral", "flex", h_p=H_P.float())
    with pytest.raises(NotImplementedError, match=r"tiled engine has no attention dropout"):
        attention(q, k, v, "softmax", "tiled", dropout_p=0.1)


def test_auto_takes_the_first_impl_of_its_row_that_serves(monkeypatch, caplog):
    from filtertron.kernels.verified import CPU_CI, VERIFIED, Verified

    monkeypatch.setattr(registry, "_noted", set())
    row = tuple(Verified(n, CPU_CI, "test") for n in ("flex", "tiled", "reference"))
    monkeypatch.setitem(VERIFIED, ("cpu", "bilateral"), row)
    q, k, v = (t.float().requires_grad_() for t in qkv())
    with caplog.at_level(logging.INFO, logger="filtertron"):
        for _ in range(2):  # flex cannot do a CPU backward: tiled; logged once
            kernel = describe(q, k, v, "bilateral", h_p=H_P.float())
            assert registry.resolve("auto", kernel) == "tiled"
        with torch.no_grad():  # without grads flex serves
            kernel = describe(q, k, v, "bilateral", h_p=H_P.float())
            assert registry.resolve("auto", kernel) == "flex"
        dropout = describe(q, k, v, "bilateral", h_p=H_P.float(), dropout_p=0.1)
        assert registry.resolve("auto", dropout) == "reference"
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(msgs) == 3 and "'tiled'" in msgs[0] and "'flex'" in msgs[1]


def test_registry_names_what_runs():
    from filtertron.kernels.verified import VERIFIED

    assert set(IMPLS) == {"reference", "sdpa", "tiled", "flex", "triton"}
    for (device, family), row in VERIFIED.items():
        names = [v.impl for v in row]
        assert device in ("cpu", "cuda") and names[-1] == "reference" and set(names) <= set(IMPLS)
        assert family in ("softmax", "alibi", "bilateral", "twicing")
