"""impl="reference": the kernel description run materialised, (B, H, T, T) logits in memory.

    logit = s_h (q k^T + b_j) - c_h f(i - j),  -inf where j > i (causal) or |i - j| > w_h (band)
    A = softmax(logit) [dropout],  out = A V,  twicing: out = 2 A V - A (A V)

Slow and plain PyTorch, so autograd differentiates it, dropout included (the one impl with
bilateral dropout). It reads the same :class:`~filtertron.kernels.description.Kernel` as the
fused impls; the literal math it is checked against (built from h_y, h_p and the slopes, not
from the description) is :mod:`filtertron.model.attention.reference`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from filtertron.kernels.description import Kernel


def distance(T: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(T, T) signed distance i - j."""
    pos = torch.arange(T, device=device, dtype=dtype)
    return pos[:, None] - pos[None, :]


def logits(kernel: Kernel) -> Tensor:
    """(B, H, T, T) logits of the description, masked entries -inf, in q's dtype."""
    q, k = kernel.q, kernel.k
    T, dtype = q.shape[-2], q.dtype
    out = torch.matmul(q, k.transpose(-1, -2))
    if kernel.key_bias is not None:
        out = out + kernel.key_bias.to(dtype)[..., None, :]
    out = out * kernel.scale.to(dtype)[:, None, None]
    d = distance(T, q.device, dtype)
    if kernel.position is not None:  # in coef's dtype (>= fp32): d^2 overflows float16
        dc = distance(T, q.device, kernel.coef.dtype)
        f = dc.square() if kernel.position == "square" else dc.abs()
        out = out - (kernel.coef[:, None, None] * f).to(dtype)
    drop = d < 0 if kernel.causal else torch.zeros_like(d, dtype=torch.bool)
    if kernel.band is not None:
        drop = drop | (d.abs() > kernel.band.to(dtype)[:, None, None])
    return out.masked_fill(drop, float("-inf"))


def attend(kernel: Kernel) -> Tensor:
    """out (B, H, T, Dv) of the kernel, materialised."""
    probs = torch.softmax(logits(kernel), dim=-1)
    if kernel.dropout_p > 0.0:
        probs = F.dropout(probs, kernel.dropout_p, training=True)
    o1 = torch.matmul(probs, kernel.v)
    return 2 * o1 - torch.matmul(probs, o1) if kernel.twice else o1


def unsupported(kernel: Kernel) -> str | None:
    """The reference serves every kernel."""
    return None
