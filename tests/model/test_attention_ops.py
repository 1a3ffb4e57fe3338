"""The attention operator: every kind x impl against the literal reference.

The ground truth is :mod:`filtertron.model.attention.reference` called with the user's
arguments (the literal math, which never sees the kernel description); every impl,
``reference`` (the description materialised) included, is compared with it.

Tolerance rule (flash-attention / Triton tutorial 06): a fast path's error against a float64
reference may be at most twice the error of the same reference run in float32, plus
``REL`` times the tensor's scale. REL = 4e-6 (about 30 fp32 ulps) absorbs a different
summation order in the long reductions: dh_p sums dS (i - j)^2 over B T^2 terms, and the
fused kernels add tiles in another order than one big matmul.

Flex backward on CPU is refused by torch; ``flex_grad`` lifts that private guard inside a
test so the eager FlexAttention backward can be checked (never done in library code). That
backward sums the gradient of a captured per-head tensor (h_y, h_p enter the score_mod that
way) by scatter-add over B T^2 scores in float32, in no fixed order: over repeated runs its
dh_p error varied from 6e-7 to 1.5e-5 of the scale (fp32 reference: 5e-7), so flex's dh_y and
dh_p get REL_FLEX_BUFFER = 5e-5 instead of REL.
"""

from __future__ import annotations

import functools

import pytest
import torch

from filtertron.model.attention import functional, reference

B, H, T, D = 2, 3, 97, 48
REL = 4e-6
REL_FLEX_BUFFER = 5e-5
IMPLS = ("reference", "sdpa", "tiled", "flex")
# name -> (kind, base, content, alibi)
CASES = {
    "softmax": ("softmax", "softmax", "dot", False),
    "alibi": ("softmax", "softmax", "dot", True),
    "bilateral-dot": ("bilateral", "softmax", "dot", False),
    "bilateral-gaussian": ("bilateral", "softmax", "gaussian", False),
    "twicing-softmax": ("twicing", "softmax", "dot", False),
    "twicing-alibi": ("twicing", "softmax", "dot", True),
    "twicing-bilateral-dot": ("twicing", "bilateral", "dot", False),
    "twicing-bilateral-gaussian": ("twicing", "bilateral", "gaussian", False),
}


@pytest.fixture
def flex_grad(monkeypatch):
    """Let FlexAttention's eager backward run on CPU, for this test only."""
    import torch.nn.attention.flex_attention as fa

    monkeypatch.setattr(fa, "_validate_device", lambda *args: None)


def qkv(dtype=torch.float32, shape=(B, H, T, D), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(3)]


def kernel_args(
    case: str, dtype=torch.float32, grad: bool = False, round_to=None, device="cpu"
) -> dict:
    """Keyword arguments of functional.attention for a case; h_y, h_p are fresh leaves.

    ``round_to``: a dtype the values are rounded to first (a float64 run of 16-bit inputs).
    """
    kind, base, content, alibi = CASES[case]
    args = {"kind": kind, "base": base, "content": content}

    def tensor(values, requires_grad=False):
        t = torch.tensor(values, dtype=round_to or dtype, device=device).to(dtype)
        return t.requires_grad_(requires_grad)

    if alibi:
        args["alibi_slopes"] = tensor([0.5, 0.125, 0.01])
    if "bilateral" in (kind, base):
        h_y = [6.0, 7.0, 8.0] if content == "dot" else [2.0, 2.6, 3.0]
        args["h_y"] = tensor(h_y, grad)
        args["h_p"] = tensor([1.5, 7.0, 300.0], grad)
    return args


def _leaves(q, k, v, args, grad: bool):
    return [q, k, v] + [args[n] for n in ("h_y", "h_p") if n in args] if grad else []


def _inputs(case, tensors, dtype, grad: bool, round_to):
    cast = [t.detach().to(round_to or dtype).to(dtype) for t in tensors]
    args = kernel_args(case, dtype, grad, round_to, tensors[0].device)
    return [t.requires_grad_(grad) for t in cast], args


def run(
    impl, case, tensors, dtype=torch.float32, causal=True, grad_out=None, round_to=None, **extra
):
    """Output and, if grad_out is given, grads of (q, k, v[, h_y, h_p]) of one impl."""
    (q, k, v), args = _inputs(case, tensors, dtype, grad_out is not None, round_to)
    out = functional.attention(q, k, v, impl=impl, causal=causal, **args, **extra)
    if grad_out is None:
        return [out]
    g = grad_out.to(round_to or dtype).to(dtype)
    return [out, *torch.autograd.grad(out, _leaves(q, k, v, args, True), g)]


def literal(case, tensors, dtype=torch.float32, causal=True, grad_out=None, round_to=None):
    """Like :func:`run`, through the literal reference functions (the ground truth)."""
    (q, k, v), args = _inputs(case, tensors, dtype, grad_out is not None, round_to)
    kind, base = args.pop("kind"), args.pop("base")
    if kind == "softmax":
        out = reference.softmax(q, k, v, causal, alibi_slopes=args.get("alibi_slopes"))
    elif kind == "bilateral":
        out = reference.bilateral(q, k, v, args["h_y"], args["h_p"], args["content"], causal)
    else:
        out = reference.twicing(q, k, v, base, causal, **args)
    if grad_out is None:
        return [out]
    g = grad_out.to(round_to or dtype).to(dtype)
    return [out, *torch.autograd.grad(out, _leaves(q, k, v, args, True), g)]


def assert_matches(fast, ref32, ref64, names, rel_buffer=REL, rel=REL):
    """The tolerance rule: |fast - ref64| <= 2 |ref32 - ref64| + rel * scale, per tensor.

    ``ref32`` is the reference run in the fast path's precision; ``rel_buffer`` replaces
    ``rel`` for dh_y and dh_p (flex's scatter-add, see the module docstring).
    """
    for name, f, r32, r64 in zip(names, fast, ref32, ref64, strict=True):
        err_f = (f.double() - r64).abs().max().item()
        err_r = (r32.double() - r64).abs().max().item()
        r = max(rel_buffer, rel) if name in ("dh_y", "dh_p") else rel
        bound = 2 * err_r + r * r64.abs().max().item()
        assert err_f <= bound, f"{name}: error {err_f:.2e} > {bound:.2e} (ref {err_r:.2e})"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES)
def test_shape_dtype_causal_and_finite_grads(impl, case, flex_grad):
    tensors = qkv(shape=(1, H, 40, 16))
    out = run(impl, case, tensors)[0]
    assert out.shape == (1, H, 40, 16) and out.dtype == torch.float32
    t = 23  # change every input after position t: outputs up to t must not move at all
    moved = [x.clone() for x in tensors]
    for x in moved:
        x[:, :, t + 1 :] = torch.randn_like(x[:, :, t + 1 :])
    out2 = run(impl, case, moved)[0]
    assert torch.equal(out[:, :, : t + 1], out2[:, :, : t + 1])
    assert not torch.equal(out[:, :, t + 1 :], out2[:, :, t + 1 :])
    grads = run(impl, case, tensors, grad_out=torch.randn(1, H, 40, 16))[1:]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


TWO_SIDED = ("alibi", "bilateral-gaussian", "twicing-softmax", "twicing-bilateral-dot")


@functools.cache
def reference_runs(case: str, causal: bool):
    """float64 and float32 reference outputs and grads, shared by the impls."""
    tensors = qkv()
    g = torch.randn(B, H, T, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return (
        tensors,
        g,
        [literal(case, tensors, dtype, causal, g) for dtype in (torch.float64, torch.float32)],
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "case, causal", [(c, True) for c in CASES] + [(c, False) for c in TWO_SIDED]
)
def test_matches_reference_forward_and_backward(impl, case, causal, flex_grad):
    tensors, g, (ref64, ref32) = reference_runs(case, causal)
    fast = run(impl, case, tensors, torch.float32, causal, g)
    names = ["out", "dq", "dk", "dv", "dh_y", "dh_p"][: len(ref64)]
    assert_matches(fast, ref32, ref64, names, REL_FLEX_BUFFER if impl == "flex" else REL)
    with torch.no_grad():  # the compiled CPU forward, not the eager one used for backward
        fwd = run(impl, case, tensors, torch.float32, causal)
    assert_matches(fwd, ref32[:1], ref64[:1], ["out (no grad)"])
