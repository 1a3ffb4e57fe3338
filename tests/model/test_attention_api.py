"""The attention operator's contract: input validation, explicit impls, auto, dropout, dtypes."""

from __future__ import annotations

import logging

import pytest
import torch

from filtertron.kernels import registry
from filtertron.model.attention import functional
from filtertron.model.attention.functional import attention

B, H, T, D = 2, 3, 17, 8


def qkv(dtype=torch.float32):
    return [torch.randn(B, H, T, D, dtype=dtype) for _ in range(3)]


H_P = torch.tensor([2.0, 4.0, 8.0])


@pytest.mark.parametrize(
    "change, match",
    [
        ({"q": torch.randn(B, T, D)}, r"q: expected a tensor of shape \(B, H, T, D\)"),
        ({"k": torch.randn(B, H, T + 1, D)}, r"k: expected shape \(B, H, T, D\) = \(2, 3, 17, 8\)"),
        ({"k": torch.randn(B, H + 1, T, D)}, r"k: expected shape \(B, H, T, D\)"),
        (
            {"v": torch.randn(B + 1, H, T, D)},
            r"v: expected shape \(B, H, T, Dv\) = \(2, 3, 17, Dv\)",
        ),
        ({"v": torch.randn(B, H, T, D, dtype=torch.float64)}, r"v: expected dtype torch.float32"),
        ({"k": torch.randn(B, H, T, D, device="meta")}, r"k: expected dtype .* on cpu"),
        ({"q": torch.randint(0, 3, (B, H, T, D))}, r"q: expected a floating-point"),
        (
            {"h_y": torch.ones(H + 1)},
            r"h_y: expected a floating-point tensor of shape \(H,\) = \(3,\)",
        ),
        (
            {"h_p": torch.ones(H, 1)},
            r"h_p: expected a floating-point tensor of shape \(H,\) = \(3,\)",
        ),
        ({"h_p": None}, r"h_p: the bilateral kernel needs a tensor of shape \(H,\) = \(3,\)"),
        ({"h_p": -H_P}, r"h_p: expected a positive \(3,\) tensor"),
        ({"h_y": torch.zeros(H)}, r"h_y: expected a positive"),
        ({"alibi_slopes": torch.ones(H)}, r"alibi_slopes: not used by the bilateral kernel"),
        ({"scale": 0.1}, r"scale: not used by the bilateral kernel"),
        ({"kind": "linear"}, r"kind: expected one of \('softmax', 'bilateral', 'twicing'\)"),
        ({"impl": "cuda"}, r"impl: expected one of"),
        ({"content": "cosine"}, r"content: expected one of \('dot', 'gaussian'\)"),
        ({"base": "twicing"}, r"base: expected one of \('softmax', 'bilateral'\)"),
        ({"dropout_p": 1.0}, r"dropout_p: expected 0 <= dropout_p < 1"),
        ({"causal": 1}, r"causal: expected a bool"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_tensor(change, match):
    q, k, v = qkv()
    args = {"q": q, "k": k, "v": v, "kind": "bilateral", "impl": "reference", "h_p": H_P}
    args.update(change)
    with pytest.raises(ValueError, match=match):
        attention(**args)


@pytest.mark.parametrize(
    "args, match",
    [
        ({"kind": "softmax", "h_p": H_P}, r"h_p: belongs to the bilateral kernel"),
        (
            {"kind": "softmax", "alibi_slopes": torch.ones(H + 2)},
            r"alibi_slopes: expected .* \(3,\)",
        ),
        ({"kind": "softmax", "content": "gaussian"}, r"content: 'gaussian' is a bilateral option"),
        ({"kind": "twicing", "dropout_p": 0.1}, r"dropout_p: twicing needs 0"),
        ({"kind": "twicing", "base": "bilateral"}, r"h_p: the bilateral kernel needs"),
        ({"band_eps": 1.5}, r"band_eps: expected None or 0 < band_eps < 1"),
    ],
)
def test_kernel_arguments_are_checked(args, match):
    with pytest.raises(ValueError, match=match):
        attention(*qkv(), **args)


def test_impls_that_cannot_serve_a_request_say_which_can(monkeypatch):
    from filtertron.kernels import triton_op

    monkeypatch.setattr(triton_op, "INTERPRETED", False)  # tests/kernels may have set it
    q, k, v = qkv()
    with pytest.raises(NotImplementedError, match=r"impl='triton' runs on CUDA.*can: .*sdpa"):
        attention(q, k, v, impl="triton")
    with pytest.raises(NotImplementedError, match=r"impl='flex' has no attention dropout"):
        attention(q, k, v, impl="flex", dropout_p=0.1)
    with pytest.raises(NotImplementedError, match=r"impl='flex' has no backward on CPU.*'sdpa'"):
        attention(q.requires_grad_(), k, v, impl="flex")
    with pytest.raises(NotImplementedError, match=r"use impl='reference'"):
        attention(q, k, v, "bilateral", "sdpa", h_p=H_P, dropout_p=0.1)
    with pytest.raises(NotImplementedError, match=r"float32/float16/bfloat16"):
        attention(*qkv(torch.float64), impl="flex")


def test_flex_forward_runs_on_cpu_without_grad_even_for_leaf_inputs():
    q, k, v = (t.requires_grad_() for t in qkv())
    with torch.no_grad():
        out = attention(q, k, v, impl="flex")
    assert torch.allclose(out, attention(q, k, v, impl="reference"), atol=1e-5)


def test_auto_resolves_once_per_key_and_logs(caplog, monkeypatch):
    monkeypatch.setattr(registry, "_noted", set())
    q, k, v = qkv()
    with caplog.at_level(logging.INFO, logger="filtertron"):
        for _ in range(3):
            attention(q, k, v, "bilateral", h_p=H_P)
        for _ in range(2):
            attention(q, k, v, "bilateral", h_p=H_P, dropout_p=0.2)
    records = [r for r in caplog.records if r.name == "filtertron"]
    infos = [r.getMessage() for r in records if r.levelno == logging.INFO]
    warns = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(infos) == 2
    assert "'sdpa'" in infos[0] and "kind=bilateral" in infos[0]
    assert "'reference'" in infos[1]  # the one bilateral impl with dropout
    assert len(warns) == 1 and "'sdpa' cannot serve" in warns[0] and "O(T^2)" in warns[0]
    for kind in ("softmax", "twicing"):
        assert functional.resolve_impl("auto", q.device, kind, "softmax", True, False) == "sdpa"


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
@pytest.mark.parametrize("alibi", [False, True])
def test_softmax_dropout(impl, alibi):
    q, k, v = qkv()
    slopes = torch.tensor([0.5, 0.25, 0.125]) if alibi else None
    plain = attention(q, k, v, impl=impl, alibi_slopes=slopes)
    torch.manual_seed(1)
    dropped = attention(q, k, v, impl=impl, alibi_slopes=slopes, dropout_p=0.5)
    assert dropped.shape == plain.shape and torch.isfinite(dropped).all()
    assert not torch.allclose(dropped, plain)
    torch.manual_seed(1)
    assert torch.equal(dropped, attention(q, k, v, impl=impl, alibi_slopes=slopes, dropout_p=0.5))


@pytest.mark.parametrize("kind", ["bilateral", "twicing"])
def test_sdpa_bfloat16_computes_in_float32_and_returns_bfloat16(kind):
    q, k, v = qkv()
    args = {"h_p": H_P, "base": "bilateral"} if kind == "twicing" else {"h_p": H_P}
    lo = attention(*(t.bfloat16() for t in (q, k, v)), kind, "sdpa", **args)
    ref = attention(*(t.bfloat16().float() for t in (q, k, v)), kind, "reference", **args)
    assert lo.dtype == torch.bfloat16
    assert (lo.float() - ref).abs().max() < 2e-2  # one bf16 rounding of O(1) outputs


def test_non_contiguous_inputs_and_value_dim():
    qkv_ = torch.randn(B, T, H, 3, D).permute(3, 0, 2, 1, 4)  # like the attention shell
    q, k, v = qkv_.unbind(0)
    v = torch.randn(B, H, T, 5)  # Dv != D
    for impl in ("sdpa", "flex"):
        for kind, extra in (("softmax", {}), ("bilateral", {"h_p": H_P}), ("twicing", {})):
            with torch.no_grad():
                out = attention(q, k, v, kind, impl, **extra)
            ref = attention(q, k, v, kind, "reference", **extra)
            assert out.shape == (B, H, T, 5)
            assert torch.allclose(out, ref, atol=1e-5), (impl, kind)


@pytest.mark.parametrize("impl", ["sdpa", "flex"])
def test_inference_mode(impl):
    """The sdpa engine's CPU worker threads must inherit the caller's inference mode."""
    q, k, v = qkv()
    for kind, extra in (("bilateral", {"h_p": H_P}), ("twicing", {})):
        with torch.inference_mode():
            out = attention(q, k, v, kind, impl, **extra)
        assert torch.allclose(out, attention(q, k, v, kind, "reference", **extra), atol=1e-5)
