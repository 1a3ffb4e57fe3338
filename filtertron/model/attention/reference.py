"""Materialised reference attention: slow, literal, and the definition of correctness.

Every impl (``reference``, ``sdpa``, ``tiled``, ``flex``, ``triton``, all of which run the
kernel description of :mod:`filtertron.kernels.description`) is tested against these
functions, which never see that description: they build the full logit matrix (B, H, T, T)
straight from the definitions in SPEC.md and the user's h_y, h_p and slopes, per head h:

    softmax:    logit_ij = scale q_i . k_j  [- m_h (i - j)]          (ALiBi, optional)
    bilateral:  logit_ij = C(q_i, k_j) - (i - j)^2 / (2 h_p^2),  with the content kernel
                C = q_i . k_j / h_y ("dot")  or  C = -||q_i - k_j||^2 / (2 h_y^2) ("gaussian")
    A = softmax_j(logit) over j <= i (causal) or all j,   out = A V
    twicing:    out = 2 O1 - O2,  O1 = A V,  O2 = A O1        (A^2 is never built)

Shapes: q, k (B, H, T, D); v (B, H, T, Dv); h_y, h_p, alibi_slopes (H,); output (B, H, T, Dv).
Inputs are assumed validated (see :mod:`filtertron.model.attention.functional`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from filtertron.kernels.description import default_h_y


def _distance(T: int, like: Tensor) -> Tensor:
    """(T, T) signed distance i - j as float in the dtype of ``like``."""
    pos = torch.arange(T, device=like.device, dtype=like.dtype)
    return pos[:, None] - pos[None, :]


def _per_head(x: Tensor, like: Tensor) -> Tensor:
    """(H,) -> (H, 1, 1) in the dtype of ``like``, so it broadcasts over (B, H, T, T)."""
    return x.to(like.dtype)[:, None, None]


def logits(
    q: Tensor,
    k: Tensor,
    base: str = "softmax",
    causal: bool = True,
    h_y: Tensor | None = None,
    h_p: Tensor | None = None,
    content: str = "dot",
    scale: float | None = None,
    alibi_slopes: Tensor | None = None,
) -> Tensor:
    """The logit matrix of the kernel, with masked entries set to -inf.

    Args:
        q: (B, H, T, D) queries.
        k: (B, H, T, D) keys.
        base: "softmax" or "bilateral".
        causal: mask j > i.
        h_y: (H,) content bandwidth (bilateral); None means :func:`default_h_y`.
        h_p: (H,) spatial bandwidth (bilateral, required).
        content: "dot" or "gaussian" (bilateral).
        scale: softmax logit scale, default 1/sqrt(D).
        alibi_slopes: (H,) ALiBi slopes m_h (softmax only).

    Returns:
        (B, H, T, T) logits.
    """
    T, D = q.shape[-2], q.shape[-1]
    dist = _distance(T, q)
    if base == "softmax":
        scale = 1.0 / math.sqrt(D) if scale is None else scale
        out = torch.matmul(q, k.transpose(-1, -2)) * scale
        if alibi_slopes is not None:
            out = out - _per_head(alibi_slopes, q) * (dist if causal else dist.abs())
    elif base == "bilateral":
        if h_p is None:
            raise ValueError("bilateral attention needs h_p, a (H,) tensor of spatial bandwidths")
        if h_y is None:
            h_y = torch.full_like(h_p, default_h_y(content, D))
        hy = _per_head(h_y, q)
        if content == "dot":
            out = torch.matmul(q, k.transpose(-1, -2)) / hy
        else:
            # ||q_i - k_j||^2 expanded (as torch.cdist does): the literal difference would
            # build (B, H, T, T, D), 8.6 GB at B=4 H=8 T=1024 D=64; tests check it equals.
            qq, kk = q.square().sum(-1), k.square().sum(-1)  # (B, H, T)
            sq = qq[..., :, None] + kk[..., None, :] - 2 * torch.matmul(q, k.transpose(-1, -2))
            out = -sq.clamp_min(0) / (2 * hy * hy)
        # (d / (sqrt(2) h_p))^2, not d^2 / (2 h_p^2): d^2 overflows float16 past T = 256.
        out = out - (dist / (math.sqrt(2.0) * _per_head(h_p, q))).square()
    else:
        raise ValueError(f"base: expected 'softmax' or 'bilateral', got {base!r}")
    if causal:
        out = out.masked_fill(dist < 0, float("-inf"))
    return out


def attention_probs(
    q: Tensor,
    k: Tensor,
    base: str = "softmax",
    causal: bool = True,
    h_y: Tensor | None = None,
    h_p: Tensor | None = None,
    content: str = "dot",
    scale: float | None = None,
    alibi_slopes: Tensor | None = None,
) -> Tensor:
    """The materialised row-stochastic kernel A (B, H, T, T), e.g. for attention entropy.

    Args are those of :func:`logits`. Returns A = softmax over the last axis of the logits.
    """
    return torch.softmax(logits(q, k, base, causal, h_y, h_p, content, scale, alibi_slopes), dim=-1)


def _apply(probs: Tensor, v: Tensor, dropout_p: float) -> Tensor:
    if dropout_p > 0.0:
        probs = F.dropout(probs, dropout_p, training=True)
    return torch.matmul(probs, v)


def softmax(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = True,
    scale: float | None = None,
    alibi_slopes: Tensor | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Softmax attention (optionally with ALiBi).

    Args:
        q, k: (B, H, T, D) queries and keys; v: (B, H, T, Dv) values.
        causal: mask j > i.
        scale: logit scale, default 1/sqrt(D).
        alibi_slopes: (H,) ALiBi slopes, or None.
        dropout_p: attention dropout on A.

    Returns:
        (B, H, T, Dv).
    """
    probs = attention_probs(q, k, "softmax", causal, scale=scale, alibi_slopes=alibi_slopes)
    return _apply(probs, v, dropout_p)


def bilateral(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    h_y: Tensor | None,
    h_p: Tensor,
    content: str = "dot",
    causal: bool = True,
    dropout_p: float = 0.0,
) -> Tensor:
    """Bilateral self-attention.

    Args:
        q, k: (B, H, T, D) queries and keys; v: (B, H, T, Dv) values.
        h_y: (H,) content bandwidths, None for :func:`default_h_y`.
        h_p: (H,) spatial bandwidths.
        content: "dot" or "gaussian".
        causal: mask j > i.
        dropout_p: attention dropout on A.

    Returns:
        (B, H, T, Dv).
    """
    probs = attention_probs(q, k, "bilateral", causal, h_y=h_y, h_p=h_p, content=content)
    return _apply(probs, v, dropout_p)


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
) -> Tensor:
    """Twicing attention 2 A V - A (A V) over the ``base`` kernel.

    Args:
        q, k: (B, H, T, D) queries and keys; v: (B, H, T, Dv) values.
        base, causal, h_y, h_p, content, scale, alibi_slopes: the kernel, see :func:`logits`.

    Returns:
        (B, H, T, Dv).
    """
    probs = attention_probs(q, k, base, causal, h_y, h_p, content, scale, alibi_slopes)
    o1 = torch.matmul(probs, v)
    return 2 * o1 - torch.matmul(probs, o1)
