"""The fp32 master weights of a live bf16 DeepSpeed engine, under single-device GPT names.

A bf16 run computes with bf16 module weights; the optimizer keeps an fp32 master copy of each
parameter and rounds it to bf16 after every step:

    w_bf16 = round_bf16(w_fp32),   |w_fp32 - w_bf16| <= 2^-9 |w_fp32|

So the masters, not the module, are the trained weights: what a consolidated checkpoint
(``model.pt``) must hold and what a weights-only resume must restore. Where DeepSpeed keeps
them:

- ZeRO 1 and 2, ZeRO 3, and the pipeline engine's ``BF16_Optimizer``: partitioned over the
  data-parallel ranks and linked to each parameter (``deepspeed.utils.safe_get_full_fp32_param``
  assembles one, an all-reduce or all-gather over the data-parallel group);
- ZeRO 0 on the plain engine (``FP16_UnfusedOptimizer`` / ``FP16_Optimizer``): whole on every
  rank, in ``fp32_groups`` (or the flat ``fp32_groups_flat``) beside ``fp16_groups``.

Every function that reads or writes masters is collective over the data-parallel group: each
rank of it calls it, on the same module, in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _flat_masters(optimizer: Any) -> dict[int, torch.Tensor]:
    """id(bf16 parameter) -> its fp32 master, for DeepSpeed's unpartitioned FP16 optimizers."""
    table: dict[int, torch.Tensor] = {}
    lp_groups = getattr(optimizer, "fp16_groups", None) or []
    if hasattr(optimizer, "fp32_groups"):  # FP16_UnfusedOptimizer: one fp32 tensor per param
        hp_groups = optimizer.fp32_groups
    elif hasattr(optimizer, "fp32_groups_flat"):  # FP16_Optimizer: one flat buffer per group
        from torch._utils import _unflatten_dense_tensors

        hp_groups = [
            _unflatten_dense_tensors(flat, group)
            for flat, group in zip(optimizer.fp32_groups_flat, lp_groups, strict=True)
        ]
    else:
        return table
    for lp_group, hp_group in zip(lp_groups, hp_groups, strict=True):
        for lp, hp in zip(lp_group, hp_group, strict=True):
            table[id(lp)] = hp
    return table


class Masters:
    """Reads and writes the fp32 masters of ``engine``'s bf16 parameters."""

    def __init__(self, engine: Any) -> None:
        self.optimizer = engine.optimizer
        self.flat = _flat_masters(self.optimizer)

    def get(self, name: str, p: nn.Parameter) -> torch.Tensor:
        """The whole fp32 master of parameter ``p`` (named ``name`` for errors), on the CPU."""
        from deepspeed.utils import safe_get_full_fp32_param

        hp = safe_get_full_fp32_param(p)
        if hp is None:
            hp = self.flat.get(id(p))
        if hp is None:
            raise RuntimeError(
                f"no fp32 master weight for {name} in {type(self.optimizer).__name__}; "
                "filtertron knows DeepSpeed's ZeRO 1-3, BF16_Optimizer and FP16 optimizers"
            )
        return hp.detach().float().cpu().reshape(p.ds_shape if hasattr(p, "ds_shape") else p.shape)

    def set(self, name: str, p: nn.Parameter, value: torch.Tensor) -> None:
        """Overwrite the fp32 master of ``p`` (this rank's part of it) with ``value``."""
        from deepspeed.utils import safe_set_full_fp32_param

        if hasattr(p, "ds_id") or hasattr(p, "_hp_mapping"):
            safe_set_full_fp32_param(p, value.to(p.device, torch.float32))
        elif id(p) in self.flat:
            self.flat[id(p)].data.copy_(value.reshape(self.flat[id(p)].shape))
        else:
            raise RuntimeError(f"no fp32 master weight for {name} to restore")

    def state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """``module.state_dict()`` with every parameter replaced by its fp32 master (CPU)."""
        params = {id(p) for p in module.parameters()}
        out: dict[str, torch.Tensor] = {}
        seen: dict[int, torch.Tensor] = {}
        for name, t in module.state_dict(keep_vars=True).items():
            if not isinstance(t, torch.Tensor):  # megatron's _extra_state (None)
                continue
            if id(t) in params:
                if id(t) not in seen:  # tied weights: one master, several names
                    seen[id(t)] = self.get(name, t)
                out[name] = seen[id(t)]
            else:
                out[name] = t.detach().cpu()
        return out


def gpt_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """This rank's parameters and buffers by single-device GPT name (``keep_vars``): the GPT's
    own names, or under pipeline parallelism those of this stage's layers (which keep GPT
    names, :mod:`filtertron.parallel.pipeline`) and of its tied modules."""
    out: dict[str, torch.Tensor] = {}
    for layer in _stage_layers(module):
        out.update(layer.state_dict(keep_vars=True))
    return out


def _stage_layers(module: nn.Module) -> Iterator[nn.Module]:
    if not hasattr(module, "forward_funcs"):  # the GPT itself
        yield module
        return
    seen = set()
    layers = [f for f in module.forward_funcs if isinstance(f, nn.Module)]
    for layer in [*layers, *getattr(module, "tied_modules", {}).values()]:
        if id(layer) not in seen:
            seen.add(id(layer))
            yield layer


def write_stage_masters(engine: Any, out: Path, pp_rank: int, tp_rank: int, write: bool) -> None:
    """Write the fp32 masters of a pipeline stage's layers as ``layer_*-model_{tp}-*.pt``
    files in ``out``, one per layer DeepSpeed saves (GPT names; what
    :func:`filtertron.checkpoint.shards.consolidate` merges). Collective over the stage's
    data-parallel group; only the rank with ``write`` writes."""
    masters = Masters(engine)
    out.mkdir(parents=True, exist_ok=True)
    for i, layer in enumerate(engine.module.forward_funcs):
        if not isinstance(layer, nn.Module):  # the tied head's partial: saved by stage 0
            continue
        state = masters.state_dict(layer)
        if write:
            torch.save(
                state, out / f"layer_{pp_rank:02d}{i:03d}-model_{tp_rank:02d}-model_states.pt"
            )


def restore(engine: Any, full: dict[str, torch.Tensor], shard: Any = None) -> int:
    """Set the fp32 masters of ``engine``'s parameters from the single-device state ``full``.

    Args:
        engine: A DeepSpeed engine training in bf16.
        full: fp32 tensors by GPT name (a consolidated ``model.pt``).
        shard: ``name, tensor -> this tensor-parallel rank's slice`` (identity when None).

    Returns:
        The number of parameters restored.
    """
    masters = Masters(engine)
    params = {id(p) for p in engine.module.parameters()}
    done = set()
    for name, t in gpt_tensors(engine.module).items():
        if not isinstance(t, torch.Tensor) or id(t) not in params or id(t) in done:
            continue
        if name not in full:
            raise KeyError(f"model.pt has no {name} to restore its fp32 master from")
        masters.set(name, t, full[name] if shard is None else shard(name, full[name]))
        done.add(id(t))
    return len(done)
