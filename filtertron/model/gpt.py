"""A GPT language model: embeddings, pre-LN blocks, final LayerNorm, (tied) LM head.

    idx (B, T) -> wte [+ wpe] -> dropout = y0 -> blocks(x, y0) -> norm_f -> lm_head (B, T, V)

Plain single-device PyTorch: no torch.distributed, DeepSpeed or megatron here. Module names
(wte, wpe, blocks.{i}.attn.qkv, ...) are API: the tensor-parallel plan and checkpoint
conversion key on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from filtertron.config import ModelConfig, RunConfig
from filtertron.model.block import Block
from filtertron.model.layout import layer_specs
from filtertron.model.position import LearnedPosition, SinusoidalPosition


class CrossEntropy(nn.Module):
    """Next-token cross-entropy in fp32; a slot the tensor-parallel pass swaps for the
    vocab-parallel version."""

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        """Args: logits (B, T, V); targets (B, T). Returns a scalar, or (B, T) for "none"."""
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction=reduction)
        return loss.view_as(targets) if reduction == "none" else loss


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.position == "learned":
            self.wpe = LearnedPosition(cfg.seq_len, cfg.d_model)
        elif cfg.position == "sinusoidal":
            self.wpe = SinusoidalPosition(cfg.d_model)
        else:
            self.wpe = None  # rotary and alibi act inside attention; bilateral has its own
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, spec) for spec in layer_specs(cfg))
        self.norm_f = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.criterion = CrossEntropy()
        # Set by the trainer to wrap blocks in activation checkpointing; not a module, so the
        # state dict is unchanged. checkpoint_fn(block, x, y0) -> x.
        self.checkpoint_fn: Callable | None = None
        self.checkpoint_every = 1
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # GPT-2: scale residual projections by depth
                nn.init.normal_(p, 0.0, cfg.init_std / math.sqrt(2 * cfg.n_layers))

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, self.config.init_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, self.config.init_std)
        elif isinstance(m, LearnedPosition):
            nn.init.normal_(m.weight, 0.0, self.config.init_std)

    def _check_idx(self, idx: torch.Tensor, name: str = "idx") -> None:
        if idx.dim() != 2:
            raise ValueError(f"{name}: expected shape (B, T), got {tuple(idx.shape)}")
        if idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name}: expected an integer tensor of token ids, got {idx.dtype}")

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token (and additive position) embedding: (B, T) -> y0 (B, T, C)."""
        self._check_idx(idx)
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(idx.shape[1]).to(x.dtype)
        return self.drop(x)

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """Final hidden states before the LM head: (B, T) -> (B, T, C)."""
        x = y0 = self.embed(idx)
        for i, block in enumerate(self.blocks):
            if self.checkpoint_fn is not None and i % self.checkpoint_every == 0:
                x = self.checkpoint_fn(block, x, y0)
            else:
                x = block(x, y0)
        return self.norm_f(x)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean"
    ) -> torch.Tensor:
        """Args:
            idx: (B, T) token ids.
            targets: (B, T) next-token ids, or None to return logits.
            reduction: "mean" (scalar loss) or "none" (per-token NLL, (B, T)).

        Returns:
            logits (B, T, V) if targets is None, else the cross-entropy loss.
        """
        logits = self.lm_head(self.hidden_states(idx))
        if targets is None:
            return logits
        if targets.shape != idx.shape:
            raise ValueError(
                f"targets: expected shape {tuple(idx.shape)}, got {tuple(targets.shape)}"
            )
        return self.criterion(logits, targets, reduction)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(config: ModelConfig | RunConfig) -> GPT:
    """Build the single-device GPT described by a model (or whole run) config."""
    if isinstance(config, RunConfig):
        config = config.model
    return GPT(config)
