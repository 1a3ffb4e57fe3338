"""Context lengths beyond training: length parsing, representability checks, the eval impl.

A length is given as tokens (``512``), kibi-tokens (``4K`` = 4096) or a multiple of the
model's training length (``2x`` = 2 seq_len). Learned absolute positions cannot represent
T > seq_len, so such a request is refused before anything runs; sinusoidal, rotary, ALiBi,
no positions and bilateral attention (whose spatial kernel depends on i - j only) are defined
for any T.

Memory: a window of T tokens needs O(T) activations only if attention never materialises the
(T, T) kernel. ``reference`` does (B H T^2 floats: 4 GiB per layer at T = 16K, H = 4), so the
evaluation's ``auto`` picks a fused implementation (``sdpa``: PyTorch's fused kernel for plain
softmax, a tiled online-softmax engine for ALiBi, bilateral and twicing), and the LM head is
applied in chunks (:func:`filtertron.eval.perplexity.nll_from_hidden`).
"""

from __future__ import annotations

import dataclasses
import re

import torch
from torch import nn

from filtertron.config import ModelConfig
from filtertron.kernels.registry import IMPLS

ANY_LENGTH_POSITIONS = ("sinusoidal", "rotary", "alibi", "none")
EVAL_IMPLS = ("auto", *IMPLS)
_FUSED = ("sdpa", "tiled", "triton")
FUSED_DEFAULT = "sdpa"  # memory linear in T on CPU and GPU, forward and backward
_LENGTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKxX]?)\s*$")


class UnsupportedLengthError(ValueError):
    """A requested context length the model cannot represent."""


def parse_lengths(spec: str | None, seq_len: int) -> list[int]:
    """Context lengths from a comma list such as ``"128,4K,2x"``.

    Args:
        spec: Comma-separated items: N (tokens), NK (N * 1024), Nx (N * seq_len); None or
            empty for the training length alone.
        seq_len: The model's training length (``model.seq_len``).

    Returns:
        The lengths in the given order, duplicates removed.
    """
    if not spec:
        return [seq_len]
    out: list[int] = []
    for item in spec.split(","):
        m = _LENGTH.match(item)
        if m is None:
            raise ValueError(f"--lengths: cannot read {item!r} (use 512, 4K or 2x)")
        value, unit = float(m.group(1)), m.group(2).lower()
        n = value * {"": 1, "k": 1024, "x": seq_len}[unit]
        if n != int(n) or n < 1:
            raise ValueError(f"--lengths: {item!r} is not a positive whole number of tokens")
        if int(n) not in out:
            out.append(int(n))
    return out


def check_length(cfg: ModelConfig, length: int, where: str = "model") -> None:
    """Refuse a context length the model's position scheme cannot represent.

    Raises:
        UnsupportedLengthError: learned positions and ``length > seq_len``.
    """
    if cfg.position == "learned" and length > cfg.seq_len:
        raise UnsupportedLengthError(
            f"{where}: context length {length} exceeds its learned position table "
            f"(model.seq_len={cfg.seq_len}, position=learned); learned absolute positions "
            f"cannot represent longer contexts, and filtertron does not truncate silently. "
            f"Evaluate at lengths <= {cfg.seq_len}, or use a model with "
            f"{'/'.join(ANY_LENGTH_POSITIONS)} positions or bilateral attention."
        )


def resolve_impl(
    requested: str, cfg: ModelConfig, needs_grad: bool = False, device: str = "cpu"
) -> str:
    """The attention implementation to evaluate with, as an explicit name.

    ``auto`` keeps the checkpoint's implementation when it is a fused one (``sdpa``,
    ``tiled``, ``triton``; ``flex`` unless gradients are needed on CPU, where its backward is
    refused) and otherwise
    takes the attention operator's own ``auto`` choice for this device and kind (``sdpa`` on
    CPU), never the materialised ``reference``, so long contexts never build the (T, T)
    kernel. An explicit request is used as given (``reference`` runs, at quadratic memory).

    Args:
        requested: One of :data:`EVAL_IMPLS`.
        cfg: The checkpoint's model config.
        needs_grad: The evaluation differentiates through the model (embedding attacks).
        device: Device type the model runs on.

    Returns:
        An explicit implementation name.
    """
    from filtertron.model.attention import functional

    if requested not in EVAL_IMPLS:
        raise ValueError(f"--impl: expected one of {EVAL_IMPLS}, got {requested!r}")
    if requested != "auto":
        return requested
    own = cfg.attention.impl
    if own in _FUSED or (own == "flex" and not (needs_grad and device == "cpu")):
        return own
    att = cfg.attention
    choice = functional.resolve_impl(
        "auto", torch.device(device), att.kind, att.twicing.base, needs_grad, False
    )
    return FUSED_DEFAULT if choice == "reference" else choice


def with_impl(model: nn.Module, impl: str) -> nn.Module:
    """The same model (same weights) with another attention implementation.

    Returns ``model`` itself when it already uses ``impl``; otherwise builds a new model from
    the config with ``attention.impl`` replaced, on ``model``'s device, and loads the state
    dict.
    """
    from filtertron.model import build_model

    cfg: ModelConfig = model.config
    if cfg.attention.impl == impl:
        return model
    new_cfg = dataclasses.replace(cfg, attention=dataclasses.replace(cfg.attention, impl=impl))
    new = build_model(new_cfg).to(next(model.parameters()).device)
    new.load_state_dict(model.state_dict())
    return new.eval()
