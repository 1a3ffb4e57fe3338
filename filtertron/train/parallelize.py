"""``parallelize(model, cfg, layout)``: the one step from a built GPT to a training runner.

The transformations are applied to the built single-device model in this fixed order:

1. activation checkpointing: every k-th block of the GPT recomputes its forward in the
   backward (``deepspeed.checkpointing``); under pipeline parallelism the PipelineModule's own
   ``activation_checkpoint_interval`` does the same per stage (step 3);
2. tensor parallelism (``parallel.tp > 1``): megatron-core layers replace the GPT's modules by
   name (:func:`filtertron.parallel.tensor.apply_tensor_parallel`), weights sliced from the
   whole model;
3. pipeline stages (``parallel.pp > 1``): the (sharded) GPT cut into a DeepSpeed
   ``PipelineModule`` (:func:`filtertron.parallel.pipeline.build_pipeline`, which shards
   before it cuts);
4. compilation (``train.compile``): ``torch.compile`` on the whole GPT with static shapes
   (:func:`compile_model`), or on each stage's blocks under pipeline parallelism;
5. the DeepSpeed engine (config generated from ``cfg``) and the workarounds of
   :mod:`filtertron.parallel.deepspeed_workarounds`.

The result is a :class:`~filtertron.train.runner.Runner` (the plain engine, or the pipeline
engine) that owns ``train_step``, ``validate`` and ``consolidate``; the trainer holds one and
never asks which layout it runs.
"""

from __future__ import annotations

import logging
from typing import Any

from filtertron.config import RunConfig
from filtertron.model.gpt import GPT
from filtertron.parallel.state import ParallelLayout
from filtertron.train import deepspeed_config
from filtertron.train.runner import EngineRunner, PipelineRunner, Runner

log = logging.getLogger(__name__)


def param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: matrices and embeddings decay; biases, norms and per-head/per-layer
    scalars (log h_y, log h_p, GRC tau) do not."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def checkpoint_interval(cfg: RunConfig) -> int:
    """Every how many blocks activations are recomputed (0: never)."""
    ac = cfg.train.activation_checkpointing
    return 0 if ac == "none" else 1 if ac == "every" else int(ac)


def _checkpoint_activations(model: GPT, every: int) -> None:
    import deepspeed

    deepspeed.checkpointing.configure(None, partition_activations=False)
    model.checkpoint_fn = deepspeed.checkpointing.checkpoint
    model.checkpoint_every = every


def compile_model(model: Any, **options: Any) -> None:
    """``train.compile`` of the whole GPT: ``model.compile(dynamic=False, **options)``.

    Static shapes: training and validation each run one shape, and a dynamic batch or length
    would reach FlexAttention (auto's choice on CUDA for ALiBi, bilateral and twicing) as a
    symbolic shape, which inductor's CPU flex kernel cannot build (torch 2.13) and no GPU run
    has checked. Another shape (diagnostics at B = 1, an evaluation length) compiles once more.
    """
    model.compile(dynamic=False, **options)


def _compile_stages(pipe: Any) -> None:
    from filtertron.parallel.deepspeed_workarounds import compiled_stages_keep_their_graph
    from filtertron.parallel.pipeline import BlockPipe

    compiled_stages_keep_their_graph()
    for layer in pipe.forward_funcs:
        if isinstance(layer, BlockPipe):
            layer.compile()


def parallelize(model: GPT, cfg: RunConfig, layout: ParallelLayout) -> Runner:
    """Apply ``cfg``'s parallelism to ``model`` and wrap it in a DeepSpeed engine.

    Args:
        model: The whole single-device GPT, built with ``torch.manual_seed(cfg.train.seed)``
            on every rank (so all ranks start from the same weights).
        cfg: The run config (``parallel``, ``train``).
        layout: This process's place (:func:`filtertron.parallel.state.layout_for`).

    Returns:
        An :class:`EngineRunner` (pp = 1) or a :class:`PipelineRunner` (pp > 1).
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    device = get_accelerator().device_name()  # where the engine will put the model
    ds_cfg, overrides = deepspeed_config.build(cfg, layout.dp_size, device)
    for o in overrides:
        log.warning("deepspeed config: %s", o)
    every = checkpoint_interval(cfg)
    extra: dict[str, Any] = {}
    if layout.pp_size > 1:
        from filtertron.parallel import pipeline

        module = pipeline.build_pipeline(cfg, layout, model)  # steps 1-3
        ds_cfg, _ = deepspeed_config.merge(ds_cfg, pipeline.deepspeed_config_overrides(cfg))
        if cfg.train.compile:
            _compile_stages(module)
    else:
        if every:
            _checkpoint_activations(model, every)
        if layout.tp_size > 1:
            from filtertron.parallel.tensor import apply_tensor_parallel

            apply_tensor_parallel(model, cfg.model, cfg.parallel.sequence_parallel)
            extra["mpu"] = layout.mpu
        if cfg.train.compile:
            compile_model(model)
        module = model
    engine, *_ = deepspeed.initialize(
        model=module,
        model_parameters=param_groups(module, cfg.train.weight_decay),
        config=ds_cfg,
        **extra,
    )
    runner_type = PipelineRunner if layout.pp_size > 1 else EngineRunner
    return runner_type(engine, cfg, layout, ds_cfg, whole=None if layout.model_parallel else model)
