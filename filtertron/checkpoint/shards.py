"""What a step directory's model files hold, and how they are merged (consolidate), read into
a model (load_model) or written for another layout (reshard): the one place that knows
DeepSpeed's file names.

Sources read, in this order:

    model.pt                                     already consolidated (single-device names)
    layer_{i:02d}-model_{t:02d}-model_states.pt  pipeline engine: layer i on TP rank t; the
                                                 entries already carry GPT names
    mp_rank_{t:02d}_model_states.pt ["module"]   plain engine: TP rank t's GPT state dict
    ZeRO-3 (tp = pp = 1)                         through DeepSpeed's zero_to_fp32

TP shards are concatenated along :func:`filtertron.parallel.tensor.partition_spec` and the
vocabulary padding dropped; megatron's empty ``_extra_state`` entries are dropped. A live,
sharded model is gathered the same way by :func:`gather_live` (what the trainer's final
``model.pt`` is made of).

:func:`convert` (``filtertron convert``) writes to a new step directory: ``model.pt``,
``filtertron.json`` (the source marker with ``parallel.tp/pp`` set to the target and
``"converted"`` describing the source; ``"weights_only": true``) and the DeepSpeed module
files of the target layout, which ``engine.load_checkpoint(parent, tag, load_module_only=True)``
loads: per (pipeline layer, TP rank) ``layer_*`` files for a PipelineModule, and
``mp_rank_{m:02d}_model_states.pt`` for m < pp x tp (holding TP rank m's state dict when pp = 1,
for the plain engine). Optimizer moments and the LR-scheduler state are not carried over (they
are ZeRO-partitioned flat buffers tied to one layout): a resumed run restarts Adam's moments.
Weights are those of the module (the training precision; fp32 masters of bf16 runs are not
read).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from torch import nn

from filtertron.checkpoint.files import MARKER, resolve, write_json_atomic
from filtertron.config import RunConfig, from_dict, load_config
from filtertron.parallel.pipeline import layer_names

log = logging.getLogger(__name__)


def _meta_model(cfg: RunConfig):
    from filtertron.model import build_model

    with torch.device("meta"):
        return build_model(cfg.model)


def _clean(sd: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not k.endswith("_extra_state")}


def _load(path: Path) -> dict:
    # DeepSpeed's files hold python objects besides tensors (configs, versions).
    return torch.load(path, map_location="cpu", weights_only=False)


def tp_shards(path: Path, cfg: RunConfig) -> list[dict[str, torch.Tensor]]:
    """The per-TP-rank GPT state dicts stored in a DeepSpeed checkpoint directory."""
    tp = cfg.parallel.tp
    if tp == 1 and cfg.parallel.pp == 1 and cfg.parallel.zero_stage == 3:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return [get_fp32_state_dict_from_zero_checkpoint(str(path.parent), path.name)]
    layers = sorted(path.glob("layer_*-model_states.pt"))
    if layers:
        shards: list[dict] = [{} for _ in range(tp)]
        for f in layers:
            parts = f.name.split("-")
            t = int(parts[1].split("_")[1]) if len(parts) == 3 else 0
            shards[t].update(_clean(_load(f)))
        return shards
    files = sorted(path.glob("mp_rank_*_model_states.pt"))
    if len(files) != tp:
        raise ValueError(
            f"{path}: expected {tp} mp_rank_*_model_states.pt files for "
            f"parallel.tp={tp}, found {len(files)}"
        )
    return [_clean(_load(f)["module"] or {}) for f in files]


def consolidate(path: Path, cfg: RunConfig) -> dict[str, torch.Tensor]:
    """The single-device GPT state dict of the checkpoint at ``path`` (layout of ``cfg``)."""
    from filtertron.parallel.tensor import merge_tensors, partition_spec  # imports megatron

    if (path / "model.pt").is_file():
        return torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    if cfg.parallel.tp > 1 and cfg.parallel.zero_stage == 3:
        raise ValueError(
            "consolidating ZeRO-3 with tp > 1 is not supported (DeepSpeed's "
            "zero_to_fp32 reads one model-parallel rank); save a model.pt instead"
        )
    shards = tp_shards(path, cfg)
    model = _meta_model(cfg)
    spec = partition_spec(model, cfg.model.vocab_size, cfg.parallel.tp)
    expected = list(model.state_dict())
    missing = [k for k in expected if k not in shards[0]]
    if cfg.model.tie_embeddings and "lm_head.weight" in missing and "wte.weight" in shards[0]:
        for s in shards:
            s["lm_head.weight"] = s["wte.weight"]
        missing.remove("lm_head.weight")
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {missing[:5]} (is the config's model right?)")
    full = {}
    for k in expected:
        if k in spec:
            full[k] = merge_tensors([s[k] for s in shards], spec[k], cfg.model.vocab_size)
        else:
            full[k] = shards[0][k].clone()
    return full


def _save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def write_layout(
    full: dict[str, torch.Tensor], cfg: RunConfig, out: Path, step: int = 0, samples: int = 0
) -> None:
    """Write ``full`` (single-device names) as the DeepSpeed module files of ``cfg``'s layout."""
    import deepspeed

    from filtertron.parallel.tensor import partition_spec, shard_tensor

    tp, pp = cfg.parallel.tp, cfg.parallel.pp
    spec = partition_spec(_meta_model(cfg), cfg.model.vocab_size, tp)
    shards = [
        {k: shard_tensor(v, spec[k], t, tp) if k in spec else v for k, v in full.items()}
        for t in range(tp)
    ]
    for i, prefixes in enumerate(layer_names(cfg)):
        if not prefixes:
            continue
        for t in range(tp):
            layer = {k: v for k, v in shards[t].items() if k.startswith(tuple(prefixes))}
            _save(layer, out / f"layer_{i:02d}-model_{t:02d}-model_states.pt")
    for m in range(pp * tp):
        _save(
            {
                "module": shards[m] if pp == 1 else None,
                "buffer_names": [],
                "global_steps": step,
                "global_samples": samples,
                "skipped_steps": 0,
                "dp_world_size": 1,
                "mp_world_size": pp * tp,
                "ds_version": deepspeed.__version__,
            },
            out / f"mp_rank_{m:02d}_model_states.pt",
        )


def _source(path: Path, config: str | None) -> tuple[Path, RunConfig, dict]:
    if config is not None:
        return path, load_config(config), {}
    info = resolve(path)
    return info.path, from_dict(RunConfig, info.meta["config"]), info.meta


def target_config(cfg: RunConfig, tp: int, pp: int, zero_stage: int | None) -> RunConfig:
    """``cfg`` with the new layout (validated like any loaded config)."""
    p = cfg.parallel
    par = dataclasses.replace(
        p,
        tp=tp,
        pp=pp,
        zero_stage=p.zero_stage if zero_stage is None else zero_stage,
        sequence_parallel=p.sequence_parallel and tp > 1,
    )
    return from_dict(RunConfig, {**cfg.to_dict(), "parallel": dataclasses.asdict(par)})


def convert(
    path: Path,
    out: Path,
    tp: int = 1,
    pp: int = 1,
    zero_stage: int | None = None,
    config: str | None = None,
) -> Path:
    """Consolidate the checkpoint at ``path`` and write it to ``out`` for layout (tp, pp).

    Returns:
        ``out``, a step directory holding model.pt, filtertron.json and DeepSpeed files.
    """
    src, cfg, meta = _source(Path(path), config)
    new = target_config(cfg, tp, pp, zero_stage)
    full = consolidate(src, cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _save(full, out / "model.pt")
    write_layout(full, new, out, int(meta.get("step", 0)), int(meta.get("consumed_samples", 0)))
    meta = {k: v for k, v in meta.items() if k != "world_size"}  # the source's, not the target's
    marker = {
        **meta,
        "config": new.to_dict(),
        "weights_only": True,
        "converted": {"from": str(src), "tp": cfg.parallel.tp, "pp": cfg.parallel.pp},
    }
    marker.setdefault("step", 0)
    write_json_atomic(out / MARKER, marker)
    log.info(
        "converted %s (tp=%d, pp=%d) -> %s (tp=%d, pp=%d)",
        src,
        cfg.parallel.tp,
        cfg.parallel.pp,
        out,
        tp,
        pp,
    )
    return out


def gather_live(model: nn.Module, cfg: RunConfig) -> dict[str, torch.Tensor]:
    """The single-device state dict of a live (TP-sharded and/or ZeRO-3-partitioned) GPT.

    Collective: call it on every rank of the model's group (the TP group under TP, every rank
    under ZeRO-3). Tensors are returned on the CPU.
    """
    if cfg.parallel.tp > 1:
        from filtertron.parallel.tensor import full_state_dict

        return {k: v.cpu() for k, v in full_state_dict(model, cfg.model).items()}
    if cfg.parallel.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            return {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_model(path: str | Path, map_location: str = "cpu"):
    """Build the model of a checkpoint and load its weights. Returns (model, RunConfig, info).

    Reads the consolidated ``model.pt`` (weights only) when present, else ZeRO's fp32 master
    weights (tp = pp = 1, ZeRO 1-3), else the DeepSpeed module files of any layout through
    :func:`consolidate`.
    """
    from filtertron.model import build_model

    info = resolve(path)
    cfg = from_dict(RunConfig, info.meta["config"])
    model = build_model(cfg.model)
    f = info.path / "model.pt"
    p = cfg.parallel
    if f.is_file():
        state = torch.load(f, map_location=map_location, weights_only=True)
    elif p.tp == p.pp == 1 and p.zero_stage >= 1:
        # ZeRO's fp32 master weights (a bf16 run's module files hold bf16 copies)
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(info.path.parent), info.path.name)
    else:
        state = consolidate(info.path, cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to wte
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {info.path}: state dict does not fit the model "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.to(map_location), cfg, info
