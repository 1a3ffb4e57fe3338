"""The kernel description: one record of an attention call, built once, read by every impl.

Every kernel filtertron runs is, per batch b, head h, query i and key j (causal: j <= i),

    logit_ij = s_h (q_i . k_j + b_j) - c_h f(i - j),   A = softmax_j(logit),   out = A V
    twicing:   out = 2 O1 - O2,   O1 = A V,   O2 = A O1

    s_h  content scale (H,):  softmax 1/sqrt(D) (or ``scale``); bilateral "dot" 1/h_y,
         "gaussian" 1/h_y^2
    b_j  per-key bias (B, H, T), in units of the scale: "gaussian" -||k_j||^2 / 2, else none.
         (The gaussian's -s_h ||q_i||^2 / 2 is a per-row constant, which the softmax cancels;
         kernels may add it back to keep logits small, see triton_kernels.) Keeping b free of
         h_y lets an impl return dL/ds_h = sum dS_ij (q_i . k_j + b_j) whole: split into a
         scale part and a bias part, the two cancel in dh_y and their rounding does not.
    f    position function with per-head coefficient c_h (H,): "square" (i - j)^2 with
         c_h = 1 / (2 h_p^2) (bilateral), "linear" |i - j| with c_h = m_h (ALiBi), or none
    w_h  band (H,) int32: keys with |i - j| > w_h are left out,
         w_h = ceil(f^-1(ln(1/eps) / c_h)) clamped to [0, T]; beyond it the position weight
         exp(-c_h f) is below eps relative to the diagonal (default eps = e^-30:
         w_h = ceil(sqrt(60) h_p) for bilateral, ceil(30 / m_h) for ALiBi)

The band is the only approximation any impl makes, and all of them make exactly this one: a
banded kernel is softmax over the keys with |i - j| <= w_h, token by token, so impls agree to
rounding whatever their tile sizes. A key the band drops has weight below
eps exp(C_ij - C_ii) of the diagonal key (C the content logit), so the output moves by at most
T eps exp(max dC) max|v|. ``band_eps=None`` (or a coefficient <= 0) keeps every key.

The tensors stay differentiable: s, b and c carry autograd back to q, k, h_y, h_p and the
slopes; w_h is detached (it only selects keys). Everything is built on q's device with tensor
ops, so nothing is copied to the host per call (impls that plan on the host, the tiled CPU
engine and flex's block mask on CPU, read w_h there themselves).
Shapes: q, k (B, H, T, D); v (B, H, T, Dv); s, c, w (H,); b (B, H, T).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_BAND_EPS = math.exp(-30.0)
POSITIONS = ("square", "linear")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def default_h_y(content: str, head_dim: int) -> float:
    """The h_y that gives softmax's 1/sqrt(D) logit scale: sqrt(D) (dot) or D^(1/4) (gaussian)."""
    return math.sqrt(head_dim) if content == "dot" else head_dim**0.25


def param_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the per-head terms and the key bias: at least float32 (16-bit q keeps fp32)."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


@dataclass(frozen=True, eq=False)
class Kernel:
    """One attention call, described once (see the module docstring for the math).

    Attributes:
        q: (B, H, T, D) queries, unscaled.
        k: (B, H, T, D) keys.
        v: (B, H, T, Dv) values.
        scale: (H,) content scale s_h (at least float32).
        key_bias: (B, H, T) per-key bias b_j in units of the scale, or None.
        position: "square", "linear" or None.
        coef: (H,) position coefficient c_h, or None with ``position``.
        band: (H,) int32 band w_h, or None (every key).
        causal: attend to j <= i only.
        twice: twicing, out = 2 A V - A A V.
        dropout_p: attention dropout on A (not with ``twice``).
        scalar_scale: s as a Python float when it is one constant for all heads (softmax);
            None when it is per head or learnable.
        kind: the user's kind ("softmax", "bilateral" or "twicing"), for messages and ``auto``.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    scale: Tensor
    key_bias: Tensor | None
    position: str | None
    coef: Tensor | None
    band: Tensor | None
    causal: bool
    twice: bool
    dropout_p: float
    scalar_scale: float | None
    kind: str

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, H, T, D) of q."""
        return tuple(self.q.shape)

    @property
    def plain(self) -> bool:
        """Plain scaled-dot-product softmax: no position term, no key bias, one scale."""
        return self.position is None and self.key_bias is None and self.scalar_scale is not None

    @property
    def family(self) -> str:
        """The auto table's kind: "softmax", "alibi", "bilateral" or "twicing"."""
        if self.twice:
            return "twicing"
        if self.position == "linear":
            return "alibi"
        return "softmax" if self.plain else "bilateral"

    def tensors(self) -> tuple[Tensor | None, ...]:
        """Every tensor the kernel reads: (q, k, v, scale, key_bias, coef)."""
        return (self.q, self.k, self.v, self.scale, self.key_bias, self.coef)

    @property
    def needs_grad(self) -> bool:
        """Whether autograd will need a backward through this call."""
        return torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in self.tensors()
        )


def band_width(position: str, coef: Tensor, eps: float, T: int) -> Tensor:
    """w_h = ceil(f^-1(ln(1/eps) / c_h)) clamped to [0, T], as an (H,) int32 tensor.

    c_h <= 0 (no decay with distance) keeps every key: w_h = T.

    Args:
        position: "square" (f = d^2) or "linear" (f = |d|).
        coef: (H,) coefficients c_h.
        eps: relative weight below which keys are dropped, 0 < eps < 1.
        T: sequence length.

    Returns:
        (H,) int32 on coef's device.
    """
    c = coef.detach().double()
    reach = math.log(1.0 / eps) / c.clamp_min(1e-300)  # f(w) at the edge of the band
    w = reach.sqrt() if position == "square" else reach
    w = torch.where(c > 0, w.ceil(), torch.full_like(w, T))
    return w.clamp(0, T).to(torch.int32)


def split_content(
    q: Tensor, k: Tensor, h_y: Tensor | None, content: str
) -> tuple[Tensor, Tensor | None]:
    """The bilateral content logit as a per-head scale and a per-key bias.

    C(q_i, k_j) = s (q_i . k_j + b_j) + (a per-row constant, which softmax ignores):
    dot: s = 1 / h_y, b = None;  gaussian: s = 1 / h_y^2, b = -||k_j||^2 / 2.

    Args:
        q: (B, H, T, D) queries (for the default h_y and the dtype).
        k: (B, H, T, D) keys.
        h_y: (H,) content bandwidths, or None for :func:`default_h_y`.
        content: "dot" or "gaussian".

    Returns:
        s (H,) and b (B, H, T) or None, at least float32; s differentiable in h_y, b in k.
    """
    dtype = param_dtype(q.dtype)
    if h_y is None:
        h_y = torch.full(
            (q.shape[1],), default_h_y(content, q.shape[-1]), dtype=dtype, device=q.device
        )
    hy = h_y.to(dtype)
    if content == "dot":
        return 1.0 / hy, None
    return 1.0 / (hy * hy), -0.5 * k.to(dtype).square().sum(-1)  # (H,), (B, H, T)


def describe(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kind: str = "softmax",
    causal: bool = True,
    base: str = "softmax",
    h_y: Tensor | None = None,
    h_p: Tensor | None = None,
    content: str = "dot",
    scale: float | None = None,
    alibi_slopes: Tensor | None = None,
    dropout_p: float = 0.0,
    band_eps: float | None = DEFAULT_BAND_EPS,
) -> Kernel:
    """The :class:`Kernel` of a validated :func:`filtertron.attention` call.

    Args:
        q, k: (B, H, T, D) queries and keys; v: (B, H, T, Dv) values.
        kind: "softmax", "bilateral" or "twicing".
        causal: attend to j <= i only.
        base: the kernel twicing applies twice, "softmax" or "bilateral".
        h_y: (H,) content bandwidths (bilateral), None for :func:`default_h_y`.
        h_p: (H,) spatial bandwidths (bilateral).
        content: "dot" or "gaussian" (bilateral).
        scale: softmax logit scale, default 1/sqrt(D).
        alibi_slopes: (H,) ALiBi slopes m_h (softmax).
        dropout_p: attention dropout.
        band_eps: relative weight below which far keys are dropped; None keeps every key.

    Returns:
        The kernel description.
    """
    H, T, D = q.shape[1], q.shape[2], q.shape[3]
    dtype = param_dtype(q.dtype)
    kernel = base if kind == "twicing" else kind
    key_bias = position = coef = scalar = None
    if kernel == "bilateral":
        s, key_bias = split_content(q, k, h_y, content)
        position, coef = "square", 0.5 / h_p.to(dtype).square()
    else:
        scalar = 1.0 / math.sqrt(D) if scale is None else float(scale)
        s = torch.full((H,), scalar, dtype=dtype, device=q.device)
        if alibi_slopes is not None:
            position, coef = "linear", alibi_slopes.to(dtype)
    band = None
    if position is not None and band_eps is not None:
        band = band_width(position, coef, band_eps, T)
    return Kernel(
        q,
        k,
        v,
        s,
        key_bias,
        position,
        coef,
        band,
        causal,
        kind == "twicing",
        dropout_p,
        scalar,
        kind,
    )
