"""The custom-op seam: every fused kernel is a pair of ``torch.library`` custom ops.

    forward:  (q, k, v, scale, key_bias, coef, band, position, causal, twice, block, keep)
              -> out (B, H, T, Dv), lse (B, H, T), o1 (B, H, T, Dv), o32 (B, H, T, Dv)
    backward: (grad, q, k, v, scale, key_bias, coef, band, out, lse, o1, o32, position, causal,
              twice, block, need_scale, need_coef) -> dq, dk, dv, d scale (H,),
              d key_bias (B, H, T), d coef (H,)

The arguments are the fields of :class:`~filtertron.kernels.description.Kernel`; ``position``
is "square", "linear" or "none", ``block`` an impl's tile size (0: its default). ``lse`` is
the row log-sum-exp in the impl's own units (tiled: natural log; triton: base 2), ``o1``
the first pass A V of twicing and ``o32`` the output
unrounded (float32, for 16-bit q only: the backward's delta = rowsum(dO * O) from a rounded O
would not match the kernel's own P and dP, and the bias gradients would inherit that
mismatch, 4x the error of a 16-bit PyTorch run in dh_y in our tests). All three are kept only
when ``keep`` (a backward will follow); otherwise they are empty (0,) tensors. The gradients
of scale and coef are computed only when asked for (else empty). The scale's gradient is
dL/ds_h = sum_ij dS_ij q_i . k_j = <q, dq>_h / s_h (s_h enters only as s_h q_i . k_j); impls
take it from unrounded values (fp32 dq, or the fp32 dS in the Triton dK dV kernel).

Both ops get a fake (meta) implementation, so ``torch.compile`` traces a model around them
with no graph break, and one autograd registration turns the backward op into the forward's
gradient (:func:`define`). Outputs are contiguous, in q's dtype (out, dq, dk, dv) or at least
float32 (lse, o1, o32, d scale, d key_bias, d coef).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from filtertron.kernels.description import param_dtype


def _empty(like: Tensor) -> Tensor:
    return like.new_empty((0,), dtype=param_dtype(like.dtype))


def define(name: str, forward: Callable, backward: Callable):
    """Register ``filtertron::{name}`` and ``filtertron::{name}_backward`` with autograd.

    Args:
        name: op name.
        forward: the forward, with the forward op's signature (module docstring).
        backward: the backward, with the backward op's signature, except that it gets the
            unrounded output (o32, or out when that is empty) in place of (out, o32).

    Returns:
        The forward op (call it with the forward signature; it returns (out, lse, o1, o32)).
    """

    @torch.library.custom_op(f"filtertron::{name}", mutates_args=())
    def fwd(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        scale: Tensor,
        key_bias: Tensor | None,
        coef: Tensor | None,
        band: Tensor | None,
        position: str,
        causal: bool,
        twice: bool,
        block: int,
        keep: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        args = (q, k, v, scale, key_bias, coef, band, position, causal, twice, block, keep)
        return tuple(t.contiguous() for t in forward(*args))

    @fwd.register_fake
    def _(q, k, v, scale, key_bias, coef, band, position, causal, twice, block, keep):
        B, H, T, _ = q.shape
        cd = param_dtype(q.dtype)
        out = q.new_empty((B, H, T, v.shape[-1]))
        lse = q.new_empty((B, H, T), dtype=cd) if keep else _empty(q)
        o1 = q.new_empty((B, H, T, v.shape[-1]), dtype=cd) if keep and twice else _empty(q)
        o32 = q.new_empty((B, H, T, v.shape[-1]), dtype=cd) if keep and cd != q.dtype else _empty(q)
        return out, lse, o1, o32

    @torch.library.custom_op(f"filtertron::{name}_backward", mutates_args=())
    def bwd(
        grad: Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        scale: Tensor,
        key_bias: Tensor | None,
        coef: Tensor | None,
        band: Tensor | None,
        out: Tensor,
        lse: Tensor,
        o1: Tensor,
        o32: Tensor,
        position: str,
        causal: bool,
        twice: bool,
        block: int,
        need_scale: bool,
        need_coef: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        unrounded = out if o32.numel() == 0 else o32
        args = (grad, q, k, v, scale, key_bias, coef, band, unrounded, lse, o1)
        static = (position, causal, twice, block, need_scale, need_coef)
        return tuple(t.contiguous() for t in backward(*args, *static))

    @bwd.register_fake
    def _(grad, q, k, v, scale, key_bias, coef, band, out, lse, o1, o32, position, causal,
          twice, block, need_scale, need_coef):  # fmt: skip
        cd = param_dtype(q.dtype)
        dkb = key_bias.new_empty(key_bias.shape, dtype=cd) if key_bias is not None else _empty(q)
        dscale = q.new_empty((q.shape[1],), dtype=cd) if need_scale else _empty(q)
        dcoef = q.new_empty((q.shape[1],), dtype=cd) if need_coef else _empty(q)
        dq, dk, dv = (t.new_empty(t.shape) for t in (q, k, v))  # contiguous, like the impls
        return dq, dk, dv, dscale, dkb, dcoef

    def setup_context(ctx, inputs, output):
        q, k, v, scale, key_bias, coef, band, position, causal, twice, block, _ = inputs
        out, lse, o1, o32 = output
        ctx.save_for_backward(q, k, v, scale, key_bias, coef, band, out, lse, o1, o32)
        ctx.static = (position, causal, twice, block)
        ctx.mark_non_differentiable(lse, o1, o32)

    def gradient(ctx, grad, _lse, _o1, _o32):
        q, k, v, scale, key_bias, coef, band, out, lse, o1, o32 = ctx.saved_tensors
        need = ctx.needs_input_grad
        need_coef = coef is not None and need[5]
        dq, dk, dv, dscale, dkb, dcoef = bwd(
            grad, q, k, v, scale, key_bias, coef, band, out, lse, o1, o32, *ctx.static, need[3],
            need_coef,
        )  # fmt: skip
        dscale = dscale.to(scale.dtype) if need[3] else None
        dkb = dkb.to(key_bias.dtype) if key_bias is not None and need[4] else None
        dcoef = dcoef.to(coef.dtype) if need_coef else None
        return dq, dk, dv, dscale, dkb, dcoef, None, None, None, None, None, None

    fwd.register_autograd(gradient, setup_context=setup_context)
    return fwd
