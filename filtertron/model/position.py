"""Position schemes: learned and sinusoidal (additive, at the embedding), rotary (rotates q
and k in the attention shell) and ALiBi (a per-head linear bias -m_h (i - j) on the logits).

Bilateral attention takes position only through its own spatial kernel, so a BSA model
normally uses ``none`` here.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LearnedPosition(nn.Module):
    """A learned table of ``seq_len`` position vectors (GPT-2)."""

    def __init__(self, seq_len: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(seq_len, d_model))

    def forward(self, T: int) -> torch.Tensor:
        if T > self.weight.shape[0]:
            raise ValueError(
                f"idx: sequence length {T} exceeds the learned position table "
                f"(expected T <= {self.weight.shape[0]}, model.seq_len); learned positions "
                "cannot represent longer contexts"
            )
        return self.weight[:T]  # (T, C)


class SinusoidalPosition(nn.Module):
    """Fixed sinusoidal positions (Vaswani et al.), defined for any length."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model

    def forward(self, T: int) -> torch.Tensor:
        pos = torch.arange(T, dtype=torch.float32).unsqueeze(1)
        inv = torch.exp(
            torch.arange(0, self.d_model, 2, dtype=torch.float32)
            * (-math.log(10000.0) / self.d_model)
        )
        pe = torch.zeros(T, self.d_model)
        pe[:, 0::2] = torch.sin(pos * inv)
        pe[:, 1::2] = torch.cos(pos * inv[: self.d_model // 2])
        return pe  # (T, C)


class Rotary(nn.Module):
    """Rotary position embedding applied to q and k of shape (B, H, T, D) (rotate-half form)."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = q.shape[-2]
        t = torch.arange(T, device=q.device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq.to(q.device))  # (T, D/2)
        cos = torch.cat([freqs.cos(), freqs.cos()], dim=-1).to(q.dtype)
        sin = torch.cat([freqs.sin(), freqs.sin()], dim=-1).to(q.dtype)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi head slopes (Press et al.): geometric 2^(-8 h / H), extended for non powers of 2."""

    def pow2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        s = pow2(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        s = pow2(closest) + pow2(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(s, dtype=torch.float32)  # (H,)
