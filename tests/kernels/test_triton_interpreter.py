"""The Triton kernels in Triton's interpreter (CPU) against the literal reference.

Every kernel (softmax, ALiBi, bilateral dot and gaussian, each banded by default, twicing over
softmax, ALiBi and bilateral; causal and two-sided) forward and backward, gradients of q, k,
v, h_y and h_p included, under the rule of tests/model/test_attention_ops.py: error against a
float64 run <= 2x the error of the reference run in the kernel's precision + rel * scale, with
rel = 4e-6 for float32 and one unit of the format for 16-bit inputs (2^-7 bfloat16, 2^-10
float16: a 16-bit output is rounded once more or less than the reference's, which can flip it
by one unit). For 16-bit the float64 run takes the rounded inputs, so only the computation's
error is compared. The kernels run with the interpreter's small blocks (triton_op.INTERPRETER),
so T = 97 already spans several query and key blocks and ends in a ragged one; D = 24 and
40 are not powers of two. The interpreter is 500-1500x slower than torch: the default run
keeps B = 1, H = 3, T = 97; the slow run adds T = 300, D = 40 and 128, Dv != D, other block
shapes, both 16-bit types on every kernel.
"""

from __future__ import annotations

import math

import pytest
import torch

from filtertron.model.attention.functional import attention
from tests.model.test_attention_ops import CASES, REL, assert_matches, literal, run

triton_op = pytest.importorskip("filtertron.kernels.triton_op")
pytestmark = pytest.mark.skipif(
    not triton_op.INTERPRETED,
    reason="Triton interpreter off (a GPU runs tests/kernels/test_gpu.py)",
)
RELS = {torch.float32: REL, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
NAMES = ["out", "dq", "dk", "dv", "dh_y", "dh_p"]


def tensors(T, D, Dv=None, seed=0, B=1, H=3):
    g = torch.Generator().manual_seed(seed)
    shapes = [(B, H, T, D), (B, H, T, D), (B, H, T, Dv or D)]
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


def check(case, T=97, D=24, dtype=torch.float32, causal=True, Dv=None, **extra):
    """Triton against the literal reference, forward and every gradient."""
    qkv = tensors(T, D, Dv)
    g = torch.randn(qkv[2].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    low = dtype if dtype != torch.float32 else None  # 16-bit: float64 of the rounded inputs
    ref64 = literal(case, qkv, torch.float64, causal, g, round_to=low)
    ref = literal(case, qkv, dtype, causal, g)
    fast = run("triton", case, qkv, dtype, causal, g, **extra)
    assert all(f.dtype == dtype for f in fast[:4])
    assert_matches(fast, ref, ref64, NAMES[: len(ref64)], rel=RELS[dtype])


def test_interpreter_blocks_make_t97_multi_block():
    sizes = [n for c in triton_op.INTERPRETER.values() for n in (c.m, c.n)]
    assert all(97 > 2 * b and 97 % b != 0 for b in sizes)


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case):
    check(case)


@pytest.mark.parametrize("case", ["alibi", "bilateral-gaussian", "twicing-bilateral-dot"])
def test_two_sided(case):
    check(case, causal=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", ["bilateral-gaussian", "twicing-bilateral-dot"])
def test_low_precision(case, dtype):
    check(case, dtype=dtype)


def _grads(impl, q, k, v, g, **args):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    h_p = args.get("h_p")
    if h_p is not None:
        args["h_p"] = h_p = h_p.detach().requires_grad_()
        leaves.append(h_p)
    out = attention(*leaves[:3], impl=impl, **args)
    return [out, *torch.autograd.grad(out, leaves, g)]


def test_value_dim_and_non_contiguous_inputs():
    """Dv != D, and q, k as strided views of one (B, T, H, 3, D) tensor, like the shell."""
    B, H, T, D, Dv = 1, 3, 50, 24, 20
    q, k, _ = torch.randn(B, T, H, 3, D).permute(3, 0, 2, 1, 4).unbind(0)
    v, g = torch.randn(B, H, T, Dv), torch.randn(B, H, T, Dv)
    assert not q.is_contiguous()
    args = {"kind": "twicing", "base": "bilateral", "h_p": torch.tensor([1.5, 7.0, 300.0])}
    fast = _grads("triton", q, k, v, g, **dict(args))
    ref = _grads("reference", q, k, v, g, **dict(args))
    assert fast[0].shape == (B, H, T, Dv)
    for name, a, b in zip(["out", "dq", "dk", "dv", "dh_p"], fast, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("case", ["bilateral-gaussian", "twicing-bilateral-dot"])
def test_repeated_backward_is_bit_identical(case):
    """No atomics: every gradient, dh_y and dh_p included, is the same bit for bit."""
    qkv = tensors(97, 24)
    g = torch.randn(1, 3, 97, 24, dtype=torch.float64)
    first, second = (run("triton", case, qkv, torch.float32, True, g) for _ in range(2))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "args",
    [
        {"kind": "bilateral", "h_p": torch.tensor([20.0, 50.0, 300.0])},  # bands 155.. > T
        {"kind": "softmax", "alibi_slopes": torch.tensor([0.5, 0.125, 0.01])},
    ],
    ids=["bilateral", "alibi"],
)
def test_band_covering_the_sequence_is_exactly_dense(args):
    """Every band >= T: the banded kernel (masks, key ranges) equals the dense one bit for bit."""
    q, k, v = (t.float() for t in tensors(97, 24))
    g = torch.randn(1, 3, 97, 24)
    eps = math.exp(-100)  # ALiBi bands 200, 800, 10000
    dense = _grads("triton", q, k, v, g, band_eps=None, **dict(args))
    banded = _grads("triton", q, k, v, g, band_eps=eps, **dict(args))
    for a, b in zip(dense, banded, strict=True):
        assert torch.equal(a, b)


SLOW_SHAPES = [(300, 40, None), (300, 24, 40), (130, 128, None)]  # (T, D, Dv)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", SLOW_SHAPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_matches_reference_slow(case, shape, causal, dtype):
    T, D, Dv = shape
    check(case, T=T, D=D, dtype=dtype, causal=causal, Dv=Dv)


@pytest.mark.slow
@pytest.mark.parametrize("blocks", [((16, 32), (32, 16), (16, 32)), ((64, 64),) * 3], ids=str)
@pytest.mark.parametrize("case", ["bilateral-gaussian", "twicing-alibi", "twicing-bilateral-dot"])
def test_other_block_shapes(case, blocks, monkeypatch):
    """Key ranges and masks do not depend on the block sizes (nor on BLOCK_M vs BLOCK_N)."""
    B = triton_op.Blocks
    configs = {k: B(m, n, 1, 1) for k, (m, n) in zip(("fwd", "bwd_kv", "bwd_q"), blocks)}
    monkeypatch.setattr(triton_op, "INTERPRETER", configs)
    check(case, T=200, D=24)
    check(case, T=200, D=24, causal=False)


def test_opcheck():
    """torch.library.opcheck of the Triton op: schema, fake impl, autograd registration."""
    from filtertron.kernels import describe

    q, k, v = (t.float() for t in tensors(40, 24))
    kernel = describe(q, k, v, "twicing", base="bilateral", h_p=torch.tensor([1.5, 7.0, 300.0]))
    leaves = [None if t is None else t.detach().requires_grad_() for t in kernel.tensors()]
    args = (*leaves, kernel.band, "square", True, True, 0, True)
    torch.library.opcheck(triton_op.triton_op, args)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["bilateral-dot", "bilateral-gaussian"])
def test_bandwidth_gradients_at_long_t(case, monkeypatch):
    """dh_y and dh_p at T = 4096 (sums of T^2 terms growing like (i - j)^2, kept in float64
    across blocks) within the rule against float64; the GPU check repeats this at T = 16K."""
    B = triton_op.Blocks
    monkeypatch.setattr(
        triton_op, "INTERPRETER", dict.fromkeys(("fwd", "bwd_kv", "bwd_q"), B(64, 64, 1, 1))
    )
    check(case, T=4096, D=16)
