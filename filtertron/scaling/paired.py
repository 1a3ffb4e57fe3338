"""Paired differences: a variant's final loss minus the baseline's in the same cell.

A cell is (budget, size, seed) (:mod:`filtertron.scaling.cells`): the two runs have the same
model size, compute budget, seed and data order, so their difference

    d_i = L_variant,i - L_baseline,i     (nats per token; < 0: the variant is better)

is a direct measurement that needs no law. Summaries over the n cells both variants have:
the mean difference with a percentile interval from the shared bootstrap draws (each draw's
mean over the cells it holds), the count of cells where the variant is lower / higher, and
the two-sided exact sign test of "lower and higher are equally likely" (ties dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

from filtertron.scaling.cells import Cell, Draws
from filtertron.scaling.table import Runs


@dataclass(frozen=True)
class Paired:
    """A variant against the baseline over their common cells."""

    cells: list[Cell]
    flops: np.ndarray  # the variant's compute in each cell
    n_params: np.ndarray  # the variant's N in each cell
    diff: np.ndarray  # variant minus baseline, per cell
    mean: float
    lo: float
    hi: float
    level: float

    @property
    def n(self) -> int:
        return len(self.diff)

    @property
    def lower(self) -> int:
        return int((self.diff < 0).sum())

    @property
    def higher(self) -> int:
        return int((self.diff > 0).sum())

    @property
    def p_sign(self) -> float:
        """Two-sided exact sign test (ties dropped); 1.0 without untied cells."""
        k = self.lower + self.higher
        return float(binomtest(self.lower, k, 0.5).pvalue) if k else 1.0

    @property
    def majority(self) -> int:
        """-1: the variant lower in more cells than higher; +1: the reverse; 0: even."""
        return int(np.sign(self.higher - self.lower))

    @property
    def verdict(self) -> str:
        """From the interval of the mean difference."""
        if self.hi < 0:
            return "lower"
        if self.lo > 0:
            return "higher"
        return "not distinguishable"


def _mean_over(diffs: dict[Cell, float], drawn: list[Cell]) -> float:
    values = [diffs[c] for c in drawn if c in diffs]
    return float(np.mean(values)) if values else float("nan")


def paired(
    variant: Runs,
    baseline: Runs,
    cells_v: list[Cell],
    cells_b: list[Cell],
    draws: Draws,
    level: float,
) -> Paired:
    """The variant's paired differences to the baseline (cells in both; a cell holding
    several runs of one variant, e.g. a repeated run, uses their mean)."""

    def by_cell(runs: Runs, cells: list[Cell]) -> dict[Cell, list[int]]:
        out: dict[Cell, list[int]] = {}
        for i, c in enumerate(cells):
            out.setdefault(c, []).append(i)
        return out

    v, b = by_cell(variant, cells_v), by_cell(baseline, cells_b)
    common = sorted(set(v) & set(b), key=lambda c: (variant.flops[v[c][0]], c))
    diff = {c: float(variant.loss[v[c]].mean() - baseline.loss[b[c]].mean()) for c in common}
    boot = np.array([_mean_over(diff, d) for d in draws.cells])
    boot = boot[~np.isnan(boot)]
    q = (50 * (1 - level), 50 * (1 + level))
    lo, hi = (float(x) for x in np.percentile(boot, q)) if len(boot) else (np.nan, np.nan)
    return Paired(
        cells=common,
        flops=np.array([variant.flops[v[c][0]] for c in common]),
        n_params=np.array([variant.n_params[v[c][0]] for c in common]),
        diff=np.array([diff[c] for c in common]),
        mean=float(np.mean(list(diff.values()))) if common else float("nan"),
        lo=lo,
        hi=hi,
        level=level,
    )
