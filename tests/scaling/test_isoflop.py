"""Approach 2 (isoFLOP profiles) against known parabolas and a known law.

The reference optimum and multiplier come from test_compute's brute-force minimisation of the
law on dense grids, independent of the parabola and power-law code.
"""

import numpy as np
import pytest

from filtertron.scaling.analysis import analyze
from filtertron.scaling.claims import claims
from filtertron.scaling.compute import FlopsModel, Frontier
from filtertron.scaling.isoflop import fit_profile
from filtertron.scaling.law import ScalingLaw
from filtertron.scaling.table import Runs

from .test_compute import LAW, brute_frontier, brute_multiplier

FM = FlopsModel(6.0, 1.0)
BUDGETS = np.array([1e18, 3.16e18, 1e19])  # spanning 10x


def test_parabola_vertex_and_why_an_optimum_is_not_identified():
    x = np.linspace(18.0, 20.0, 5)
    p = fit_profile(1e20, np.exp(x), 3.0 + 0.2 * (x - 19.3) ** 2)
    assert p.identified and np.log(p.n_opt) == pytest.approx(19.3, abs=1e-9)
    assert p.loss_opt == pytest.approx(3.0, abs=1e-12)
    # Losses rising with N (the smallest model wins): the vertex lies below the grid, as in
    # the CPU preset's profiles; it is kept with its reason, not as an optimum.
    low = fit_profile(1e20, np.exp(x), 3.0 + 0.2 * (x - 16.0) ** 2)
    assert not low.identified and low.status == "optimum below the smallest size trained"
    assert np.log(low.n_opt) == pytest.approx(16.0)
    assert fit_profile(1e20, np.exp(x), 3.0 - 0.1 * (x - 19) ** 2).status.startswith("no minimum")
    two = fit_profile(1e20, np.exp(x[:2]), np.array([3.1, 3.0]))
    assert two.status == "2 size(s); a parabola needs 3" and two.coef is None


def _isoflop_runs(name, law, noise, seed, seeds=(0,)):
    """7 sizes from N_opt / 5 to 5 N_opt of the baseline law at each budget, C = 6 N D, with
    the table's size, budget and seed columns."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in BUDGETS:
        n_opt = float(Frontier(LAW, FM).n_opt(c))
        for i, n in enumerate(n_opt * np.geomspace(1 / 5, 5, 7)):
            for s in seeds:
                d = c / (6 * n)
                rows.append((n, d, law.loss(n, d) * np.exp(rng.normal(0, noise)), c, i, s))
    n, d, loss, c, size, s = (np.array(v) for v in zip(*rows))
    return Runs(name, n, d, loss, c, True, size.astype(str).astype(object), c, s.astype(int))


@pytest.mark.parametrize("k", [2.0, 0.6])
def test_approach_2_recovers_the_optimum_and_multiplier_of_a_known_law(k):
    # The variant is the baseline with N scaled by k: L_v(N, D) = L_b(kN, D). Per budget the
    # parabola's vertex must find the law's N_opt within 3% and L* within 0.3%; the power law
    # through the optima must have N_opt's exponent beta / (alpha + beta). Where the
    # baseline's compute for the variant's L* lies between its optima (two budgets of three:
    # the third needs compute beyond the grid), the multiplier must lie within 5% of the
    # brute-force one and inside its 95% interval; the third is marked as an extrapolation.
    variant = ScalingLaw(LAW.E, LAW.A * k**-LAW.alpha, LAW.B, LAW.alpha, LAW.beta)
    runs = {"baseline": _isoflop_runs("baseline", LAW, 0.003, 1),
            "scaled": _isoflop_runs("scaled", variant, 0.003, 2)}  # fmt: skip
    a = analyze(runs, n_boot=100, seed=0)
    base = a.fits["baseline"].iso
    assert base.identified and len(base.optima) == 3
    for p in base.optima:
        loss, n = (float(v[0]) for v in brute_frontier(LAW, FM, p.flops))
        assert p.n_opt == pytest.approx(n, rel=0.03)
        assert p.loss_opt == pytest.approx(loss, rel=0.003)
    assert base.n_law.p == pytest.approx(LAW.beta / (LAW.alpha + LAW.beta), abs=0.03)
    cmp = a.iso_comparisons["scaled"]
    np.testing.assert_allclose(cmp.budgets, BUDGETS, rtol=1e-9)
    outside = 2 if k > 1 else 0  # the baseline would need C_max * k, or C_min * k
    assert cmp.in_range.tolist() == [i != outside for i in range(3)]
    for i, c in enumerate(BUDGETS):
        truth = brute_multiplier(variant, LAW, FM, FM, c)
        assert truth == pytest.approx(k, rel=0.01)  # the reference itself
        if i != outside:
            assert cmp.value[i] == pytest.approx(truth, rel=0.05)
            assert cmp.lo[i] <= truth <= cmp.hi[i], (c, truth, cmp.lo[i], cmp.hi[i])
            assert cmp.verdicts[i] == ("better" if k > 1 else "worse")
    assert cmp.identified
    # Paired cells agree with the law: the variant is lower (k > 1) in every cell.
    p = a.paired["scaled"]
    assert p.n == 21 and (p.lower == 21 if k > 1 else p.higher == 21)
    c = claims(a)["scaled"]
    assert c.rests_on == "approach 2" and not any("contradicts" in f for f in c.flags)


def test_several_seeds_are_resampled_as_clusters():
    # Two seeds per cell: the draws resample seeds and sizes; every draw holds both variants'
    # runs of the same cells, so the paired mean difference has a tight interval around the
    # true gap even though the seed noise (shared by the pair) is large.
    variant = ScalingLaw(LAW.E, LAW.A * 2.0**-LAW.alpha, LAW.B, LAW.alpha, LAW.beta)
    b = _isoflop_runs("baseline", LAW, 0.0, 1, seeds=(0, 1))
    v = _isoflop_runs("scaled", variant, 0.0, 2, seeds=(0, 1))
    noise = np.random.default_rng(5).normal(0, 0.05, len(b.loss))  # shared per cell
    b = Runs(b.variant, b.n_params, b.tokens, b.loss + noise, b.flops, True, b.size, b.budget,
             b.seed)  # fmt: skip
    v = Runs(v.variant, v.n_params, v.tokens, v.loss + noise, v.flops, True, v.size, v.budget,
             v.seed)  # fmt: skip
    a = analyze({"baseline": b, "scaled": v}, n_boot=40, seed=0)
    p = a.paired["scaled"]
    true_gap = np.mean(v.loss - b.loss)
    assert p.n == 42 and p.mean == pytest.approx(true_gap, abs=1e-12)
    assert p.lo <= true_gap <= p.hi and p.hi - p.lo < 0.05 and p.verdict == "lower"
