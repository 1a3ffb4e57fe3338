"""Fast CPU/GPU attention: fused SDPA for softmax, a tiled PyTorch engine for the rest.

softmax without ALiBi calls ``torch.nn.functional.scaled_dot_product_attention`` (fused
forward and backward, linear memory). Everything with a position bias or a second pass runs
on ``_TiledAttention``, an autograd Function in plain PyTorch ops over (bq x bq) tiles:

    logit = qs_i . k_j + kb_j - pc_h f(i - j)      f = (i - j)^2 (bilateral) or |i - j| (ALiBi)
    forward: online softmax per query block (flash style), saves lse;  out = A V
    backward: P = exp(logit - lse) recomputed per tile; dS = P * (dP - delta)

The bias is added exactly per tile, so there is no fp32 cancellation from folding positions
into extra head dimensions (measured: that trick loses 1e-5..1e-3 for h_p <= 16 at T = 1024
unless blocks shrink to about 8 h_p). Twicing shares every tile between both passes:

    forward (query blocks ascending, diagonal tile last):  [O1 | O2]_b += P_bc [V | O1]_c
    backward (descending): X = A^T G is complete for block b after its diagonal tile, then
    dO1 = 2G - X, dV += P^T dO1, dS = P * ([dO1, -G] . [V, O1] - delta)

which is 3 + 7 tile matmuls instead of the 4 + 10 of two SDPA passes through autograd.
Bilateral heads skip key tiles farther than sqrt(60) h_p from the query block (spatial weight
< e^-30; SPEC's fast bilateral approximation, see :func:`bilateral`); heads are sorted by
window so the live heads of a tile are a contiguous prefix. Shapes: q, k (B, H, T, D),
v (B, H, T, Dv); h_y, h_p, alibi_slopes (H,); outputs (B, H, T, Dv).
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from filtertron.model.attention.reference import split_content

BLOCK = 128
WINDOW = math.sqrt(60.0)  # in units of h_p: the spatial weight beyond it is below e^-30
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_FLOOR = -60.0  # shifted logits are clamped here before exp, see _Plan.exp_


class _Spec(NamedTuple):
    """Static part of one engine call (hashable; not a tensor)."""

    fkind: str  # "sq" or "abs": the position function f(i - j) scaled by pc
    causal: bool
    twice: bool
    block: int
    windows: tuple[float, ...] | None  # per head, in tokens; None = no skipping


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

    def pack(self, *parts: Tensor, spare: int = 0) -> Tensor:
        """(B, H, T, d_i) or (B, H, T) parts -> (nb, H*B, bq, sum d_i + spare) tiles.

        Parts sit side by side on the last axis (one copy each, no concatenation); heads are
        in plan order, T is zero-padded to nb * bq; the spare columns are left unset.
        """
        parts = [x if x.dim() == 4 else x.unsqueeze(-1) for x in parts]
        widths = [x.shape[-1] for x in parts]
        out = parts[0].new_empty(self.nb, self.H * self.B, self.bq, sum(widths) + spare)
        view = out.view(self.nb, self.H, self.B, self.bq, -1)
        o = 0
        for x, w in zip(parts, widths, strict=True):
            if self.nb * self.bq != self.T:
                x = F.pad(x, (0, 0, 0, self.nb * self.bq - self.T))
            if self.perm is not None:
                x = x.index_select(1, self.perm)
            view[..., o : o + w] = x.reshape(self.B, self.H, self.nb, self.bq, w).permute(
                2, 1, 0, 3, 4
            )
            o += w
        return out

    def untile(self, t: Tensor) -> Tensor:
        """Inverse of :meth:`pack` for one part: (nb, H*B, bq, d) -> (B, H, T, d)."""
        t = t.view(self.nb, self.H, self.B, self.bq, -1)
        if self.inv is not None:
            t = t.index_select(1, self.inv)
        x = t.permute(2, 1, 0, 3, 4).reshape(self.B, self.H, self.nb * self.bq, -1)
        return x[:, :, : self.T]

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

    def add_bias(self, L: Tensor, b: int, c: int, pc: Tensor | None, n: int) -> None:
        """Add -pc_h f(i - j) and the masks to a tile of raw scores (n, bq, bq), in place."""
        mask = self._mask(b, c, L.dtype)
        if pc is None:
            if mask is not None:
                L.add_(mask)
            return
        h = n // self.B
        bias = pc[:h, None, None, None] * -self._f(b, c, L.dtype)  # (h, 1, bq, bq)
        if mask is not None:
            bias = bias + mask
        L.view(h, self.B, self.bq, self.bq).add_(bias)

    def exp_(self, L: Tensor, b: int, c: int) -> Tensor:
        """exp of a tile of shifted logits, in place, with exact zeros where masked.

        torch's exp leaves its vectorised path below about -87 (or at -inf) and runs 5-30x
        slower there; masked and position-biased tiles are clamped at -60 first, which
        changes no weight visibly (e^-60 of the row maximum is below fp32 and fp64 resolution).
        """
        mask = self._mask(b, c, L.dtype)
        P = (L.clamp_min_(_FLOOR) if self.biased or mask is not None else L).exp_()
        if self.spec.causal and b == c:
            P.tril_()
        elif mask is not None:
            P[..., self.T - c * self.bq :] = 0.0
        return P

    def f(self, b: int, c: int, dtype: torch.dtype) -> Tensor:
        """Flattened (bq * bq,) f(i - j) of a tile, for the gradient of pc."""
        return self._f(b, c, dtype).reshape(-1)


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


_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _fused_twice_ok(qs: Tensor, v: Tensor, kb, pc, spec: _Spec) -> bool:
    """Plain causal softmax twicing on CPU: two fused SDPA passes beat the tiled forward."""
    return (
        _FLASH_CPU is not None
        and kb is None
        and pc is None
        and spec.causal
        and qs.device.type == "cpu"
        and v.shape[-1] == qs.shape[-1]
    )


def _forward_chunk(qs, k, kb, pc, v, spec: _Spec):
    """Forward of one chunk of (batch, head) rows; returns (B, H, T, Dv) out and saved tiles."""
    B, H, T, D = qs.shape
    Dv, Dq = v.shape[-1], D + (kb is not None)
    plan = _Plan(B, H, T, spec, qs.device, pc is not None)
    pcs = None if pc is None else (pc if plan.perm is None else pc[plan.perm])
    if spec.twice and _fused_twice_ok(qs, v, kb, pc, spec):
        o1, lse = _FLASH_CPU(qs, k, v, is_causal=True, scale=1.0)
        o2, _ = _FLASH_CPU(qs, k, o1, is_causal=True, scale=1.0)  # same logits, same lse
        qa, ka, va = plan.pack(qs, spare=1), plan.pack(k, spare=1), plan.pack(v, o1, spare=1)
        out, lse = plan.pack(o1, o2), plan.pack(lse)
    else:
        qa = plan.pack(qs, spare=2) if kb is not None else plan.pack(qs, spare=1)
        ka = plan.pack(k, kb, spare=1) if kb is not None else plan.pack(k, spare=1)
        va = plan.pack(v, spare=Dv + 1 if spec.twice else 1)
        if kb is not None:
            qa[..., D] = 1.0
        out, lse = _tiled_forward(plan, qa, ka, va, pcs, Dq, Dv)
    qa[..., Dq:] = -lse
    ka[..., Dq] = 1.0
    va[..., -1] = 1.0
    final = 2 * out[..., :Dv] - out[..., Dv:] if spec.twice else out
    return plan.untile(final), (qa, ka, va, out, pcs, D, Dq, pc is not None)


def _backward_chunk(saved, g: Tensor, spec: _Spec, need_dpc: bool):
    """Backward of one chunk: grads of (qs, k, kb, pc, v); see module docstring."""
    qa, ka, va, out, pcs, D, Dq, biased = saved
    B, H, T, Dv = g.shape
    nb, _, bq, _ = qa.shape
    plan = _Plan(B, H, T, spec, g.device, biased)
    gt = plan.pack(g)
    qt, kt = qa[..., :Dq], ka[..., :Dq]
    if spec.twice:
        o1, o2 = out[..., :Dv], out[..., Dv:]
        X = torch.zeros_like(gt)  # A^T G, complete for block b once its diagonal is done
    else:
        delta = (gt * out).sum(-1, keepdim=True)
    dq, dk, dv = torch.zeros_like(qt), torch.zeros_like(kt), torch.zeros_like(gt)
    dpc = g.new_zeros(H, dtype=torch.float64) if need_dpc else None  # sums over many tiles
    for b in reversed(range(nb)) if spec.twice else range(nb):
        gb = gt[b]
        if not spec.twice:
            gcat, dsrc = torch.cat([gb, -delta[b]], -1), gb
        for c, n in plan.keys(b, diag_last=False):
            P = torch.bmm(qa[b, :n], ka[c, :n].transpose(1, 2))  # logit - lse
            plan.add_bias(P, b, c, pcs, n)
            P = plan.exp_(P, b, c)
            Pt = P.transpose(1, 2)
            if spec.twice and c == b:
                X[b].baddbmm_(Pt, gb)
                dsrc = 2 * gb - X[b]  # dO1_b
                dl = (dsrc * o1[b]).sum(-1, keepdim=True) - (gb * o2[b]).sum(-1, keepdim=True)
                gcat = torch.cat([dsrc, -gb, -dl], -1)
            elif spec.twice:
                X[c, :n].baddbmm_(Pt, gb[:n])
            dv[c, :n].baddbmm_(Pt, dsrc[:n])
            dS = torch.bmm(gcat[:n], va[c, :n].transpose(1, 2)).mul_(P)
            dq[b, :n].baddbmm_(dS, kt[c, :n])
            dk[c, :n].baddbmm_(dS.transpose(1, 2), qt[b, :n])
            if need_dpc:  # d logit / d pc = -f, summed per head over batch and tile
                h = n // B
                fs = torch.matmul(dS.view(h, B, bq * bq), plan.f(b, c, dS.dtype))
                dpc[:h] -= fs.sum(-1, dtype=torch.float64)
    dkb = plan.untile(dk[..., D:]).squeeze(-1) if Dq > D else None
    if dpc is not None:
        dpc = (dpc if plan.perm is None else dpc[plan.inv]).to(g.dtype)
    return plan.untile(dq[..., :D]), plan.untile(dk[..., :D]), dkb, dpc, plan.untile(dv)


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        workers, "filtertron-attn", initializer=torch.set_num_threads, initargs=(1,)
    )


def _chunks(B: int, H: int, spec: _Spec, device: torch.device) -> list[tuple[slice, list[int]]]:
    """Split the (batch, head) rows into one independent chunk per CPU thread.

    Each chunk runs single-threaded in its own Python thread (torch ops release the GIL):
    hundreds of small per-tile ops then pay no OpenMP barrier each, which on a loaded machine
    costs a scheduler slice per op. Batches split first; else heads, dealt out by window so
    the chunks get the same mix of local and global heads.
    """
    n = torch.get_num_threads() * int(__import__("os").environ.get("FT_K", "1")) if device.type == "cpu" else 1
    if n <= 1 or B * H == 1:
        return [(slice(None), list(range(H)))]
    if B >= n:
        return [(slice(i * B // n, (i + 1) * B // n), list(range(H))) for i in range(n)]
    w = spec.windows or (0.0,) * H
    order = sorted(range(H), key=lambda h: -w[h])
    return [(slice(None), sorted(order[i::n])) for i in range(min(n, H))]


def _map(fn, chunks, args_per_chunk):
    """fn over chunks, in the thread pool when there is more than one chunk, no autograd."""

    def call(args):
        with torch.no_grad():
            return fn(*args)

    if len(chunks) == 1:
        return [call(args_per_chunk[0])]
    return list(_pool(min(len(chunks), torch.get_num_threads())).map(call, args_per_chunk))


def _gather(x: Tensor | None, rows: tuple[slice, list[int]], H: int) -> Tensor | None:
    if x is None:
        return None
    bs, hs = rows
    x = x[bs]
    return x if len(hs) == H else x[:, hs]


def _scatter(parts: list, chunks, B: int, H: int) -> Tensor | None:
    """Reassemble (B_c, H_c, ...) chunk results along batch or heads; None stays None."""
    if parts[0] is None or len(parts) == 1:
        return parts[0]
    if len(chunks[0][1]) == H:
        return torch.cat(parts, 0)
    out = parts[0].new_empty(B, H, *parts[0].shape[2:])
    for (_, hs), part in zip(chunks, parts, strict=True):
        out[:, hs] = part
    return out


def _scatter_heads(parts: list, chunks, H: int) -> Tensor | None:
    """Reassemble per-head (H_c,) gradients: batch chunks add up, head chunks interleave."""
    if parts[0] is None or len(parts) == 1:
        return parts[0]
    if len(chunks[0][1]) == H:
        return torch.stack(parts).sum(0)
    out = parts[0].new_empty(H)
    for (_, hs), part in zip(chunks, parts, strict=True):
        out[hs] = part
    return out


class _TiledAttention(torch.autograd.Function):
    """out = A V (or 2 A V - A A V) with A = softmax(qs k^T + kb - pc f), see module docstring.

    Saved tiles per chunk: qa = [qs, (1), -lse], ka = [k, (kb), 1], va = [V, (O1), 1], so
    qa . ka = logit - lse and [dO, -delta] . va = dP - delta are single matmuls.
    """

    @staticmethod
    def forward(ctx, qs, k, kb, pc, v, spec: _Spec):  # noqa: D102
        B, H = qs.shape[:2]
        chunks = _chunks(B, H, spec, qs.device)
        args = []
        for rows in chunks:
            w = spec.windows and tuple(spec.windows[h] for h in rows[1])
            pcc = None if pc is None else pc[rows[1]]
            ins = (_gather(t, rows, H) for t in (qs, k, kb, v))
            q_c, k_c, kb_c, v_c = ins
            args.append((q_c, k_c, kb_c, pcc, v_c, spec._replace(windows=w)))
        results = _map(_forward_chunk, chunks, args)
        ctx.chunks, ctx.specs, ctx.saved = chunks, [a[-1] for a in args], [r[1] for r in results]
        return _scatter([r[0] for r in results], chunks, B, H)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        B, H = g.shape[:2]
        need_dpc = ctx.needs_input_grad[3]
        args = [
            (saved, _gather(g, rows, H), spec, need_dpc)
            for rows, saved, spec in zip(ctx.chunks, ctx.saved, ctx.specs, strict=True)
        ]
        grads = list(zip(*_map(_backward_chunk, ctx.chunks, args), strict=True))
        dq, dk, dkb, dv = (_scatter(list(grads[i]), ctx.chunks, B, H) for i in (0, 1, 2, 4))
        dpc = _scatter_heads(list(grads[3]), ctx.chunks, H)
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
        qs, kb, pc, fkind = q * scale, None, alibi_slopes, "abs"
    else:
        qs, kb = split_content(q, k, h_y, content)
        pc, fkind = 0.5 / h_p.square(), "sq"
        w = (WINDOW * h_p.detach().double()).tolist()
        windows = tuple(w) if skip_far and min(w) < T - 1 else None
    pc = None if pc is None else pc.to(q.dtype)
    block = min(block, max(16, 1 << (T - 1).bit_length()))  # short sequences: one tile
    spec = _Spec(fkind, causal, twice, block, windows)
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
    block: int = BLOCK,
) -> Tensor:
    """Softmax attention: fused SDPA; with ALiBi the tiled engine (exact bias, no T x T mask).

    ALiBi with dropout goes through SDPA with a float bias mask (the engine has no dropout).

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
        q, k, v, "softmax", False, causal, None, None, "dot", scale, alibi_slopes, False, block
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
    resolution is 6e-8); tests see ~1e-16 (float64) since real spreads are far smaller.

    Args:
        q: (B, H, T, D) queries.
        k: (B, H, T, D) keys.
        v: (B, H, T, Dv) values.
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
