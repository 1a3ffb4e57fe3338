"""Twicing attention core (Tukey's twicing, arXiv 2503.00687): smooth, then smooth the residual.

    out = (2A - A^2) V = A V + A (V - A V) = 2 O1 - O2,  O1 = attn(q, k, v),  O2 = attn(q, k, O1)

A is the base core's kernel (softmax or bilateral); the base's parameters are this layer's
parameters (``core.base.*``). A^2 is never built; causality holds since O1_j uses only j' <= j.
"""

from __future__ import annotations

import torch
from torch import nn

from filtertron.model.attention import functional


class TwicingAttention(nn.Module):
    kind = "twicing"
    head_params: tuple[str, ...] = ()

    def __init__(self, base: nn.Module, impl: str = "auto") -> None:
        super().__init__()
        if getattr(base, "dropout", 0.0):
            raise ValueError("twicing: the base kernel must have attention dropout 0")
        self.base = base
        self.impl = impl

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return functional.attention(
            q, k, v, kind="twicing", impl=self.impl, base=self.base.kind, **self.base.kernel_args()
        )

    def probs(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The base kernel A (twicing applies 2A - A^2 of it)."""
        return self.base.probs(q, k)
