"""The attention shell: projections, heads and positions around a core.

    x (B, T, C) -> qkv -> q, k, v (B, H, T, D) -> [rotary] -> core -> (B, H, T, D) -> proj

The core maps (B, H, T, D) tensors to (B, H, T, D) and never sees tensor parallelism: the shell
reads the number of local heads off the projection's output width, so a column-parallel
``qkv`` that keeps whole heads needs no change here. ``qkv``'s output is laid out per head as
(H, 3, D) -- q, k and v of a head are adjacent -- so sharding its output dimension into
contiguous blocks hands every rank whole heads (Megatron's layout).
"""

from __future__ import annotations

import torch
from torch import nn

from filtertron.config import ModelConfig
from filtertron.model.position import Rotary


class AttentionShell(nn.Module):
    """Multi-head causal self-attention around a pluggable core."""

    def __init__(self, cfg: ModelConfig, core: nn.Module) -> None:
        super().__init__()
        self.head_dim = cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.rotary = Rotary(cfg.head_dim, cfg.rotary_base) if cfg.position == "rotary" else None
        self.core = core
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (B, T, C). Returns: (B, T, C)."""
        B, T, _ = x.shape
        qkv = self.qkv(x)
        n_heads = qkv.shape[-1] // (3 * self.head_dim)  # local heads under tensor parallelism
        qkv = qkv.view(B, T, n_heads, 3, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # 3 x (B, H, T, D)
        if self.rotary is not None:
            q, k = self.rotary(q, k)
        y = self.core(q, k, v)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, n_heads * self.head_dim)
        return self.dropout(self.proj(y))
