"""Expand a sweep into runs: one resolved run config per (seed, budget, size, variant).

A run's id is ``{variant}.{size}.{budget label}.s{seed}`` (e.g. ``twicing.m.c3e12.s0``):
stable under re-expansion, and the name of its directory under ``OUT/runs``. Its config
hash covers everything that changes its result (the resolved config without
``train.out_dir``, and ``nproc``), so a finished run is never mixed with an edited sweep.
Run configs have absolute data paths (runs may start from another directory).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filtertron.config import (
    ConfigError,
    RunConfig,
    _deep_merge,
    apply_overrides,
    from_dict,
    read_yaml,
)
from filtertron.scaling.sweep_config import OWNED, SweepConfig
from filtertron.train.flops import FlopsBreakdown, ParamCounts, flops_breakdown, param_counts


@dataclass(frozen=True)
class Run:
    id: str
    variant: str
    size: str
    budget_kind: str
    budget: float
    seed: int
    nproc: int
    config: RunConfig
    params: ParamCounts
    flops: FlopsBreakdown  # per token

    @property
    def dir(self) -> Path:
        return Path(self.config.train.out_dir)

    @property
    def tokens_per_step(self) -> int:
        return tokens_per_step(self.config, self.nproc)

    @property
    def steps(self) -> int:
        return self.config.train.steps

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def total_flops(self) -> float:
        return self.flops.total * self.tokens

    @property
    def config_hash(self) -> str:
        d = self.config.to_dict()
        d["train"].pop("out_dir")
        blob = json.dumps({"config": d, "nproc": self.nproc}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def spec(self) -> dict[str, Any]:
        """What a run is, as written to its ``run.json``."""
        return {
            "id": self.id,
            "variant": self.variant,
            "size": self.size,
            "budget_kind": self.budget_kind,
            "budget": self.budget,
            "seed": self.seed,
            "nproc": self.nproc,
            "steps": self.steps,
            "tokens_per_step": self.tokens_per_step,
            "tokens": self.tokens,
            "n_params": self.params.non_embedding,
            "n_params_total": self.params.total,
            "flops_per_token": self.flops.total,
            "flops_breakdown": {
                "convention": self.flops.convention,
                "dense": self.flops.dense,
                "attention": self.flops.attention,
                "bias": self.flops.bias,
                "band_fraction": self.flops.band_fraction,
            },
            "flops": self.total_flops,
            "lr": self.config.train.lr,
            "warmup": self.config.train.warmup,
            "config_hash": self.config_hash,
        }


def _variant_dict(sweep: SweepConfig, name: str, sweep_dir: Path) -> dict[str, Any]:
    base = read_yaml(sweep_dir / sweep.base)
    v = sweep.variants[name]
    layer = read_yaml(sweep_dir / v) if isinstance(v, str) else v
    return _deep_merge(base, layer)


def _absolute_data(data: dict[str, Any], cwd: Path) -> dict[str, Any]:
    d = dict(data.get("data", {}))
    if "path" in d:
        paths = d["path"] if isinstance(d["path"], list) else [d["path"]]
        absolute = [str((cwd / p).resolve()) for p in paths]
        d["path"] = absolute if isinstance(d["path"], list) else absolute[0]
    return {**data, "data": d}


def tokens_per_step(cfg: RunConfig, nproc: int) -> int:
    """Tokens one optimizer step consumes with ``nproc`` processes."""
    t, p = cfg.train, cfg.parallel
    if nproc % (p.tp * p.pp):
        raise ConfigError(f"nproc={nproc}: not a multiple of tp x pp = {p.tp * p.pp}")
    return t.micro_batch_size * t.grad_accum * (nproc // (p.tp * p.pp)) * cfg.model.seq_len


def _build(data: dict[str, Any], where: str, **train: Any) -> RunConfig:
    try:
        return from_dict(RunConfig, _deep_merge(data, {"train": train}))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def expand(
    sweep: SweepConfig,
    sweep_dir: Path,
    out: Path,
    overrides: list[str] | None = None,
    cwd: Path | None = None,
) -> list[Run]:
    """Every run of the sweep, in order seed, budget, size, variant.

    Args:
        sweep: the sweep file.
        sweep_dir: its directory (base and variant files are relative to it).
        out: the sweep's output directory (runs go to ``out/runs/<id>``).
        overrides: ``section.key=value`` strings applied to every run (``--set``).
        cwd: directory relative data paths are resolved against (default: the current one).

    Raises:
        ConfigError: a run config is invalid; the message names the variant and size.
    """
    cwd = Path.cwd() if cwd is None else cwd
    overrides = overrides or []
    for o in overrides:
        key = o.split("=", 1)[0].strip()
        if key in {f"train.{k}" for k in OWNED}:
            raise ConfigError(f"--set {o!r}: {key} is set by the sweep for every run")
    ref = sweep.schedule.lr_ref_d_model
    if ref is None:
        ref = from_dict(RunConfig, read_yaml(sweep_dir / sweep.base)).model.d_model
    runs = []
    for seed in sweep.seeds:
        for budget in sweep.budgets.values:
            for size in sweep.all_sizes:
                for variant in sweep.variants:
                    data = _deep_merge(_variant_dict(sweep, variant, sweep_dir), sweep.overrides)
                    data = apply_overrides(data, overrides)
                    data = _deep_merge(data, {"model": sweep.all_sizes[size]})
                    data = _absolute_data(data, cwd)
                    runs.append(_one(sweep, data, out, variant, size, budget, seed, ref))
    return runs


def _one(sweep, data, out, variant, size, budget, seed, ref_d_model) -> Run:
    where = f"variant {variant!r}, size {size!r}"
    probe = _build(data, where)  # validates; gives the resolved model, batch and lr
    params = param_counts(probe.model)
    fpt = flops_breakdown(probe.model)
    try:
        per_step = tokens_per_step(probe, sweep.nproc)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    kind = sweep.budgets.kind
    if kind == "tokens":
        tokens = budget
    elif kind == "tokens_per_param":
        tokens = budget * params.non_embedding
    else:
        tokens = budget / fpt.total
    steps = max(1, round(tokens / per_step))
    lr = probe.train.lr * (ref_d_model / probe.model.d_model) ** sweep.schedule.lr_exponent
    run_id = f"{variant}.{size}.{sweep.budgets.label(budget)}.s{seed}"
    cfg = _build(
        data,
        where,
        steps=steps,
        lr=lr,
        min_lr=lr * probe.train.min_lr / probe.train.lr,
        warmup=math.floor(sweep.schedule.warmup_fraction * steps),
        save_every=max(1, steps // sweep.schedule.checkpoints),
        seed=seed,
        out_dir=str((out / "runs" / run_id).resolve()),
    )
    return Run(run_id, variant, size, kind, float(budget), seed, sweep.nproc, cfg, params, fpt)
