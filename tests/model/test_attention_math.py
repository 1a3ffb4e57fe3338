"""Attention math against independent constructions, and the fast bilateral window.

Each check builds the expected output from first principles (explicit logits, explicit A and
A^2) rather than from another implementation. float64 where the impl supports it (reference,
sdpa), float32 for flex (compiled FlexAttention on CPU has no float64) with a float32 tolerance.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from filtertron.kernels import describe, flex, tiled
from filtertron.kernels.tiles import Plan, TileSpec
from filtertron.model.attention import reference
from filtertron.model.attention.functional import attention

B, H, T, D = 2, 3, 97, 48
F64_TOL = 1e-10
F32_TOL = 2e-5  # about 300 fp32 ulps of the O(1) outputs: whole-pipeline float32 vs float64


def qkv(shape=(B, H, T, D), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3)]


def impl_runs(fn, tensors, **tensor_args):
    """fn's output per impl: float64 for reference/sdpa, float32 (as float64) for flex."""
    outs = {}
    for impl, dtype in (
        ("reference", torch.float64),
        ("sdpa", torch.float64),
        ("flex", torch.float32),
    ):
        cast = {k: v.to(dtype) if torch.is_tensor(v) else v for k, v in tensor_args.items()}
        with torch.no_grad():
            outs[impl] = fn(impl, *(t.to(dtype) for t in tensors), **cast).double()
    return outs


def assert_all_close(outs, expected):
    for impl, out in outs.items():
        tol = F32_TOL if impl == "flex" else F64_TOL
        err = (out - expected).abs().max().item()
        assert err <= tol, f"{impl}: max error {err:.2e} > {tol:.0e}"


def softmax_rows(logits, v, causal=True):
    i = torch.arange(logits.shape[-1])
    if causal:
        logits = logits.masked_fill(i[None, :] > i[:, None], float("-inf"))
    return torch.softmax(logits, -1) @ v


H_P = torch.tensor([1.5, 7.0, 300.0], dtype=torch.float64)
H_Y = torch.tensor([6.0, 7.0, 8.0], dtype=torch.float64)
SLOPES = torch.tensor([0.5, 0.125, 0.01], dtype=torch.float64)


@pytest.mark.parametrize(
    "base, extra",
    [
        ("softmax", {}),
        ("softmax", {"alibi_slopes": SLOPES}),
        ("bilateral", {"h_y": H_Y, "h_p": H_P}),
        ("bilateral", {"h_p": H_P, "content": "gaussian"}),
    ],
)
def test_twicing_is_two_a_minus_a_squared(base, extra):
    q, k, v = qkv()
    A = reference.attention_probs(q, k, base=base, **extra)
    expected = (2 * A - A @ A) @ v  # A^2 built on purpose, only here

    def fn(impl, q, k, v, **kw):
        return attention(q, k, v, kind="twicing", base=base, impl=impl, **kw)

    assert_all_close(impl_runs(fn, (q, k, v), **extra), expected)


def test_bilateral_with_huge_h_p_is_nope_softmax_with_scale_one_over_h_y():
    q, k, v = qkv()
    h_y = torch.full((H,), 5.0, dtype=torch.float64)
    expected = softmax_rows(q @ k.transpose(-1, -2) / 5.0, v)

    def fn(impl, q, k, v, **kw):
        return attention(q, k, v, kind="bilateral", impl=impl, **kw)

    outs = impl_runs(fn, (q, k, v), h_y=h_y, h_p=torch.full((H,), 1e6, dtype=torch.float64))
    for impl, out in outs.items():  # the position term is still up to T^2 / 2e12 = 5e-9
        assert (out - expected).abs().max() < (F32_TOL if impl == "flex" else 1e-8), impl


def test_gaussian_content_is_dot_form_with_key_norm_term():
    q, k, v = qkv()
    h_y = torch.tensor([2.0, 2.6, 3.0], dtype=torch.float64)
    hy2 = h_y[:, None, None] ** 2
    d = torch.arange(T, dtype=torch.float64)
    S = -((d[:, None] - d[None, :]) ** 2) / (2 * H_P[:, None, None] ** 2)
    dot_form = (q @ k.transpose(-1, -2) - 0.5 * (k * k).sum(-1)[..., None, :]) / hy2
    expected = softmax_rows(dot_form + S, v)

    def fn(impl, q, k, v, **kw):
        return attention(q, k, v, kind="bilateral", content="gaussian", impl=impl, **kw)

    assert_all_close(impl_runs(fn, (q, k, v), h_y=h_y, h_p=H_P), expected)


@pytest.mark.parametrize("content", ["dot", "gaussian"])
def test_bilateral_position_term_is_toeplitz(content):
    q, k, _ = qkv()
    full = reference.logits(q, k, "bilateral", causal=False, h_p=H_P, content=content)
    nopos = reference.logits(
        q,
        k,
        "bilateral",
        causal=False,
        h_p=torch.full((H,), math.inf, dtype=torch.float64),
        content=content,
    )
    pos = full - nopos  # (B, H, T, T), must depend on i - j only
    assert torch.allclose(pos[..., 1:, 1:], pos[..., :-1, :-1], atol=1e-9)
    assert torch.allclose(pos[0, 0, 10, 4], torch.tensor(-36 / (2 * 1.5**2), dtype=torch.float64))


def test_bilateral_is_shift_equivariant():
    """Local heads see only ~sqrt(60) h_p tokens back: shifting the input shifts the output."""
    q, k, v = qkv()
    h_p = torch.tensor([1.0, 1.5, 2.0], dtype=torch.float64)
    s, w = 11, 16  # shift, and a start past every head's window
    shifted = [torch.cat([torch.randn_like(x[:, :, :s]), x[:, :, : T - s]], 2) for x in (q, k, v)]

    def fn(impl, q, k, v, **kw):
        return attention(q, k, v, kind="bilateral", impl=impl, **kw)

    base = impl_runs(fn, (q, k, v), h_p=h_p)
    moved = impl_runs(fn, shifted, h_p=h_p)
    for impl in base:
        err = (moved[impl][:, :, s + w :] - base[impl][:, :, w : T - s]).abs().max().item()
        assert err < (F32_TOL if impl == "flex" else 1e-9), f"{impl}: {err:.2e}"


@pytest.mark.parametrize("causal", [True, False])
def test_alibi_matches_explicit_bias(causal):
    q, k, v = qkv()
    d = torch.arange(T, dtype=torch.float64)
    bias = -SLOPES[:, None, None] * (d[:, None] - d[None, :]).abs()
    expected = softmax_rows(q @ k.transpose(-1, -2) / math.sqrt(D) + bias, v, causal)

    def fn(impl, q, k, v, **kw):
        return attention(q, k, v, kind="softmax", impl=impl, causal=causal, **kw)

    assert_all_close(impl_runs(fn, (q, k, v), alibi_slopes=SLOPES), expected)


def test_attention_probs_is_row_stochastic_and_causal():
    q, k, _ = qkv()
    for args in ({}, {"alibi_slopes": SLOPES}, {"base": "bilateral", "h_p": H_P}):
        A = reference.attention_probs(q, k, **args)
        assert A.shape == (B, H, T, T)
        assert torch.allclose(A.sum(-1), torch.ones(B, H, T, dtype=torch.float64))
        assert (A.triu(1) == 0).all()


def test_default_h_y_is_the_documented_init():
    q, k, v = qkv()
    for content, h in (("dot", math.sqrt(D)), ("gaussian", D**0.25)):
        explicit = torch.full((H,), h, dtype=torch.float64)
        a = attention(q, k, v, "bilateral", "sdpa", h_p=H_P, content=content)
        b = attention(q, k, v, "bilateral", "reference", h_y=explicit, h_p=H_P, content=content)
        assert torch.allclose(a, b, atol=1e-12)


def _grads(fn, tensors, h_p):
    leaves = [t.clone().requires_grad_() for t in (*tensors, h_p)]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype)
    return [out, *torch.autograd.grad(out, leaves, g)]


def _tiled(q, k, v, kind, block=16, **kw):
    """The tiled engine with a given tile size, through the kernel description."""
    return tiled.attend(describe(q, k, v, kind, **kw), block=block)


@pytest.mark.parametrize("twice", [False, True])
def test_tiled_band_matches_full(twice):
    """Tiles beyond sqrt(60) h_p are skipped; the result moves by far less than fp32 noise."""
    q, k, v = qkv()
    h_p = torch.tensor([1.0, 2.0, 50.0], dtype=torch.float64)
    kind, kw = ("twicing", {"base": "bilateral"}) if twice else ("bilateral", {})

    def run(eps):
        return _grads(
            lambda q, k, v, h: _tiled(q, k, v, kind, h_p=h, band_eps=eps, **kw), (q, k, v), h_p
        )

    band = (8, 16, T)  # ceil(sqrt(60) h_p) = 8, 16, 388, clamped to T
    assert describe(q, k, v, "bilateral", h_p=h_p).band.tolist() == list(band)
    plan = Plan(B, H, T, TileSpec("square", True, twice, 16, band), "cpu")
    assert plan.live[2] == 1 and plan.live[1] == 3  # heads 0, 1 drop tiles two blocks back
    for a, b in zip(run(math.exp(-30)), run(None), strict=True):
        assert (a - b).abs().max() <= 1e-12 * b.abs().max()  # e^-30 of a weight, in float64


def test_flex_window_skipping_matches_full(monkeypatch):
    import torch.nn.attention.flex_attention as fa

    monkeypatch.setattr(fa, "_validate_device", lambda *args: None)  # eager backward, T = 300
    q, k, v = (t.float() for t in qkv((1, H, 300, 16)))
    h_p = torch.tensor([1.0, 2.0, 50.0])

    def run(eps):
        return _grads(
            lambda q, k, v, h: flex.attend(describe(q, k, v, "bilateral", h_p=h, band_eps=eps)),
            (q, k, v),
            h_p,
        )

    for a, b in zip(run(math.exp(-30)), run(None), strict=True):
        assert (a - b).abs().max() <= 1e-6 * b.abs().max()


@pytest.mark.parametrize("batch", [1, 3])
def test_tiled_thread_chunks_agree(batch):
    """The engine splits rows over CPU threads (batches, else heads); results must not move."""
    q, k, v = qkv((batch, H, T, D))
    h_p = torch.tensor([1.0, 300.0, 4.0], dtype=torch.float64)
    kw = {"base": "bilateral", "content": "gaussian", "block": 32}
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            fn = functools.partial(_tiled, kind="twicing", **kw)
            results.append(_grads(lambda q, k, v, h, fn=fn: fn(q, k, v, h_p=h), (q, k, v), h_p))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(other, results[0], strict=True):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_reference_gaussian_is_the_literal_distance():
    q, k, _ = qkv((1, H, 9, 5))
    h_y = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    literal = -(q[..., :, None, :] - k[..., None, :, :]).square().sum(-1) / (
        2 * h_y[:, None, None] ** 2
    )
    ref = reference.logits(
        q, k, "bilateral", False, h_y, torch.full((H,), math.inf, dtype=torch.float64), "gaussian"
    )
    assert torch.allclose(ref, literal, atol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    "T, n_keys, hi",
    [
        (97, 97, (97, 97, 97)),
        (128, 97, (97, 97, 97)),  # CPU pads 97 to 128; keys past 97 are masked
        (300, 300, (128, 256, 300)),
        (384, 300, (128, 256, 300)),
        (700, 700, (5, 130, 700)),
        (768, 700, (5, 130, 700)),
    ],
)
def test_flex_block_mask_equals_create_block_mask(T, n_keys, hi, causal):
    """flex builds its banded BlockMask from block bounds; torch's dense build must agree."""
    from torch.nn.attention import flex_attention as fa

    from filtertron.kernels import mods

    hi_t = torch.tensor(hi, dtype=torch.int32)
    lo_t = torch.zeros_like(hi_t) if causal else -hi_t
    n = torch.tensor(n_keys, dtype=torch.int32)
    ref = fa.create_block_mask(mods.band(lo_t, hi_t, n), None, H, T, T, device="cpu")
    mine = flex.block_mask(T, n_keys, hi_t, causal)
    for a, b in zip(mine.as_tuple()[2:10], ref.as_tuple()[2:10], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("twice", [False, True])
def test_tiled_alibi_band_matches_full(twice):
    """ALiBi heads skip tiles beyond 30 / m_h; the result moves by far less than fp32 noise."""
    q, k, v = qkv()
    slopes = torch.tensor([2.0, 1.0, 0.01], dtype=torch.float64)  # bands 15, 30, 3000 -> T
    kind = "twicing" if twice else "softmax"

    def run(eps):
        def fn(q, k, v, m):
            return _tiled(q, k, v, kind, alibi_slopes=m, band_eps=eps)

        return _grads(fn, (q, k, v), slopes)[:4]  # out, dq, dk, dv (the slopes are fixed)

    ref = attention(q, k, v, kind, "reference", alibi_slopes=slopes, band_eps=None)
    banded, full = run(math.exp(-30)), run(None)
    for a, b in zip(banded, full, strict=True):
        assert (a - b).abs().max() <= 1e-12 * b.abs().max()  # e^-30 of a weight, in float64
    assert torch.allclose(banded[0], ref, atol=1e-10)
