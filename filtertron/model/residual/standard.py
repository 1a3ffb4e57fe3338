"""Standard (pre-LN) residual: X <- X + F(LN(X)). Y_0 is accepted and ignored."""

from __future__ import annotations

import torch
from torch import nn


class StandardResidual(nn.Module):
    def forward(self, x: torch.Tensor, fx: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
        """Args: x, fx, y0: (B, T, C). Returns x + fx."""
        return x + fx
