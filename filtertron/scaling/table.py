"""The runs table: one row per training run, read from CSV and checked once.

Columns ``variant,n_params,tokens,loss`` are required; ``flops`` (training FLOPs of the run)
and ``seed`` are optional; other columns are kept as text and ignored by the fits. Without
``flops`` a run's compute is taken as C = 6 N D (Chinchilla's convention).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REQUIRED = ("variant", "n_params", "tokens", "loss")
OPTIONAL = ("flops", "seed")
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
        rows: dict[str, list[tuple[float, ...]]] = {}
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
        out[name] = Runs(name, a[:, 0], a[:, 1], a[:, 2], flops, has_flops)
    return out
