"""``filtertron convert``: consolidate a TP/PP/ZeRO checkpoint into one file, or reshard it.

    filtertron convert CKPT --out DIR                  # one model.pt, single-device GPT names
    filtertron convert CKPT --out DIR --tp 2 --pp 2    # ... plus DeepSpeed files for tp=2, pp=2

CKPT is a step directory with ``filtertron.json`` (or a run / checkpoints directory: its newest
committed step). The source layout comes from the marker's config (``--config`` for a bare
DeepSpeed directory). Sources read, in this order:

    model.pt                                     already consolidated
    layer_{i:02d}-model_{t:02d}-model_states.pt  pipeline engine: layer i on TP rank t; the
                                                 entries already carry GPT names
    mp_rank_{t:02d}_model_states.pt ["module"]   plain engine: TP rank t's GPT state dict
    ZeRO-3 (tp = pp = 1)                         through DeepSpeed's zero_to_fp32

TP shards are concatenated along :func:`filtertron.parallel.tensor.partition_spec` and the
vocabulary padding dropped; megatron's empty ``_extra_state`` entries are dropped.

Written to DIR (a new step directory): ``model.pt`` (what ``train.checkpoint.load_model``
reads), ``filtertron.json`` (the source marker with ``parallel.tp/pp`` set to the target and
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

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import torch

from filtertron.config import ConfigError, RunConfig, from_dict, load_config
from filtertron.parallel.pipeline import layer_names

log = logging.getLogger("filtertron")
MARKER = "filtertron.json"


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
        raise ValueError(f"{path}: expected {tp} mp_rank_*_model_states.pt files for "
                         f"parallel.tp={tp}, found {len(files)}")
    return [_clean(_load(f)["module"] or {}) for f in files]


def consolidate(path: Path, cfg: RunConfig) -> dict[str, torch.Tensor]:
    """The single-device GPT state dict of the checkpoint at ``path`` (layout of ``cfg``)."""
    from filtertron.parallel.tensor import merge_tensors, partition_spec  # imports megatron

    if (path / "model.pt").is_file():
        return torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    if cfg.parallel.tp > 1 and cfg.parallel.zero_stage == 3:
        raise ValueError("consolidating ZeRO-3 with tp > 1 is not supported (DeepSpeed's "
                         "zero_to_fp32 reads one model-parallel rank); save a model.pt instead")
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


def write_layout(full: dict[str, torch.Tensor], cfg: RunConfig, out: Path,
                 step: int = 0, samples: int = 0) -> None:
    """Write ``full`` (single-device names) as the DeepSpeed module files of ``cfg``'s layout."""
    import deepspeed

    from filtertron.parallel.tensor import partition_spec, shard_tensor

    tp, pp = cfg.parallel.tp, cfg.parallel.pp
    spec = partition_spec(_meta_model(cfg), cfg.model.vocab_size, tp)
    shards = [{k: shard_tensor(v, spec[k], t, tp) if k in spec else v for k, v in full.items()}
              for t in range(tp)]
    for i, prefixes in enumerate(layer_names(cfg)):
        if not prefixes:
            continue
        for t in range(tp):
            layer = {k: v for k, v in shards[t].items() if k.startswith(tuple(prefixes))}
            _save(layer, out / f"layer_{i:02d}-model_{t:02d}-model_states.pt")
    for m in range(pp * tp):
        _save({"module": shards[m] if pp == 1 else None, "buffer_names": [],
               "global_steps": step, "global_samples": samples, "skipped_steps": 0,
               "dp_world_size": 1, "mp_world_size": pp * tp,
               "ds_version": deepspeed.__version__}, out / f"mp_rank_{m:02d}_model_states.pt")


def _source(path: Path, config: str | None) -> tuple[Path, RunConfig, dict]:
    if config is not None:
        return path, load_config(config), {}
    from filtertron.train.checkpoint import resolve

    info = resolve(path)
    return info.path, from_dict(RunConfig, info.meta["config"]), info.meta


def target_config(cfg: RunConfig, tp: int, pp: int, zero_stage: int | None) -> RunConfig:
    """``cfg`` with the new layout (validated like any loaded config)."""
    p = cfg.parallel
    par = dataclasses.replace(
        p, tp=tp, pp=pp, zero_stage=p.zero_stage if zero_stage is None else zero_stage,
        sequence_parallel=p.sequence_parallel and tp > 1)
    return from_dict(RunConfig, {**cfg.to_dict(), "parallel": dataclasses.asdict(par)})


def convert(path: Path, out: Path, tp: int = 1, pp: int = 1, zero_stage: int | None = None,
            config: str | None = None) -> Path:
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
    marker = {**meta, "config": new.to_dict(), "weights_only": True,
              "converted": {"from": str(src), "tp": cfg.parallel.tp, "pp": cfg.parallel.pp}}
    marker.setdefault("step", 0)
    tmp = out / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1, sort_keys=True))
    tmp.replace(out / MARKER)
    log.info("converted %s (tp=%d, pp=%d) -> %s (tp=%d, pp=%d)", src, cfg.parallel.tp,
             cfg.parallel.pp, out, tp, pp)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a step directory (or a run / checkpoints directory)")
    parser.add_argument("--out", required=True, help="output step directory")
    parser.add_argument("--tp", type=int, default=1, help="target tensor-parallel size")
    parser.add_argument("--pp", type=int, default=1, help="target pipeline-parallel size")
    parser.add_argument("--zero-stage", type=int, default=None,
                        help="target ZeRO stage (default: the source's)")
    parser.add_argument("--config", default=None,
                        help="run config YAML, for a DeepSpeed directory without filtertron.json")


def run(args: argparse.Namespace) -> int:
    try:
        out = convert(Path(args.checkpoint), Path(args.out), args.tp, args.pp, args.zero_stage,
                      args.config)
    except ConfigError:
        raise  # the CLI reports it as a config error
    except (ValueError, FileNotFoundError) as e:
        print(f"filtertron convert: {e}")
        return 1
    print(f"wrote {out}")
    return 0
