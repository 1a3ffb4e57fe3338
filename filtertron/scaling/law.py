"""The Chinchilla loss law and its fit (Hoffmann et al. 2022, approach 3).

    L(N, D) = E + A / N^alpha + B / D^beta

N: parameters, D: training tokens. Fitted as Besiroglu et al. (2024) refit Chinchilla: on
log L, with the parameters in log form (a = log A, b = log B, e = log E),

    log L_hat = LSE(a - alpha log N,  b - beta log D,  e)
    objective = sum_i Huber_delta(log L_hat_i - log L_i),   delta = 1e-3,

minimised by scipy's L-BFGS-B (analytic gradient) from every point of a grid of initial
values (coarse tolerance, then the best few polished), keeping the best. BLAS is held to one
thread meanwhile: L-BFGS-B makes tiny BLAS calls, and threads fighting over busy cores made
them 10x slower. Confidence intervals come from a bootstrap over runs: resample the rows
with replacement, refit from the full-data fit's best distinct minima, and read percentiles
off the refits (:func:`bootstrap`, :func:`intervals`).

Arrays are 1-D numpy float64 of one length (one entry per training run).
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

PARAMS = ("E", "A", "B", "alpha", "beta")
DELTA = 1e-3
# Initial values (a, b, e, alpha, beta): Hoffmann et al.'s grid, thinned to 3 values each.
GRID = {
    "a": (0.0, 10.0, 20.0),
    "b": (0.0, 10.0, 20.0),
    "e": (-1.0, 0.0, 1.0),
    "alpha": (0.0, 0.5, 1.0),
    "beta": (0.0, 0.5, 1.0),
}
# Box for L-BFGS-B, wide enough for every published fit; it keeps few-point fits finite.
BOUNDS = [(-20.0, 60.0), (-20.0, 60.0), (-10.0, 5.0), (0.0, 4.0), (0.0, 4.0)]


@dataclass(frozen=True)
class ScalingLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
        """Predicted loss at ``n`` parameters and ``d`` tokens (broadcasting)."""
        n, d = np.asarray(n, float), np.asarray(d, float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def as_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in PARAMS}

    @classmethod
    def from_theta(cls, theta: np.ndarray) -> ScalingLaw:
        """From the log-form vector (a, b, e, alpha, beta)."""
        a, b, e, alpha, beta = (float(x) for x in theta)
        return cls(E=np.exp(e), A=np.exp(a), B=np.exp(b), alpha=alpha, beta=beta)

    def theta(self) -> np.ndarray:
        return np.array([np.log(self.A), np.log(self.B), np.log(self.E), self.alpha, self.beta])


@dataclass(frozen=True)
class Fit:
    """A fitted law, its objective, its number of points, and the distinct minima found
    (rows of a, b, e, alpha, beta, best first)."""

    law: ScalingLaw
    objective: float
    n_points: int
    minima: np.ndarray


def huber_objective(
    theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float
) -> tuple[float, np.ndarray]:
    """Summed Huber loss of the log-loss residuals, and its gradient in theta.

    Args:
        theta: (a, b, e, alpha, beta).
        log_n, log_d, log_l: logs of parameters, tokens and losses, shape (P,).
        delta: the Huber threshold.

    Returns:
        The objective and its gradient, shape (5,).
    """
    a, b, e, alpha, beta = theta
    t1 = a - alpha * log_n  # log(A / N^alpha)
    t2 = b - beta * log_d  # log(B / D^beta)
    m = np.maximum(np.maximum(t1, t2), e)
    # Shifted terms below -200 add under e^-200 to the sum; clipping them keeps exp out of the
    # subnormal range, where CPUs run 100x slower (seen: 4 ms instead of 26 us a call).
    x1, x2, x3 = (np.exp(np.maximum(t - m, -200.0)) for t in (t1, t2, e))
    s = x1 + x2 + x3
    r = m + np.log(s) - log_l  # log L_hat - log L, the stable log-sum-exp
    ar = np.abs(r)
    value = np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)).sum()
    g = np.clip(r, -delta, delta) / s  # dHuber/dr times the softmax denominator
    g1, g2 = g * x1, g * x2
    grad = np.array([g1.sum(), g2.sum(), (g * x3).sum(), -(g1 @ log_n), -(g2 @ log_d)])
    return float(value), grad


def grid_starts(grid: dict[str, tuple[float, ...]] = GRID) -> np.ndarray:
    """The grid of initial values as rows (a, b, e, alpha, beta)."""
    keys = ("a", "b", "e", "alpha", "beta")
    return np.array(list(itertools.product(*(grid[k] for k in keys))), float)


def _check(n: np.ndarray, d: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, ...]:
    n, d, loss = (np.asarray(x, float).ravel() for x in (n, d, loss))
    if not len(n) == len(d) == len(loss):
        raise ValueError(f"n, d, loss: lengths differ ({len(n)}, {len(d)}, {len(loss)})")
    for name, x in (("n_params", n), ("tokens", d), ("loss", loss)):
        if not np.all(np.isfinite(x)) or np.any(x <= 0):
            raise ValueError(f"{name}: every value must be finite and positive")
    return np.log(n), np.log(d), np.log(loss)


# Every start runs to a coarse tolerance; the best few are then polished to a tight one.
COARSE = {"maxiter": 200, "ftol": 1e-9, "gtol": 1e-5}
TIGHT = {"maxiter": 1000, "ftol": 1e-12, "gtol": 1e-8}
POLISH = 4


def _minimize(
    start: np.ndarray, args: tuple, scale: float, options: dict
) -> tuple[float, np.ndarray]:
    # The objective is O(delta) per point; dividing by delta gives L-BFGS-B gradients of
    # order one, so its absolute gradient tolerance means the same at any delta.
    def f(theta):
        v, g = huber_objective(theta, *args)
        return v / scale, g / scale

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = minimize(
            f,
            np.clip(start, [lo for lo, _ in BOUNDS], [hi for _, hi in BOUNDS]),
            jac=True,
            method="L-BFGS-B",
            bounds=BOUNDS,
            options=options,
        )
    return float(res.fun) * scale, res.x


def fit_law(
    n: np.ndarray,
    d: np.ndarray,
    loss: np.ndarray,
    delta: float = DELTA,
    starts: np.ndarray | None = None,
) -> Fit:
    """Fit L(N, D) by Huber regression on log L from every start; keep the best.

    Args:
        n: parameters per run.
        d: training tokens per run.
        loss: final loss per run.
        delta: Huber threshold on the log residual.
        starts: initial values (rows of a, b, e, alpha, beta); default :func:`grid_starts`.

    Returns:
        The best :class:`Fit`; ``Fit.minima`` holds the distinct end points, best first.
    """
    with threadpool_limits(1, user_api="blas"):
        return _fit_law(n, d, loss, delta, starts)


def _fit_law(n, d, loss, delta, starts) -> Fit:
    args = (*_check(n, d, loss), delta)
    starts = grid_starts() if starts is None else np.atleast_2d(starts)
    if len(starts) > POLISH:  # a grid: coarse from every start, then polish the best few
        ends = sorted((_minimize(s, args, delta, COARSE) for s in starts), key=lambda t: t[0])
        starts = np.array([t for _, t in ends[:POLISH]])
    else:
        ends = []
    ends[:POLISH] = sorted((_minimize(s, args, delta, TIGHT) for s in starts), key=lambda t: t[0])
    minima: list[np.ndarray] = []
    for _, t in ends:
        if all(np.abs(t - m).max() > 1e-3 for m in minima):
            minima.append(t)
    return Fit(ScalingLaw.from_theta(ends[0][1]), ends[0][0], len(args[0]), np.array(minima))


def bootstrap(
    n: np.ndarray,
    d: np.ndarray,
    loss: np.ndarray,
    n_boot: int = 200,
    seed: int = 0,
    delta: float = DELTA,
    n_starts: int = 2,
    starts: np.ndarray | None = None,
    draws: list[np.ndarray] | None = None,
) -> tuple[Fit, list[ScalingLaw]]:
    """The full-data fit and ``n_boot`` refits on rows resampled with replacement.

    Each refit starts from the ``n_starts`` best distinct minima of the full-data search
    (the whole grid for every resample would cost its 243 fits each).

    Args:
        n, d, loss: as for :func:`fit_law`.
        n_boot: number of resamples (ignored with ``draws``).
        seed: numpy seed of the resampling.
        delta: Huber threshold.
        n_starts: starts per refit.
        starts: initial values of the full-data fit (default :func:`grid_starts`).
        draws: row indices of each resample, given (e.g. the paired draws of
            :func:`filtertron.scaling.cells.draw`); default: rows uniformly with replacement.

    Returns:
        (full-data fit, list of bootstrap laws).
    """
    n, d, loss = (np.asarray(x, float).ravel() for x in (n, d, loss))
    if draws is None:
        rng = np.random.default_rng(seed)
        draws = [rng.integers(0, len(n), len(n)) for _ in range(n_boot)]
    laws = []
    with threadpool_limits(1, user_api="blas"):
        best = _fit_law(n, d, loss, delta, starts)
        for idx in draws:
            laws.append(_fit_law(n[idx], d[idx], loss[idx], delta, best.minima[:n_starts]).law)
    return best, laws


def at_edge(law: ScalingLaw, tol: float = 1e-3) -> list[str]:
    """The parameters of a fitted law that sit on the fit's box (:data:`BOUNDS`): there the
    data did not determine them (e.g. E at e^-10 when the runs cannot separate it)."""
    names = ("A", "B", "E", "alpha", "beta")  # the order of theta and BOUNDS
    return [
        name
        for name, t, (lo, hi) in zip(names, law.theta(), BOUNDS)
        if t <= lo + tol or t >= hi - tol
    ]


def intervals(laws: list[ScalingLaw], level: float) -> dict[str, tuple[float, float]]:
    """Percentile intervals of each parameter over bootstrap laws at ``level`` (e.g. 0.95)."""
    q = (50 * (1 - level), 50 * (1 + level))
    return {
        k: tuple(float(x) for x in np.percentile([getattr(w, k) for w in laws], q)) for k in PARAMS
    }
