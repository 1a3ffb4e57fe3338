"""What a step directory's model files hold, and how they are merged (consolidate), read into
a model (load_model) or written for another layout (reshard): the one place that knows
DeepSpeed's file names.

Sources read by :func:`read_weights`, in this order:

    model.pt                                     already consolidated (single-device names);
                                                 a bf16 run's holds its fp32 master weights
    ZeRO 1-3 (tp = pp = 1)                       the fp32 master weights in ZeRO's optimizer
                                                 partitions, through DeepSpeed's zero_to_fp32
    layer_{i:02d}-model_{t:02d}-model_states.pt  pipeline engine: layer i on TP rank t; the
                                                 entries already carry GPT names
    mp_rank_{t:02d}_model_states.pt ["module"]   plain engine: TP rank t's GPT state dict

The last two (:func:`consolidate`) hold the module's weights, bf16 in a bf16 run: the fp32
masters of an intermediate checkpoint with tp > 1, pp > 1 or ZeRO 0 stay in DeepSpeed's
optimizer files, which filtertron does not merge. The final checkpoint's ``model.pt`` holds the
masters for every layout (:mod:`filtertron.train.masters`). Every loader says which it got, in
one line: "loaded fp32 master weights from ...", "loaded bf16 module weights from ... (why)",
or "loaded fp32 weights from ..." (an fp32 run, whose module weights are its masters).

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
The weights written are :func:`read_weights`' (a bf16 run's fp32 masters where the source has
them; the marker's ``"weights"`` and a console line say which, and a warning says when the
masters are dropped); a bf16 run resumed from the result restores its masters from model.pt.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from filtertron.checkpoint.files import MARKER, resolve, write_json_atomic
from filtertron.config import RunConfig, from_dict, load_config
from filtertron.parallel.pipeline import layer_names

log = logging.getLogger(__name__)


def meta_model(cfg: RunConfig):
    """``cfg``'s GPT on the meta device (names and shapes, no memory)."""
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
    """The single-device GPT state dict merged from the DeepSpeed files at ``path`` (layout of
    ``cfg``): the module's weights (ZeRO-3: its fp32 partitions)."""
    from filtertron.parallel.tensor import merge_tensors, partition_spec  # imports megatron

    if cfg.parallel.tp > 1 and cfg.parallel.zero_stage == 3:
        raise ValueError(
            "consolidating ZeRO-3 with tp > 1 is not supported (DeepSpeed's "
            "zero_to_fp32 reads one model-parallel rank); save a model.pt instead"
        )
    shards = tp_shards(path, cfg)
    model = meta_model(cfg)
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


@dataclass(frozen=True)
class Weights:
    """A checkpoint's single-device state dict and what it holds.

    Attributes:
        state: GPT name -> tensor (CPU).
        kind: "fp32 master weights" (a bf16 run's), "bf16 module weights" or "fp32 weights".
        source: Where they were read.
        note: Why a bf16 run's masters were not there ("" otherwise).
    """

    state: dict[str, torch.Tensor]
    kind: str
    source: str
    note: str = ""

    def describe(self) -> str:
        return f"{self.kind} from {self.source}" + (f" ({self.note})" if self.note else "")


def _kind(state: dict[str, torch.Tensor], cfg: RunConfig) -> str:
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if dtypes <= {torch.float32}:
        return "fp32 master weights" if cfg.train.precision == "bf16" else "fp32 weights"
    name = "bf16" if torch.bfloat16 in dtypes else str(sorted(map(str, dtypes)))
    return f"{name} module weights"


def read_weights(path: Path, cfg: RunConfig) -> Weights:
    """The weights of the checkpoint at ``path`` (layout of ``cfg``): a bf16 run's fp32 master
    weights wherever the checkpoint holds them, else its bf16 module weights (and why)."""
    path = Path(path)
    f = path / "model.pt"
    p = cfg.parallel
    in_zero_files = p.tp == p.pp == 1 and p.zero_stage >= 1
    found = None
    if f.is_file():
        state = torch.load(f, map_location="cpu", weights_only=True)
        found = Weights(state, _kind(state, cfg), str(f))
        if not found.kind.endswith("module weights") or not in_zero_files:
            if found.kind.endswith("module weights"):
                note = "written before filtertron kept a bf16 run's fp32 masters in model.pt"
                return dataclasses.replace(found, note=note)
            return found
    if in_zero_files:  # ZeRO's optimizer partitions hold the fp32 masters
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(path.parent), path.name)
        state = {k: v for k, v in state.items() if not k.endswith("_extra_state")}
        return Weights(state, _kind(state, cfg), f"{path} (ZeRO's fp32 partitions)")
    state = consolidate(path, cfg)
    w = Weights(state, _kind(state, cfg), f"{path} (DeepSpeed's module files)")
    if w.kind.endswith("module weights"):
        note = (
            f"the fp32 masters of an intermediate checkpoint with tp={p.tp}, pp={p.pp}, "
            f"ZeRO {p.zero_stage} stay in DeepSpeed's optimizer files; the final checkpoint's "
            "model.pt holds them"
        )
        w = dataclasses.replace(w, note=note)
    return w


def _say(what: str, w: Weights) -> None:
    if w.kind.endswith("module weights") and w.note:
        log.warning("%s %s", what, w.describe())
    else:
        log.info("%s %s", what, w.describe())


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
    spec = partition_spec(meta_model(cfg), cfg.model.vocab_size, tp)
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
    weights = read_weights(src, cfg)
    _say("convert: read", weights)
    if weights.kind.endswith("module weights") and cfg.train.precision == "bf16":
        log.warning("convert: the bf16 run's fp32 master weights are dropped (not in %s)", src)
    full = weights.state
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _save(full, out / "model.pt")
    write_layout(full, new, out, int(meta.get("step", 0)), int(meta.get("consumed_samples", 0)))
    meta = {k: v for k, v in meta.items() if k != "world_size"}  # the source's, not the target's
    marker = {
        **meta,
        "config": new.to_dict(),
        "weights_only": True,
        "weights": weights.kind,
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


def gather_live(
    model: nn.Module, cfg: RunConfig, state: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The single-device state dict of a live (TP-sharded and/or ZeRO-3-partitioned) GPT.

    Collective: call it on every rank of the model's group (the TP group under TP, every rank
    under ZeRO-3). Tensors are returned on the CPU.

    Args:
        model: The GPT this rank trains.
        cfg: Its run config.
        state: This rank's whole (not ZeRO-partitioned) tensors to gather instead of the
            module's, by the module's names: the fp32 masters of a bf16 run
            (:class:`filtertron.train.masters.Masters`).
    """
    if cfg.parallel.tp > 1:
        from filtertron.parallel.tensor import full_state_dict

        return {k: v.cpu() for k, v in full_state_dict(model, cfg.model, state).items()}
    if state is not None:
        return {k: v.cpu() for k, v in state.items() if not k.endswith("_extra_state")}
    if cfg.parallel.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            return {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_model(path: str | Path, map_location: str = "cpu"):
    """Build the model of a checkpoint and load its weights. Returns (model, RunConfig, info).

    The weights are :func:`read_weights`': a bf16 run's fp32 masters wherever the checkpoint
    holds them. One console line says which were loaded ("loaded fp32 master weights from
    ...", a warning for "loaded bf16 module weights from ... (why)").
    """
    from filtertron.model import build_model

    info = resolve(path)
    cfg = from_dict(RunConfig, info.meta["config"])
    model = build_model(cfg.model)
    weights = read_weights(info.path, cfg)
    _say("loaded", weights)
    missing, unexpected = model.load_state_dict(weights.state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to wte
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {info.path}: state dict does not fit the model "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.to(map_location), cfg, info
