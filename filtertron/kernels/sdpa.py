"""impl="sdpa", kept for configs that name it: PyTorch SDPA where it applies, else the engine.

What runs under it, exactly:

- plain softmax (no position term, no key bias): ``F.scaled_dot_product_attention``, dropout
  included (on CUDA its flash / memory-efficient backends, on CPU its fused CPU kernel);
- plain softmax twicing on CUDA, or two-sided: two SDPA passes, out = 2 O1 - O2 through
  autograd;
- softmax with ALiBi and dropout: SDPA with the position bias (and band) as a float mask,
  (H, T, T) in memory;
- everything else (ALiBi, bilateral, causal twicing on CPU): the tiled engine,
  :mod:`filtertron.kernels.tiled` (impl="tiled"). Bilateral dropout is refused here
  (impl="reference" has it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from filtertron.kernels import tiled
from filtertron.kernels.description import Kernel
from filtertron.kernels.materialised import distance


def _sdpa(kernel: Kernel, v: Tensor, mask: Tensor | None = None) -> Tensor:
    return F.scaled_dot_product_attention(
        kernel.q,
        kernel.k,
        v,
        mask,
        kernel.dropout_p,
        is_causal=kernel.causal and mask is None,
        scale=kernel.scalar_scale,
    )


def _position_mask(kernel: Kernel) -> Tensor:
    """(H, T, T) float mask: -c_h |i - j|, -inf beyond the band and above the diagonal."""
    T, dtype = kernel.q.shape[-2], kernel.q.dtype
    d = distance(T, kernel.q.device, dtype)
    bias = -kernel.coef.to(dtype)[:, None, None] * d.abs()
    drop = d < 0 if kernel.causal else torch.zeros_like(d, dtype=torch.bool)
    if kernel.band is not None:
        drop = drop | (d.abs() > kernel.band.to(dtype)[:, None, None])
    return bias.masked_fill(drop, float("-inf"))


def attend(kernel: Kernel) -> Tensor:
    """The kernel through SDPA or the tiled engine (see the module docstring), (B, H, T, Dv)."""
    if kernel.plain and not kernel.twice:
        return _sdpa(kernel, kernel.v)
    if kernel.plain and (kernel.q.device.type == "cuda" or not kernel.causal):
        o1 = _sdpa(kernel, kernel.v)
        return 2 * o1 - _sdpa(kernel, o1)
    if kernel.dropout_p > 0.0:  # ALiBi (unsupported() refused the rest)
        return _sdpa(kernel, kernel.v, _position_mask(kernel))
    return tiled.attend(kernel)


def unsupported(kernel: Kernel) -> str | None:
    """Why impl="sdpa" cannot serve ``kernel``, or None."""
    if kernel.dropout_p > 0.0 and not (kernel.plain or kernel.position == "linear"):
        return "impl='sdpa' has no attention dropout for bilateral attention; use impl='reference'"
    return None
