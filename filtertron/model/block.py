"""A pre-LN transformer block with swappable attention and residual slots.

    x <- res1(x, attn(norm1(x)), y0);   x <- res2(x, mlp(norm2(x)), y0)

res1 / res2 are the standard residual (x + f) or GRC ((1 - t)(x + f) + t y0); GRC's
``apply_to: attn`` puts it in res1 only, ``both`` in both.
"""

from __future__ import annotations

import torch
from torch import nn

from filtertron.config import ModelConfig
from filtertron.model.attention import build_attention
from filtertron.model.layout import LayerSpec
from filtertron.model.mlp import MLP
from filtertron.model.residual import RESIDUALS, StandardResidual


def _residual(cfg: ModelConfig, kind: str) -> nn.Module:
    if kind == "generalized":
        return RESIDUALS[kind](cfg.residual.t_init, cfg.residual.learnable)
    return RESIDUALS[kind]()


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, spec: LayerSpec) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.attn = build_attention(cfg, spec.attention)
        self.res1 = _residual(cfg, spec.residual)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)
        both = cfg.residual.apply_to == "both"
        self.res2 = _residual(cfg, spec.residual) if both else StandardResidual()

    def forward(self, x: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
        """Args: x: (B, T, C) hidden states; y0: (B, T, C) embedding output. Returns (B, T, C)."""
        x = self.res1(x, self.attn(self.norm1(x)), y0)
        x = self.res2(x, self.mlp(self.norm2(x)), y0)
        return x
