"""The sweep file: variants x sizes x budgets x seeds, and the rules that make each run.

    name: tiny                      # default output: runs/sweeps/<name>
    base: ../tiny.yaml              # run config every run starts from (relative to this file)
    baseline: baseline              # the variant the others are compared with
    variants:                       # name -> run-config overrides, or a variant file
      baseline: {}
      bilateral: ../tiny/bilateral.yaml
    sizes:                          # name -> model overrides (width / depth / heads ...)
      s: {n_layers: 2, d_model: 64, n_heads: 2}
    ladder: {d_model: [...], n_layers: [...], head_dim: 64}   # or sizes as a ladder
    budgets: {kind: flops, values: [3e12, 1e13]}   # or tokens, or tokens_per_param
    seeds: [0]
    schedule: {lr_exponent: 1.0, warmup_fraction: 0.1, checkpoints: 2}
    nproc: 1                        # processes per run (filtertron train --nproc)
    overrides: {eval: {batches: 16}}   # run-config overrides for every run
    slurm: {timeout_min: 60, slurm_partition: gpu}   # submitit AutoExecutor parameters
    device_profile: h200            # time estimate of --dry-run (filtertron.scaling.estimate)

A variant file is read whole (its ``base:`` chain resolved) and laid over the sweep's base.
Each run's config is base <- variant <- ``overrides`` <- ``--set`` <- size, and then the keys
the sweep owns: train.steps (tokens / tokens per step; tokens = budget, budget x N, or
budget / FLOPs per token), train.lr = lr x (lr_ref_d_model / d_model)^lr_exponent with lr the
run's configured train.lr, train.min_lr (same ratio to lr), train.warmup = warmup_fraction x
steps, train.save_every, train.seed and train.out_dir. Setting those elsewhere is an error.
Numbers may be written 3e12 (PyYAML reads that as a string; it is converted here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from filtertron.config import ConfigError, from_dict

NAME = re.compile(r"^[A-Za-z0-9_-]+$")
OWNED = ("steps", "warmup", "save_every", "seed", "out_dir")  # train.* keys the sweep sets


def _name(field_: str, value: Any) -> None:
    if not isinstance(value, str) or not NAME.match(value):
        raise ConfigError(f"{field_}={value!r}: names may hold only letters, digits, _ and -")


def _number(field_: str, value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{field_}={value!r}: expected a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{field_}={value!r}: expected a positive number")
    return float(value)


@dataclass(frozen=True)
class Budgets:
    """Training budgets: tokens, tokens per (non-embedding) parameter, or FLOPs."""

    kind: Literal["tokens", "tokens_per_param", "flops"]
    values: list[Any]

    def __post_init__(self) -> None:
        if not self.values:
            raise ConfigError("values=[]: give at least one budget")
        vals = [_number(f"values[{i}]", v) for i, v in enumerate(self.values)]
        object.__setattr__(self, "values", vals)
        labels = [self.label(v) for v in vals]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"values={vals}: two budgets give the same run id ({labels})")

    def label(self, value: float) -> str:
        prefix = {"tokens": "t", "tokens_per_param": "r", "flops": "c"}[self.kind]
        return prefix + re.sub(r"e\+?(-?)0*(\d)", r"e\1\2", f"{value:.3g}")  # 2e+09 -> 2e9


@dataclass(frozen=True)
class Schedule:
    """How LR, warmup and checkpoints follow a run's size and length."""

    lr_exponent: float = 0.0  # lr x (lr_ref_d_model / d_model) ** lr_exponent
    lr_ref_d_model: int | None = None  # None: the base config's model.d_model
    warmup_fraction: float = 0.1  # of the run's steps
    checkpoints: int = 2  # per run, so an interrupted run resumes near where it stopped

    def __post_init__(self) -> None:
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"warmup_fraction={self.warmup_fraction}: must be in [0, 1)")
        if self.checkpoints < 1:
            raise ConfigError(f"checkpoints={self.checkpoints}: must be >= 1")
        if self.lr_ref_d_model is not None and self.lr_ref_d_model < 1:
            raise ConfigError(f"lr_ref_d_model={self.lr_ref_d_model}: must be >= 1")


@dataclass(frozen=True)
class Ladder:
    """Sizes as parallel lists: size i has d_model[i], n_layers[i], d_model[i] / head_dim
    heads; named d{d_model}-l{n_layers}."""

    d_model: list[int]
    n_layers: list[int]
    head_dim: int = 64

    def __post_init__(self) -> None:
        if len(self.d_model) != len(self.n_layers) or not self.d_model:
            raise ConfigError("d_model, n_layers: need equal, non-empty lists")
        bad = [d for d in self.d_model if d % self.head_dim]
        if bad:
            raise ConfigError(f"d_model={bad}: must be multiples of head_dim={self.head_dim}")

    def sizes(self) -> dict[str, dict[str, Any]]:
        return {
            f"d{d}-l{n}": {"d_model": d, "n_layers": n, "n_heads": d // self.head_dim}
            for d, n in zip(self.d_model, self.n_layers)
        }


@dataclass(frozen=True)
class SweepConfig:
    base: str
    variants: dict[str, Any]
    budgets: Budgets
    name: str = "sweep"
    baseline: str | None = None  # None: the first variant
    sizes: dict[str, Any] = field(default_factory=dict)
    ladder: Ladder | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    schedule: Schedule = field(default_factory=Schedule)
    nproc: int = 1
    overrides: dict[str, Any] = field(default_factory=dict)
    slurm: dict[str, Any] = field(default_factory=dict)
    device_profile: str | None = None  # None: "cpu"

    def __post_init__(self) -> None:
        _name("name", self.name)
        if not self.variants:
            raise ConfigError("variants: name at least one variant")
        for k, v in self.variants.items():
            _name(f"variants.{k}", k)
            if not isinstance(v, (str, dict)):
                raise ConfigError(f"variants.{k}={v!r}: expected a mapping or a file name")
        if self.baseline is None:
            object.__setattr__(self, "baseline", next(iter(self.variants)))
        if self.baseline not in self.variants:
            raise ConfigError(
                f"baseline={self.baseline!r}: not among variants ({', '.join(self.variants)})"
            )
        if bool(self.sizes) == (self.ladder is not None):
            raise ConfigError("sizes, ladder: give exactly one of them")
        for k, v in self.all_sizes.items():
            _name(f"sizes.{k}", k)
            if not isinstance(v, dict):
                raise ConfigError(f"sizes.{k}={v!r}: expected a mapping of model keys")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds={self.seeds}: need distinct seeds, at least one")
        if self.nproc < 1:
            raise ConfigError(f"nproc={self.nproc}: must be >= 1")
        train = self.overrides.get("train", {})
        owned = sorted(k for k in train if k in OWNED) if isinstance(train, dict) else []
        if owned:
            raise ConfigError(
                f"overrides.train.{owned[0]}: set by the sweep for every run "
                "(budgets, schedule, seeds); change those instead"
            )

    @property
    def all_sizes(self) -> dict[str, dict[str, Any]]:
        return self.ladder.sizes() if self.ladder is not None else self.sizes


def load_sweep(path: str | Path) -> tuple[SweepConfig, Path]:
    """Read and check a sweep file; returns it and its directory (for relative paths)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"sweep file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"sweep file {str(path)!r}: top level must be a mapping")
    try:
        return from_dict(SweepConfig, data), path.resolve().parent
    except TypeError as e:  # a required section is missing
        missing = re.findall(r"'(\w+)'", str(e))
        raise ConfigError(
            f"sweep file {str(path)!r}: missing {', '.join(missing) or 'a required key'}"
        ) from None
