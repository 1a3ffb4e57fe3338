"""Frontier, compute multipliers and isoFLOP profiles against brute-force references.

The references minimise and invert on dense grids (numpy only), independently of the
closed forms in filtertron.scaling.compute.
"""

import numpy as np
import pytest

from filtertron.scaling.analysis import analyze, compare
from filtertron.scaling.compute import (
    FlopsModel,
    Frontier,
    multiplier,
    verdict,
)
from filtertron.scaling.law import ScalingLaw
from filtertron.scaling.table import Runs

LAW = ScalingLaw(E=1.82, A=482.0, B=2085.0, alpha=0.348, beta=0.366)


def brute_frontier(law: ScalingLaw, flops: FlopsModel, c: np.ndarray | float):
    """min over log N of L(N, C / f(N)) on a grid over 1e3..1e16, refined twice around the
    best point (each pass 2001 points): (loss, argmin N), one per budget."""
    c = np.atleast_1d(np.asarray(c, float))[:, None]
    lo, hi = np.full(c.shape, np.log(1e3)), np.full(c.shape, np.log(1e16))
    for _ in range(3):
        x = lo + (hi - lo) * np.linspace(0.0, 1.0, 2001)[None, :]
        n = np.exp(x)
        loss = law.loss(n, c / flops.per_token(n))
        i = np.argmin(loss, axis=1)[:, None]
        step = (hi - lo) / 2000
        best = np.take_along_axis(x, i, 1)
        lo, hi = best - 2 * step, best + 2 * step
    n = np.exp(best[:, 0])
    return np.take_along_axis(loss, i, 1)[:, 0], n


def brute_multiplier(variant, base, flops_v, flops_b, c: float) -> float:
    target = brute_frontier(variant, flops_v, c)[0][0]
    grid = np.geomspace(c / 1e3, c * 1e3, 3001)
    base_loss = brute_frontier(base, flops_b, grid)[0]
    # base_loss falls with compute: interpolate log C against loss.
    return float(np.exp(np.interp(target, base_loss[::-1], np.log(grid)[::-1])) / c)


@pytest.mark.parametrize("flops", [FlopsModel(6.0, 1.0), FlopsModel(40.0, 0.93)])
def test_frontier_matches_brute_force_minimum(flops):
    f = Frontier(LAW, flops)
    for c in (1e18, 1e21, 1e24):
        loss, n = (float(v[0]) for v in brute_frontier(LAW, flops, c))
        assert float(f.loss(c)) == pytest.approx(loss, rel=1e-9)
        assert float(f.n_opt(c)) == pytest.approx(n, rel=1e-3)
        assert float(f.compute_for(f.loss(c))) == pytest.approx(c, rel=1e-9)


def test_chinchilla_allocation_is_the_published_closed_form():
    # With C = 6 N D: N_opt = G (C / 6)^(beta / (alpha + beta)), G = (alpha A / beta B)^(1/(a+b))
    f = Frontier(LAW)
    g = (LAW.alpha * LAW.A / (LAW.beta * LAW.B)) ** (1 / (LAW.alpha + LAW.beta))
    c = 5.76e23
    assert float(f.n_opt(c)) == pytest.approx(g * (c / 6) ** (LAW.beta / (LAW.alpha + LAW.beta)))
    assert float(f.n_opt(c) * f.d_opt(c)) * 6 == pytest.approx(c)


def test_multiplier_matches_brute_force_and_is_one_against_itself():
    fm = FlopsModel(6.0, 1.0)
    better = ScalingLaw(E=1.82, A=482.0 * 2.0**-0.348, B=2085.0, alpha=0.348, beta=0.366)
    for c in (1e19, 1e22):
        m = float(multiplier(Frontier(better, fm), Frontier(LAW, fm), c))
        assert m == pytest.approx(brute_multiplier(better, LAW, fm, fm, c), rel=2e-3)
        assert m > 1
        assert float(multiplier(Frontier(LAW, fm), Frontier(LAW, fm), c)) == pytest.approx(1.0)
    # A variant with a lower irreducible loss eventually beats any baseline compute.
    low_e = ScalingLaw(E=1.5, A=482.0, B=2085.0, alpha=0.348, beta=0.366)
    assert np.isinf(multiplier(Frontier(low_e, fm), Frontier(LAW, fm), 1e30))


def test_verdicts():
    assert verdict(1.1, 1.5) == "better"
    assert verdict(0.5, 0.9) == "worse"
    assert verdict(0.9, 1.2) == "not distinguishable"


CHINCHILLA_FLOPS = FlopsModel(6.0, 1.0)


def _runs(name, law, k, seed, noise=0.005, fpt=CHINCHILLA_FLOPS):
    n, d = (x.ravel() for x in np.meshgrid(np.geomspace(3e7, 1e10, k), np.geomspace(3e9, 1e12, k)))
    rng = np.random.default_rng(seed)
    loss = law.loss(n, d) * np.exp(rng.normal(0, noise, n.size))
    return Runs(name, n, d, loss, fpt.per_token(n) * d, True)


def test_known_multiplier_is_recovered_within_its_interval():
    # The variant is the baseline with N scaled by 2: L_v(N, D) = L_b(2N, D). Its true
    # multiplier at each budget comes from the brute-force reference; the fitted one must
    # lie within 15% of it and the 95% bootstrap interval must hold it, at every budget.
    k = 2.0
    variant = ScalingLaw(LAW.E, LAW.A * k**-LAW.alpha, LAW.B, LAW.alpha, LAW.beta)
    fm = FlopsModel(6.0, 1.0)
    runs = {"baseline": _runs("baseline", LAW, 6, 1), "scaled": _runs("scaled", variant, 6, 2)}
    budgets = np.array([1e19, 1e20, 1e21])
    a = analyze(runs, budgets=budgets, n_boot=60, seed=0)
    cmp = a.comparisons["scaled"]
    for i, c in enumerate(budgets):
        truth = brute_multiplier(variant, LAW, fm, fm, c)
        assert 1.5 < truth < 2.5  # sanity of the reference itself
        assert cmp.value[i] == pytest.approx(truth, rel=0.15)
        assert cmp.lo[i] <= truth <= cmp.hi[i], (c, truth, cmp.lo[i], cmp.hi[i])
    assert cmp.verdicts == ["better"] * 3
    # The optimal sizes at these budgets lie inside the trained grid; at 1e25 FLOPs they
    # would be far above it, and the value is flagged as an extrapolation.
    assert cmp.in_grid.all()
    far = compare(a.fits["scaled"], a.fits["baseline"], np.array([1e25]), 0.95)
    assert not far.in_grid[0]
    assert float(a.fits["baseline"].frontier.n_opt(1e25)) > 1e10


def test_flops_model_fit_recovers_a_power_law():
    n = np.geomspace(1e5, 1e8, 7)
    fm = FlopsModel.fit(n, 11.0 * n**0.9)
    assert fm.c == pytest.approx(11.0)
    assert fm.g == pytest.approx(0.9)
