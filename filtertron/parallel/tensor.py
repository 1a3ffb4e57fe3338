"""Tensor parallelism (TP) applied to a built GPT from a plan keyed by module names.

With n TP ranks, rank r keeps (megatron-core layers; whole weights are built, then sliced):

    wte       (V, C)   vocab-parallel rows [r Vp/n, (r+1) Vp/n); Vp = V rounded up to n
    qkv       (3C, C)  column: rows [r 3C/n, ...) = heads [r H/n, (r+1) H/n), as qkv's output is
                       laid out (H, 3, D); bias sliced alike
    attn.core          per-head tensors (alibi_slopes, log_h_y, log_h_p), head axis 0, sliced
                       [r H/n, (r+1) H/n) with the heads
    attn.proj (C, C)   row: columns [r C/n, ...); partial outputs all-reduced, bias added once
    mlp.fc (4C, C) column, mlp.proj (C, 4C) row
    lm_head   (V, C)   column over the vocabulary (the wte shard when tied): logits stay sharded,
                       (B, T, Vp/n), and ``criterion`` becomes vocab-parallel cross-entropy.
                       The Vp - V padding rows are zero and their logits are masked to -inf,
                       so the loss equals the unpadded one.

Sequence parallelism (SP) shards the hidden states on T between the TP regions:
(B, T, C) -> (B, T/n, C). The embedding reduce-scatters over T instead of all-reducing, norms
run on T/n tokens and then all-gather T (backward: reduce-scatter), row-parallel outputs are
reduce-scattered over T, and GRC's y0 is sharded with x. A parameter replicated over TP
(norms, row biases, GRC tau, learned positions) then sees only T/n tokens: its gradient is
summed over the TP group by a hook. Megatron's SP collectives work on dim 0, so the
batch-first tensors are transposed around them.

Module and parameter names are unchanged (megatron layers add an empty ``_extra_state``), so
a TP shard's state dict has the single-device names; :func:`partition_spec` says how each
tensor is split. Dropout draws from the same generator on every TP rank (masks are shared by
the heads and sequence shards of different ranks), which keeps the replicated regions
identical and activation-checkpoint recomputation exact.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import ModelParallelConfig
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    gather_from_sequence_parallel_region,
    vocab_parallel_cross_entropy,
)
from torch import nn

from filtertron.config import ModelConfig
from filtertron.model.gpt import GPT
from filtertron.model.position import LearnedPosition, SinusoidalPosition
from filtertron.parallel import collectives, megatron_cpu

# module-name pattern -> style; applied in module order (wte before the lm_head tied to it).
PLAN: dict[str, str] = {
    "wte": "vocab_embedding",
    "wpe": "sequence_position",
    "blocks.*.norm1": "sequence_norm",
    "blocks.*.attn.qkv": "column",
    "blocks.*.attn.core": "heads",
    "blocks.*.attn.proj": "row",
    "blocks.*.norm2": "sequence_norm",
    "blocks.*.mlp.fc": "column",
    "blocks.*.mlp.proj": "row",
    "norm_f": "sequence_norm",
    "lm_head": "vocab_head",
    "criterion": "vocab_cross_entropy",
}
_STYLE_DIMS = {
    "column": {"weight": 0, "bias": 0},
    "row": {"weight": 1},
    "vocab_embedding": {"weight": 0},
    "vocab_head": {"weight": 0},
}


def padded_vocab(vocab_size: int, tp: int) -> int:
    """The vocabulary rounded up to a multiple of tp."""
    return -(-vocab_size // tp) * tp


@dataclass(frozen=True)
class Shard:
    """How one state-dict tensor is split over TP: along ``dim``, after padding to ``padded``."""

    dim: int
    padded: int | None = None


def _style_of(name: str) -> str | None:
    return next((s for p, s in PLAN.items() if fnmatch.fnmatchcase(name, p)), None)


def partition_spec(model: nn.Module, vocab_size: int, tp: int) -> dict[str, Shard]:
    """State-dict names of a single-device GPT that TP splits, with their split.

    Names not in the result are replicated on every TP rank.
    """
    spec: dict[str, Shard] = {}
    for name, module in model.named_modules():
        style = _style_of(name)
        if style in _STYLE_DIMS:
            padded = padded_vocab(vocab_size, tp) if style.startswith("vocab") else None
            for local, dim in _STYLE_DIMS[style].items():
                if getattr(module, local, None) is not None:
                    spec[f"{name}.{local}"] = Shard(dim, padded)
        elif style == "heads":
            for sub_name, sub in module.named_modules():
                for p in getattr(type(sub), "head_params", ()):
                    if getattr(sub, p, None) is not None:
                        spec[".".join(x for x in (name, sub_name, p) if x)] = Shard(0)
    return spec


def shard_tensor(full: torch.Tensor, shard: Shard, rank: int, size: int) -> torch.Tensor:
    """Rank ``rank``'s slice of a full tensor (zero-padded first if the shard says so)."""
    if shard.padded is not None and shard.padded > full.shape[shard.dim]:
        pad = list(full.shape)
        pad[shard.dim] = shard.padded - full.shape[shard.dim]
        full = torch.cat([full, full.new_zeros(pad)], dim=shard.dim)
    if full.shape[shard.dim] % size:
        raise ValueError(
            f"dim {shard.dim} of shape {tuple(full.shape)} is not divisible by tp={size}"
        )
    return full.chunk(size, dim=shard.dim)[rank].clone()


def merge_tensors(parts: list[torch.Tensor], shard: Shard, full_size: int | None) -> torch.Tensor:
    """Inverse of :func:`shard_tensor`: concatenate and drop vocabulary padding."""
    out = torch.cat(parts, dim=shard.dim)
    if shard.padded is not None and full_size is not None:
        out = out.narrow(shard.dim, 0, full_size)
    return out.contiguous()


# --------------------------------------------------------------------------- modules


@dataclass(frozen=True)
class _Ctx:
    rank: int
    size: int
    group: dist.ProcessGroup
    sequence_parallel: bool
    padded: int  # the vocabulary rounded up to a multiple of size


def _megatron_config(ctx: _Ctx, dtype: torch.dtype, sequence_parallel: bool):
    # Weights come from the whole model (sliced), so megatron must not initialise them.
    return ModelParallelConfig(
        tensor_model_parallel_size=ctx.size,
        sequence_parallel=sequence_parallel,
        use_cpu_initialization=True,
        perform_initialization=False,
        params_dtype=dtype,
        gradient_accumulation_fusion=False,
    )


def _no_init(_: torch.Tensor) -> None:
    """megatron's init_method, never called (perform_initialization=False)."""


def _mark_sharded(p: nn.Parameter, dim: int) -> nn.Parameter:
    # megatron's attributes; DeepSpeed's gradient-norm code reads them to count a tensor that
    # differs per TP rank on every rank (a replicated one only once).
    p.tensor_model_parallel, p.partition_dim, p.partition_stride = True, dim, 1
    return p


def _load_shards(
    module: nn.Module, full: nn.Module, dims: dict[str, int], ctx: _Ctx, padded: int | None = None
) -> None:
    with torch.no_grad():
        for local, param in full.named_parameters(recurse=False):
            mine = getattr(module, local)
            if local in dims:
                mine.copy_(shard_tensor(param, Shard(dims[local], padded), ctx.rank, ctx.size))
                # Tells DeepSpeed's gradient-norm code that this tensor differs per TP rank.
                _mark_sharded(mine, dims[local])
            else:
                mine.copy_(param)
            mine.requires_grad_(param.requires_grad)


class ColumnLinear(ColumnParallelLinear):
    """Column-parallel linear returning a tensor (megatron's returns (output, bias))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[0]


class RowLinear(RowParallelLinear):
    """Row-parallel linear returning a tensor; under SP the (B, T, C) output is reduce-scattered
    over T (megatron scatters dim 0, hence the transposes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sequence_parallel:
            return super().forward(x)[0]
        # contiguous: hidden states cross pipeline stages, and p2p sends need it
        return super().forward(x.transpose(0, 1))[0].transpose(0, 1).contiguous()


class VocabEmbedding(VocabParallelEmbedding):
    """Vocab-parallel embedding, batch-first: (B, T) -> (B, T, C), or (B, T/n, C) under SP."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        n = ps.get_tensor_model_parallel_world_size()
        if self.reduce_scatter_embeddings and idx.shape[1] % n:
            raise ValueError(
                f"idx: sequence parallelism needs T divisible by tp={n}, got T={idx.shape[1]}"
            )
        out = super().forward(idx)
        return out.transpose(0, 1).contiguous() if self.reduce_scatter_embeddings else out


def _column(full: nn.Linear, ctx: _Ctx, padded: int | None = None) -> nn.Module:
    # Under SP the input was already gathered by the norm before, whose backward
    # reduce-scatters the input gradient: the linear itself must not all-reduce it.
    m = ColumnLinear(
        full.in_features,
        padded or full.out_features,
        bias=full.bias is not None,
        config=_megatron_config(ctx, full.weight.dtype, False),
        init_method=_no_init,
        gather_output=False,
        disable_grad_reduce=ctx.sequence_parallel,
    )
    _load_shards(m, full, _STYLE_DIMS["column"], ctx, padded)
    return m


def _row(full: nn.Linear, ctx: _Ctx) -> nn.Module:
    m = RowLinear(
        full.in_features,
        full.out_features,
        bias=full.bias is not None,
        config=_megatron_config(ctx, full.weight.dtype, ctx.sequence_parallel),
        init_method=_no_init,
        input_is_parallel=True,
        skip_bias_add=False,
    )
    _load_shards(m, full, _STYLE_DIMS["row"], ctx)
    return m


def _vocab_embedding(full: nn.Embedding, ctx: _Ctx) -> nn.Module:
    m = VocabEmbedding(
        ctx.padded,
        full.embedding_dim,
        init_method=_no_init,
        reduce_scatter_embeddings=ctx.sequence_parallel,
        config=_megatron_config(ctx, full.weight.dtype, ctx.sequence_parallel),
    )
    _load_shards(m, full, _STYLE_DIMS["vocab_embedding"], ctx, ctx.padded)
    return m


def _vocab_head(full: nn.Linear, ctx: _Ctx, tied: nn.Parameter | None) -> nn.Module:
    m = _column(full, ctx, ctx.padded)
    if tied is not None:
        # The tied head shares the embedding's shard: both split the padded vocabulary alike.
        m.weight = tied
    return m


class VocabParallelCrossEntropy(nn.Module):
    """The criterion slot under TP: cross-entropy over vocab-sharded logits (megatron-core)."""

    def __init__(self, vocab_size: int, padded: int, rank: int, size: int) -> None:
        super().__init__()
        per = padded // size
        ids = torch.arange(rank * per, (rank + 1) * per)
        self.register_buffer("pad_mask", ids >= vocab_size, persistent=False)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        """Args: logits (B, T, Vp/n) this rank's shard; targets (B, T). Returns a scalar, or
        (B, T) for "none"."""
        # A fresh tensor: megatron subtracts the row max in place.
        logits = logits.float().masked_fill(self.pad_mask, float("-inf"))
        loss = vocab_parallel_cross_entropy(logits, targets)  # (B, T)
        if reduction == "none":
            return loss
        return loss.sum() if reduction == "sum" else loss.mean()


class SequenceGatherLayerNorm(nn.LayerNorm):
    """LayerNorm on this rank's T/n tokens, then all-gather over T: (B, T/n, C) -> (B, T, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x).transpose(0, 1)  # (T/n, B, C): megatron gathers dim 0
        return gather_from_sequence_parallel_region(
            y, tensor_parallel_output_grad=True, group=self.tp_group
        ).transpose(0, 1)


def _sequence_norm(full: nn.LayerNorm, ctx: _Ctx) -> nn.Module:
    if not ctx.sequence_parallel:
        return full
    m = SequenceGatherLayerNorm(
        full.normalized_shape,
        eps=full.eps,
        elementwise_affine=full.elementwise_affine,
        bias=full.bias is not None,
    )
    m.tp_group = ctx.group
    m.load_state_dict(full.state_dict())
    return m


class _SequenceShard:
    """Position table for this rank's contiguous T/n slice of the sequence."""

    def forward(self, T: int) -> torch.Tensor:
        return super().forward(T).chunk(self.tp_size)[self.tp_rank]  # (T/n, C)


class ShardedLearnedPosition(_SequenceShard, LearnedPosition):
    pass


class ShardedSinusoidalPosition(_SequenceShard, SinusoidalPosition):
    pass


def _sequence_position(full: nn.Module, ctx: _Ctx) -> nn.Module:
    if not ctx.sequence_parallel:
        return full
    if isinstance(full, LearnedPosition):
        m = ShardedLearnedPosition(*full.weight.shape)
        m.load_state_dict(full.state_dict())
    else:
        m = ShardedSinusoidalPosition(full.d_model)
    m.tp_rank, m.tp_size = ctx.rank, ctx.size
    return m


def _heads(core: nn.Module, ctx: _Ctx) -> nn.Module:
    """Slice every declared per-head tensor (head axis 0) of the core and its sub-cores."""
    for sub in core.modules():
        for name in getattr(type(sub), "head_params", ()):
            t = getattr(sub, name, None)
            if t is None:
                continue
            mine = shard_tensor(t.detach(), Shard(0), ctx.rank, ctx.size)
            if isinstance(t, nn.Parameter):
                setattr(sub, name, _mark_sharded(nn.Parameter(mine, t.requires_grad), 0))
            else:
                setattr(sub, name, mine)
    return core


def _sum_grad_over_tp(group: dist.ProcessGroup):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return collectives.all_reduce(grad, group=group)

    return hook


def apply_tensor_parallel(model: GPT, cfg: ModelConfig, sequence_parallel: bool = False) -> GPT:
    """Shard ``model`` in place over megatron's tensor-parallel group (see the module docstring).

    ``filtertron.parallel.state.initialize`` must have run. Works for every attention kind
    (softmax with any position scheme, bilateral, twicing) and residual kind.

    Args:
        model: a whole single-device GPT (every rank built it with the same seed).
        cfg: its model config.
        sequence_parallel: shard activations over T between the TP regions.

    Returns:
        The same model (unchanged when tp = 1); ``model(idx, targets)`` returns the same loss on
        every TP rank, and ``model(idx)`` this rank's vocabulary shard of the logits,
        (B, T, Vp/n) (:func:`gather_logits` assembles them).
    """
    megatron_cpu.install()
    size = ps.get_tensor_model_parallel_world_size()
    if size == 1:
        return model
    ctx = _Ctx(
        ps.get_tensor_model_parallel_rank(),
        size,
        ps.get_tensor_model_parallel_group(),
        sequence_parallel,
        padded_vocab(cfg.vocab_size, size),
    )
    builders = {
        "column": _column,
        "row": _row,
        "vocab_embedding": _vocab_embedding,
        "sequence_norm": _sequence_norm,
        "sequence_position": _sequence_position,
        "heads": _heads,
    }
    for name in [n for n, _ in model.named_modules()]:
        style = _style_of(name)
        if style is None:
            continue
        module = model.get_submodule(name)
        if style == "vocab_head":
            new = _vocab_head(module, ctx, model.wte.weight if cfg.tie_embeddings else None)
        elif style == "vocab_cross_entropy":
            new = VocabParallelCrossEntropy(cfg.vocab_size, ctx.padded, ctx.rank, size)
        else:
            new = builders[style](module, ctx)
        if new is not module:
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, new)
    if sequence_parallel:
        for p in model.parameters():
            if p.requires_grad and not getattr(p, "tensor_model_parallel", False):
                p.sequence_parallel = True
                p.register_hook(_sum_grad_over_tp(ctx.group))
    return model


def gather_logits(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """All-gather vocab-sharded logits (B, T, Vp/n) into (B, T, V) (no gradient)."""
    parts = collectives.all_gather(logits, group=ps.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=-1)[..., :vocab_size]


def full_state_dict(
    model: nn.Module, cfg: ModelConfig, state: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The single-device state dict of a TP-sharded GPT (collective over the TP group); with
    ``state``, of those tensors of this rank's shard instead of the model's own (e.g. its fp32
    master weights)."""
    group, size = ps.get_tensor_model_parallel_group(), ps.get_tensor_model_parallel_world_size()
    spec = partition_spec(model, cfg.vocab_size, size)
    out = {}
    for name, t in (model.state_dict() if state is None else state).items():
        if name.endswith("_extra_state"):
            continue
        t = t.detach()
        if name in spec and size > 1:
            t = merge_tensors(collectives.all_gather(t, group), spec[name], cfg.vocab_size)
        out[name] = t.clone()
    return out
