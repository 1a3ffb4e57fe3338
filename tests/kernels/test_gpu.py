"""On CUDA: the Triton kernels and compiled FlexAttention against the literal reference.

Skipped without a GPU (marker ``gpu``; ``pytest -m gpu`` in tools/gpu/check.sh). Never run
by us: our machines have no GPU. Same rule as tests/model/test_attention_ops.py (error
against float64 <= 2x the error of the reference run in the same precision on the same GPU
+ rel * scale; rel = 4e-6 fp32, one unit of the format for 16-bit), with the float64 run on
the rounded inputs. Covers:

- every Triton kernel (softmax, ALiBi, bilateral dot / gaussian, banded and dense, twicing
  over softmax, ALiBi and bilateral; causal and two-sided) forward and backward at ragged
  T = 129 and 1000 with head dims 64 and 80 in fp32 / bf16 (the GPU check's share), and with
  ``slow`` at T = 1, 40, 97, 129, 300, 1000 paired with head dims 64, 80, 128, in fp32 / bf16 /
  fp16;
- fp32 through TF32 (the precision policy of filtertron/kernels/triton_op.py): the fp32
  reference runs with TF32 allowed too, and rel is one unit of TF32 (2^-10); without TF32
  impl="triton" refuses fp32;
- dh_y and dh_p of bilateral at T = 16K (float64 partial sums) against float64;
- banded == dense within the band's tolerance, exactly when the band covers T, and
  bit-identical repeated backwards (no atomics).
Runtime: dominated by compiles (Triton ~2-4 s per kernel variant on our CPUs' compiler).
"""

from __future__ import annotations

import pytest
import torch

from filtertron.model.attention.functional import attention
from tests.model.test_attention_ops import CASES, assert_matches, literal, run

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
# fp32 runs TF32 dots (kernels and the fp32 reference alike): one unit of TF32's 10-bit mantissa.
RELS = {torch.float32: 2.0**-10, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
NAMES = ["out", "dq", "dk", "dv", "dh_y", "dh_p"]
# Ragged T with head dims 64, 80 (not a power of two) and 128, paired to keep compiles few.
SHAPES = [(1, 64), (40, 80), (97, 128), (129, 64), (300, 80), (1000, 128)]
TWO_SIDED = ("alibi", "bilateral-gaussian", "twicing-softmax", "twicing-bilateral-dot")


@pytest.fixture(autouse=True)
def _tf32_matmul():
    """impl="triton" runs fp32 through TF32 only; the fp32 reference follows the same switch."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def tensors(T, D, B=2, H=3, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [
        torch.randn(B, H, T, D, generator=g, device="cuda", dtype=torch.float64) for _ in range(3)
    ]


def check(impl, case, T, D, dtype, causal=True, **extra):
    qkv = tensors(T, D)
    g = torch.randn_like(qkv[0])
    low = dtype if dtype != torch.float32 else None
    ref64 = literal(case, qkv, torch.float64, causal, g, round_to=low)
    ref = literal(case, qkv, dtype, causal, g)
    fast = run(impl, case, qkv, dtype, causal, g, **extra)
    assert all(torch.isfinite(t).all() for t in fast)
    assert_matches(fast, ref, ref64, NAMES[: len(ref64)], rel=RELS[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("T, D", [(129, 64), (1000, 80)])
@pytest.mark.parametrize("case", CASES)
def test_triton_matches_reference(case, T, D, dtype):
    """The GPU check's share (part 01 has about 100 s): both head-dim buckets, fp32 and bf16."""
    check("triton", case, T, D, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("T, D", SHAPES)
@pytest.mark.parametrize("case", CASES)
def test_triton_matches_reference_all_shapes(case, T, D, dtype):
    check("triton", case, T, D, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("T", (97, 300))
@pytest.mark.parametrize("case", TWO_SIDED)
def test_triton_two_sided(case, T, dtype):
    check("triton", case, T, 64, dtype, causal=False)


@pytest.mark.parametrize("case", CASES)
def test_triton_dense_kernels(case):
    check("triton", case, 300, 64, torch.bfloat16, band_eps=None)


def _grads(impl, qkv, h_p, g, **kw):
    leaves = [t.detach().float().requires_grad_() for t in (*qkv, h_p)]
    out = attention(*leaves[:3], h_p=leaves[3], impl=impl, **kw)
    return [out, *torch.autograd.grad(out, leaves, g.float())]


@pytest.mark.parametrize("h_p", [(1.0, 4.0, 16.0), (64.0, 256.0, 1e4)], ids=["small", "large"])
def test_triton_banded_equals_dense(h_p):
    qkv = tensors(2048, 64)
    h = torch.tensor(h_p, device="cuda")
    g = torch.randn_like(qkv[0])
    banded = _grads("triton", qkv, h, g, kind="bilateral")
    dense = _grads("triton", qkv, h, g, kind="bilateral", band_eps=None)
    for a, b in zip(banded, dense, strict=True):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()  # fp32: e^-30 is far below
    covering = torch.tensor([300.0, 600.0, 1e4], device="cuda")  # bands >= 2324 > T
    banded = _grads("triton", qkv, covering, g, kind="bilateral")
    dense = _grads("triton", qkv, covering, g, kind="bilateral", band_eps=None)
    for a, b in zip(banded, dense, strict=True):
        assert torch.equal(a, b)


def test_triton_repeated_backward_is_bit_identical():
    qkv = tensors(1000, 64)
    g = torch.randn_like(qkv[0])
    h = torch.tensor([2.0, 30.0, 1e3], device="cuda")
    for kind in ("bilateral", "twicing"):
        extra = {"base": "bilateral"} if kind == "twicing" else {}
        first = _grads("triton", qkv, h, g, kind=kind, **extra)
        second = _grads("triton", qkv, h, g, kind=kind, **extra)
        for a, b in zip(first, second, strict=True):
            assert torch.equal(a, b)


def test_triton_refuses_fp32_without_tf32():
    q = torch.randn(1, 2, 64, 64, device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # restored by the fixture
    with pytest.raises(NotImplementedError, match="TF32"):
        attention(q, q, q, impl="triton")


@pytest.mark.parametrize("content", ["dot", "gaussian"])
def test_triton_bandwidth_gradients_at_16k(content):
    """dh_y and dh_p sum T^2 terms growing like (i - j)^2: float64 partial sums keep them."""
    qkv = tensors(16384, 64, B=1)  # H = 3: the bandwidths of kernel_args
    g = torch.randn_like(qkv[0])
    case = f"bilateral-{content}"
    ref64 = literal(case, qkv, torch.float64, True, g, round_to=torch.bfloat16)
    ref = literal(case, qkv, torch.bfloat16, True, g)
    fast = run("triton", case, qkv, torch.bfloat16, True, g)
    names = NAMES[: len(ref64)]
    keep = [i for i, n in enumerate(names) if n in ("dh_y", "dh_p")]
    pick = [[x[i] for i in keep] for x in (fast, ref, ref64)]
    assert_matches(*pick, [names[i] for i in keep], rel=RELS[torch.bfloat16])
