"""Per-layer choices in one pure function: which attention kind and residual each layer uses.

``kind: twicing`` with ``twicing.layers`` = "all", K (the last K layers) or a list of indices
twices those layers; the others use the twicing base kernel plainly. So "BSA everywhere,
twicing in the last 2" is ``kind: twicing, twicing: {base: bilateral, layers: 2}``.
"""

from __future__ import annotations

from dataclasses import dataclass

from filtertron.config import ModelConfig


@dataclass(frozen=True)
class LayerSpec:
    attention: str  # a key of ATTENTIONS
    residual: str  # a key of RESIDUALS


def twicing_layers(cfg: ModelConfig) -> set[int]:
    """Indices of the layers that twice (empty unless attention.kind is twicing)."""
    att = cfg.attention
    if att.kind != "twicing":
        return set()
    sel = att.twicing.layers
    if sel == "all":
        return set(range(cfg.n_layers))
    if isinstance(sel, int):
        return set(range(cfg.n_layers - sel, cfg.n_layers))
    return set(sel)


def layer_specs(cfg: ModelConfig) -> list[LayerSpec]:
    """One LayerSpec per layer, in order."""
    twice = twicing_layers(cfg)
    plain = cfg.attention.twicing.base if cfg.attention.kind == "twicing" else cfg.attention.kind
    return [
        LayerSpec("twicing" if i in twice else plain, cfg.residual.kind)
        for i in range(cfg.n_layers)
    ]
