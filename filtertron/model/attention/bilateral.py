"""Bilateral self-attention core (BSA): a range kernel on content times a spatial kernel.

    logit_ij = C(q_i, k_j) + S(i, j),  S = -(i - j)^2 / (2 h_p^2),  A = softmax_{j <= i}
    C = q_i . k_j / h_y               (content="dot")
    C = -||q_i - k_j||^2 / (2 h_y^2)  (content="gaussian")

h_y and h_p are per head, stored as log h (shape (H,), head axis 0), learnable or frozen.
Init: h_y = sqrt(D) (dot) or D^(1/4) (gaussian), both giving softmax's 1/sqrt(D) scale at
start; h_p spread geometrically over heads from h_p_min to h_p_max, local to global.
This parameterisation is filtertron's: the paper's exact one could not be read here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from filtertron.model.attention import functional, reference


def init_h_p(n_heads: int, h_p_min: float, h_p_max: float) -> torch.Tensor:
    """Geometric spread of h_p over heads, (H,)."""
    if n_heads == 1:
        return torch.tensor([h_p_max])
    return torch.logspace(math.log10(h_p_min), math.log10(h_p_max), n_heads)


class BilateralAttention(nn.Module):
    kind = "bilateral"
    head_params: tuple[str, ...] = ("log_h_y", "log_h_p")

    def __init__(
        self,
        n_heads: int,
        head_dim: int,
        impl: str = "auto",
        dropout: float = 0.0,
        content: str = "dot",
        h_y_init: float | None = None,
        h_p_min: float = 2.0,
        h_p_max: float = 1024.0,
        learn_h_y: bool = True,
        learn_h_p: bool = True,
    ) -> None:
        super().__init__()
        self.impl = impl
        self.dropout = dropout
        self.content = content
        if h_y_init is None:
            h_y_init = math.sqrt(head_dim) if content == "dot" else head_dim**0.25
        log_h_y = torch.full((n_heads,), math.log(h_y_init))
        log_h_p = init_h_p(n_heads, h_p_min, h_p_max).log()
        for name, value, learn in (
            ("log_h_y", log_h_y, learn_h_y),
            ("log_h_p", log_h_p, learn_h_p),
        ):
            if learn:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    @property
    def h_y(self) -> torch.Tensor:
        return self.log_h_y.exp()

    @property
    def h_p(self) -> torch.Tensor:
        return self.log_h_p.exp()

    def kernel_args(self) -> dict:
        return {"h_y": self.h_y, "h_p": self.h_p, "content": self.content}

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        return functional.attention(
            q, k, v, kind="bilateral", impl=self.impl, dropout_p=p, **self.kernel_args()
        )

    def probs(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return reference.attention_probs(q, k, base="bilateral", **self.kernel_args())

    def extra_repr(self) -> str:
        return f"content={self.content}, impl={self.impl}"
