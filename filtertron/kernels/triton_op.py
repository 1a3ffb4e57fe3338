"""impl="triton": the fused Triton kernels as the custom ops ``filtertron::triton[_backward]``.

Launches the kernels of :mod:`filtertron.kernels.triton_kernels` for any kernel description
(causal or two-sided, any T with the ragged last block masked, head dims up to 128 including
non-powers of two, fp32 / bf16 / fp16, the band w_h read on the device):

    forward:   FIRST pass O1 = A V and lse;  twicing: SECOND pass out = 2 O1 - A O1 (same lse)
    backward:  delta = rowsum(dO * O); dQ per query block (with the row sums of dS and the
               coefficient's per-query partial sums); then dK dV per key block with delta +
               those row sums (d key bias and the scale's per-key partial sums). Twicing:
               X = A^T G first (MODE 1), dO1 = 2 G - X, then both with dP = dO1 V^T - G O1^T
               (MODE 2): flash-style passes, no T x T memory. Partial sums are added here,
               after the kernels (deterministic, no atomics).

fp32 inputs use IEEE fp32 dots unless torch allows TF32 matmuls
(``torch.backends.cuda.matmul.allow_tf32``), the same rule as torch's own fp32 matmul.
Block sizes are fixed per head dim (``BLOCKS``), from Triton tutorial 06's choices; they are
not tuned here (no GPU). Runs on CUDA; on CPU only under ``TRITON_INTERPRET=1`` (set before
this module is imported), which the tests use.
"""

from __future__ import annotations

import math
import os

import torch
import triton
from torch import Tensor

from filtertron.kernels import ops
from filtertron.kernels.description import Kernel
from filtertron.kernels.triton_kernels import attn_bwd_kv, attn_bwd_q, attn_fwd

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
LOG2E = 1.0 / math.log(2.0)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_HEAD_DIM = 128
_POSITION = {"none": 0, "square": 1, "linear": 2}
# head dim <= 64 / <= 128 -> (fwd BLOCK_M, BLOCK_N, bwd-kv BLOCK_M, BLOCK_N, bwd-q BLOCK_M,
# BLOCK_N, num_warps, num_stages). The interpreter runs small blocks, so T = 97 spans several.
BLOCKS = {
    64: (128, 64, 32, 128, 128, 32, 4, 3),
    128: (128, 64, 32, 64, 64, 32, 8, 2),
    "interpreter": (32, 16, 16, 32, 32, 16, 1, 1),
}


def _blocks(D: int) -> tuple[int, ...]:
    return BLOCKS["interpreter"] if INTERPRETED else BLOCKS[64 if D <= 64 else 128]


def _dot_mode(dtype: torch.dtype) -> int:
    if dtype == torch.float32:
        return 2 if torch.backends.cuda.matmul.allow_tf32 and not INTERPRETED else 1
    return 3 if INTERPRETED and dtype == torch.bfloat16 else 0


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _common(q, k, v, scale, key_bias, coef, band, position, causal):
    """Launch arguments shared by every kernel of one call."""
    B, H, T, D = q.shape
    f32 = torch.float32

    def log2(t):  # in base-2 units, rounded once from float64 (see triton_kernels)
        return (t.detach().double() * LOG2E).to(f32).contiguous()

    kb = q.new_empty(1, dtype=f32)
    if key_bias is not None:  # s_h b_j in base-2 units
        kb = log2(key_bias.detach().double() * scale.detach().double()[:, None])
    c = q.new_empty(1, dtype=f32) if coef is None else log2(coef)
    w = q.new_empty(1, dtype=torch.int32) if band is None else band.to(torch.int32).contiguous()
    heads = (log2(scale), kb, c, w)
    const = {
        "BLOCK_D": _pow2(D),
        "BLOCK_DV": _pow2(v.shape[-1]),
        "CAUSAL": causal,
        "POSITION": _POSITION[position],
        "HAS_KB": key_bias is not None,
        "BANDED": band is not None,
        "DOT": _dot_mode(q.dtype),
    }
    return heads, const, (H, T, D, v.shape[-1])


def _forward(q, k, v, scale, key_bias, coef, band, position, causal, twice, block, keep):
    B, H, T, D = q.shape
    Dv = v.shape[-1]
    heads, const, dims = _common(q, k, v, scale, key_bias, coef, band, position, causal)
    fm, fn, *_, warps, stages = _blocks(D)
    grid = (triton.cdiv(T, fm), B * H)
    launch = {"BLOCK_M": fm, "BLOCK_N": fn, "num_warps": warps, "num_stages": stages, **const}
    lse = q.new_empty((B, H, T), dtype=torch.float32)
    first = q.new_empty((B, H, T, Dv))  # O1 when twicing, else the output
    low = q.dtype != torch.float32  # 16-bit: also store the unrounded output (ops docstring)
    # Twicing keeps O1 in float32 too: the epilogue's 2 O1 and the backward's delta use it.
    o1 = q.new_empty((B, H, T, Dv), dtype=torch.float32) if twice else ops._empty(q)
    o32 = q.new_empty((B, H, T, Dv), dtype=torch.float32) if keep and low else ops._empty(q)
    strides = (*q.stride(), *k.stride(), *v.stride())
    first32 = o1 if twice else o32
    # (an empty tensor may have a null data pointer: pass lse in its place when not used)
    first32 = first32 if first32.numel() else lse
    attn_fwd[grid](q, k, v, *heads, first, first32, lse, lse, *strides, *dims, SECOND=False,
                   STORE32=first32 is not lse, **launch)  # fmt: skip
    out = first
    if twice:
        out = torch.empty_like(first)
        strides = (*q.stride(), *k.stride(), *first.stride())
        out32 = o32 if o32.numel() else lse
        attn_fwd[grid](q, k, first, *heads, out, out32, o1, lse, *strides, *dims, SECOND=True,
                       STORE32=out32 is not lse, **launch)  # fmt: skip
    o1 = o1 if keep and twice else ops._empty(q)
    return out, lse if keep else ops._empty(q), o1, o32


def _backward(
    g, q, k, v, scale, key_bias, coef, band, out, lse, o1, position, causal, twice, block,
    need_scale, need,
):  # fmt: skip
    """The backward; ``out`` is the unrounded output (see :mod:`filtertron.kernels.ops`)."""
    B, H, T, D = q.shape
    Dv = v.shape[-1]
    dtype, f32 = q.dtype, torch.float32
    heads, const, dims = _common(q, k, v, scale, key_bias, coef, band, position, causal)
    _, _, km, kn, qm, qn, warps, stages = _blocks(D)
    kv_grid, q_grid = (triton.cdiv(T, kn), B * H), (triton.cdiv(T, qm), B * H)
    kv = {"BLOCK_M": km, "BLOCK_N": kn, "num_warps": warps, "num_stages": stages, **const}
    qk = {"BLOCK_M": qm, "BLOCK_N": qn, "num_warps": warps, "num_stages": stages, **const}
    strides = (*q.stride(), *k.stride(), *v.stride())
    g = g.to(dtype).contiguous()
    dk, dv = q.new_empty(q.shape), q.new_empty((B, H, T, Dv))  # contiguous
    dkb = q.new_zeros((B, H, T), dtype=f32)
    dc = q.new_zeros((B, H, T), dtype=f32)  # per query: sum_j dS_ij f(i - j)
    if twice:
        X = q.new_empty((B, H, T, Dv), dtype=f32)  # A^T G
        cols = (lse, lse, g, g, g, dk, X, dkb, dkb)  # delta, V2, DO2 unused in MODE 1
        attn_bwd_kv[kv_grid](q, k, v, *heads, *cols, *strides, *dims, MODE=1, NEED_S=False, **kv)
        do = (2 * g.float() - X).to(dtype)  # dO1 = 2 G - A^T G
        o2 = 2 * o1 - out.float()  # the second pass's A O1, as the kernel summed it
        delta = (do.float() * o1).sum(-1) - (g.float() * o2).sum(-1)
        v2, do2, mode = o1.to(dtype).contiguous(), g, 2
    else:
        do, v2, do2, mode = g, g, g, 0
        delta = (g.float() * out.float()).sum(-1)
    delta = delta.contiguous()
    dq, rows = q.new_empty(q.shape), q.new_empty((B, H, T), dtype=f32)
    cols = (lse, delta, do, v2, do2, dq, rows, dc)
    attn_bwd_q[q_grid](q, k, v, *heads, *cols, *strides, *dims, MODE=mode, NEED_C=need, **qk)
    delta = delta + rows  # every row of dS sums to 0 again (triton_kernels docstring)
    dsk = q.new_zeros((B, H, T), dtype=torch.float64)
    cols = (lse, delta, do, v2, do2, dk, dv, dkb, dsk)
    attn_bwd_kv[kv_grid](
        q, k, v, *heads, *cols, *strides, *dims, MODE=mode, NEED_S=need_scale, **kv
    )
    dscale = dsk.sum((0, 2)).float() if need_scale else ops._empty(q)
    dcoef = -dc.sum((0, 2)) if need else ops._empty(q)
    return dq, dk, dv, dscale, dkb if key_bias is not None else ops._empty(q), dcoef


triton_op = ops.define("triton", _forward, _backward)


def attend(kernel: Kernel) -> Tensor:
    """The kernel on the Triton kernels, (B, H, T, Dv)."""
    keep = kernel.needs_grad
    position = kernel.position or "none"
    args = (kernel.scale, kernel.key_bias, kernel.coef, kernel.band, position)
    q, k, v = kernel.q, kernel.k, kernel.v
    return triton_op(q, k, v, *args, kernel.causal, kernel.twice, 0, keep)[0]


def unsupported(kernel: Kernel) -> str | None:
    """Why impl="triton" cannot serve ``kernel``, or None."""
    q, v = kernel.q, kernel.v
    if q.device.type != "cuda" and not INTERPRETED:
        return (
            "impl='triton' runs on CUDA (on CPU only under TRITON_INTERPRET=1, for tests); "
            f"got q on {q.device}"
        )
    if kernel.dropout_p > 0.0:
        return "impl='triton' has no attention dropout; use impl='reference'"
    if q.dtype not in DTYPES:
        return f"impl='triton' runs float32/bfloat16/float16, got {q.dtype}"
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        return (
            f"impl='triton' takes head dims up to {MAX_HEAD_DIM}, got D={q.shape[-1]}, "
            f"Dv={v.shape[-1]}"
        )
    return None
