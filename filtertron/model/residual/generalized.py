"""Generalized Residual Connection (GRC, the "boosting" residual of arXiv 2506.10371).

    X <- (1 - t) (X + F(LN(X))) + t Y_0,   t = sigmoid(tau) in (0, 1), one per layer slot,

with Y_0 the embedding output (the input of block 0), passed explicitly with the hidden
states. Each layer re-filters and keeps fidelity to the noisy input, as boosting in iterative
image denoising does. t = 0 is exactly the standard residual.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class GeneralizedResidual(nn.Module):
    """GRC slot. ``tau`` is learnable (shape (1,); a 0-dim parameter breaks DeepSpeed's
    broadcast) or, when fixed, ``t`` is a buffer holding the exact value (so t = 0 is exact).
    """

    def __init__(self, t_init: float = 0.1, learnable: bool = True) -> None:
        super().__init__()
        self.learnable = learnable
        if learnable:
            tau = math.log(t_init / (1.0 - t_init))
            self.tau = nn.Parameter(torch.full((1,), tau))
        else:
            self.register_buffer("t_fixed", torch.full((1,), float(t_init)))

    @property
    def t(self) -> torch.Tensor:
        """The current mixing weight, shape (1,)."""
        return torch.sigmoid(self.tau) if self.learnable else self.t_fixed

    def forward(self, x: torch.Tensor, fx: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
        """Args: x, fx, y0: (B, T, C). Returns (1 - t)(x + fx) + t y0."""
        t = self.t.to(x.dtype)
        return (1 - t) * (x + fx) + t * y0

    def extra_repr(self) -> str:
        return f"t={float(self.t.detach()):.4f}, learnable={self.learnable}"
