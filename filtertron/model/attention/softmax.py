"""Softmax attention core (the baseline): A = softmax_j(q_i . k_j / sqrt(D) [- m_h (i - j)]).

Optional ALiBi slopes m_h (H,) live in a buffer whose axis 0 is the head axis.
"""

from __future__ import annotations

import torch
from torch import nn

from filtertron.model.attention import functional, reference


class SoftmaxAttention(nn.Module):
    kind = "softmax"
    head_params: tuple[str, ...] = ("alibi_slopes",)  # per-head tensors, head axis 0

    def __init__(
        self,
        n_heads: int,
        head_dim: int,
        impl: str = "auto",
        dropout: float = 0.0,
        alibi_slopes: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.impl = impl
        self.dropout = dropout
        if alibi_slopes is not None and alibi_slopes.shape != (n_heads,):
            raise ValueError(
                f"alibi_slopes: expected shape ({n_heads},), got {tuple(alibi_slopes.shape)}"
            )
        self.register_buffer("alibi_slopes", alibi_slopes)

    def kernel_args(self) -> dict:
        """Keyword arguments that define this kernel for :func:`functional.attention`."""
        return {"alibi_slopes": self.alibi_slopes}

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        return functional.attention(
            q, k, v, kind="softmax", impl=self.impl, dropout_p=p, **self.kernel_args()
        )

    def probs(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The materialised kernel A (B, H, T, T), for diagnostics."""
        return reference.attention_probs(q, k, base="softmax", **self.kernel_args())
