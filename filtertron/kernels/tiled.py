"""impl="tiled": the tiled attention engine, plain PyTorch ops over (bq x bq) tiles, as a custom op.

Runs any :class:`~filtertron.kernels.description.Kernel` (CPU and, slowly, CUDA), exact in the
bias (two extra head dimensions for the positions would instead lose 1e-5..1e-3 in fp32 to
cancellation for h_p <= 16 at T = 1024):

    logit = s_h (q_i . k_j + b_j) - c_h f(i - j)      f = (i - j)^2 or |i - j|
    forward: online softmax per query block (flash style), keeps lse;  out = A V
    backward: P = exp(logit - lse) recomputed per tile; dS = P * (dP - delta)

Twicing shares every tile between both passes: forward (query blocks ascending, diagonal
last) [O1 | O2]_b += P_bc [V | O1]_c; backward (descending) X = A^T G is complete for block b
after its diagonal, then dO1 = 2G - X, dV += P^T dO1, dS = P * ([dO1, -G] . [V, O1] - delta):
7 tile matmuls instead of the 10 of two passes through autograd. Plain causal softmax twicing
on CPU runs its forward as two fused SDPA passes (their lse is one). Causal diagonal tiles go
as three half-size pieces in the backward. With a band, tiles no head's band reaches are
skipped and the rest masked token by token (:mod:`filtertron.kernels.tiles`). Two-sided
twicing needs O1 complete before O2 starts: two single passes.

On CPU the (batch, head) rows are split over the threads, one single-threaded chunk per Python
thread (see :func:`_split`). 16-bit inputs are computed in float32. The forward and backward
are the custom ops ``filtertron::tiled`` / ``filtertron::tiled_backward``
(:mod:`filtertron.kernels.ops`), so ``torch.compile`` compiles around them.
Shapes: q, k (B, H, T, D), v (B, H, T, Dv); scale, coef, band (H,); key bias (B, H, T).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from filtertron.kernels import ops
from filtertron.kernels.description import Kernel, param_dtype
from filtertron.kernels.tiles import Plan, TileSpec

BLOCK = 128
# SDPA's fused CPU kernel, called directly because it also returns the lse the backward needs.
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _tiled_forward(plan: Plan, qa, ka, va, coef, Dq: int, Dv: int):
    """Online-softmax forward over tiles (flash style); fills va's O1 columns when twicing.

    Returns out (nb, H*B, bq, Dv or 2 Dv) = O or [O1 | O2], and lse (nb, H*B, bq, 1).
    """
    spec, HB, bq = plan.spec, plan.H * plan.B, plan.bq
    qt, kt, vt = qa[..., :Dq], ka[..., :Dq], va[..., : (2 if spec.twice else 1) * Dv]
    out = va.new_zeros(plan.nb, HB, bq, vt.shape[-1])
    lse = va.new_empty(plan.nb, HB, bq, 1)
    for b in range(plan.nb):
        m = va.new_full((HB, bq, 1), float("-inf"))
        l = va.new_zeros(HB, bq, 1)
        acc = out[b]
        for c, n in plan.keys(b, diag_last=spec.twice):
            L = torch.bmm(qt[b, :n], kt[c, :n].transpose(1, 2))
            plan.add_bias(L, b, c, coef, n)
            m_new = torch.maximum(m[:n], L.amax(-1, keepdim=True))
            alpha = (m[:n] - m_new).exp_()
            P = plan.exp_(L.sub_(m_new), b, c)
            l[:n] = l[:n] * alpha + P.sum(-1, keepdim=True)
            m[:n] = m_new
            acc[:n] *= alpha
            if spec.twice and c == b:  # O1_b is final now; O2_b also needs P_bb O1_b
                acc[..., :Dv] += torch.bmm(P, vt[b, :, :, :Dv])
                va[b, :, :, Dv : 2 * Dv] = acc[..., :Dv] / l
                acc[..., Dv:] += torch.bmm(P, va[b, :, :, Dv : 2 * Dv])
            else:
                acc[:n].baddbmm_(P, vt[c, :n])
        acc /= l
        lse[b] = m + l.log()
    return out, lse


def _forward_chunk(q, k, kb, coef, v, scale, spec: TileSpec, keep: bool):
    """Forward of one chunk of (batch, head) rows: out (B, H, T, Dv), lse (B, H, T), o1."""
    B, H, T, D = q.shape
    Dv, Dq = v.shape[-1], D + (kb is not None)
    plain = kb is None and coef is None and spec.twice and spec.causal and Dv == D
    if plain and _FLASH_CPU is not None and q.device.type == "cpu":
        s = float(scale[0])  # plain softmax: one scale for every head
        o1, lse = _FLASH_CPU(q, k, v, is_causal=True, scale=s)
        o2, _ = _FLASH_CPU(q, k, o1, is_causal=True, scale=s)  # same logits and lse
        return torch.lerp(o2, o1, 2.0), lse, o1
    plan = Plan(B, H, T, spec, q.device)
    qa = plan.pack(q, spare=1 + (kb is not None), scale=scale)
    ka = plan.pack(k, kb, spare=1) if kb is not None else plan.pack(k, spare=1)
    va = plan.pack(v, spare=Dv + 1 if spec.twice else 1)
    if kb is not None:
        _scale_column(plan, qa, D, scale)
    coefs = None if coef is None else plan.order(coef)
    out, lse = _tiled_forward(plan, qa, ka, va, coefs, Dq, Dv)
    o1 = None
    if spec.twice:  # O1 is kept in va, O2 in out's second half
        o1 = va[..., Dv : 2 * Dv]
        final = plan.untile(2 * o1 - out[..., Dv:])
        o1 = plan.untile(o1) if keep else None
    else:
        final = plan.untile(out)
    return final, plan.untile(lse).squeeze(-1) if keep else None, o1


def _scale_column(plan: Plan, qa: Tensor, D: int, scale: Tensor) -> None:
    """qa's column D = s_h per (head, batch) row, so that qa . ka adds s_h b_j."""
    rows = qa.view(plan.nb, plan.H, plan.B, plan.bq, -1)
    rows[..., D] = plan.order(scale).to(qa.dtype)[None, :, None, None]


_local = threading.local()


def _scratch(name: str, like: Tensor, shape, zero: bool = False) -> Tensor:
    """A per-thread buffer reused across backward calls; the backward's temporaries never leave.

    Fresh pages cost a page fault each: 8.6K faults (about 10 ms of 250) per twicing step at
    B=4 H=8 T=1024 D=64 before, 4.6K after. Only the latest shape per name is kept.
    """
    bufs = _local.__dict__.setdefault("bufs", {})
    buf = bufs.get(name)
    if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
        buf = bufs[name] = like.new_empty(shape)
    return buf.zero_() if zero else buf


def _acc(dst: Tensor, a: Tensor, b: Tensor, first: bool = False) -> None:
    """dst (+)= a @ b; in place when dst is a whole tile (baddbmm_ on a strided view is slow)."""
    if first:
        torch.bmm(a, b, out=dst) if dst.is_contiguous() else dst.copy_(torch.bmm(a, b))
    elif dst.is_contiguous():
        dst.baddbmm_(a, b)
    else:
        dst.add_(torch.bmm(a, b))


def _backward_chunk(g, q, k, kb, coef, v, scale, out, lse, o1, spec: TileSpec, need_coef: bool):
    """Backward of one chunk: grads of (q, k, key bias, coef, v)."""
    B, H, T, Dv = g.shape
    D = q.shape[-1]
    Dq = D + (kb is not None)
    plan = Plan(B, H, T, spec, g.device)
    nb, HB, bq = plan.nb, H * B, plan.bq
    # Operands as tiles: qa = [s q, (s), -lse], ka = [k, (b), 1], va = [V, (O1), 1], so that
    # qa . ka = logit - lse and [dO, -delta] . va = dP - delta are single matmuls.
    qa = plan.pack(q, spare=1 + (kb is not None), scale=scale)
    if kb is not None:
        _scale_column(plan, qa, D, scale)
    qa[..., Dq:] = plan.pack(lse).neg_()
    ka = plan.pack(k, kb, spare=1) if kb is not None else plan.pack(k, spare=1)
    ka[..., Dq] = 1.0
    va = plan.pack(v, o1, spare=1) if spec.twice else plan.pack(v, spare=1)
    va[..., -1] = 1.0
    coefs = None if coef is None else plan.order(coef)
    gt = plan.pack(g, out=_scratch("g", g, (nb, HB, bq, Dv)))
    qt, kt = qa[..., :Dq], ka[..., :Dq]
    if spec.twice:
        o1t, o2 = va[..., Dv : 2 * Dv], plan.pack(torch.lerp(out, o1, 2.0))  # O2 = 2 O1 - out
        X = _scratch("X", g, gt.shape, zero=True)  # A^T G; rows of block b done after its diagonal
        dsrc, gcat = _scratch("dO1", g, gt[0].shape), _scratch("gcat", g, (HB, bq, 2 * Dv + 1))
    else:
        delta = (gt * plan.pack(out)).sum(-1, keepdim=True)
    dq, dk = _scratch("dq", g, qt.shape), _scratch("dk", g, kt.shape, zero=True)
    dv = _scratch("dv", g, gt.shape, zero=True)
    dcoef = g.new_zeros(H, dtype=torch.float64) if need_coef else None  # sums over many tiles
    for b in reversed(range(nb)) if spec.twice else range(nb):
        gb = gt[b]
        if not spec.twice:
            gcat, dsrc = torch.cat([gb, -delta[b]], -1), gb
        for c, (rs, cs), n in plan.steps(b):
            P = torch.bmm(qa[b, :n, rs], ka[c, :n, cs].transpose(1, 2))  # logit - lse
            plan.add_bias(P, b, c, coefs, n, (rs, cs))
            P = plan.exp_(P, b, c, (rs, cs))
            Pt = P.transpose(1, 2)
            square = c == b and rs == cs  # a diagonal piece: its rows are new here
            if spec.twice:
                _acc(X[c, :n, cs], Pt, gb[:n, rs])
                if square:  # X rows rs complete: dO1 = 2 G - X, delta, [dO1, -G, -delta]
                    dsrc[:, rs] = 2 * gb[:, rs] - X[b, :, rs]
                    dl = (dsrc[:, rs] * o1t[b, :, rs] - gb[:, rs] * o2[b, :, rs]).sum(-1)
                    gcat[:, rs] = torch.cat([dsrc[:, rs], -gb[:, rs], -dl[..., None]], -1)
            _acc(dv[c, :n, cs], Pt, dsrc[:n, rs])
            dS = torch.bmm(gcat[:n, rs], va[c, :n, cs].transpose(1, 2)).mul_(P)
            _acc(dq[b, :n, rs], dS, kt[c, :n, cs], first=square)
            _acc(dk[c, :n, cs], dS.transpose(1, 2), qt[b, :n, rs])
            if need_coef:  # d logit / d c_h = -f, summed per head over batch and tile
                f = plan.f(b, c, dS.dtype)[rs, cs].reshape(-1)
                fs = torch.matmul(dS.view(n // B, B, -1), f)
                dcoef[: n // B] -= fs.sum(-1, dtype=torch.float64)
    if dcoef is not None:
        dcoef = (dcoef if plan.perm is None else dcoef[plan.inv]).to(g.dtype)
    dkb = dsb = None
    if kb is not None:  # d b_j = s sum_i dS_ij (ka's b column met qa's s column)
        dkb, dsb = plan.untile(dk[..., D:]).squeeze(-1), plan.untile(dq[..., D:]).squeeze(-1)
    d_q, d_k = plan.untile(dq[..., :D], scale=scale), plan.untile(dk[..., :D])  # qa holds s q
    return d_q, d_k, dkb, dcoef, plan.untile(dv), dsb


@functools.cache
def _pool(workers: int, pid: int) -> ThreadPoolExecutor:
    """Worker threads of this process (keyed by pid: a forked child has none of them)."""
    return ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,))


def _split(B: int, H: int, band, device: torch.device) -> list[tuple[slice, list | None]]:
    """(batch slice, heads or None for all) per chunk: one independent chunk per CPU thread.

    Each chunk runs single-threaded in its own Python thread (torch ops release the GIL), so
    the hundreds of small per-tile ops pay no OpenMP barrier each, which on a loaded machine
    costs a scheduler slice per op. Batches split first; else heads, dealt out by band so
    every chunk gets the same mix of local and global heads.
    """
    n = torch.get_num_threads() if device.type == "cpu" else 1
    if n <= 1 or B * H == 1:
        return [(slice(None), None)]
    if B >= n:
        return [(slice(i * B // n, (i + 1) * B // n), None) for i in range(n)]
    w = band or (0,) * H
    order = sorted(range(H), key=lambda h: -w[h])
    return [(slice(None), sorted(order[i::n])) for i in range(min(n, H))]


def _take(x, chunk):
    """The chunk's part of a (B, H, ...) tensor, an (H,) tensor or a per-head tuple."""
    bs, hs = chunk
    if x is None or hs is None and isinstance(x, tuple):
        return x
    if isinstance(x, tuple):
        return tuple(x[h] for h in hs)
    if x.dim() == 1:
        return x if hs is None else x[hs]
    return x[bs] if hs is None else x[bs][:, hs]


def _join(parts: list, chunks, B: int, H: int):
    """Inverse of :func:`_take`; per-head (H,) gradients of batch chunks add up."""
    if parts[0] is None or len(parts) == 1:
        return parts[0]
    if chunks[0][1] is None:
        return torch.cat(parts, 0) if parts[0].dim() > 1 else torch.stack(parts).sum(0)
    out = parts[0].new_empty((B, H, *parts[0].shape[2:]) if parts[0].dim() > 1 else (H,))
    for (_, hs), part in zip(chunks, parts, strict=True):
        out[(slice(None), hs) if part.dim() > 1 else hs] = part
    return out


def _no_autocast() -> contextlib.ExitStack:
    """Autocast off for every device type that has it on in this thread."""
    stack = contextlib.ExitStack()
    for device in ("cpu", "cuda"):
        if torch.is_autocast_enabled(device):
            stack.enter_context(torch.autocast(device, enabled=False))
    return stack


def _map(fn, args: list) -> list:
    """fn(*a) for a in args, in the thread pool if there are several."""
    inference = torch.is_inference_mode_enabled()  # thread-local: carry the caller's mode over

    def call(a):
        # Autocast is thread-local too: pool threads run without it, so the caller's thread
        # must as well (else a one-chunk call under bf16 autocast mixes dtypes in its matmuls).
        with torch.inference_mode(inference), torch.no_grad(), _no_autocast():
            return fn(*a)

    if len(args) == 1:
        return [call(args[0])]
    return list(_pool(min(len(args), torch.get_num_threads()), os.getpid()).map(call, args))


def _spec(q, band, position, causal, twice, block) -> TileSpec:
    T = q.shape[-2]
    widths = None
    if band is not None:
        widths = tuple(int(w) for w in band.tolist())  # host copy: the engine plans on the host
        widths = widths if min(widths) < T - 1 else None  # every band covers T: dense
    block = block or BLOCK
    block = min(block, max(16, 1 << (T - 1).bit_length()))  # short sequences: one tile
    return TileSpec(None if position == "none" else position, causal, twice, block, widths)


def _forward(q, k, v, scale, key_bias, coef, band, position, causal, twice, block, keep):
    dtype, cd = q.dtype, param_dtype(q.dtype)
    q, k, v = q.to(cd), k.to(cd), v.to(cd)  # 16-bit exp and lse would lose the kernel
    spec = _spec(q, band, position, causal, twice, block)
    B, H = q.shape[:2]
    chunks = _split(B, H, spec.band, q.device)
    args = [
        (*(_take(t, c) for t in (q, k, key_bias, coef, v, scale)), _chunk_spec(spec, c), keep)
        for c in chunks
    ]
    outs, lses, o1s = zip(*_map(_forward_chunk, args), strict=True)
    out = _join(list(outs), chunks, B, H)
    lse = _join(list(lses), chunks, B, H) if keep else ops._empty(q)
    o1 = _join(list(o1s), chunks, B, H) if keep and twice else ops._empty(q)
    o32 = out if keep and cd != dtype else ops._empty(q)
    return out.to(dtype), lse, o1, o32


def _chunk_spec(spec: TileSpec, chunk) -> TileSpec:
    return spec._replace(band=_take(spec.band, chunk))


def _backward(
    g, q, k, v, scale, key_bias, coef, band, out, lse, o1, position, causal, twice, block,
    need_scale, need,
):  # fmt: skip
    dtype, cd = q.dtype, param_dtype(q.dtype)
    g, q, k, v, out = (t.to(cd) for t in (g, q, k, v, out))
    spec = _spec(q, band, position, causal, twice, block)
    B, H = q.shape[:2]
    chunks = _split(B, H, spec.band, q.device)
    o1 = o1 if twice else None
    parts = (g, q, k, key_bias, coef, v, scale, out, lse, o1)
    args = [(*(_take(t, c) for t in parts), _chunk_spec(spec, c), need) for c in chunks]
    dq, dk, dkb, dcoef, dv, dsb = (
        _join(list(r), chunks, B, H) for r in zip(*_map(_backward_chunk, args), strict=True)
    )
    dkb = ops._empty(q) if dkb is None else dkb
    dcoef = ops._empty(q) if dcoef is None else dcoef
    dscale = ops._empty(q)
    if need_scale:  # sum dS_ij (q_i . k_j + b_j) = <q, dq> / s + sum_ij dS_ij b_j
        dscale = (q * dq).sum((0, 2, 3)) / scale
        dscale = dscale if dsb is None else dscale + dsb.sum((0, 2))
    return dq.to(dtype), dk.to(dtype), dv.to(dtype), dscale, dkb, dcoef


tiled_op = ops.define("tiled", _forward, _backward)


def run(kernel: Kernel, v: Tensor, twice: bool, block: int = 0) -> Tensor:
    """One call of the engine op for ``kernel`` with values ``v``; (B, H, T, Dv)."""
    q = kernel.q
    keep = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (*kernel.tensors()[:2], v, *kernel.tensors()[3:])
    )
    position = kernel.position or "none"
    args = (kernel.scale, kernel.key_bias, kernel.coef, kernel.band, position)
    return tiled_op(q, kernel.k, v, *args, kernel.causal, twice, block, keep)[0]


def attend(kernel: Kernel, block: int = 0) -> Tensor:
    """The kernel on the engine, (B, H, T, Dv); ``block`` the tile size (0: 128)."""
    if kernel.twice and not kernel.causal:  # O1 must be complete before O2 starts
        o1 = run(kernel, kernel.v, False, block)
        return 2 * o1 - run(kernel, o1, False, block)
    return run(kernel, kernel.v, kernel.twice, block)


def unsupported(kernel: Kernel) -> str | None:
    """Why the engine cannot serve ``kernel``, or None."""
    if kernel.dropout_p > 0.0:
        return "the tiled engine has no attention dropout; use impl='reference'"
    return None
