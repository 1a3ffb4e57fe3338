"""Pipeline parallelism (PP): the GPT as a DeepSpeed ``PipelineModule`` of stage layers.

The layer list (L blocks), with what flows between layers and the GPT names each one holds:

    0       EmbeddingPipe  idx (B, T) -> (x, y0)   wte, wpe [, lm_head when tied]
    1..L    BlockPipe      (x, y0) -> (x, y0)      blocks.{i}
    L+1     NormPipe       (x, y0) -> x            norm_f
    L+2     HeadPipe       x -> logits (B, T, V)   lm_head; when tied, the first layer again
                                                   (TiedLayerSpec "embed": DeepSpeed all-reduces
                                                   the shared weight's gradient over the two
                                                   stages holding it)
    loss_fn = the GPT's criterion(logits, targets)

x, y0: (B, T, C), or (B, T/tp, C) under sequence parallelism. y0 (the embedding output, GRC's
Y_0) travels with x only when the residual is generalized; both require grad, so y0's gradient
crosses the stage boundaries back to the embedding. Every layer's state dict uses the
single-device GPT's names (``blocks.3.attn.qkv.weight``), so DeepSpeed's per-layer checkpoint
files (``layer_{idx:02d}-model_{tp_rank:02d}-model_states.pt``) hold GPT state-dict entries.

Weights: copied from a whole model built with ``build_model(cfg.model)`` after
``torch.manual_seed(cfg.train.seed)`` (then tensor-parallel-sharded when tp > 1), so they equal
the single-process model's. Every rank builds the whole model once (peak memory: one whole
model); once the PipelineModule is built only this stage's layers stay referenced.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from filtertron.config import RunConfig
from filtertron.model.gpt import GPT, build_model
from filtertron.parallel import deepspeed_workarounds
from filtertron.parallel.state import ParallelLayout

PARTITION_METHODS = {"parameters": "parameters", "uniform": "type:BlockPipe"}


class EmbeddingPipe(nn.Module):
    """Token (+ position) embedding; also the tied LM head on the last stage."""

    # GPT.embed reads only wte, wpe, drop and _check_idx: reuse it so the math has one home.
    _check_idx = GPT._check_idx

    def __init__(self, model: GPT, carry_y0: bool) -> None:
        super().__init__()
        self.wte, self.wpe, self.drop = model.wte, model.wpe, model.drop
        if model.config.tie_embeddings:
            self.lm_head = model.lm_head
        self.carry_y0 = carry_y0

    def forward(self, idx: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        y0 = GPT.embed(self, idx)
        return (y0, y0) if self.carry_y0 else y0

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The tied LM head: (B, T, C) -> logits (B, T, V[/tp])."""
        return self.lm_head(x)


def _tied_head(module: EmbeddingPipe, x: torch.Tensor) -> torch.Tensor:
    return module.head(x)


class BlockPipe(nn.Module):
    """One transformer block; registered under ``blocks.{i}`` to keep the GPT's names."""

    def __init__(self, model: GPT, i: int, carry_y0: bool) -> None:
        super().__init__()
        self.key = str(i)
        self.blocks = nn.ModuleDict({self.key: model.blocks[i]})
        self.carry_y0 = carry_y0

    def forward(self, inputs):
        if self.carry_y0:
            x, y0 = inputs
            return self.blocks[self.key](x, y0), y0
        # Without GRC no residual reads y0 (standard residuals ignore it), so x stands in.
        return self.blocks[self.key](inputs, inputs)


class NormPipe(nn.Module):
    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.norm_f = model.norm_f

    def forward(self, inputs) -> torch.Tensor:
        return self.norm_f(inputs[0] if isinstance(inputs, tuple) else inputs)


class HeadPipe(nn.Module):
    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.lm_head = model.lm_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(x)


def carries_y0(cfg: RunConfig) -> bool:
    """Whether y0 must travel between stages (only GRC reads it)."""
    return cfg.model.residual.kind == "generalized"


def layer_specs(model: GPT, carry_y0: bool) -> list:
    """DeepSpeed layer specs over the modules of a (possibly TP-sharded) whole GPT."""
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    tied = model.config.tie_embeddings
    embed = (
        TiedLayerSpec("embed", EmbeddingPipe, model, carry_y0, tied_weight_attr="wte.weight")
        if tied
        else LayerSpec(EmbeddingPipe, model, carry_y0)
    )
    specs = [embed]
    specs += [LayerSpec(BlockPipe, model, i, carry_y0) for i in range(len(model.blocks))]
    specs.append(LayerSpec(NormPipe, model))
    if tied:
        specs.append(
            TiedLayerSpec(
                "embed",
                EmbeddingPipe,
                model,
                carry_y0,
                forward_fn=_tied_head,
                tied_weight_attr="wte.weight",
            )
        )
    else:
        specs.append(LayerSpec(HeadPipe, model))
    return specs


def layer_names(cfg: RunConfig) -> list[list[str]]:
    """For each pipeline layer index, the GPT state-dict prefixes its checkpoint file holds."""
    L = cfg.model.n_layers
    first = ["wte.", "wpe."] + (["lm_head."] if cfg.model.tie_embeddings else [])
    last = [] if cfg.model.tie_embeddings else ["lm_head."]
    return [first, *[[f"blocks.{i}."] for i in range(L)], ["norm_f."], last]


def build_pipeline(cfg: RunConfig, layout: ParallelLayout, model: GPT | None = None):
    """The PipelineModule of ``cfg`` on ``layout`` (tensor parallel inside stages if tp > 1).

    Use it as ``engine, *_ = deepspeed.initialize(model=pipe, model_parameters=[p for p in
    pipe.parameters() if p.requires_grad], config=ds_config)`` with
    ``ds_config`` updated by :func:`deepspeed_config_overrides`, then
    ``loss = engine.train_batch(iter(batches))`` where the iterator yields one ``(idx,
    targets)`` pair of LongTensors (B, T) per micro-batch (:func:`split_batches` turns the
    data loader's (B, T + 1) batches into these); it must be given on the first and the last
    stage, and every TP rank of a stage must see the same batches (shard data by
    ``layout.dp_rank``).

    Args:
        cfg: the run config (model, parallel.pp, parallel.pp_partition, train.seed,
            train.activation_checkpointing).
        layout: from :func:`filtertron.parallel.state.initialize`.
        model: a whole single-device GPT to take the weights from; default: built here after
            ``torch.manual_seed(cfg.train.seed)``, as the single-process trainer does.

    Returns:
        A ``deepspeed.pipe.PipelineModule``.
    """
    from deepspeed.pipe import PipelineModule

    if model is None:
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model)
    if layout.tp_size > 1:
        from filtertron.parallel.tensor import apply_tensor_parallel

        apply_tensor_parallel(model, cfg.model, cfg.parallel.sequence_parallel)
    ac = cfg.train.activation_checkpointing
    interval = 0 if ac == "none" else 1 if ac == "every" else int(ac)
    # no_grad: the module broadcasts the tied weight in place at construction; with grad
    # enabled autograd would record that broadcast into the weight's graph.
    with torch.no_grad():
        pipe = PipelineModule(
            layers=layer_specs(model, carries_y0(cfg)),
            loss_fn=model.criterion,
            topology=layout.topology(),
            partition_method=PARTITION_METHODS[cfg.parallel.pp_partition],
            activation_checkpoint_interval=interval,
            checkpointable_layers=["BlockPipe"],
        )
    deepspeed_workarounds.count_each_gradient_once(pipe, layout.pp_rank, layout.tp_rank)
    deepspeed_workarounds.release_layer_specs(pipe)
    return pipe


def deepspeed_config_overrides(cfg: RunConfig) -> dict[str, Any]:
    """Keys to merge into the DeepSpeed config when the model is a PipelineModule (see
    :data:`filtertron.parallel.deepspeed_workarounds.PIPELINE_CONFIG`)."""
    return copy.deepcopy(deepspeed_workarounds.PIPELINE_CONFIG)


def split_batches(batches: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(B, T + 1) token batches -> (idx, targets) = (batch[:, :-1], batch[:, 1:]) pairs."""
    for batch in batches:
        yield batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
