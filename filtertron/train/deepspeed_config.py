"""The DeepSpeed config, generated from the run config (one source of truth).

A ``deepspeed:`` section in the run config may add keys or override generated ones; every
override of a generated value is reported (returned, and logged by the trainer) so two
sources never silently disagree.
"""

from __future__ import annotations

from typing import Any

from filtertron.config import RunConfig


def generate(cfg: RunConfig, dp_size: int, device: str = "cpu") -> dict[str, Any]:
    """The DeepSpeed config implied by ``cfg`` for ``dp_size`` data-parallel ranks whose
    parameters live on ``device`` (a device type: "cpu", "cuda")."""
    t, p = cfg.train, cfg.parallel
    offload = p.offload_optimizer
    # torch's AdamW (DeepSpeed passes unknown params through to it): on CPU it avoids
    # compiling DeepSpeed's FusedAdam; on CUDA its fused kernel (one launch for all
    # parameters, as a plain loop would use); with offload DeepSpeedCPUAdam instead.
    adam = {} if offload else {"torch_adam": True, **({"fused": True} if device == "cuda" else {})}
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.micro_batch_size * t.grad_accum * dp_size,
        "gradient_clipping": t.grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": t.lr,
                "betas": [t.beta1, t.beta2],
                "eps": 1e-8,
                "weight_decay": t.weight_decay,
                **adam,
            },
        },
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": t.steps,
                "warmup_num_steps": max(1, t.warmup),
                "warmup_min_ratio": 0.0,
                "warmup_type": "linear",
                "cos_min_ratio": t.min_lr / t.lr,
            },
        },
        "zero_optimization": {
            "stage": p.zero_stage,
            **({"offload_optimizer": {"device": "cpu"}} if offload else {}),
        },
        "bf16": {"enabled": t.precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def merge(
    generated: dict[str, Any], user: dict[str, Any], prefix: str = "deepspeed"
) -> tuple[dict[str, Any], list[str]]:
    """Deep-merge ``user`` over ``generated``; return the result and the overrides made."""
    out = dict(generated)
    overrides: list[str] = []
    for key, value in user.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key], sub = merge(out[key], value, name)
            overrides += sub
        else:
            if key in out and out[key] != value:
                overrides.append(f"{name}: {value!r} overrides the generated {out[key]!r}")
            out[key] = value
    return out, overrides


def build(
    cfg: RunConfig, dp_size: int, device: str = "cpu"
) -> tuple[dict[str, Any], list[str]]:
    """Generated config with the run config's ``deepspeed:`` section merged over it."""
    return merge(generate(cfg, dp_size, device), cfg.deepspeed)
