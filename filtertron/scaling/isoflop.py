"""Chinchilla approach 2: isoFLOP profiles, their optima, and power laws through them.

Per variant and compute budget C (the runs of one budget: an isoFLOP profile), a parabola
in x = ln N through the final losses,

    L(x) = a2 x^2 + a1 x + a0,   x_opt = -a1 / (2 a2),   L*(C) = L(x_opt),  N_opt = e^x_opt,

is *identified* when it has a minimum (a2 > 0), was fitted to at least ``MIN_SIZES`` sizes,
and its vertex lies within the sizes trained; otherwise its numbers are kept with the reason
and enter no law. Through the identified optima, least squares in log-log:

    L*(C) = K C^s  (s < 0),      N_opt(C) = G C^a,

A variant's compute multiplier over the baseline at budget C is the compute at which the
baseline reaches the variant's optimal loss, over C:

    m(C) = C_b(L*_v(C)) / C,

with L*_v(C) the variant's vertex at that budget, and C_b read off the baseline's optima by
monotone cubic interpolation of ln C against ln L* (PCHIP; linear through two optima). Only
outside them (or between budgets without a vertex) do the power laws stand in, and the value
is an extrapolation, not *in range*. Interpolating keeps m honest where a pure power law
misfits L*(C), which has an irreducible term: through the optima of a Chinchilla law over a
10x range, the laws alone bend a constant multiplier of 2 into 1.8-2.1, straight segments
between the optima give 2.04, the cubic 2.00-2.01. m > 1: the variant is better. A
multiplier needs two identified optima per variant (exactly two fit a line without a check).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator

from filtertron.scaling.cells import flops_groups
from filtertron.scaling.table import Runs

MIN_SIZES = 3  # a parabola's three coefficients; a fourth size leaves a residual to check
MIN_OPTIMA = 2  # points of a power law


@dataclass(frozen=True)
class Profile:
    """One budget's runs and its parabola; ``status`` is "identified" or why not."""

    flops: float  # the budget: geometric mean of the runs' C
    n_params: np.ndarray  # by size
    loss: np.ndarray
    coef: np.ndarray | None  # (a2, a1, a0), None with fewer than MIN_SIZES sizes
    n_opt: float | None  # the vertex, when the parabola has a minimum (even off the grid)
    loss_opt: float | None
    status: str

    @property
    def identified(self) -> bool:
        return self.status == "identified"


@dataclass(frozen=True)
class PowerLaw:
    """y = k C^p, fitted in log-log to ``n_points`` optima over compute ``c_range``."""

    k: float
    p: float
    n_points: int
    c_range: tuple[float, float]

    def __call__(self, c: np.ndarray | float) -> np.ndarray:
        return self.k * np.asarray(c, float) ** self.p

    def inverse(self, y: np.ndarray | float) -> np.ndarray:
        """The compute at which the law reaches ``y``."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return (np.asarray(y, float) / self.k) ** (1.0 / self.p)

    @classmethod
    def fit(cls, c: np.ndarray, y: np.ndarray) -> PowerLaw:
        p, logk = np.polyfit(np.log(c), np.log(y), 1)
        return cls(float(np.exp(logk)), float(p), len(c), (float(c.min()), float(c.max())))


@dataclass(frozen=True)
class IsoFlopFit:
    """A variant's approach-2 fit: profiles, and the laws through the identified optima."""

    profiles: list[Profile]
    loss_law: PowerLaw | None  # L*(C)
    n_law: PowerLaw | None  # N_opt(C)
    status: str  # "identified" or why no law

    @property
    def identified(self) -> bool:
        return self.status == "identified"

    @property
    def optima(self) -> list[Profile]:
        return [p for p in self.profiles if p.identified]


def fit_profile(flops: float, n: np.ndarray, loss: np.ndarray) -> Profile:
    """The parabola in ln N through one budget's runs (repeated N, e.g. seeds, are separate
    points), and whether its optimum is identified."""
    order = np.argsort(n, kind="stable")
    n, loss = np.asarray(n, float)[order], np.asarray(loss, float)[order]
    sizes = len(np.unique(n))
    if sizes < MIN_SIZES:
        status = f"{sizes} size(s); a parabola needs {MIN_SIZES}"
        return Profile(flops, n, loss, None, None, None, status)
    x = np.log(n)
    coef = np.polyfit(x, loss, 2)
    a2, a1, a0 = coef
    if not a2 > 0:
        return Profile(flops, n, loss, coef, None, None, "no minimum (the parabola opens down)")
    xv = -a1 / (2 * a2)
    n_opt, loss_opt = float(np.exp(xv)), float(a0 + a1 * xv + a2 * xv * xv)
    if xv < x.min():
        status = "optimum below the smallest size trained"
    elif xv > x.max():
        status = "optimum above the largest size trained"
    else:
        status = "identified"
    return Profile(flops, n, loss, coef, n_opt, loss_opt, status)


def budget_groups(runs: Runs) -> list[np.ndarray]:
    """Index arrays of the runs of each budget, by compute: every budget of the ``budget``
    column when it is compute (planned profiles, however few sizes finished), else the
    groups of compute within 5% that hold at least ``MIN_SIZES`` sizes."""
    planned = runs.budget is not None and runs.budget_is_flops
    keys = runs.budget if planned else flops_groups(runs.flops)
    order = sorted(set(keys.tolist()), key=lambda k: float(np.median(runs.flops[keys == k])))
    groups = [np.flatnonzero(keys == k) for k in order]
    if planned:
        return groups
    return [g for g in groups if len(np.unique(runs.n_params[g])) >= MIN_SIZES]


def fit_isoflop(runs: Runs) -> IsoFlopFit:
    """Approach 2 for one variant's runs."""
    profiles = []
    for idx in budget_groups(runs):
        c = float(np.exp(np.mean(np.log(runs.flops[idx]))))
        profiles.append(fit_profile(c, runs.n_params[idx], runs.loss[idx]))
    optima = [p for p in profiles if p.identified]
    if not profiles:
        status = f"no isoFLOP profiles (no compute budget with {MIN_SIZES} sizes)"
        return IsoFlopFit(profiles, None, None, status)
    if len(optima) < MIN_OPTIMA:
        status = (
            f"{len(optima)} of {len(profiles)} budget(s) with an identified optimum; "
            f"a power law needs {MIN_OPTIMA}"
        )
        return IsoFlopFit(profiles, None, None, status)
    c = np.array([p.flops for p in optima])
    loss_law = PowerLaw.fit(c, np.array([p.loss_opt for p in optima]))
    n_law = PowerLaw.fit(c, np.array([p.n_opt for p in optima]))
    status = "identified" if loss_law.p < 0 else "the optimal loss does not fall with compute"
    return IsoFlopFit(profiles, loss_law, n_law, status)


def optimal_loss(fit: IsoFlopFit, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L*(C) at budgets ``c``: a budget's identified vertex where there is one (within 5% of
    C), else the power law; and whether each value is a measured vertex."""
    c = np.asarray(c, float)
    out, measured = fit.loss_law(c), np.zeros(c.shape, bool)
    for p in fit.optima:
        at = np.isclose(c, p.flops, rtol=0.05)
        out, measured = np.where(at, p.loss_opt, out), measured | at
    return out, measured


def compute_for(fit: IsoFlopFit, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The compute at which ``fit`` reaches ``loss``, and whether that is read between its
    optima: log-log interpolation between the neighbouring identified optima (where their
    L* falls with C), else the power law (an extrapolation)."""
    loss = np.asarray(loss, float)
    opt = sorted(fit.optima, key=lambda p: p.flops)
    c = np.log([p.flops for p in opt])
    y = np.log([p.loss_opt for p in opt])
    law = fit.loss_law.inverse(loss)
    if len(opt) < MIN_OPTIMA or not np.all(np.diff(y) < 0):
        return law, np.zeros(loss.shape, bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.log(loss)
        inside = (x >= y.min()) & (x <= y.max())
        # Monotone cubic through the optima (linear through two): ln L* bends towards its
        # irreducible part as C grows, which a straight segment would cut across.
        between = np.exp(PchipInterpolator(y[::-1], c[::-1])(np.where(inside, x, y[0])))
    return np.where(inside, between, law), inside


def multiplier(variant: IsoFlopFit, baseline: IsoFlopFit, c: np.ndarray) -> np.ndarray:
    """m(C) of ``variant`` over ``baseline`` at budgets ``c``: the baseline's compute at the
    variant's L*(C) (:func:`compute_for`), over C; nan where either has no law."""
    c = np.asarray(c, float)
    if not (variant.identified and baseline.identified):
        return np.full(c.shape, np.nan)
    loss, _ = optimal_loss(variant, c)
    return compute_for(baseline, loss)[0] / c


def in_range(variant: IsoFlopFit, baseline: IsoFlopFit, c: np.ndarray) -> np.ndarray:
    """Whether m(C) is read off the runs: the variant's L*(C) a measured vertex, and the
    baseline's compute for it between two of its optima (False where either has no law)."""
    c = np.asarray(c, float)
    if not (variant.identified and baseline.identified):
        return np.zeros(c.shape, bool)
    loss, measured = optimal_loss(variant, c)
    return measured & compute_for(baseline, loss)[1]
