"""Tile geometry of the tiled engine: packing, the tiles a query block visits, bias and masks.

The engine (:mod:`filtertron.kernels.tiled`) works on (bq x bq) tiles of the logit matrix

    L_bc = s q_b . k_c + b_c - c_h f(i - j) [+ masks],   f = (i - j)^2 ("square") or |i - j|

for query block b and key block c. Operands are packed once per call into
(nb, H*B, bq, width) tiles (heads in plan order, T zero-padded to nb * bq), so a tile of every
(batch, head) row is one bmm. With a band w_h the heads are sorted widest first: the heads
live in a tile are then a prefix of the rows, and a tile no live head reaches is skipped.
Inside a tile, keys with |i - j| > w_h get BAND_OFF added (weight e^-60 of the row maximum
after the engine's exp floor, zero to float64 resolution), so the engine computes the same
banded kernel as every other impl, whatever its tile size.
Shapes: parts (B, H, T, d) or (B, H, T); tiles (nb, H*B, bq, d).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

FLOOR = -60.0  # shifted logits are clamped here before exp, see Plan.exp_
BAND_OFF = -1e4  # added beyond the band: finite, so a row never sees only -inf (no NaN)
ALL = slice(None)


class TileSpec(NamedTuple):
    """Static part of one engine call (hashable, no tensors)."""

    position: str | None  # "square", "linear" or None: f(i - j), scaled by the coefficient
    causal: bool
    twice: bool
    block: int
    band: tuple[int, ...] | None  # w_h per head in tokens; None = every key


class Plan:
    """Tile geometry: padding, head order (widest band first), live heads per tile offset."""

    def __init__(self, B: int, H: int, T: int, spec: TileSpec, device: torch.device) -> None:
        self.B, self.H, self.T, self.bq = B, H, T, spec.block
        self.nb = -(-T // spec.block)
        self.device, self.spec = device, spec
        self.biased = spec.position is not None
        self.perm = self.inv = None
        self.heads = list(range(H))  # plan order: packed head i is head heads[i]
        self.live = [H] * self.nb  # live heads per block offset |b - c|
        self.width = None  # band per head, in plan order
        if spec.band is not None:
            order = self.heads = sorted(range(H), key=lambda h: -spec.band[h])
            self.perm = torch.tensor(order, device=device)
            self.inv = torch.argsort(self.perm)
            self.width = [spec.band[h] for h in order]
            for o in range(1, self.nb):
                gap = (o - 1) * self.bq + 1  # smallest |i - j| between the two blocks
                self.live[o] = sum(1 for w in self.width if w >= gap)
        self.triu = torch.ones(self.bq, self.bq, dtype=torch.bool, device=device).triu(1)
        self._cache: dict[tuple, Tensor | None] = {}

    def order(self, x: Tensor) -> Tensor:
        """A per-head (H, ...) tensor in plan order."""
        return x if self.perm is None else x[self.perm]

    def pack(
        self, *parts: Tensor, spare: int = 0, scale: Tensor | None = None, out: Tensor | None = None
    ) -> Tensor:
        """(B, H, T, d_i) or (B, H, T) parts -> (nb, H*B, bq, sum d_i + spare) tiles.

        Parts sit side by side on the last axis; heads are in plan order, T is zero-padded to
        nb * bq; the spare columns are left unset. The first part is multiplied by the
        per-head ``scale`` (H,) on the way. One copy per (part, head), straight into place:
        no padded or head-permuted intermediate.
        """
        parts = [x if x.dim() == 4 else x.unsqueeze(-1) for x in parts]
        widths = [x.shape[-1] for x in parts]
        shape = (self.nb, self.H * self.B, self.bq, sum(widths) + spare)
        out = parts[0].new_empty(shape) if out is None else out
        tiles = out.view(self.nb, self.H, self.B, self.bq, -1).permute(2, 1, 0, 3, 4)
        n, rem = divmod(self.T, self.bq)
        o = 0
        for x, w in zip(parts, widths, strict=True):
            dst = tiles[..., o : o + w]  # (B, H, nb, bq, w)
            for i, h in enumerate(self.heads):
                src = x[:, h]  # (B, T, w)
                s = scale[h].to(x.dtype) if o == 0 and scale is not None else 1.0
                if n:
                    torch.mul(
                        src[:, : n * self.bq].unflatten(1, (n, self.bq)), s, out=dst[:, i, :n]
                    )
                if rem:
                    torch.mul(src[:, n * self.bq :], s, out=dst[:, i, n, :rem])
                    dst[:, i, n, rem:] = 0.0
            o += w
        return out

    def untile(self, t: Tensor, out: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
        """Inverse of :meth:`pack` for one part, times a per-head ``scale`` (H,) if given:
        (nb, H*B, bq, d) -> (B, H, T, d), written into ``out`` (contiguous) if given.
        """
        t = t.view(self.nb, self.H, self.B, self.bq, -1).permute(2, 1, 0, 3, 4)  # (B, H, nb..)
        out = t.new_empty(self.B, self.H, self.T, t.shape[-1]) if out is None else out
        n, rem = divmod(self.T, self.bq)
        for i, h in enumerate(self.heads):
            s = 1.0 if scale is None else scale[h].to(t.dtype)
            dst = out[:, h]  # (B, T, d)
            if n:
                torch.mul(t[:, i, :n], s, out=dst[:, : n * self.bq].unflatten(1, (n, self.bq)))
            if rem:
                torch.mul(t[:, i, n, :rem], s, out=dst[:, n * self.bq :])
        return out

    def keys(self, b: int, diag_last: bool) -> list[tuple[int, int]]:
        """(key block, live rows of the H*B batch) for query block b, skipped tiles left out."""
        cs = range(b + 1) if self.spec.causal else range(self.nb)
        out = [(c, self.live[abs(b - c)] * self.B) for c in cs if c != b]
        out = [x for x in out if x[1] > 0]
        return out + [(b, self.H * self.B)] if diag_last else [(b, self.H * self.B)] + out

    def f(self, b: int, c: int, dtype: torch.dtype) -> Tensor:
        """(bq, bq) position function f(i - j) for the tile (query block b, key block c)."""
        key = (b - c, dtype)
        if key not in self._cache:
            r = torch.arange(self.bq, device=self.device, dtype=torch.float64)
            d = (b - c) * self.bq + r[:, None] - r[None, :]
            self._cache[key] = (d * d if self.spec.position == "square" else d.abs()).to(dtype)
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

    def band_mask(self, b: int, c: int, dtype: torch.dtype) -> Tensor | None:
        """(h, 1, bq, bq) BAND_OFF where |i - j| > w_h for the tile's live heads, or None."""
        if self.width is None:
            return None
        key = ("band", b - c, dtype)  # signed: two-sided tiles b - c = -o mirror b - c = o
        if key not in self._cache:
            h = self.live[abs(b - c)]
            d = self.f(b, c, torch.float64) if self.spec.position == "linear" else None
            if d is None:
                r = torch.arange(self.bq, device=self.device, dtype=torch.float64)
                d = ((b - c) * self.bq + r[:, None] - r[None, :]).abs()
            w = torch.tensor(self.width[:h], device=self.device, dtype=torch.float64)
            out = d > w[:, None, None, None]  # (h, 1, bq, bq)
            self._cache[key] = (out.to(dtype) * BAND_OFF) if bool(out.any()) else None
        return self._cache[key]

    def add_bias(self, L: Tensor, b: int, c: int, coef, n: int, sub=(ALL, ALL)) -> None:
        """Add -c_h f(i - j), the band and the masks to raw scores (n, rows, cols), in place.

        ``sub`` = (rows, cols) slices of the tile when L covers part of it. The summed bias is
        cached per tile offset for the plan's life (one call), for the ``coef`` of that call.
        """
        mask = self._mask(b, c, L.dtype)
        if coef is None:
            if mask is not None:
                L.add_(mask[sub])
            return
        h = n // self.B
        pad = (c + 1) * self.bq - self.T if mask is not None else 0
        key = ("bias", b - c, mask is not None, pad, L.dtype)
        if key not in self._cache:  # per plan (one call): coef is fixed, tiles repeat per offset
            bias = coef[: self.live[abs(b - c)], None, None, None] * -self.f(b, c, L.dtype)
            band = self.band_mask(b, c, L.dtype)
            bias = bias if band is None else bias + band
            self._cache[key] = bias if mask is None else bias + mask  # (h, 1, bq, bq)
        bias = self._cache[key][:h, :, sub[0], sub[1]]
        L.view(h, self.B, *L.shape[1:]).add_(bias)

    def exp_(self, L: Tensor, b: int, c: int, sub=(ALL, ALL)) -> Tensor:
        """exp of (part of) a tile of shifted logits, in place, exact zeros where masked.

        torch's exp leaves its vectorised path below about -87 (or at -inf) and runs 5-30x
        slower there; masked and position-biased tiles are clamped at FLOOR = -60 first, which
        changes no weight visibly (e^-60 of the row maximum is below fp32 and fp64 resolution).
        """
        mask = self._mask(b, c, L.dtype)
        P = (L.clamp_min_(FLOOR) if self.biased or mask is not None else L).exp_()
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
            diag = [(b, (ALL, ALL), HB)]
        return diag + [(c, (ALL, ALL), n) for c, n in self.keys(b, True)[:-1]]
