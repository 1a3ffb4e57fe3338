"""The tiled CPU engine (impl="tiled") across many tiles, and as a custom op.

At T = 700 with its 128-wide tiles the engine runs 6 query blocks (the last ragged, 60 rows)
and skips key tiles per head: kernel_args' h_p = (1.5, 7, 300) gives bands 12, 55 and the
whole sequence, so one call mixes local heads (tiles skipped, band masked inside tiles) and a
global one. Forward and every gradient against the literal reference, under the rule of
tests/model/test_attention_ops.py. Then: banded vs dense (the band's stated tolerance), exact
when the band covers T, bit-identical repeated backwards over thread chunks, and
torch.library.opcheck of the custom op (schema, fake impl, autograd registration).
"""

from __future__ import annotations

import pytest
import torch

from filtertron.kernels import describe, tiled
from filtertron.model.attention.functional import attention
from tests.model.test_attention_ops import CASES, assert_matches, kernel_args, literal, run

T = 700
NAMES = ["out", "dq", "dk", "dv", "dh_y", "dh_p"]
TWO_SIDED = ("alibi", "bilateral-gaussian", "twicing-softmax", "twicing-bilateral-dot")


def tensors(T=T, D=16, seed=0, B=1, H=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize(
    "case, causal", [(c, True) for c in CASES] + [(c, False) for c in TWO_SIDED]
)
def test_many_tiles_match_reference(case, causal):
    qkv = tensors()
    g = torch.randn(qkv[0].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref64, ref32 = (literal(case, qkv, dt, causal, g) for dt in (torch.float64, torch.float32))
    fast = run("tiled", case, qkv, torch.float32, causal, g)
    assert_matches(fast, ref32, ref64, NAMES[: len(ref64)])


def _grads(q, k, v, h_p, g, **kw):
    leaves = [t.clone().requires_grad_() for t in (q, k, v, h_p)]
    out = attention(*leaves[:3], h_p=leaves[3], **kw)
    return [out, *torch.autograd.grad(out, leaves, g)]


@pytest.mark.parametrize("kind", ["bilateral", "twicing"])
@pytest.mark.parametrize("h_p", [(1.0, 2.0, 4.0), (16.0, 64.0, 1e4)], ids=["small", "large"])
def test_banded_equals_dense_within_the_band_tolerance(kind, h_p):
    """Dropped keys weigh < e^-30 = 9e-14 of the diagonal (times e^dC, the content logit's
    spread, about e^4 here; dh_p also weighs them by (i - j)^2 / h_p^3): in float64 every
    tensor moves by < 1e-10 of its scale (measured: up to 5e-12, for dh_p)."""
    q, k, v = tensors()
    h = torch.tensor(h_p, dtype=torch.float64)
    g = torch.randn(q.shape, dtype=torch.float64)
    kw = {"kind": kind, "impl": "tiled", **({"base": "bilateral"} if kind == "twicing" else {})}
    banded = _grads(q, k, v, h, g, **kw)
    dense = _grads(q, k, v, h, g, band_eps=None, **kw)
    assert describe(q, k, v, "bilateral", h_p=h).band.min() < T - 1  # something is banded
    for a, b in zip(banded, dense, strict=True):
        assert (a - b).abs().max() <= 1e-10 * b.abs().max()


def test_band_covering_the_sequence_is_exactly_dense():
    q, k, v = tensors()
    h = torch.tensor([100.0, 200.0, 300.0], dtype=torch.float64)  # bands >= 775 > T
    g = torch.randn(q.shape, dtype=torch.float64)
    banded = _grads(q, k, v, h, g, kind="bilateral", impl="tiled")
    dense = _grads(q, k, v, h, g, kind="bilateral", impl="tiled", band_eps=None)
    for a, b in zip(banded, dense, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("threads", [1, 2])
def test_repeated_backward_is_bit_identical(threads):
    qkv = tensors(B=2)
    g = torch.randn(qkv[0].shape, dtype=torch.float64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        runs = [run("tiled", "twicing-bilateral-gaussian", qkv, torch.float32, True, g)]
        runs.append(run("tiled", "twicing-bilateral-gaussian", qkv, torch.float32, True, g))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("twice", [False, True])
def test_opcheck(twice):
    """torch.library.opcheck: schema, fake (meta) impl and autograd registration agree."""
    q, k, v = (t.float() for t in tensors(T=40, B=2))
    h_p = torch.tensor([1.5, 7.0, 300.0])
    kernel = describe(q, k, v, "bilateral", h_p=h_p, content="gaussian")
    leaves = [t.detach().requires_grad_() for t in kernel.tensors()]  # q k v s b c
    args = (*leaves, kernel.band)
    torch.library.opcheck(tiled.tiled_op, (*args, "square", True, twice, 16, True))


def test_low_precision_inputs_compute_in_float32():
    q, k, v = (t.bfloat16() for t in tensors(T=300))
    h_p = torch.tensor([1.5, 7.0, 300.0])
    out = attention(q, k, v, "bilateral", "tiled", h_p=h_p)
    ref = attention(*(t.double() for t in (q, k, v)), "bilateral", "reference", h_p=h_p.double())
    assert out.dtype == torch.bfloat16
    assert (out.double() - ref).abs().max() <= 2.0**-7 * ref.abs().max()  # one bf16 rounding


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_many_tiles_large_batch_and_block_sizes(case):
    """B = 3 (thread chunks by batch), D = 40, T = 1100 over tiles of 64 and 128, float64."""
    qkv = tensors(T=1100, D=40, B=3)
    g = torch.randn(qkv[0].shape, dtype=torch.float64)
    ref = literal(case, qkv, torch.float64, True, g)
    for block in (64, 128):
        leaves = [t.clone().requires_grad_() for t in qkv]
        out = tiled.attend(describe(*leaves, **kernel_args(case, torch.float64)), block=block)
        grads = torch.autograd.grad(out, leaves, g)
        for name, a, b in zip(NAMES, [out, *grads], ref[:4], strict=False):
            assert (a - b).abs().max() <= 1e-10 * b.abs().max(), (block, name)


@pytest.mark.parametrize("threads", [1, 2])
def test_bf16_autocast_backward_on_one_or_more_threads(threads):
    """Under CPU bf16 autocast the engine's own matmuls must not be autocast: with one thread
    (one chunk, run in the caller's thread) they were, and mixed dtypes failed the backward."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        q, k, v = (t.float().requires_grad_() for t in tensors(T=97, D=16, B=2))
        h_p = torch.tensor([2.0, 8.0, 64.0], requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = attention(q, k, v, kind="bilateral", h_p=h_p, impl="tiled")
        out.float().square().sum().backward()
    finally:
        torch.set_num_threads(before)
    ref = attention(*(t.detach() for t in (q, k, v)), kind="bilateral", h_p=h_p.detach(),
                    impl="reference")  # fmt: skip
    assert out.dtype == torch.float32  # the custom op runs in its inputs' dtype
    assert (out.detach() - ref).abs().max() <= 1e-5
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v, h_p))
