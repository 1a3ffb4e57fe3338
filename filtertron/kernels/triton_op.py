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

Precision policy (one place, :func:`_dot_mode` and :func:`unsupported`): bf16 / fp16 inputs
run 16-bit tensor-core dots with fp32 accumulation; fp32 inputs run TF32 dots, and only when
torch allows TF32 matmuls (``torch.backends.cuda.matmul.allow_tf32``, the rule of torch's own
fp32 matmul); otherwise impl="triton" refuses fp32 with that reason and ``auto`` takes the next
impl of its row (IEEE fp32 dots spill tens of thousands of registers). The softmax statistics,
every accumulator and the partial sums of dh_y and dh_p (float64 across blocks) stay in fp32 or
wider. Launch configurations per architecture and head dim are :data:`CONFIGS`; every one is
compiled for sm_80 and sm_90 by ``tools/triton_gate.py`` in ``make test``. Runs on CUDA; on CPU
only under ``TRITON_INTERPRET=1`` (set before this module is imported), which the tests use.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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
# The kernels' runtime flag word (FLAGS): not specialized on, so one compile serves causal and
# two-sided, banded and dense, with or without the gaussian's key bias, square or linear f.
FLAG_CAUSAL, FLAG_KEY_BIAS, FLAG_SQUARE, FLAG_OWN = 1, 2, 4, 8  # OWN: STORE32 / NEED


@dataclass(frozen=True)
class Blocks:
    """One kernel's launch configuration: tile (BLOCK_M queries x BLOCK_N keys), warps, stages."""

    m: int
    n: int
    warps: int
    stages: int


# CONFIGS[(arch, head dim bucket)] = {kernel: Blocks}; arch 9 (sm_90) or 8 (sm_80, sm_86,
# sm_89), bucket 64 (D <= 64) or 128 (64 < D <= 128); "<kernel>_fp32" for float32 (TF32)
# inputs, whose tiles take twice the registers. Chosen from a compile sweep (2026-12-05,
# Triton 3.9 and 3.6, the wheels' ptxas): the largest tiles tried whose heaviest
# specialization (position term, twicing's MODE 2 / SECOND pass) compiles with no register
# spill and within shared memory; tools/triton_gate.py checks every specialization in make
# test. Their speed on a GPU has not been measured yet (docs/gpu.md): a GPU check that times
# them may change this table.
B = Blocks
CONFIGS: dict[tuple[int, int], dict[str, Blocks]] = {
    (9, 64): {"fwd": B(128, 64, 8, 3), "bwd_q": B(128, 32, 8, 2), "bwd_kv": B(32, 128, 8, 2),
              "fwd_fp32": B(128, 64, 8, 2), "bwd_q_fp32": B(128, 32, 8, 2),
              "bwd_kv_fp32": B(16, 128, 8, 2)},
    (9, 128): {"fwd": B(128, 64, 8, 2), "bwd_q": B(64, 32, 8, 2), "bwd_kv": B(16, 64, 8, 2),
               "fwd_fp32": B(64, 32, 4, 2), "bwd_q_fp32": B(32, 32, 4, 2),
               "bwd_kv_fp32": B(16, 32, 4, 2)},
    (8, 64): {"fwd": B(128, 64, 8, 3), "bwd_q": B(32, 32, 4, 2), "bwd_kv": B(32, 32, 4, 2),
              "fwd_fp32": B(128, 64, 8, 2), "bwd_q_fp32": B(32, 32, 8, 2),
              "bwd_kv_fp32": B(32, 32, 4, 2)},
    (8, 128): {"fwd": B(128, 64, 8, 2), "bwd_q": B(32, 64, 8, 2), "bwd_kv": B(16, 32, 4, 2),
               "fwd_fp32": B(64, 32, 4, 2), "bwd_q_fp32": B(32, 32, 4, 2),
               "bwd_kv_fp32": B(16, 32, 8, 2)},
}  # fmt: skip
# The interpreter runs small blocks, so T = 97 spans several query and key blocks.
INTERPRETER = {"fwd": Blocks(32, 16, 1, 1), "bwd_kv": Blocks(16, 32, 1, 1),
               "bwd_q": Blocks(32, 16, 1, 1)}  # fmt: skip
_ARCH: list[int] = []  # the compile gate's target arch (for_arch), else the device's


@contextmanager
def for_arch(arch: int) -> Iterator[None]:
    """Launch with the configurations of ``arch`` (8 or 9): the compile gate records them."""
    _ARCH.append(arch)
    try:
        yield
    finally:
        _ARCH.pop()


def arch_of(device: torch.device) -> int:
    """The CONFIGS arch for a device: 9 from sm_90 up, else 8."""
    if _ARCH:
        return _ARCH[-1]
    return 9 if torch.cuda.get_device_capability(device)[0] >= 9 else 8


def configs(D: int, dtype: torch.dtype, device: torch.device) -> dict[str, Blocks]:
    """The launch configuration of each kernel ("fwd", "bwd_q", "bwd_kv") for head dim D and
    input dtype on ``device``."""
    if INTERPRETED and not _ARCH:
        return INTERPRETER
    table = CONFIGS[(arch_of(device), 64 if D <= 64 else 128)]
    suffix = "_fp32" if dtype == torch.float32 else ""
    return {name: table[name + suffix] for name in ("fwd", "bwd_q", "bwd_kv")}


def _dot_mode(dtype: torch.dtype) -> int:
    """The kernels' DOT: 0 16-bit tensor cores, 1 fp32 IEEE (interpreter only), 2 TF32,
    3 bf16 upcast (interpreter only: it multiplies bf16 bit patterns, triton#11584)."""
    if dtype == torch.float32:
        return 1 if INTERPRETED and not _ARCH else 2
    return 3 if INTERPRETED and not _ARCH and dtype == torch.bfloat16 else 0


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
    if band is None:  # dense: a band of T, one code path (and one compile) for both
        w = torch.full((H,), T, dtype=torch.int32, device=q.device)
    else:
        w = band.to(torch.int32).contiguous()
    heads = (log2(scale), kb, c, w)
    flags = FLAG_CAUSAL * causal + FLAG_KEY_BIAS * (key_bias is not None)
    flags += FLAG_SQUARE * (position == "square")
    const = {
        "BLOCK_D": _pow2(D),
        "BLOCK_DV": _pow2(v.shape[-1]),
        "POSITION": position != "none",
        "DOT": _dot_mode(q.dtype),
    }
    return heads, const, (H, T, D, v.shape[-1]), flags


def _forward(q, k, v, scale, key_bias, coef, band, position, causal, twice, block, keep):
    B, H, T, D = q.shape
    Dv = v.shape[-1]
    heads, const, dims, flags = _common(q, k, v, scale, key_bias, coef, band, position, causal)
    c = configs(D, q.dtype, q.device)["fwd"]
    grid = (triton.cdiv(T, c.m), B * H)
    launch = {"BLOCK_M": c.m, "BLOCK_N": c.n, "num_warps": c.warps, "num_stages": c.stages, **const}
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
    own = FLAG_OWN * (first32 is not lse)  # STORE32
    attn_fwd[grid](q, k, v, *heads, first, first32, lse, lse, *strides, *dims, flags + own,
                   SECOND=False, **launch)  # fmt: skip
    out = first
    if twice:
        out = torch.empty_like(first)
        strides = (*q.stride(), *k.stride(), *first.stride())
        out32 = o32 if o32.numel() else lse
        own = FLAG_OWN * (out32 is not lse)
        attn_fwd[grid](q, k, first, *heads, out, out32, o1, lse, *strides, *dims, flags + own,
                       SECOND=True, **launch)  # fmt: skip
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
    heads, const, dims, flags = _common(q, k, v, scale, key_bias, coef, band, position, causal)
    cfg = configs(D, q.dtype, q.device)
    ckv, cq = cfg["bwd_kv"], cfg["bwd_q"]
    kv_grid, q_grid = (triton.cdiv(T, ckv.n), B * H), (triton.cdiv(T, cq.m), B * H)
    kv = {"BLOCK_M": ckv.m, "BLOCK_N": ckv.n, "num_warps": ckv.warps, "num_stages": ckv.stages}
    qk = {"BLOCK_M": cq.m, "BLOCK_N": cq.n, "num_warps": cq.warps, "num_stages": cq.stages}
    kv, qk = {**kv, **const}, {**qk, **const}
    strides = (*q.stride(), *k.stride(), *v.stride())
    g = g.to(dtype).contiguous()
    dk, dv = q.new_empty(q.shape), q.new_empty((B, H, T, Dv))  # contiguous
    dkb = q.new_zeros((B, H, T), dtype=f32)
    dc = q.new_zeros((B, H, T), dtype=torch.float64)  # per query: sum_j dS_ij f(i - j)
    if twice:
        X = q.new_empty((B, H, T, Dv), dtype=f32)  # A^T G
        cols = (lse, lse, g, g, g, dk, X, dkb, dkb)  # delta, V2, DO2 unused in MODE 1
        attn_bwd_kv[kv_grid](q, k, v, *heads, *cols, *strides, *dims, flags, MODE=1, **kv)
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
    own = FLAG_OWN * bool(need)  # NEED_C
    attn_bwd_q[q_grid](q, k, v, *heads, *cols, *strides, *dims, flags + own, MODE=mode, **qk)
    delta = delta + rows  # every row of dS sums to 0 again (triton_kernels docstring)
    dsk = q.new_zeros((B, H, T), dtype=torch.float64)
    cols = (lse, delta, do, v2, do2, dk, dv, dkb, dsk)
    own = FLAG_OWN * bool(need_scale)  # NEED_S
    attn_bwd_kv[kv_grid](q, k, v, *heads, *cols, *strides, *dims, flags + own, MODE=mode, **kv)
    dscale = dsk.sum((0, 2)).float() if need_scale else ops._empty(q)
    dcoef = -dc.sum((0, 2)).float() if need else ops._empty(q)
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
    if q.dtype == torch.float32 and not INTERPRETED and not torch.backends.cuda.matmul.allow_tf32:
        return (
            "impl='triton' runs float32 through TF32 tensor cores only, and torch disallows TF32 "
            "(torch.backends.cuda.matmul.allow_tf32 is False): IEEE fp32 dots would spill "
            "registers and crawl; use bf16/fp16, allow TF32 "
            "(torch.set_float32_matmul_precision('high')), or impl='flex'"
        )
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        return (
            f"impl='triton' takes head dims up to {MAX_HEAD_DIM}, got D={q.shape[-1]}, "
            f"Dv={v.shape[-1]}"
        )
    return None
