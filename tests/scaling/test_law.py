"""The law's fit: objective and gradient, synthetic recovery, interval coverage, Chinchilla.

References are independent of the code under test: scipy.special.huber for the objective,
central differences for the gradient, the generating law for the synthetic cases, and Epoch
AI's published refit of the Chinchilla runs (Besiroglu et al. 2024) for the golden case.
"""

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from scipy.special import huber

from filtertron.scaling.law import (
    ScalingLaw,
    bootstrap,
    fit_law,
    grid_starts,
    huber_objective,
    intervals,
)

ROOT = Path(__file__).resolve().parents[2]
# The CSV is not vendored (no licence is stated for it): it is read from
# $FILTERTRON_REFERENCE_DATA, or from shared/data/ beside the checkout (or beside the
# worktrees' parent); see that folder's README for where the file comes from.
_DATA_DIRS = [ROOT.parent / "shared" / "data", ROOT.parents[1] / "shared" / "data"]
if os.environ.get("FILTERTRON_REFERENCE_DATA"):
    _DATA_DIRS.insert(0, Path(os.environ["FILTERTRON_REFERENCE_DATA"]))
CHINCHILLA_CSV = next(
    (
        d / "chinchilla_svg_extracted_data.csv"
        for d in _DATA_DIRS
        if (d / "chinchilla_svg_extracted_data.csv").is_file()
    ),
    _DATA_DIRS[0] / "chinchilla_svg_extracted_data.csv",
)
TRUE = ScalingLaw(E=1.82, A=482.0, B=2085.0, alpha=0.348, beta=0.366)


def synthetic(seed: int, noise: float = 0.01, k: int = 6) -> tuple[np.ndarray, ...]:
    """k x k runs over 3e7..1e10 parameters and 3e9..1e12 tokens, loss x exp(N(0, noise))."""
    n, d = (x.ravel() for x in np.meshgrid(np.geomspace(3e7, 1e10, k), np.geomspace(3e9, 1e12, k)))
    rng = np.random.default_rng(seed)
    return n, d, TRUE.loss(n, d) * np.exp(rng.normal(0.0, noise, n.size))


def test_objective_is_summed_huber_of_log_residuals():
    n, d, loss = synthetic(0)
    theta = np.array([6.5, 7.2, 0.55, 0.33, 0.38])
    pred = np.exp(theta[2]) + np.exp(theta[0]) / n ** theta[3] + np.exp(theta[1]) / d ** theta[4]
    for delta in (1e-3, 1e-1):
        expected = huber(delta, np.log(pred) - np.log(loss)).sum()
        value, _ = huber_objective(theta, np.log(n), np.log(d), np.log(loss), delta)
        assert value == pytest.approx(expected, rel=1e-12)


def test_gradient_matches_central_differences():
    n, d, loss = synthetic(1)
    args = (np.log(n), np.log(d), np.log(loss), 1e-1)  # large delta: smooth everywhere
    theta = np.array([6.5, 7.2, 0.55, 0.33, 0.38])
    _, grad = huber_objective(theta, *args)
    eps = 1e-6
    numeric = [
        (huber_objective(theta + eps * e, *args)[0] - huber_objective(theta - eps * e, *args)[0])
        / (2 * eps)
        for e in np.eye(5)
    ]
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("seed", [2, 3])
def test_recovers_a_known_law_from_noisy_points(seed):
    # 64 runs, 0.5% noise. Tolerances from a 10-seed Monte Carlo of this design (largest
    # errors seen: E 1.2%, alpha 2.6%, beta 6.9%, A 17%, B 68%, predicted loss 0.7%), with
    # room: E 3%, alpha 6%, beta 12%, A 40%; B, which trades off against beta, only within a
    # factor 2. The loss the law predicts is what the fits are used for: within 1.5%.
    n, d, loss = synthetic(seed, noise=0.005, k=8)
    law = fit_law(n, d, loss).law
    assert law.E == pytest.approx(TRUE.E, rel=0.03)
    assert law.alpha == pytest.approx(TRUE.alpha, rel=0.06)
    assert law.beta == pytest.approx(TRUE.beta, rel=0.12)
    assert law.A == pytest.approx(TRUE.A, rel=0.40)
    assert 0.5 < law.B / TRUE.B < 2.0
    np.testing.assert_allclose(law.loss(n, d), TRUE.loss(n, d), rtol=0.015)


def test_noise_free_points_give_the_law_back():
    n, d, _ = synthetic(0)
    law = fit_law(n, d, TRUE.loss(n, d)).law
    for k in ("E", "A", "B", "alpha", "beta"):
        assert getattr(law, k) == pytest.approx(getattr(TRUE, k), rel=1e-3), k


@pytest.mark.slow  # 24 s: 20 repeated bootstraps; the fit itself is tested by default above
def test_ninety_percent_intervals_cover_the_truth_in_most_of_20_repetitions():
    # 1% noise, 36 runs, 100 bootstrap resamples per repetition. A 90% interval should miss
    # about 2 of 20; "most" is asserted as at least 15 of 20 for every parameter, and the
    # intervals must not be vacuous (each narrower than the parameter itself for E, alpha,
    # beta). The full-data fit starts from a 32-point grid here (the default is 243 points)
    # to keep the 20 repetitions quick; the bootstrap is what is being tested.
    starts = grid_starts(
        {
            "a": (2.0, 10.0),
            "b": (2.0, 10.0),
            "e": (-0.5, 0.5),
            "alpha": (0.2, 0.8),
            "beta": (0.2, 0.8),
        }
    )
    covered = dict.fromkeys(("E", "A", "B", "alpha", "beta"), 0)
    for seed in range(20):
        n, d, loss = synthetic(100 + seed)
        _, laws = bootstrap(n, d, loss, n_boot=100, seed=seed, starts=starts)
        iv = intervals(laws, 0.90)
        for k in covered:
            lo, hi = iv[k]
            covered[k] += lo <= getattr(TRUE, k) <= hi
        for k in ("E", "alpha", "beta"):
            assert iv[k][1] - iv[k][0] < getattr(TRUE, k)
    assert all(c >= 15 for c in covered.values()), covered


def _chinchilla() -> tuple[np.ndarray, ...]:
    if not CHINCHILLA_CSV.is_file():
        pytest.skip(f"{CHINCHILLA_CSV} not present")
    with CHINCHILLA_CSV.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 245
    n = np.array([float(r["Model Size"]) for r in rows])
    c = np.array([float(r["Training FLOP"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    keep = np.argsort(loss)[:-5]  # drop the 5 highest-loss runs, as Epoch AI did
    return n[keep], c[keep] / (6 * n[keep]), loss[keep]


def test_golden_chinchilla_matches_epoch_ai_replication():
    n, d, loss = _chinchilla()
    law = fit_law(n, d, loss).law
    # Besiroglu et al. 2024: E = 1.8172, A = 482.01, B = 2085.43, alpha = 0.3478, beta = 0.3658
    assert law.E == pytest.approx(1.817, rel=0.02)
    assert law.alpha == pytest.approx(0.348, rel=0.02)
    assert law.beta == pytest.approx(0.366, rel=0.02)
    assert law.A == pytest.approx(482.01, rel=0.15)
    assert law.B == pytest.approx(2085.43, rel=0.15)
    # And not Hoffmann et al.'s early-stopped values (E = 1.69, beta = 0.28).
    assert abs(law.beta - 0.28) > 0.05


def test_bad_input_is_named():
    n, d, loss = synthetic(0)
    with pytest.raises(ValueError, match="loss: every value must be finite and positive"):
        fit_law(n, d, np.where(np.arange(n.size) == 3, -1.0, loss))
    with pytest.raises(ValueError, match="lengths differ"):
        fit_law(n[:-1], d, loss)
