"""Typed run configuration: frozen dataclasses per section, loaded from YAML, validated once.

A run config has the sections ``model``, ``parallel``, ``train``, ``data``, ``eval`` and an
optional free-form ``deepspeed`` mapping (keys added to, or overriding, the generated DeepSpeed
config). Each variant's options live with the variant (``model.attention.bilateral``,
``model.attention.twicing``, ``model.residual``).

Loading goes YAML -> dict -> ``--set section.key=value`` overrides -> dataclasses. Unknown keys,
wrong types and bad values raise :class:`ConfigError` naming the dotted field and the value.
Configs are never mutated after load; use :func:`dataclasses.replace` to derive a new one.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type or out of range; names the dotted field."""


def _fail(name: str, value: Any, why: str) -> None:
    raise ConfigError(f"{name}={value!r}: {why}")


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class BilateralConfig:
    """Bilateral self-attention: logit = C(q, k) / h_y + S(i, j), S = -(i - j)^2 / (2 h_p^2)."""

    content: Literal["dot", "gaussian"] = "dot"
    h_y_init: float | None = None  # None: sqrt(D) for dot, D**0.25 for gaussian
    h_p_min: float = 2.0
    h_p_max: float | None = None  # None: model.seq_len
    learn_h_y: bool = True
    learn_h_p: bool = True
    # BSA takes position only through its spatial kernel; an additive absolute position
    # embedding brings the content/position cross-terms back, so it must be asked for.
    allow_absolute_position: bool = False

    def __post_init__(self) -> None:
        if self.h_y_init is not None and not self.h_y_init > 0:
            _fail("h_y_init", self.h_y_init, "must be positive")
        if not self.h_p_min > 0:
            _fail("h_p_min", self.h_p_min, "must be positive")
        if self.h_p_max is not None and self.h_p_max < self.h_p_min:
            _fail("h_p_max", self.h_p_max, f"must be >= h_p_min={self.h_p_min}")


@dataclass(frozen=True)
class TwicingConfig:
    """Twicing attention: out = (2A - A^2) V, over a softmax or bilateral base kernel.

    ``layers``: "all", an int K (the last K layers), or a list of layer indices. Layers that do
    not twice use the base kernel plainly.
    """

    base: Literal["softmax", "bilateral"] = "softmax"
    layers: Literal["all"] | int | list[int] = "all"


@dataclass(frozen=True)
class AttentionConfig:
    kind: Literal["softmax", "bilateral", "twicing"] = "softmax"
    impl: Literal["auto", "reference", "sdpa", "tiled", "flex", "triton"] = "auto"
    dropout: float = 0.0
    bilateral: BilateralConfig = field(default_factory=BilateralConfig)
    twicing: TwicingConfig = field(default_factory=TwicingConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            _fail("dropout", self.dropout, "must be in [0, 1)")
        if self.kind == "twicing" and self.dropout > 0:
            _fail(
                "dropout",
                self.dropout,
                "twicing applies the same kernel twice; attention dropout must be 0 there",
            )

    @property
    def uses_bilateral(self) -> bool:
        return self.kind == "bilateral" or (
            self.kind == "twicing" and self.twicing.base == "bilateral"
        )


@dataclass(frozen=True)
class ResidualConfig:
    """Residual connection: standard, or GRC X <- (1 - t) (X + F(X)) + t Y_0."""

    kind: Literal["standard", "generalized"] = "standard"
    t_init: float = 0.1
    learnable: bool = True
    apply_to: Literal["attn", "both"] = "attn"

    def __post_init__(self) -> None:
        if not 0.0 <= self.t_init < 1.0:
            _fail("t_init", self.t_init, "must be in [0, 1)")
        if self.learnable and self.t_init == 0.0:
            _fail("t_init", self.t_init, "t = sigmoid(tau) cannot start at 0 when learnable")


@dataclass(frozen=True)
class ModelConfig:
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    seq_len: int = 256
    vocab_size: int = 4096
    position: Literal["learned", "sinusoidal", "rotary", "alibi", "none"] = "learned"
    mlp_ratio: int = 4
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    init_std: float = 0.02
    rotary_base: float = 10000.0
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    residual: ResidualConfig = field(default_factory=ResidualConfig)

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "seq_len", "vocab_size", "mlp_ratio"):
            if getattr(self, name) < 1:
                _fail(name, getattr(self, name), "must be >= 1")
        if self.d_model % self.n_heads:
            _fail("n_heads", self.n_heads, f"must divide d_model={self.d_model}")
        if self.position == "rotary" and self.head_dim % 2:
            _fail("position", self.position, f"rotary needs an even head dim, got {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            _fail("dropout", self.dropout, "must be in [0, 1)")
        att = self.attention
        if att.uses_bilateral:
            if (
                self.position in ("learned", "sinusoidal")
                and not att.bilateral.allow_absolute_position
            ):
                _fail(
                    "position",
                    self.position,
                    "bilateral attention takes position through its spatial kernel; an additive "
                    "absolute embedding reintroduces the cross-terms. Use position: none, or set "
                    "attention.bilateral.allow_absolute_position: true to combine them",
                )
            if self.position == "alibi":
                _fail("position", self.position, "alibi is a softmax bias; bilateral has its own")
        if att.kind == "twicing" and isinstance(att.twicing.layers, list):
            bad = [i for i in att.twicing.layers if not 0 <= i < self.n_layers]
            if bad:
                _fail(
                    "attention.twicing.layers",
                    att.twicing.layers,
                    f"indices {bad} outside [0, {self.n_layers})",
                )
        if att.kind == "twicing" and isinstance(att.twicing.layers, int):
            if not 0 <= att.twicing.layers <= self.n_layers:
                _fail(
                    "attention.twicing.layers",
                    att.twicing.layers,
                    f"last-K count must be in [0, {self.n_layers}]",
                )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def d_ff(self) -> int:
        return self.mlp_ratio * self.d_model

    @property
    def h_p_max(self) -> float:
        return self.attention.bilateral.h_p_max or float(self.seq_len)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count (weights and biases of blocks; embeddings unless non_embedding)."""
        d, L = self.d_model, self.n_layers
        per_block = 4 * d * d + 2 * d * self.d_ff
        if self.bias:
            per_block += 4 * d + self.d_ff + d
        per_block += 4 * d  # two LayerNorms
        n = L * per_block + 2 * d
        if not non_embedding:
            n += self.vocab_size * d * (1 if self.tie_embeddings else 2)
            if self.position == "learned":
                n += self.seq_len * d
        return n


# --------------------------------------------------------------------------- run


@dataclass(frozen=True)
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    zero_stage: int = 0
    sequence_parallel: bool = False
    offload_optimizer: bool = False
    pp_partition: Literal["parameters", "uniform"] = "parameters"

    def __post_init__(self) -> None:
        if self.tp < 1:
            _fail("tp", self.tp, "must be >= 1")
        if self.pp < 1:
            _fail("pp", self.pp, "must be >= 1")
        if self.zero_stage not in (0, 1, 2, 3):
            _fail("zero_stage", self.zero_stage, "must be 0, 1, 2 or 3")
        if self.pp > 1 and self.zero_stage > 1:
            _fail(
                "zero_stage",
                self.zero_stage,
                "pipeline parallelism shards gradients per stage; DeepSpeed supports only "
                "ZeRO 0 or 1 with pp > 1",
            )
        if self.sequence_parallel and self.tp == 1:
            _fail("sequence_parallel", True, "needs tp > 1")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 100
    micro_batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup: int = 10
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 1234
    out_dir: str = "runs/default"
    save_every: int = 0  # 0: only at the end
    keep_last: int = 2
    log_every: int = 10
    activation_checkpointing: Literal["none", "every"] | int = "none"
    compile: bool = False
    max_bad_steps: int = 5
    # Dense peak FLOP/s of one device in the training dtype, for MFU; None: the device
    # table of filtertron.train.mfu, else a measured matmul peak.
    peak_flops: float | None = None

    def __post_init__(self) -> None:
        for name in (
            "steps",
            "micro_batch_size",
            "grad_accum",
            "log_every",
            "keep_last",
            "max_bad_steps",
        ):
            if getattr(self, name) < 1:
                _fail(name, getattr(self, name), "must be >= 1")
        if not self.lr > 0:
            _fail("lr", self.lr, "must be positive")
        if self.min_lr < 0 or self.min_lr > self.lr:
            _fail("min_lr", self.min_lr, f"must be in [0, lr={self.lr}]")
        if self.warmup < 0:
            _fail("warmup", self.warmup, "must be >= 0")
        if self.save_every < 0:
            _fail("save_every", self.save_every, "must be >= 0")
        if self.peak_flops is not None and not self.peak_flops > 0:
            _fail("peak_flops", self.peak_flops, "must be positive (FLOP/s of one device)")
        if isinstance(self.activation_checkpointing, int) and self.activation_checkpointing < 1:
            _fail(
                "activation_checkpointing",
                self.activation_checkpointing,
                "every k-th block needs k >= 1",
            )


@dataclass(frozen=True)
class DataConfig:
    path: str | list[str] = "data/sample"  # a prepared dataset dir, or several
    weights: list[float] | None = None  # blending weights, one per path
    train_split: str = "train"
    valid_split: str = "validation"
    num_workers: int = 0  # DataLoader worker processes per rank (0: load in the trainer)

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            _fail("num_workers", self.num_workers, "must be >= 0")
        if self.weights is not None:
            if len(self.weights) != len(self.paths):
                _fail("weights", self.weights, f"needs one weight per path ({len(self.paths)})")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                _fail("weights", self.weights, "must be non-negative with a positive sum")

    @property
    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)


@dataclass(frozen=True)
class EvalConfig:
    every: int = 0  # validation every N steps; 0: only at the end
    batches: int = 8  # validation micro-batches (per data-parallel rank)

    def __post_init__(self) -> None:
        if self.every < 0:
            _fail("every", self.every, "must be >= 0")
        if self.batches < 1:
            _fail("batches", self.batches, "must be >= 1")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    deepspeed: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Rules that span sections; each is checked here only (the parallel code trusts them).
        p, m = self.parallel, self.model
        if p.tp > 1 and m.n_heads % p.tp:
            _fail(
                "parallel.tp",
                p.tp,
                f"must divide model.n_heads={m.n_heads} (each tensor-parallel rank holds "
                "whole heads)",
            )
        if p.pp > m.n_layers:
            _fail(
                "parallel.pp",
                p.pp,
                f"cannot exceed model.n_layers={m.n_layers} (each pipeline stage needs at "
                "least one block)",
            )
        if p.sequence_parallel and m.seq_len % p.tp:
            _fail(
                "parallel.sequence_parallel",
                True,
                f"with parallel.tp={p.tp} needs model.seq_len={m.seq_len} divisible by tp",
            )
        if p.pp > 1 and p.zero_stage == 0 and self.train.precision == "bf16":
            # DeepSpeed 0.19.8: bf16 pipeline checkpoints of ZeRO stage 0 do not load back
            # (KeyError in bf16_optimizer), so such a run could never resume.
            _fail(
                "parallel.zero_stage",
                0,
                "bf16 with parallel.pp > 1 needs ZeRO-1 (DeepSpeed cannot reload a ZeRO-0 "
                "bf16 pipeline checkpoint); set parallel.zero_stage: 1",
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, name: str) -> Any:
    """Check ``value`` against the annotation ``tp``; build nested dataclasses."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            _fail(name, value, f"expected a mapping for section {_type_name(tp)}")
        return from_dict(tp, value, name)
    if origin in (Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            try:
                return _coerce(arm, value, name)
            except ConfigError as e:
                errors.append(str(e))
        _fail(
            name, value, "expected one of " + " | ".join(_type_name(a) for a in typing.get_args(tp))
        )
    if origin is Literal:
        if value not in typing.get_args(tp):
            _fail(name, value, f"expected one of {list(typing.get_args(tp))}")
        return value
    if tp is type(None):
        if value is not None:
            _fail(name, value, "expected null")
        return None
    if origin is list:
        if not isinstance(value, (list, tuple)):
            _fail(name, value, "expected a list")
        (arm,) = typing.get_args(tp)
        return [_coerce(arm, v, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            _fail(name, value, "expected a mapping")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            _fail(name, value, "expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(name, value, "expected an integer")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "989e12" (no dot, no sign) as a string; accept what float() reads
            try:
                value = float(value)
            except ValueError:
                _fail(name, value, "expected a number")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(name, value, "expected a number")
        if not math.isfinite(value):
            _fail(name, value, "must be finite")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(name, value, "expected a string")
        return value
    if tp is Any:
        return value
    raise TypeError(f"config field {name}: unsupported annotation {tp!r}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; errors name the dotted field path."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    dotted = (prefix + ".") if prefix else ""
    for key in data:
        if key not in known:
            raise ConfigError(
                f"{dotted}{key}: unknown key; known keys of {prefix or 'the config'}: "
                f"{', '.join(sorted(known))}"
            )
    kwargs = {k: _coerce(hints[k], v, dotted + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        msg = str(e)
        # Messages from __post_init__ name fields relative to their section.
        if dotted and not msg.startswith(dotted):
            msg = dotted + msg
        raise ConfigError(msg) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a nested dict copy."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {item!r}: empty key component")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {p} is not a section")
            node = nxt
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file as a dict, resolving ``base: other.yaml`` (relative to the file).

    A variant file names its base config and holds only what differs from it.
    """
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"config file {str(path)!r}: circular base chain")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: top level must be a mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"config file {str(path)!r}: base={base!r} must be a file name")
    return _deep_merge(read_yaml(path.parent / base, (*_seen, path)), data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a run config from YAML (or defaults when ``path`` is None) plus overrides."""
    data = read_yaml(Path(path)) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    return from_dict(RunConfig, data)


def model_config(**kwargs: Any) -> ModelConfig:
    """Build a validated ModelConfig from nested plain values (handy in tests and notebooks)."""
    return from_dict(ModelConfig, kwargs, "model")


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (round-trips through :func:`load_config`)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
