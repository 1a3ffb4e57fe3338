"""From a runs table to what it can say: paired differences, approach 2, approach 3.

Per variant: the Chinchilla law L(N, D) fitted to all its runs (approach 3,
:func:`filtertron.scaling.law.fit_law`), its isoFLOP profiles and the power laws through their
optima (approach 2, :mod:`filtertron.scaling.isoflop`), and the FLOPs model f(N) = c N^g.
Against the baseline: the paired differences (:mod:`filtertron.scaling.paired`) and, per
approach, the compute multiplier at each budget. Every interval comes from one set of
bootstrap draws of the design (:mod:`filtertron.scaling.cells`: seeds, then sizes within
each budget, the same cells for every variant), so the b-th refits of a variant and of the
baseline are paired. :mod:`filtertron.scaling.claims` reads the result: what is identified,
what contradicts the paired differences, and which approach a conclusion rests on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from filtertron.scaling import isoflop
from filtertron.scaling.cells import Cell, Draws, cells, draw
from filtertron.scaling.compute import FlopsModel, Frontier, multiplier, verdict
from filtertron.scaling.isoflop import IsoFlopFit, fit_isoflop
from filtertron.scaling.law import DELTA, PARAMS, Fit, ScalingLaw, at_edge, bootstrap
from filtertron.scaling.paired import Paired, paired
from filtertron.scaling.table import Runs, TableError

MIN_SHARE = 0.8  # an approach-2 interval needs the multiplier defined in this share of draws


@dataclass(frozen=True)
class VariantFit:
    """One variant: its runs, approach-3 fit and refits, FLOPs model, approach-2 fit and
    refits (one per bootstrap draw)."""

    runs: Runs
    fit: Fit
    boot: list[ScalingLaw]
    flops: FlopsModel
    iso: IsoFlopFit
    iso_boot: list[IsoFlopFit]

    @property
    def frontier(self) -> Frontier:
        return Frontier(self.fit.law, self.flops)

    @property
    def boot_frontiers(self) -> list[Frontier]:
        return [Frontier(w, self.flops) for w in self.boot]

    @property
    def edges(self) -> list[str]:
        """Approach-3 parameters at the fit's box edge (not determined by the runs)."""
        return at_edge(self.fit.law)

    def interval(self, name: str, level: float) -> tuple[float, float]:
        """Percentile interval of a law parameter, or of ``exponent`` (p in L*(C))."""
        if name == "exponent":
            values = [f.exponent for f in self.boot_frontiers]
        else:
            values = [getattr(w, name) for w in self.boot]
        return _percentiles(np.array(values, float), level)

    def iso_interval(self, which: str, level: float) -> tuple[tuple[float, float], float]:
        """Interval of an approach-2 law exponent over the draws that have the law
        (``which``: "loss" for s in L* = K C^s, "n" for a in N_opt = G C^a), and that share."""
        laws = [getattr(f, f"{which}_law") for f in self.iso_boot if f.identified]
        values = np.array([w.p for w in laws], float)
        return _percentiles(values, level), len(values) / max(1, len(self.iso_boot))


@dataclass(frozen=True)
class Comparison:
    """Approach 3: a variant's compute multiplier over the baseline at several budgets."""

    budgets: np.ndarray
    value: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    level: float
    # Whether the frontier points behind each value lie inside the grid that was trained:
    # the variant's N*(C) within its runs' sizes, and the baseline's N*(C_base) within its
    # runs' sizes at a C_base within its runs' compute. False: the value is extrapolated.
    in_grid: np.ndarray
    edges: list[str]  # "variant: E", "baseline: alpha", ...: parameters at the box edge

    @property
    def verdicts(self) -> list[str]:
        return [verdict(a, b) for a, b in zip(self.lo, self.hi)]

    @property
    def identified(self) -> bool:
        """No parameter at the box edge, and at least one budget in the grid (the headline
        reports those budgets only)."""
        return not self.edges and bool((self.in_grid & np.isfinite(self.value)).any())


@dataclass(frozen=True)
class Comparison2:
    """Approach 2: a variant's compute multiplier over the baseline at several budgets."""

    budgets: np.ndarray
    value: np.ndarray  # nan where a law is missing
    lo: np.ndarray
    hi: np.ndarray
    share: np.ndarray  # of the draws in which the multiplier was defined
    in_range: np.ndarray
    level: float
    status: str  # "identified" or why not (the variant's or the baseline's)

    @property
    def verdicts(self) -> list[str]:
        return [verdict(a, b) for a, b in zip(self.lo, self.hi)]

    @property
    def identified(self) -> bool:
        """Both laws exist and at least one budget is in range, defined in ``MIN_SHARE`` of
        the draws at every budget in range (the headline reports those budgets only)."""
        ok = self.in_range & (self.share >= MIN_SHARE)
        return self.status == "identified" and bool(ok.any()) and bool(ok[self.in_range].all())


@dataclass(frozen=True)
class Analysis:
    fits: dict[str, VariantFit]
    baseline: str
    comparisons: dict[str, Comparison]  # approach 3, every variant but the baseline
    iso_comparisons: dict[str, Comparison2]  # approach 2
    paired: dict[str, Paired]
    cells: dict[str, list[Cell]]  # each run's (budget, size, seed), per variant
    level: float
    n_boot: int
    delta: float


def _percentiles(x: np.ndarray, level: float) -> tuple[float, float]:
    x = x[~np.isnan(x)]
    if not len(x):
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(x, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def fit_variant(runs: Runs, draws: list[np.ndarray], delta: float = DELTA) -> VariantFit:
    """Fit one variant (both approaches) and refit it on each draw of its run indices."""
    fit, boot = bootstrap(runs.n_params, runs.tokens, runs.loss, delta=delta, draws=draws)
    return VariantFit(
        runs=runs,
        fit=fit,
        boot=boot,
        flops=FlopsModel.fit(runs.n_params, runs.flops_per_token),
        iso=fit_isoflop(runs),
        iso_boot=[fit_isoflop(runs.take(idx)) for idx in draws],
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
    """Approach 3: the variant's multiplier at ``budgets``, with paired-bootstrap intervals."""
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
    edges = [f"{who}: {p}" for who, f in (("variant", variant), ("baseline", baseline))
             for p in f.edges]  # fmt: skip
    return Comparison(c, value, bounds[:, 0], bounds[:, 1], level, in_grid, edges)


def compare_isoflop(
    variant: VariantFit, baseline: VariantFit, budgets: np.ndarray, level: float
) -> Comparison2:
    """Approach 2: the variant's multiplier at ``budgets``, with paired-bootstrap intervals
    over the draws in which both laws exist."""
    c = np.asarray(budgets, float)
    value = isoflop.multiplier(variant.iso, baseline.iso, c)
    boot = np.array(
        [isoflop.multiplier(v, b, c) for v, b in zip(variant.iso_boot, baseline.iso_boot)]
    ).reshape(-1, len(c))
    bounds = np.array([_percentiles(boot[:, i], level) for i in range(len(c))])
    share = np.isfinite(boot).mean(axis=0) if len(boot) else np.zeros(len(c))
    if not variant.iso.identified:
        status = f"variant: {variant.iso.status}"
    elif not baseline.iso.identified:
        status = f"baseline: {baseline.iso.status}"
    else:
        status = "identified"
    in_range = isoflop.in_range(variant.iso, baseline.iso, c)
    return Comparison2(c, value, bounds[:, 0], bounds[:, 1], share, in_range, level, status)


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
    """Fit every variant and compare each with the baseline, by both approaches and by
    paired differences.

    Args:
        runs: runs per variant (:func:`filtertron.scaling.table.read_table`).
        baseline: the reference variant; default "baseline" if present, else the first.
        budgets: compute budgets for the multipliers; default: the baseline's isoFLOP
            budgets, else 5 log-spaced over the compute range all variants share.
        n_boot: bootstrap draws (shared by every variant and estimate).
        seed: bootstrap seed.
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
    where = cells(runs)
    draws: Draws = draw(where, n_boot, seed)
    fits = {name: fit_variant(r, draws.index[name], delta) for name, r in runs.items()}
    if budgets is None:
        profiles = fits[baseline].iso.profiles
        budgets = np.array([p.flops for p in profiles]) if profiles else default_budgets(fits)
    budgets = np.asarray(budgets, float)
    others = [name for name in fits if name != baseline]
    return Analysis(
        fits=fits,
        baseline=baseline,
        comparisons={n: compare(fits[n], fits[baseline], budgets, level) for n in others},
        iso_comparisons={
            n: compare_isoflop(fits[n], fits[baseline], budgets, level) for n in others
        },
        paired={
            n: paired(runs[n], runs[baseline], where[n], where[baseline], draws, level)
            for n in others
        },
        cells=where,
        level=level,
        n_boot=n_boot,
        delta=delta,
    )


__all__ = [
    "PARAMS",
    "Analysis",
    "Comparison",
    "Comparison2",
    "VariantFit",
    "analyze",
    "compare",
    "compare_isoflop",
    "fit_variant",
]
