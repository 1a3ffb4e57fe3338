"""The runs table: one row per training run, read from CSV and checked once.

Columns ``variant,n_params,tokens,loss`` are required; ``flops`` (training FLOPs of the run),
``seed``, ``size`` (a size label shared by the variants' runs of one model shape) and
``budget`` (the budget the run was planned at; with ``budget_kind`` flops, or without that
column, the runs of one budget form an isoFLOP profile) are optional; other columns are
ignored. Without ``flops`` a run's compute is taken as C = 6 N D (Chinchilla's convention).
``size``, ``budget`` and ``seed`` say which runs of two variants are a pair
(:mod:`filtertron.scaling.cells`); a sweep's table.csv has all three.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REQUIRED = ("variant", "n_params", "tokens", "loss")
OPTIONAL = ("flops", "seed", "size", "budget")
MIN_RUNS = 5  # the law has five parameters


class TableError(ValueError):
    """A runs table is missing, malformed, or too small to fit; names the file and column."""


@dataclass(frozen=True)
class Runs:
    """The runs of one variant, as float arrays of one length."""

    variant: str
    n_params: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    flops: np.ndarray
    flops_given: bool  # False: flops = 6 N D
    size: np.ndarray | None = None  # size labels (str), if the table has them
    budget: np.ndarray | None = None  # planned budget per run, if the table has it
    seed: np.ndarray | None = None  # training seed per run (int), if the table has it
    budget_is_flops: bool = True  # the budget column is compute (False: tokens, tokens/N)

    def take(self, index: np.ndarray) -> Runs:
        """The runs at ``index`` (repeats allowed), as a new :class:`Runs`."""
        pick = [None if x is None else x[index] for x in (self.size, self.budget, self.seed)]
        return Runs(
            self.variant, self.n_params[index], self.tokens[index], self.loss[index],
            self.flops[index], self.flops_given, *pick, self.budget_is_flops,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.loss)

    @property
    def flops_per_token(self) -> np.ndarray:
        return self.flops / self.tokens


def read_table(path: str | Path) -> dict[str, Runs]:
    """Read and check a runs table; returns the runs per variant, in first-seen order.

    Raises:
        TableError: the file is missing, a required column is absent, a value is not a
            positive finite number, or a variant has fewer than ``MIN_RUNS`` runs.
    """
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise TableError(
                f"{path}: missing column(s) {', '.join(missing)}; a runs table needs "
                f"{','.join(REQUIRED)} (optional: {','.join(OPTIONAL)}); found "
                f"{','.join(header) or 'no header'}"
            )
        has_flops = "flops" in header
        extra = [c for c in ("size", "budget", "seed") if c in header]
        rows: dict[str, list[tuple[float, ...]]] = {}
        labels: dict[str, list[tuple]] = {}
        kinds: set[str] = set()
        for line, row in enumerate(reader, start=2):
            name = (row["variant"] or "").strip()
            if not name:
                raise TableError(f"{path}, line {line}: column variant is empty")
            values = []
            for col in ("n_params", "tokens", "loss") + (("flops",) if has_flops else ()):
                raw = row[col]
                try:
                    v = float(raw)
                except (TypeError, ValueError):
                    raise TableError(
                        f"{path}, line {line}: column {col}={raw!r} is not a number"
                    ) from None
                if not (math.isfinite(v) and v > 0):
                    raise TableError(
                        f"{path}, line {line}: column {col}={raw!r} must be positive and finite"
                    )
                values.append(v)
            rows.setdefault(name, []).append(tuple(values))
            labels.setdefault(name, []).append(tuple(_label(path, line, c, row[c]) for c in extra))
            kinds.add((row.get("budget_kind") or "flops").strip())
    if not rows:
        raise TableError(f"{path}: no rows")
    out = {}
    for name, vals in rows.items():
        if len(vals) < MIN_RUNS:
            raise TableError(
                f"{path}: variant {name!r} has {len(vals)} run(s); fitting the law needs at "
                f"least {MIN_RUNS}"
            )
        a = np.array(vals, float)
        flops = a[:, 3] if has_flops else 6.0 * a[:, 0] * a[:, 1]
        cols = {c: [t[i] for t in labels[name]] for i, c in enumerate(extra)}
        out[name] = Runs(
            name, a[:, 0], a[:, 1], a[:, 2], flops, has_flops,
            size=np.array(cols["size"], object) if "size" in cols else None,
            budget=np.array(cols["budget"], float) if "budget" in cols else None,
            seed=np.array(cols["seed"], int) if "seed" in cols else None,
            budget_is_flops=kinds == {"flops"},
        )  # fmt: skip
    return out


def _label(path: Path, line: int, column: str, raw: str | None) -> str | float | int:
    """An optional column's value: a size label, a positive budget, an integer seed."""
    raw = (raw or "").strip()
    if column == "size":
        if not raw:
            raise TableError(f"{path}, line {line}: column size is empty")
        return raw
    try:
        v = float(raw) if column == "budget" else int(raw)
    except ValueError:
        kind = "a number" if column == "budget" else "an integer"
        raise TableError(f"{path}, line {line}: column {column}={raw!r} is not {kind}") from None
    if column == "budget" and not (math.isfinite(v) and v > 0):
        raise TableError(f"{path}, line {line}: column budget={raw!r} must be positive")
    return v
