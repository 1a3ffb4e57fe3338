"""Diagnostics the papers read their claims off, from one forward pass.

- token uniformity: mean pairwise cosine similarity of token states, per layer
  (entry 0 is the embedding output y0, entry l the output of block l - 1), averaged over
  pairs i != j within a sequence and over the batch;
- attention entropy per layer and head: -sum_j A_ij log A_ij averaged over queries i (nats),
  of the base kernel A (for twicing layers, the kernel that is applied twice);
- the learned bandwidths h_y, h_p per bilateral layer and GRC's t per residual slot.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from filtertron.model.residual import GeneralizedResidual


def token_similarity(h: torch.Tensor) -> torch.Tensor:
    """Mean pairwise cosine similarity of tokens, h: (B, T, C) -> scalar (pairs i != j)."""
    B, T, _ = h.shape
    if T < 2:
        raise ValueError(
            f"h: need T >= 2 tokens for pairwise similarity, got shape {tuple(h.shape)}"
        )
    u = nn.functional.normalize(h.float(), dim=-1)
    s = u @ u.transpose(1, 2)  # (B, T, T)
    off = s.sum(dim=(1, 2)) - s.diagonal(dim1=1, dim2=2).sum(-1)
    return (off / (T * (T - 1))).mean()


def attention_entropy(a: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of a row-stochastic kernel, a: (B, H, T, T) -> (H,) mean over B, T."""
    ent = -(a * torch.log(a.clamp_min(1e-30))).sum(-1)  # (B, H, T)
    return ent.mean(dim=(0, 2))


def _core(attn_shell: nn.Module) -> nn.Module:
    return attn_shell.core


def learned_parameters(model: nn.Module) -> dict[str, Any]:
    """Current h_y, h_p (per bilateral layer) and t (per GRC slot), as plain lists."""
    out: dict[str, Any] = {"h_y": {}, "h_p": {}, "t": {}}
    for i, block in enumerate(model.blocks):
        core = _core(block.attn)
        base = getattr(core, "base", core)
        if hasattr(base, "log_h_y"):
            out["h_y"][i] = base.h_y.detach().float().tolist()
            out["h_p"][i] = base.h_p.detach().float().tolist()
        for slot in ("res1", "res2"):
            res = getattr(block, slot)
            if isinstance(res, GeneralizedResidual):
                out["t"][f"{i}.{slot}"] = float(res.t.detach())
    return out


@torch.no_grad()
def diagnose(model: nn.Module, idx: torch.Tensor) -> dict[str, Any]:
    """Run one forward pass on ``idx`` (B, T) and collect the diagnostics.

    Returns:
        {"token_similarity": [L + 1 floats], "attention_entropy": [L lists of H floats],
         "h_y": {layer: [H]}, "h_p": {layer: [H]}, "t": {"layer.slot": float}}
    """
    states: list[torch.Tensor] = []
    entropy: list[list[float]] = []
    hooks = []

    def on_core(mod: nn.Module, args: tuple, _out: torch.Tensor) -> None:
        q, k, _v = args
        entropy.append(attention_entropy(mod.probs(q, k)).float().tolist())

    def on_block(_mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if not states:
            states.append(args[1])  # y0: the input of block 0
        states.append(out)

    for block in model.blocks:
        hooks.append(_core(block.attn).register_forward_hook(on_core))
        hooks.append(block.register_forward_hook(on_block))
    was_training = model.training
    model.eval()
    try:
        model(idx)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {
        "token_similarity": [float(token_similarity(h)) for h in states],
        "attention_entropy": entropy,
        **learned_parameters(model),
    }
