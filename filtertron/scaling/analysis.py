"""From a runs table to fitted laws, intervals and compute multipliers.

Per variant: the law fitted to all its runs (:func:`filtertron.scaling.law.fit_law`),
``n_boot`` refits on runs resampled with replacement, the FLOPs model f(N) = c N^g and the
isoFLOP profiles its grid holds. Per variant and budget C: the compute multiplier over the
baseline (:func:`filtertron.scaling.compute.multiplier`), its value from the full-data fits
and its percentile interval from the b-th bootstrap fit of the variant paired with the b-th
of the baseline (the variants' runs are independent, so are their resamples).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from filtertron.scaling.compute import (
    FlopsModel,
    Frontier,
    IsoFlopProfile,
    isoflop_profiles,
    multiplier,
    verdict,
)
from filtertron.scaling.law import DELTA, PARAMS, Fit, ScalingLaw, bootstrap
from filtertron.scaling.table import Runs, TableError


@dataclass(frozen=True)
class VariantFit:
    """One variant's fit, bootstrap refits, FLOPs model and isoFLOP profiles."""

    runs: Runs
    fit: Fit
    boot: list[ScalingLaw]
    flops: FlopsModel
    isoflop: list[IsoFlopProfile]

    @property
    def frontier(self) -> Frontier:
        return Frontier(self.fit.law, self.flops)

    @property
    def boot_frontiers(self) -> list[Frontier]:
        return [Frontier(w, self.flops) for w in self.boot]

    def interval(self, name: str, level: float) -> tuple[float, float]:
        """Percentile interval of a law parameter, or of ``exponent`` (p in L*(C))."""
        if name == "exponent":
            values = [f.exponent for f in self.boot_frontiers]
        else:
            values = [getattr(w, name) for w in self.boot]
        return _percentiles(np.array(values, float), level)


@dataclass(frozen=True)
class Comparison:
    """A variant's compute multiplier over the baseline at several budgets."""

    budgets: np.ndarray
    value: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    level: float
    # Whether the frontier points behind each value lie inside the grid that was trained:
    # the variant's N*(C) within its runs' sizes, and the baseline's N*(C_base) within its
    # runs' sizes at a C_base within its runs' compute. False: the value is extrapolated.
    in_grid: np.ndarray

    @property
    def verdicts(self) -> list[str]:
        return [verdict(a, b) for a, b in zip(self.lo, self.hi)]


@dataclass(frozen=True)
class Analysis:
    fits: dict[str, VariantFit]
    baseline: str
    comparisons: dict[str, Comparison]  # every variant but the baseline
    level: float
    n_boot: int
    delta: float


def _percentiles(x: np.ndarray, level: float) -> tuple[float, float]:
    x = x[~np.isnan(x)]
    if not len(x):
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(x, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def fit_variant(runs: Runs, n_boot: int, seed: int, delta: float = DELTA) -> VariantFit:
    """Fit one variant's law with ``n_boot`` bootstrap refits."""
    fit, boot = bootstrap(runs.n_params, runs.tokens, runs.loss, n_boot, seed, delta)
    return VariantFit(
        runs=runs,
        fit=fit,
        boot=boot,
        flops=FlopsModel.fit(runs.n_params, runs.flops_per_token),
        isoflop=isoflop_profiles(runs.n_params, runs.flops, runs.loss),
    )


def default_budgets(fits: dict[str, VariantFit], count: int = 5) -> np.ndarray:
    """``count`` budgets log-spaced over the compute range all variants' runs share."""
    lo = max(float(f.runs.flops.min()) for f in fits.values())
    hi = min(float(f.runs.flops.max()) for f in fits.values())
    if not lo < hi:  # disjoint ranges: span everything
        lo = min(float(f.runs.flops.min()) for f in fits.values())
        hi = max(float(f.runs.flops.max()) for f in fits.values())
    return np.geomspace(lo, hi, count)


def compare(
    variant: VariantFit, baseline: VariantFit, budgets: np.ndarray, level: float
) -> Comparison:
    """The variant's multiplier at ``budgets``, with paired-bootstrap intervals."""
    value = multiplier(variant.frontier, baseline.frontier, budgets)
    boot = np.array(
        [multiplier(v, b, budgets) for v, b in zip(variant.boot_frontiers, baseline.boot_frontiers)]
    )  # (n_boot, budgets)
    bounds = np.array([_percentiles(boot[:, i], level) for i in range(len(budgets))])
    c = np.asarray(budgets, float)
    c_base = value * c
    in_grid = (
        _within(variant.frontier.n_opt(c), variant.runs.n_params)
        & _within(baseline.frontier.n_opt(c_base), baseline.runs.n_params)
        & _within(c_base, baseline.runs.flops)
    )
    return Comparison(c, value, bounds[:, 0], bounds[:, 1], level, in_grid)


def _within(x: np.ndarray, grid: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (x >= grid.min() * 0.999) & (x <= grid.max() * 1.001)


def analyze(
    runs: dict[str, Runs],
    baseline: str | None = None,
    budgets: np.ndarray | None = None,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    delta: float = DELTA,
) -> Analysis:
    """Fit every variant and compare each with the baseline.

    Args:
        runs: runs per variant (:func:`filtertron.scaling.table.read_table`).
        baseline: the reference variant; default "baseline" if present, else the first.
        budgets: compute budgets for the multipliers; default :func:`default_budgets`.
        n_boot: bootstrap resamples per variant.
        seed: bootstrap seed (variant i uses seed + i).
        level: interval level (e.g. 0.95).
        delta: Huber threshold.

    Returns:
        An :class:`Analysis`.

    Raises:
        TableError: ``baseline`` names no variant of the table.
    """
    if baseline is None:
        baseline = "baseline" if "baseline" in runs else next(iter(runs))
    if baseline not in runs:
        raise TableError(
            f"--baseline {baseline!r}: no such variant in the table (variants: {', '.join(runs)})"
        )
    fits = {
        name: fit_variant(r, n_boot, seed + i, delta) for i, (name, r) in enumerate(runs.items())
    }
    budgets = default_budgets(fits) if budgets is None else np.asarray(budgets, float)
    comparisons = {
        name: compare(f, fits[baseline], budgets, level)
        for name, f in fits.items()
        if name != baseline
    }
    return Analysis(fits, baseline, comparisons, level, n_boot, delta)


__all__ = ["PARAMS", "Analysis", "Comparison", "VariantFit", "analyze", "compare", "fit_variant"]
