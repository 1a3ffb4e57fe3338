"""FlexAttention score and mask modifications: tiny named closures over per-head tensors.

One score_mod and one mask_mod structure serve every kernel, so torch.compile builds one
graph per device and dtype instead of one per kernel (each CPU compile costs 10-40 s):

    score_mod:  score + kb[b, h, j] - (r[h] (i - j))^2 - ab[h] |i - j|
        softmax: kb = 0, r = 0, ab = 0;  ALiBi ("linear"): ab = c_h = m_h
        bilateral ("square"): r = sqrt(c_h) = 1 / (sqrt(2) h_p); gaussian content adds the key
        bias kb = s_h b_j = -||k_j||^2 / (2 h_y^2)

(r d)^2 rather than r^2 d^2 keeps the product small in 16-bit scores, and i - j is cast to
the score dtype before squaring (int32 d^2 overflows past T = 46341).
    mask_mod:   lo[h] <= i - j <= hi[h]  and  i, j < n
        causal: lo = 0;  two-sided: lo = -hi;  hi = the band w_h of the kernel description, or T
        n: the real length (inputs are padded past n to a length bucket, see flex.py)

All captured tensors stay graph inputs (not constants), so new values never recompile and
gradients reach them (kb -> k and h_y, sq -> h_p) where FlexAttention has a backward.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def positional_score(kb: Tensor, r: Tensor, ab: Tensor) -> ScoreMod:
    """score + kb[b, h, j] - (r[h] (i - j))^2 - ab[h] |i - j|; kb (B, H, T), r and ab (H,)."""

    def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        d = (q_idx - kv_idx).to(r.dtype)
        return score + kb[b, h, kv_idx] - (r[h] * d).square() - ab[h] * d.abs()

    return score_mod


def band(lo: Tensor, hi: Tensor, n: Tensor) -> MaskMod:
    """Keep lo[h] <= i - j <= hi[h] and i, j < n; lo, hi (H,) and n () integer tensors."""

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        d = q_idx - kv_idx
        return (d >= lo[h]) & (d <= hi[h]) & (kv_idx < n) & (q_idx < n)

    return mask_mod
