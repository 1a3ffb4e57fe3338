"""Fused Triton kernels for the kernel description: forward, twicing's second pass, backward.

Flash-attention style (Triton tutorial 06, FlashAttention-2), per (batch, head) program row:

    logit_ij = s_h (q_i . k_j + b_j) - c_h f(i - j),   f = (i - j)^2 ("square") or |i - j|

computed in base 2 (exp2) as s' q.k + b'_j - c' f with s' = s log2 e, b' = s b log2 e and
c' = c log2 e rounded once from float64 on the host (the gaussian's |s b| is 20 or more: a
second fp32 rounding there shifts each key's P by 1e-6, which the bias gradients sum up);
the spatial / ALiBi term comes from the block indices and the per-head c_h, loaded once.
Keys are visited in three ranges per
query block: band edge (masked), interior (no mask), diagonal / ragged end (masked), so masks cost
only where a block crosses the causal diagonal, the band edge w_h or T. The band w_h is read
from the description's (H,) int32 tensor on the device: each program computes its own key
range from it, so no host copy happens per call.

- :func:`attn_fwd` (FIRST): online softmax, O = A V and the row lse in base 2 (the units the
  backward recomputes P in: a conversion to natural log and back would shift every P of a
  row by the same rounding, which the bias gradients sum up); for 16-bit
  inputs under a backward also O unrounded in float32 (the backward's delta needs it).
  (SECOND, twicing): O2 = sum_j exp(logit_ij - lse_i) O1_j with the first pass's lse and no
  rescaling, then out = 2 O1 - O2 in the epilogue.
- :func:`attn_bwd_q` (runs first): one program per query block: dQ = s dS K, the row sums
  r_i = sum_j dS_ij (zero in exact arithmetic) and, per query, the coefficient's gradient
  sum_j (dS_ij - P_ij r_i) f(i - j). The backward recomputes P, rounding differently from the
  forward, so delta = rowsum(dO O) misses sum_j P dP by r_i ~ 1e-6 |dO||V|; f up to T^2
  multiplied that up (dh_p 30x the error of a float32 PyTorch run at T = 130, D = 128).
- :func:`attn_bwd_kv`: one program per key block, looping over query blocks, with delta + r
  (every row of its dS sums to zero again): dV = P^T dO, dK = s dS^T Q, and per key
  d b_j = s sum_i dS_ij and sum_i dS_ij (q_i . k_j + b_j [- lse_i / s]), the content scale's
  gradient (the gaussian's q.k + b ~ -||k||^2 / 2 is a large common offset; the row constant
  lse_i / s, whose sum_j dS_ij is 0, removes it; 5x smaller dh_y error at D = 128).
  Per-query and per-key partial sums are added up afterwards in torch: no atomics, so
  repeated backwards are bit-identical. MODE 1 (twicing) computes X = A^T G only; MODE 2
  uses dP = dO1 V^T - G O1^T (MODE 2 the same in dQ).
  dS = P (dP - delta), delta_i = sum_d dO_i O_i (twicing: dO1_i . O1_i - G_i . O2_i).

Written the way Triton's compiler reads them (as in Triton's fused-attention tutorial): module
constants are ``tl.constexpr(value)``, constexpr parameters are passed by name to every helper,
never through tuples. Specializations are few, so every one can be compiled by the gate
(tools/triton_gate.py): the constexprs are the tile sizes, DOT, POSITION (a position term or
none) and the pass (SECOND / MODE); causal, key bias, square vs linear f and each kernel's own
switch (STORE32, NEED) are bits of the runtime int FLAGS (see :func:`_flags`), and a dense
kernel is the banded one with w_h = T. H, T and FLAGS are not specialized on.

DOT: 0 native 16-bit tensor-core dots (fp32 accumulate); 1 fp32 "ieee"; 2 fp32 "tf32";
3 operands upcast to fp32 (the Triton interpreter multiplies bf16 bit patterns in tl.dot,
triton#11584, so bf16 is upcast there). On a GPU only 0 and 2 run (triton_op's precision
policy); 1 and 3 are the interpreter's. Written for Triton 3.6-3.9 (plain pointer loads with
masks; no tensor descriptors). Strides are passed for q, k, v; the other (B, H, T, d) tensors
are contiguous, the (B, H, T) ones contiguous float32.
"""

from __future__ import annotations

import triton
import triton.language as tl

LN2 = tl.constexpr(0.6931471805599453)
NEG = tl.constexpr(-1.0e30)  # masked logit: finite, so a fully masked block gives no NaN


@triton.jit
def _dot(a, b, DOT: tl.constexpr):
    if DOT == 0:
        return tl.dot(a, b)
    elif DOT == 2:
        return tl.dot(a, b, input_precision="tf32")
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")


@triton.jit
def _floor(x, step):
    return (tl.maximum(x, 0) // step) * step


@triton.jit
def _ceil(x, step):
    return ((tl.maximum(x, 0) + step - 1) // step) * step


@triton.jit
def _distance(rows, cols, square):
    """f(i - j) for a (rows, cols) grid: (i - j)^2 (square) or |i - j|."""
    d = (rows - cols).to(tl.float32)
    return tl.where(square, d * d, tl.abs(d))


@triton.jit
def _keep(rows, cols, T, w, causal):
    """Which (row, col) pairs are real: both < T, causal j <= i, band |i - j| <= w."""
    keep = (rows < T) & (cols < T) & (tl.abs(rows - cols) <= w)
    return keep & ((rows >= cols) | (causal == 0))


@triton.jit
def _head(S, C, W, h, POSITION: tl.constexpr):
    """(content scale, position coefficient, both in log2 units, and band) of head h."""
    s2 = tl.load(S + h)
    c2 = 0.0
    if POSITION:
        c2 = tl.load(C + h)
    return s2, c2, tl.load(W + h)


@triton.jit
def _ranges(start, BLOCK, T, w, STEP: tl.constexpr):
    """Ranges on the other axis for a block [start, start + BLOCK) of this axis, STEP-aligned:
    lo..a (band edge, masked), a..b (interior, no mask), b..hi (band edge or ragged T, masked).

    Two-sided: |this - other| <= w (a dense kernel has w = T). Callers replace the causal
    side (the diagonal blocks).
    """
    lo = _floor(start - w, STEP)
    a = tl.minimum(_ceil(start + BLOCK - 1 - w, STEP), T)
    b = _floor(tl.minimum(start + w + 1, T), STEP)
    hi = tl.minimum(start + BLOCK + w, T)
    return lo, a, b, hi


@triton.jit
def _flags(FLAGS):
    """The runtime flag word (FLAG_* in triton_op): causal, key bias, square distance, and the
    kernel's own bit (STORE32 in the forward, NEED in the backward)."""
    return (FLAGS & 1) != 0, (FLAGS & 2) != 0, (FLAGS & 4) != 0, (FLAGS & 8) != 0


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, lse2, K, V, KB, offs_m, lo, hi, s2, c2, w, T, D, DV,
               stride_kt, stride_kd, stride_vt, stride_vd, causal, has_kb, square,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
               POSITION: tl.constexpr, SECOND: tl.constexpr, MASKED: tl.constexpr,
               DOT: tl.constexpr):  # fmt: skip
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kt = tl.load(
            K + offs_n[None, :] * stride_kt + offs_d[:, None] * stride_kd,
            mask=(offs_n[None, :] < T) & (offs_d[:, None] < D),
            other=0.0,
        )
        qk = _dot(q, kt, DOT=DOT) * s2
        if has_kb:
            qk += tl.load(KB + offs_n, mask=offs_n < T, other=0.0)[None, :]
        if POSITION:
            qk -= c2 * _distance(offs_m[:, None], offs_n[None, :], square)
        if MASKED:
            keep = _keep(offs_m[:, None], offs_n[None, :], T, w, causal)
            qk = tl.where(keep, qk, NEG)
        if SECOND:
            p = tl.math.exp2(qk - lse2[:, None])
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            p = tl.math.exp2(qk - m_new[:, None])
            if MASKED:
                p = tl.where(keep, p, 0.0)
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            m_i = m_new
        v = tl.load(
            V + offs_n[:, None] * stride_vt + offs_dv[None, :] * stride_vd,
            mask=(offs_n[:, None] < T) & (offs_dv[None, :] < DV),
            other=0.0,
        )
        acc += _dot(p.to(v.dtype), v, DOT=DOT)
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["H", "T", "FLAGS"])
def attn_fwd(Q, K, V, S, KB, C, W, O, O32, O1F, LSE,
             stride_qb, stride_qh, stride_qt, stride_qd,
             stride_kb, stride_kh, stride_kt, stride_kd,
             stride_vb, stride_vh, stride_vt, stride_vd,
             H, T, D, DV, FLAGS,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
             BLOCK_DV: tl.constexpr, POSITION: tl.constexpr, SECOND: tl.constexpr,
             DOT: tl.constexpr):  # fmt: skip
    """One query block of one (batch, head): O (FIRST) or out = 2 O1 - A O1 (SECOND: V = O1 in
    the input dtype for the dots, O1F = O1 in float32 for the epilogue); with STORE32 also the
    unrounded result into O32 (float32)."""
    causal, has_kb, square, store32 = _flags(FLAGS)
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    s2, c2, w = _head(S, C, W, h, POSITION=POSITION)
    Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    K += b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    V += b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    KB += bh.to(tl.int64) * T
    LSE += bh.to(tl.int64) * T
    O += bh.to(tl.int64) * T * DV
    O32 += bh.to(tl.int64) * T * DV
    O1F += bh.to(tl.int64) * T * DV
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < T
    q = tl.load(
        Q + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd,
        mask=row_ok[:, None] & (offs_d[None, :] < D),
        other=0.0,
    )
    lse2 = tl.zeros([BLOCK_M], dtype=tl.float32)
    if SECOND:
        lse2 = tl.load(LSE + offs_m, mask=row_ok, other=0.0)
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) + NEG
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    lo, a, b_end, hi = _ranges(start_m, BLOCK_M, T, w, STEP=BLOCK_N)
    if causal:  # keys j <= i: the diagonal blocks are the masked right end
        hi = tl.minimum(start_m + BLOCK_M, T)
        b_end = _floor(start_m, BLOCK_N)
        lo = tl.minimum(lo, b_end)
        a = tl.minimum(a, b_end)
    b_end = tl.maximum(a, b_end)
    # Three key ranges: band edge (masked), interior (no mask), diagonal / ragged end (masked).
    # Constexprs go to the helper by name: the compiler sees them only as direct arguments.
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, lse2, K, V, KB, offs_m, lo, a, s2, c2, w, T, D,
                               DV, stride_kt, stride_kd, stride_vt, stride_vd, causal, has_kb,
                               square, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV,
                               POSITION=POSITION, SECOND=SECOND, MASKED=True,
                               DOT=DOT)  # fmt: skip
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, lse2, K, V, KB, offs_m, a, b_end, s2, c2, w, T,
                               D, DV, stride_kt, stride_kd, stride_vt, stride_vd, causal, has_kb,
                               square, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV,
                               POSITION=POSITION, SECOND=SECOND, MASKED=False,
                               DOT=DOT)  # fmt: skip
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, lse2, K, V, KB, offs_m, b_end, hi, s2, c2, w, T,
                               D, DV, stride_kt, stride_kd, stride_vt, stride_vd, causal, has_kb,
                               square, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV,
                               POSITION=POSITION, SECOND=SECOND, MASKED=True,
                               DOT=DOT)  # fmt: skip
    out_mask = row_ok[:, None] & (offs_dv[None, :] < DV)
    if SECOND:  # out = 2 O1 - O2, with O1 unrounded
        o1 = tl.load(O1F + offs_m[:, None] * DV + offs_dv[None, :], mask=out_mask, other=0.0)
        out = 2.0 * o1 - acc
    else:
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # only rows past T, which are not stored
        out = acc / l_safe[:, None]
        tl.store(LSE + offs_m, m_i + tl.math.log2(l_safe), mask=row_ok)  # base 2
    tl.store(O + offs_m[:, None] * DV + offs_dv[None, :], out.to(O.dtype.element_ty),
             mask=out_mask)  # fmt: skip
    if store32:
        tl.store(O32 + offs_m[:, None] * DV + offs_dv[None, :], out, mask=out_mask)


@triton.jit
def _bwd_kv_inner(dk, dv, dkb, dsk, k, v, v2, kb2, Q, DO, DO2, LSE, DELTA, offs_n, lo, hi,
                  s2, c2, w, T, D, DV, stride_qt, stride_qd, causal, has_kb, square, need_s,
                  BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                  POSITION: tl.constexpr, MODE: tl.constexpr, MASKED: tl.constexpr,
                  DOT: tl.constexpr):  # fmt: skip
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < T
        qt = tl.load(
            Q + offs_m[None, :] * stride_qt + offs_d[:, None] * stride_qd,
            mask=row_ok[None, :] & (offs_d[:, None] < D),
            other=0.0,
        )
        lse2 = tl.load(LSE + offs_m, mask=row_ok, other=0.0)
        raw = _dot(k, qt, DOT=DOT)  # (BLOCK_N, BLOCK_M): k_j . q_i
        st = raw * s2 + kb2[:, None]  # content logits s (q.k + b), transposed, in log2 units
        if POSITION:
            st -= c2 * _distance(offs_m[None, :], offs_n[:, None], square)
        pt = tl.math.exp2(st - lse2[None, :])
        if MASKED:
            pt = tl.where(_keep(offs_m[None, :], offs_n[:, None], T, w, causal), pt, 0.0)
        do_mask = row_ok[:, None] & (offs_dv[None, :] < DV)
        do = tl.load(DO + offs_m[:, None] * DV + offs_dv[None, :], mask=do_mask, other=0.0)
        dv += _dot(pt.to(do.dtype), do, DOT=DOT)
        if MODE != 1:
            dpt = _dot(v, tl.trans(do), DOT=DOT)
            if MODE == 2:
                do2 = tl.load(DO2 + offs_m[:, None] * DV + offs_dv[None, :], mask=do_mask,
                              other=0.0)  # fmt: skip
                dpt -= _dot(v2, tl.trans(do2), DOT=DOT)
            delta = tl.load(DELTA + offs_m, mask=row_ok, other=0.0)
            dst = pt * (dpt - delta[None, :])
            dk += _dot(dst.to(qt.dtype), tl.trans(qt), DOT=DOT)
            if has_kb:
                dkb += tl.sum(dst, 1)
            if need_s:
                if has_kb:  # q.k + b - lse_i / s: the row constant's sum_j dS_ij is 0, and
                    # without it the gaussian's q.k + b ~ -||k||^2 / 2 is a large common offset
                    raw = raw + (kb2[:, None] - lse2[None, :]) / s2
                dsk += tl.sum(dst * raw, 1).to(tl.float64)
    return dk, dv, dkb, dsk


@triton.jit(do_not_specialize=["H", "T", "FLAGS"])
def attn_bwd_kv(Q, K, V, S, KB, C, W, LSE, DELTA, DO, V2, DO2, DK, DV_OUT, DKB, DSK,
                stride_qb, stride_qh, stride_qt, stride_qd,
                stride_kb, stride_kh, stride_kt, stride_kd,
                stride_vb, stride_vh, stride_vt, stride_vd,
                H, T, D, DV, FLAGS,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_DV: tl.constexpr, POSITION: tl.constexpr, MODE: tl.constexpr,
                DOT: tl.constexpr):  # fmt: skip
    """One key block of one (batch, head): dK, dV (or X), and per key d b_j = sum_i dS_ij and
    (NEED) sum_i dS_ij q_i . k_j (the content scale's gradient)."""
    causal, has_kb, square, need_s = _flags(FLAGS)
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    s2, c2, w = _head(S, C, W, h, POSITION=POSITION)
    Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    K += b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    V += b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    row = bh.to(tl.int64) * T
    KB += row
    LSE += row
    DELTA += row
    DKB += row
    DSK += row
    DO += row * DV
    V2 += row * DV
    DO2 += row * DV
    DK += row * D
    DV_OUT += row * DV
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    col_ok = offs_n < T
    k = tl.load(K + offs_n[:, None] * stride_kt + offs_d[None, :] * stride_kd,
                mask=col_ok[:, None] & (offs_d[None, :] < D), other=0.0)  # fmt: skip
    v_mask = col_ok[:, None] & (offs_dv[None, :] < DV)
    v = tl.load(V + offs_n[:, None] * stride_vt + offs_dv[None, :] * stride_vd,
                mask=v_mask, other=0.0)  # fmt: skip
    v2 = v
    if MODE == 2:
        v2 = tl.load(V2 + offs_n[:, None] * DV + offs_dv[None, :], mask=v_mask, other=0.0)
    kb2 = tl.zeros([BLOCK_N], dtype=tl.float32)
    if has_kb:
        kb2 = tl.load(KB + offs_n, mask=col_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    dkb = tl.zeros([BLOCK_N], dtype=tl.float32)
    dsk = tl.zeros([BLOCK_N], dtype=tl.float64)
    lo, a, b_end, hi = _ranges(start_n, BLOCK_N, T, w, STEP=BLOCK_M)
    if causal:  # queries i >= j: the diagonal blocks are the masked left end
        lo = _floor(start_n, BLOCK_M)
        a = tl.maximum(_ceil(start_n + BLOCK_N - 1, BLOCK_M), lo)
        a = tl.minimum(a, hi)
    else:
        ragged = start_n + BLOCK_N > T  # keys past T in this block: mask every query block
        a = tl.where(ragged, lo, a)
        b_end = tl.where(ragged, lo, b_end)
    b_end = tl.maximum(a, b_end)
    dk, dv, dkb, dsk = _bwd_kv_inner(dk, dv, dkb, dsk, k, v, v2, kb2, Q, DO, DO2, LSE, DELTA,
                                     offs_n, lo, a, s2, c2, w, T, D, DV, stride_qt, stride_qd,
                                     causal, has_kb, square, need_s, BLOCK_M=BLOCK_M,
                                     BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV, POSITION=POSITION,
                                     MODE=MODE, MASKED=True, DOT=DOT)  # fmt: skip
    dk, dv, dkb, dsk = _bwd_kv_inner(dk, dv, dkb, dsk, k, v, v2, kb2, Q, DO, DO2, LSE, DELTA,
                                     offs_n, a, b_end, s2, c2, w, T, D, DV, stride_qt, stride_qd,
                                     causal, has_kb, square, need_s, BLOCK_M=BLOCK_M,
                                     BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV, POSITION=POSITION,
                                     MODE=MODE, MASKED=False, DOT=DOT)  # fmt: skip
    dk, dv, dkb, dsk = _bwd_kv_inner(dk, dv, dkb, dsk, k, v, v2, kb2, Q, DO, DO2, LSE, DELTA,
                                     offs_n, b_end, hi, s2, c2, w, T, D, DV, stride_qt, stride_qd,
                                     causal, has_kb, square, need_s, BLOCK_M=BLOCK_M,
                                     BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV, POSITION=POSITION,
                                     MODE=MODE, MASKED=True, DOT=DOT)  # fmt: skip
    tl.store(DV_OUT + offs_n[:, None] * DV + offs_dv[None, :],
             dv.to(DV_OUT.dtype.element_ty), mask=v_mask)  # fmt: skip
    if MODE != 1:
        s = s2 * LN2
        tl.store(DK + offs_n[:, None] * D + offs_d[None, :], (dk * s).to(DK.dtype.element_ty),
                 mask=col_ok[:, None] & (offs_d[None, :] < D))  # fmt: skip
        if has_kb:  # d b_j = s sum_i dS_ij
            tl.store(DKB + offs_n, dkb * s, mask=col_ok)
        if need_s:
            tl.store(DSK + offs_n, dsk, mask=col_ok)


@triton.jit
def _bwd_q_inner(dq, rs, dc, pf, q, do, do2, lse2, delta, K, V, V2, KB, offs_m, lo, hi, s2, c2,
                 w, T, D, DV, stride_kt, stride_kd, stride_vt, stride_vd, causal, has_kb, square,
                 need_c, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                 POSITION: tl.constexpr, MODE: tl.constexpr, MASKED: tl.constexpr,
                 DOT: tl.constexpr):  # fmt: skip
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < T
        kt = tl.load(K + offs_n[None, :] * stride_kt + offs_d[:, None] * stride_kd,
                     mask=col_ok[None, :] & (offs_d[:, None] < D), other=0.0)  # fmt: skip
        vt_mask = col_ok[None, :] & (offs_dv[:, None] < DV)
        vt = tl.load(V + offs_n[None, :] * stride_vt + offs_dv[:, None] * stride_vd,
                     mask=vt_mask, other=0.0)  # fmt: skip
        qk = _dot(q, kt, DOT=DOT) * s2
        if has_kb:
            qk += tl.load(KB + offs_n, mask=col_ok, other=0.0)[None, :]
        if POSITION:
            qk -= c2 * _distance(offs_m[:, None], offs_n[None, :], square)
        p = tl.math.exp2(qk - lse2[:, None])
        if MASKED:
            p = tl.where(_keep(offs_m[:, None], offs_n[None, :], T, w, causal), p, 0.0)
        dp = _dot(do, vt, DOT=DOT)
        if MODE == 2:
            v2t = tl.load(V2 + offs_n[None, :] * DV + offs_dv[:, None], mask=vt_mask, other=0.0)
            dp -= _dot(do2, v2t, DOT=DOT)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(kt.dtype), tl.trans(kt), DOT=DOT)
        rs += tl.sum(ds, 1)
        if POSITION:
            if need_c:  # f again (two ALU ops) rather than a tile kept live across the dots
                f = _distance(offs_m[:, None], offs_n[None, :], square)
                dc += tl.sum(ds * f, 1).to(tl.float64)
                pf += tl.sum(p * f, 1).to(tl.float64)
    return dq, rs, dc, pf


@triton.jit(do_not_specialize=["H", "T", "FLAGS"])
def attn_bwd_q(Q, K, V, S, KB, C, W, LSE, DELTA, DO, V2, DO2, DQ, RS, DC,
               stride_qb, stride_qh, stride_qt, stride_qd,
               stride_kb, stride_kh, stride_kt, stride_kd,
               stride_vb, stride_vh, stride_vt, stride_vd,
               H, T, D, DV, FLAGS,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
               BLOCK_DV: tl.constexpr, POSITION: tl.constexpr, MODE: tl.constexpr,
               DOT: tl.constexpr):  # fmt: skip
    """One query block of one (batch, head): dQ, the row sums sum_j dS_ij into RS, and
    (NEED) per query sum_j dS_ij f(i - j), the coefficient's gradient, into DC (float64)."""
    causal, has_kb, square, need_c = _flags(FLAGS)
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    s2, c2, w = _head(S, C, W, h, POSITION=POSITION)
    Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    K += b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    V += b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    row = bh.to(tl.int64) * T
    KB += row
    LSE += row
    DELTA += row
    DO += row * DV
    V2 += row * DV
    DO2 += row * DV
    DQ += row * D
    RS += row
    DC += row
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < T
    q = tl.load(Q + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)  # fmt: skip
    do_mask = row_ok[:, None] & (offs_dv[None, :] < DV)
    do = tl.load(DO + offs_m[:, None] * DV + offs_dv[None, :], mask=do_mask, other=0.0)
    do2 = do
    if MODE == 2:
        do2 = tl.load(DO2 + offs_m[:, None] * DV + offs_dv[None, :], mask=do_mask, other=0.0)
    lse2 = tl.load(LSE + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    rs = tl.zeros([BLOCK_M], dtype=tl.float32)
    dc = tl.zeros([BLOCK_M], dtype=tl.float64)  # sums of terms ~ (i - j)^2: float64 across blocks
    pf = tl.zeros([BLOCK_M], dtype=tl.float64)
    lo, a, b_end, hi = _ranges(start_m, BLOCK_M, T, w, STEP=BLOCK_N)
    if causal:
        hi = tl.minimum(start_m + BLOCK_M, T)
        b_end = _floor(start_m, BLOCK_N)
        lo = tl.minimum(lo, b_end)
        a = tl.minimum(a, b_end)
    b_end = tl.maximum(a, b_end)
    dq, rs, dc, pf = _bwd_q_inner(dq, rs, dc, pf, q, do, do2, lse2, delta, K, V, V2, KB, offs_m,
                                  lo, a, s2, c2, w, T, D, DV, stride_kt, stride_kd, stride_vt,
                                  stride_vd, causal, has_kb, square, need_c, BLOCK_N=BLOCK_N,
                                  BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV, POSITION=POSITION,
                                  MODE=MODE, MASKED=True, DOT=DOT)  # fmt: skip
    dq, rs, dc, pf = _bwd_q_inner(dq, rs, dc, pf, q, do, do2, lse2, delta, K, V, V2, KB, offs_m,
                                  a, b_end, s2, c2, w, T, D, DV, stride_kt, stride_kd, stride_vt,
                                  stride_vd, causal, has_kb, square, need_c, BLOCK_N=BLOCK_N,
                                  BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV, POSITION=POSITION,
                                  MODE=MODE, MASKED=False, DOT=DOT)  # fmt: skip
    dq, rs, dc, pf = _bwd_q_inner(dq, rs, dc, pf, q, do, do2, lse2, delta, K, V, V2, KB, offs_m,
                                  b_end, hi, s2, c2, w, T, D, DV, stride_kt, stride_kd, stride_vt,
                                  stride_vd, causal, has_kb, square, need_c, BLOCK_N=BLOCK_N,
                                  BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV, POSITION=POSITION,
                                  MODE=MODE, MASKED=True, DOT=DOT)  # fmt: skip
    tl.store(RS + offs_m, rs, mask=row_ok)
    if need_c:  # sum_j (dS_ij - P_ij r_i) f(i - j): the row's dS made to sum to 0
        tl.store(DC + offs_m, dc - rs.to(tl.float64) * pf, mask=row_ok)
    tl.store(DQ + offs_m[:, None] * D + offs_d[None, :], (dq * (s2 * LN2)).to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d[None, :] < D))  # fmt: skip
