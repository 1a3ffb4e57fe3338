"""Fast CPU/GPU attention: fused SDPA for softmax, a tiled PyTorch engine for the rest.

softmax without ALiBi is ``torch.nn.functional.scaled_dot_product_attention``. Everything
with a position bias or a second pass runs on ``_TiledAttention``, an autograd Function of
plain PyTorch ops over (bq x bq) tiles, exact in the bias (two extra head dimensions for the
positions instead lose 1e-5..1e-3 in fp32 to cancellation for h_p <= 16 at T = 1024):

    logit = qs_i . k_j + kb_j - pc_h f(i - j)      f = (i - j)^2 (bilateral) or |i - j| (ALiBi)
    forward: online softmax per query block (flash style), saves lse;  out = A V
    backward: P = exp(logit - lse) recomputed per tile; dS = P * (dP - delta)

Twicing shares every tile between both passes: forward (query blocks ascending, diagonal
last) [O1 | O2]_b += P_bc [V | O1]_c; backward (descending) X = A^T G is complete for block b
after its diagonal, then dO1 = 2G - X, dV += P^T dO1, dS = P * ([dO1, -G] . [V, O1] - delta):
7 tile matmuls instead of the 10 of two SDPA passes through autograd. Plain causal softmax
twicing on CPU runs its forward as two fused SDPA passes (their lse is one). Causal diagonal
tiles go as three half-size pieces in the backward. Bilateral heads skip key tiles farther
than sqrt(60) h_p from the query block (weight < e^-30, SPEC's fast bilateral approximation,
see :func:`bilateral`); heads are sorted by window so a tile's live heads are a prefix. On CPU
the (batch, head) rows are split over the threads, one single-threaded chunk per Python thread
(see :func:`_split`). Over 600 lines because the tiled engine (plan, forward, backward, thread
split) is one unit that only makes sense read together; it could move to
filtertron/kernels/. Shapes: q, k (B, H, T, D), v (B, H, T, Dv); h_y, h_p, alibi_slopes (H,).
"""

from __future__ import annotations

import functools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from filtertron.model.attention.reference import split_content

BLOCK = 128
WINDOW = math.sqrt(60.0)  # in units of h_p: the spatial weight beyond it is below e^-30
ALIBI_WINDOW = 30.0  # in units of 1 / m_h: the ALiBi weight beyond it is below e^-30
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_FLOOR = -60.0  # shifted logits are clamped here before exp, see _Plan.exp_
_ALL = slice(None)


class _Spec(NamedTuple):
    """Static part of one engine call (hashable; not a tensor)."""

    fkind: str  # "sq" or "abs": the position function f(i - j) scaled by pc
    causal: bool
    twice: bool
    block: int
    windows: tuple[float, ...] | None  # per head, in tokens; None = no skipping
    save: bool = True  # keep tiles for a backward (False under no_grad)
    qscale: float = 1.0  # logit scale folded into the packed queries (and dq)


class _Plan:
    """Tile geometry: padding, head order (widest window first), live heads per tile."""

    def __init__(
        self, B: int, H: int, T: int, spec: _Spec, device: torch.device, biased: bool
    ) -> None:
        self.B, self.H, self.T, self.bq = B, H, T, spec.block
        self.biased = biased  # a position bias pc f(i - j) is added to every tile
        self.nb = -(-T // spec.block)
        self.device, self.spec = device, spec
        self.perm = self.inv = None
        self.live = [H] * self.nb  # live heads per block offset |b - c|
        if spec.windows is not None:
            order = sorted(range(H), key=lambda h: -spec.windows[h])
            self.perm = torch.tensor(order, device=device)
            self.inv = torch.argsort(self.perm)
            w = sorted(spec.windows, reverse=True)
            for o in range(1, self.nb):
                gap = (o - 1) * self.bq + 1  # smallest |i - j| between the two blocks
                self.live[o] = sum(1 for x in w if x >= gap)
        self.triu = torch.ones(self.bq, self.bq, dtype=torch.bool, device=device).triu(1)
        self._cache: dict[tuple, Tensor] = {}

    def pack(
        self, *parts: Tensor, spare: int = 0, scale: float = 1.0, out: Tensor | None = None
    ) -> Tensor:
        """(B, H, T, d_i) or (B, H, T) parts -> (nb, H*B, bq, sum d_i + spare) tiles.

        Parts sit side by side on the last axis (one copy each, no concatenation); heads are
        in plan order, T is zero-padded to nb * bq; the spare columns are left unset. The
        first part is multiplied by ``scale`` on the way (free: it is the same pass).
        """
        parts = [x if x.dim() == 4 else x.unsqueeze(-1) for x in parts]
        widths = [x.shape[-1] for x in parts]
        shape = (self.nb, self.H * self.B, self.bq, sum(widths) + spare)
        out = parts[0].new_empty(shape) if out is None else out
        view = out.view(self.nb, self.H, self.B, self.bq, -1)
        o = 0
        for x, w in zip(parts, widths, strict=True):
            if self.nb * self.bq != self.T:
                x = F.pad(x, (0, 0, 0, self.nb * self.bq - self.T))
            if self.perm is not None:
                x = x.index_select(1, self.perm)
            x = x.reshape(self.B, self.H, self.nb, self.bq, w).permute(2, 1, 0, 3, 4)
            torch.mul(x, scale if o == 0 else 1.0, out=view[..., o : o + w])
            o += w
        return out

    def untile(self, t: Tensor, out: Tensor | None = None, scale: float = 1.0) -> Tensor:
        """Inverse of :meth:`pack` for one part, times ``scale``: (nb, H*B, bq, d) -> (B, H, T, d).

        Written into ``out`` (contiguous (B, H, T, d)) if given, saving a copy.
        """
        t = t.view(self.nb, self.H, self.B, self.bq, -1)
        if self.inv is not None:
            t = t.index_select(1, self.inv)
        t = t.permute(2, 1, 0, 3, 4)  # (B, H, nb, bq, d)
        out = t.new_empty(self.B, self.H, self.T, t.shape[-1]) if out is None else out
        n = self.T // self.bq
        torch.mul(t[:, :, :n], scale, out=out[:, :, : n * self.bq].view(t[:, :, :n].shape))
        if n * self.bq < self.T:
            torch.mul(t[:, :, -1, : self.T - n * self.bq], scale, out=out[:, :, n * self.bq :])
        return out

    def keys(self, b: int, diag_last: bool) -> list[tuple[int, int]]:
        """(key block, live rows of the H*B batch) for query block b, skipped tiles left out."""
        cs = range(b + 1) if self.spec.causal else range(self.nb)
        out = [(c, self.live[abs(b - c)] * self.B) for c in cs if c != b]
        out = [x for x in out if x[1] > 0]
        return out + [(b, self.H * self.B)] if diag_last else [(b, self.H * self.B)] + out

    def _f(self, b: int, c: int, dtype: torch.dtype) -> Tensor:
        """(bq, bq) position function f(i - j) for the tile (query block b, key block c)."""
        key = (b - c, dtype)
        if key not in self._cache:
            r = torch.arange(self.bq, device=self.device, dtype=torch.float64)
            d = (b - c) * self.bq + r[:, None] - r[None, :]
            self._cache[key] = (d * d if self.spec.fkind == "sq" else d.abs()).to(dtype)
        return self._cache[key]

    def _mask(self, b: int, c: int, dtype: torch.dtype) -> Tensor | None:
        """(bq, bq) additive mask, -inf above the diagonal (causal) or on padded keys."""
        pad = (c + 1) * self.bq - self.T
        if not (self.spec.causal and b == c or not self.spec.causal and pad > 0):
            return None
        key = ("mask", b == c, pad, dtype)
        if key not in self._cache:
            m = torch.zeros(self.bq, self.bq, device=self.device, dtype=dtype)
            if self.spec.causal:
                m.masked_fill_(self.triu, float("-inf"))
            else:
                m[:, self.bq - pad :] = float("-inf")
            self._cache[key] = m
        return self._cache[key]

    def add_bias(self, L: Tensor, b: int, c: int, pc, n: int, sub=(_ALL, _ALL)) -> None:
        """Add -pc_h f(i - j) and the masks to raw scores (n, rows, cols), in place.

        ``sub`` = (rows, cols) slices of the tile when L covers part of it.
        """
        mask = self._mask(b, c, L.dtype)
        mask = None if mask is None else mask[sub]
        if pc is None:
            if mask is not None:
                L.add_(mask)
            return
        h = n // self.B
        bias = pc[:h, None, None, None] * -self._f(b, c, L.dtype)[sub]  # (h, 1, rows, cols)
        if mask is not None:
            bias = bias + mask
        L.view(h, self.B, *L.shape[1:]).add_(bias)

    def exp_(self, L: Tensor, b: int, c: int, sub=(_ALL, _ALL)) -> Tensor:
        """exp of (part of) a tile of shifted logits, in place, exact zeros where masked.

        torch's exp leaves its vectorised path below about -87 (or at -inf) and runs 5-30x
        slower there; masked and position-biased tiles are clamped at -60 first, which
        changes no weight visibly (e^-60 of the row maximum is below fp32 and fp64 resolution).
        """
        mask = self._mask(b, c, L.dtype)
        P = (L.clamp_min_(_FLOOR) if self.biased or mask is not None else L).exp_()
        if self.spec.causal and b == c:
            if sub[0] == sub[1]:
                P.tril_()
        elif mask is not None:
            P[..., self.T - c * self.bq :] = 0.0
        return P

    def steps(self, b: int) -> list[tuple[int, tuple[slice, slice], int]]:
        """Backward work for query block b: (key block, (rows, cols), live rows), in order.

        A causal diagonal tile goes as three half-size pieces, bottom-right first (the order
        twicing needs to complete A^T G row by row); skipping its empty top-right quarter
        saves an eighth of the diagonal's work. Then the other tiles.
        """
        HB, h = self.H * self.B, self.bq // 2
        if self.spec.causal and self.bq >= 32:
            lo, hi = slice(0, h), slice(h, self.bq)
            diag = [(b, (hi, hi), HB), (b, (hi, lo), HB), (b, (lo, lo), HB)]
        else:
            diag = [(b, (_ALL, _ALL), HB)]
        return diag + [(c, (_ALL, _ALL), n) for c, n in self.keys(b, True)[:-1]]


def _tiled_forward(plan: _Plan, qa, ka, va, pcs, Dq: int, Dv: int):
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
            plan.add_bias(L, b, c, pcs, n)
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


# SDPA's fused CPU kernel, called directly because it also returns the lse the backward needs.
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _forward_chunk(qs, k, kb, pc, v, spec: _Spec, dest: Tensor | None):
    """Forward of one chunk of (batch, head) rows: (B, H, T, Dv) out (in dest if given), saved."""
    B, H, T, D = qs.shape
    Dv, Dq = v.shape[-1], D + (kb is not None)
    plan = _Plan(B, H, T, spec, qs.device, pc is not None)
    pcs = None if pc is None else (pc if plan.perm is None else pc[plan.perm])
    # Plain causal softmax twicing on CPU: two fused SDPA passes beat the tiled forward.
    plain = kb is None and pc is None and spec.twice and spec.causal and Dv == D
    if plain and _FLASH_CPU is not None and qs.device.type == "cpu":
        o1, lse = _FLASH_CPU(qs, k, v, is_causal=True, scale=spec.qscale)
        o2, _ = _FLASH_CPU(qs, k, o1, is_causal=True, scale=spec.qscale)  # same logits and lse
        final = torch.lerp(o2, o1, 2.0, out=dest) if dest is not None else torch.lerp(o2, o1, 2.0)
        if not spec.save:
            return final, None
        qa, ka = plan.pack(qs, spare=1, scale=spec.qscale), plan.pack(k, spare=1)
        va = plan.pack(v, o1, spare=1)
        out, lse = plan.pack(o2), plan.pack(lse)
    else:
        qa = plan.pack(qs, spare=1 + (kb is not None), scale=spec.qscale)
        ka = plan.pack(k, kb, spare=1) if kb is not None else plan.pack(k, spare=1)
        va = plan.pack(v, spare=Dv + 1 if spec.twice else 1)
        if kb is not None:
            qa[..., D] = 1.0
        out, lse = _tiled_forward(plan, qa, ka, va, pcs, Dq, Dv)
        if spec.twice:  # O1 is kept in va; out keeps O2
            out = out[..., Dv:]
            final = plan.untile(2 * va[..., Dv : 2 * Dv] - out, dest)
        else:
            final = plan.untile(out, dest)
    qa[..., Dq:] = -lse
    ka[..., Dq] = 1.0
    va[..., -1] = 1.0
    return final, (qa, ka, va, out, pcs, D, Dq, pc is not None)


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


def _backward_chunk(saved, g: Tensor, spec: _Spec, need_dpc: bool, dests):
    """Backward of one chunk: grads of (qs, k, kb, pc, v), written into dests if given."""
    qa, ka, va, out, pcs, D, Dq, biased = saved
    B, H, T, Dv = g.shape
    nb, HB, bq, _ = qa.shape
    plan = _Plan(B, H, T, spec, g.device, biased)
    gt = plan.pack(g, out=_scratch("g", g, (nb, HB, bq, Dv)))
    qt, kt = qa[..., :Dq], ka[..., :Dq]
    if spec.twice:
        o1, o2 = va[..., Dv : 2 * Dv], out
        X = _scratch("X", g, gt.shape, zero=True)  # A^T G; rows of block b done after its diagonal
        dsrc, gcat = _scratch("dO1", g, gt[0].shape), _scratch("gcat", g, (HB, bq, 2 * Dv + 1))
    else:
        delta = (gt * out).sum(-1, keepdim=True)
    dq, dk = _scratch("dq", g, qt.shape), _scratch("dk", g, kt.shape, zero=True)
    dv = _scratch("dv", g, gt.shape, zero=True)
    dpc = g.new_zeros(H, dtype=torch.float64) if need_dpc else None  # sums over many tiles
    for b in reversed(range(nb)) if spec.twice else range(nb):
        gb = gt[b]
        if not spec.twice:
            gcat, dsrc = torch.cat([gb, -delta[b]], -1), gb
        for c, (rs, cs), n in plan.steps(b):
            P = torch.bmm(qa[b, :n, rs], ka[c, :n, cs].transpose(1, 2))  # logit - lse
            plan.add_bias(P, b, c, pcs, n, (rs, cs))
            P = plan.exp_(P, b, c, (rs, cs))
            Pt = P.transpose(1, 2)
            square = c == b and rs == cs  # a diagonal piece: its rows are new here
            if spec.twice:
                _acc(X[c, :n, cs], Pt, gb[:n, rs])
                if square:  # X rows rs complete: dO1 = 2 G - X, delta, [dO1, -G, -delta]
                    dsrc[:, rs] = 2 * gb[:, rs] - X[b, :, rs]
                    dl = (dsrc[:, rs] * o1[b, :, rs] - gb[:, rs] * o2[b, :, rs]).sum(-1)
                    gcat[:, rs] = torch.cat([dsrc[:, rs], -gb[:, rs], -dl[..., None]], -1)
            _acc(dv[c, :n, cs], Pt, dsrc[:n, rs])
            dS = torch.bmm(gcat[:n, rs], va[c, :n, cs].transpose(1, 2)).mul_(P)
            _acc(dq[b, :n, rs], dS, kt[c, :n, cs], first=square)
            _acc(dk[c, :n, cs], dS.transpose(1, 2), qt[b, :n, rs])
            if need_dpc:  # d logit / d pc = -f, summed per head over batch and tile
                f = plan._f(b, c, dS.dtype)[rs, cs].reshape(-1)
                fs = torch.matmul(dS.view(n // B, B, -1), f)
                dpc[: n // B] -= fs.sum(-1, dtype=torch.float64)
    if dpc is not None:
        dpc = (dpc if plan.perm is None else dpc[plan.inv]).to(g.dtype)
    d_q, d_k, d_kb, d_v = dests
    dkb = plan.untile(dk[..., D:], d_kb).squeeze(-1) if Dq > D else None
    dq, dk = plan.untile(dq[..., :D], d_q, spec.qscale), plan.untile(dk[..., :D], d_k)
    return dq, dk, dkb, dpc, plan.untile(dv, d_v)


@functools.cache
def _pool(workers: int, pid: int) -> ThreadPoolExecutor:
    """Worker threads of this process (keyed by pid: a forked child has none of them)."""
    return ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,))


def _split(B: int, H: int, spec: _Spec, device: torch.device) -> list[tuple[slice, list | None]]:
    """(batch slice, heads or None for all) per chunk: one independent chunk per CPU thread.

    Each chunk runs single-threaded in its own Python thread (torch ops release the GIL), so
    the hundreds of small per-tile ops pay no OpenMP barrier each, which on a loaded machine
    costs a scheduler slice per op. Batches split first; else heads, dealt out by window so
    every chunk gets the same mix of local and global heads.
    """
    n = torch.get_num_threads() if device.type == "cpu" else 1
    if n <= 1 or B * H == 1:
        return [(slice(None), None)]
    if B >= n:
        return [(slice(i * B // n, (i + 1) * B // n), None) for i in range(n)]
    w = spec.windows or (0.0,) * H
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


def _map(fn, args: list) -> list:
    """fn(*a) for a in args without autograd, in the thread pool if there are several."""
    inference = torch.is_inference_mode_enabled()  # thread-local: carry the caller's mode over

    def call(a):
        with torch.inference_mode(inference), torch.no_grad():
            return fn(*a)

    if len(args) == 1:
        return [call(args[0])]
    return list(_pool(min(len(args), torch.get_num_threads()), os.getpid()).map(call, args))


class _TiledAttention(torch.autograd.Function):
    """out = A V (or 2 A V - A A V) with A = softmax(qs k^T + kb - pc f), see module docstring.

    Saved tiles per chunk: qa = [qs, (1), -lse], ka = [k, (kb), 1], va = [V, (O1), 1], so
    qa . ka = logit - lse and [dO, -delta] . va = dP - delta are single matmuls.
    """

    @staticmethod
    def forward(ctx, qs, k, kb, pc, v, spec: _Spec):  # noqa: D102
        B, H, T, D = qs.shape
        chunks = ctx.chunks = _split(B, H, spec, qs.device)
        ctx.specs = [spec._replace(windows=_take(spec.windows, c)) for c in chunks]
        ctx.dims = (D, kb is not None)
        # Batch chunks write straight into views of the full output; head chunks are joined.
        out = v.new_empty(B, H, T, v.shape[-1]) if chunks[0][1] is None else None
        args = [
            (*(_take(t, c) for t in (qs, k, kb, pc, v)), sp, out if out is None else out[c[0]])
            for c, sp in zip(chunks, ctx.specs, strict=True)
        ]
        outs, ctx.saved = zip(*_map(_forward_chunk, args), strict=True)
        return out if out is not None else _join(list(outs), chunks, B, H)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        (B, H, T, _), (D, has_kb), chunks = g.shape, ctx.dims, ctx.chunks
        batch = chunks[0][1] is None  # batch chunks write into views of the full grads
        shapes = ((B, H, T, D), (B, H, T, D), (B, H, T, 1) if has_kb else None, g.shape)
        full = [g.new_empty(sh) if batch and sh else None for sh in shapes]
        args = [
            (saved, _take(g, c), sp, ctx.needs_input_grad[3], [_take(f, c) for f in full])
            for c, saved, sp in zip(chunks, ctx.saved, ctx.specs, strict=True)
        ]
        results = list(zip(*_map(_backward_chunk, args), strict=True))
        dpc = _join(list(results[3]), chunks, B, H)
        if batch:
            dkb = None if full[2] is None else full[2].squeeze(-1)
            return full[0], full[1], dkb, dpc, full[3], None
        dq, dk, dkb, dv = (_join(list(results[i]), chunks, B, H) for i in (0, 1, 2, 4))
        return dq, dk, dkb, dpc, dv, None


def _engine(
    q, k, v, base, twice, causal, h_y, h_p, content, scale, alibi_slopes, skip_far, block
) -> Tensor:
    """Run :class:`_TiledAttention` for a softmax (ALiBi) or bilateral kernel."""
    dtype, T = q.dtype, q.shape[-2]
    if dtype in _LOW_PRECISION:  # exp and lse in 16 bits would lose the kernel; compute in fp32
        q, k, v = q.float(), k.float(), v.float()
    windows = None
    if base == "softmax":
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        qs, kb, pc, fkind = q, None, alibi_slopes, "abs"  # the engine applies ``scale``
        if alibi_slopes is not None:
            # ALiBi's weight exp(-m d) is below e^-30 once d > 30 / m: the same tolerance as
            # the bilateral window, so local ALiBi heads cost O(T / m) per row, not O(T).
            w = (ALIBI_WINDOW / alibi_slopes.detach().double().clamp_min(1e-12)).tolist()
            windows = tuple(w) if skip_far and min(w) < T - 1 else None
    else:
        qs, kb = split_content(q, k, h_y, content)
        pc, fkind = 0.5 / h_p.square(), "sq"
        w = (WINDOW * h_p.detach().double()).tolist()
        windows = tuple(w) if skip_far and min(w) < T - 1 else None
    pc = None if pc is None else pc.to(q.dtype)
    block = min(block, max(16, 1 << (T - 1).bit_length()))  # short sequences: one tile
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (qs, k, kb, pc, v)
    )
    qscale = scale if base == "softmax" else 1.0
    spec = _Spec(fkind, causal, twice, block, windows, save, qscale)
    return _TiledAttention.apply(qs, k, kb, pc, v, spec).to(dtype)


def softmax(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = True,
    scale: float | None = None,
    alibi_slopes: Tensor | None = None,
    dropout_p: float = 0.0,
    *,
    skip_far: bool = True,
    block: int = BLOCK,
) -> Tensor:
    """Softmax attention: fused SDPA; with ALiBi the tiled engine (exact bias, no T x T mask).

    With ALiBi and ``skip_far`` a head skips key tiles more than 30 / m_h behind the query
    block, where its bias is below -30 (weight < e^-30 relative to the diagonal, the same
    tolerance as the bilateral window, see :func:`bilateral`).

    ALiBi with dropout goes through SDPA with a float bias mask (the engine has no dropout).

    Args:
        q, k: (B, H, T, D) queries and keys; v: (B, H, T, Dv) values.
        causal: mask j > i.
        scale: logit scale, default 1/sqrt(D).
        alibi_slopes: (H,) ALiBi slopes, or None.
        dropout_p: attention dropout probability.
        skip_far: with ALiBi, skip key tiles beyond 30 / m_h tokens.
        block: engine tile size.

    Returns:
        (B, H, T, Dv).
    """
    if alibi_slopes is None:
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale
        )
    if dropout_p > 0.0:
        i = torch.arange(q.shape[-2], device=q.device, dtype=q.dtype)
        d = i[:, None] - i[None, :]
        bias = -alibi_slopes.to(q.dtype)[:, None, None] * d.abs()  # (H, T, T)
        if causal:
            bias = bias.masked_fill(d < 0, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, bias, dropout_p, scale=scale)
    return _engine(
        q, k, v, "softmax", False, causal, None, None, "dot", scale, alibi_slopes, skip_far, block
    )


def bilateral(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    h_y: Tensor | None,
    h_p: Tensor,
    content: str = "dot",
    causal: bool = True,
    dropout_p: float = 0.0,
    *,
    skip_far: bool = True,
    block: int = BLOCK,
) -> Tensor:
    """Bilateral self-attention on the tiled engine, (B, H, T, Dv).

    With ``skip_far`` a head skips key tiles whose nearest key is more than sqrt(60) h_p from
    every query of the tile. A skipped key's weight relative to the diagonal key is below
    exp(dC - 30), dC = C(q_i, k_j) - C(q_i, k_i), so the output moves by at most
    2 T exp(max dC - 30) max|v|: 1.5e-8 for T = 4096 and content spreads dC <= 3 (fp32
    resolution is 6e-8); the window test sees under 1e-12 relative in float64.

    Args:
        q, k: (B, H, T, D) queries and keys; v: (B, H, T, Dv) values.
        h_y: (H,) content bandwidths, None for the default init.
        h_p: (H,) spatial bandwidths.
        content: "dot" or "gaussian".
        causal: mask j > i.
        dropout_p: must be 0 here (``impl="reference"`` has bilateral dropout).
        skip_far: skip key tiles beyond the window (the fast bilateral approximation).
        block: tile size.

    Returns:
        (B, H, T, Dv).
    """
    if dropout_p > 0.0:
        raise NotImplementedError(
            "impl='sdpa' has no attention dropout for bilateral attention; use impl='reference'"
        )
    return _engine(
        q, k, v, "bilateral", False, causal, h_y, h_p, content, None, None, skip_far, block
    )


def twicing(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    base: str = "softmax",
    causal: bool = True,
    h_y: Tensor | None = None,
    h_p: Tensor | None = None,
    content: str = "dot",
    scale: float | None = None,
    alibi_slopes: Tensor | None = None,
    *,
    skip_far: bool = True,
    block: int = BLOCK,
) -> Tensor:
    """Twicing 2 A V - A (A V) over the ``base`` kernel, (B, H, T, Dv).

    Causal: one engine call sharing every tile of A between both passes (plain softmax on
    CPU: forward as two fused SDPA passes, backward on tiles). Two-sided: O1 must be complete
    before O2 starts, so two single passes through autograd; so is plain softmax on CUDA,
    where flash attention beats the engine.

    Args:
        q, k: (B, H, T, D) queries and keys; v: (B, H, T, Dv) values.
        base: "softmax" (with ``scale``, ``alibi_slopes``) or "bilateral" (with ``h_y``,
            ``h_p``, ``content``, ``skip_far``), as in :func:`softmax` and :func:`bilateral`.
        causal: mask j > i.
        block: engine tile size.

    Returns:
        (B, H, T, Dv).
    """
    plain = base == "softmax" and alibi_slopes is None
    if causal and not (plain and q.device.type == "cuda"):
        args = (h_y, h_p, content, scale, alibi_slopes, skip_far, block)
        return _engine(q, k, v, base, True, causal, *args)
    if base == "softmax":
        kernel = {"scale": scale, "alibi_slopes": alibi_slopes}
    else:
        kernel = {"h_y": h_y, "h_p": h_p, "content": content, "skip_far": skip_far}
    once = functools.partial(softmax if base == "softmax" else bilateral, **kernel)
    o1 = once(q, k, v, causal=causal, block=block)
    return 2 * o1 - once(q, k, o1, causal=causal, block=block)
