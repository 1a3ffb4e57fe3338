"""Compute: the loss on the compute frontier, compute multipliers and isoFLOP profiles.

A run of N parameters on D tokens costs C = f(N) D FLOPs, with f(N) the training FLOPs per
token. Across a variant's sizes f is modelled as a power law f(N) = c N^g, fitted in log-log
to the table (Chinchilla's C = 6 N D is c = 6, g = 1). On the frontier (the best N for each
C) the law L = E + A N^-alpha + B D^-beta with D = C / (c N^g) has, setting dL/dN = 0,

    N*(C) = (alpha A / (g beta B c^beta))^(1 / (alpha + g beta))  C^(beta / (alpha + g beta))
    L*(C) = E + K C^-p,   p = alpha beta / (alpha + g beta)

(both terms scale as C^-p, so K is read off at C = 1). The baseline reaches a loss
L > E_base with C_base(L) = (K_base / (L - E_base))^(1 / p_base), so a variant's compute
multiplier at budget C is

    m(C) = C_base(L*_variant(C)) / C

m > 1: the baseline needs m times the compute for the variant's loss (the variant is
better); m = inf when the variant's loss is below the baseline's irreducible E.

IsoFLOP profiles (Chinchilla approach 2): runs with the same C within a tolerance, at three
or more sizes; a parabola in log N through their losses gives N_opt(C) at its vertex.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from filtertron.scaling.law import ScalingLaw


@dataclass(frozen=True)
class FlopsModel:
    """FLOPs per token as c N^g."""

    c: float
    g: float

    def per_token(self, n: np.ndarray | float) -> np.ndarray:
        return self.c * np.asarray(n, float) ** self.g

    @classmethod
    def fit(cls, n: np.ndarray, flops_per_token: np.ndarray) -> FlopsModel:
        """Least squares in log-log; one distinct N gives g = 1."""
        x, y = np.log(np.asarray(n, float)), np.log(np.asarray(flops_per_token, float))
        if np.ptp(x) < 1e-9:
            return cls(c=float(np.exp(np.mean(y - x))), g=1.0)
        g, logc = np.polyfit(x, y, 1)
        return cls(c=float(np.exp(logc)), g=float(g))

    def as_dict(self) -> dict[str, float]:
        return {"c": self.c, "g": self.g}


CHINCHILLA = FlopsModel(c=6.0, g=1.0)


@dataclass(frozen=True)
class Frontier:
    """A law with its FLOPs model: the compute-optimal loss and allocation."""

    law: ScalingLaw
    flops: FlopsModel = CHINCHILLA

    @property
    def _q(self) -> float:
        return self.law.alpha + self.flops.g * self.law.beta

    @property
    def exponent(self) -> float:
        """p in L*(C) = E + K C^-p."""
        return self.law.alpha * self.law.beta / self._q

    @property
    def degenerate(self) -> bool:
        """alpha or beta at 0 (or g <= 0): no finite optimum, every frontier value is nan."""
        return min(self.law.alpha, self.law.beta, self.flops.g) <= 1e-9

    def n_opt(self, c: np.ndarray | float) -> np.ndarray:
        """Compute-optimal parameters N*(C)."""
        w, f = self.law, self.flops
        c = np.asarray(c, float)
        if self.degenerate:
            return np.full_like(c, np.nan)
        g0 = (w.alpha * w.A / (f.g * w.beta * w.B * f.c**w.beta)) ** (1.0 / self._q)
        return g0 * c ** (w.beta / self._q)

    def d_opt(self, c: np.ndarray | float) -> np.ndarray:
        """Tokens at the optimum, C / f(N*)."""
        return np.asarray(c, float) / self.flops.per_token(self.n_opt(c))

    def loss(self, c: np.ndarray | float) -> np.ndarray:
        """L*(C), the lowest loss reachable with compute C."""
        return self.law.loss(self.n_opt(c), self.d_opt(c))

    def compute_for(self, loss: np.ndarray | float) -> np.ndarray:
        """C(L), the compute at which the frontier reaches ``loss``; inf at or below E."""
        gap = np.asarray(loss, float) - self.law.E
        if self.degenerate:
            return np.full_like(gap, np.nan)
        k = self.loss(1.0) - self.law.E
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            c = np.where(gap > 0, (k / gap) ** (1.0 / self.exponent), np.inf)
        return np.where(np.isnan(gap), np.nan, c)


def multiplier(variant: Frontier, baseline: Frontier, c: np.ndarray | float) -> np.ndarray:
    """Compute multiplier of ``variant`` over ``baseline`` at budgets ``c`` (see above)."""
    c = np.asarray(c, float)
    return baseline.compute_for(variant.loss(c)) / c


def verdict(lo: float, hi: float) -> str:
    """Plain reading of a multiplier interval: better, worse or not distinguishable."""
    if lo > 1.0:
        return "better"
    if hi < 1.0:
        return "worse"
    return "not distinguishable"


@dataclass(frozen=True)
class IsoFlopProfile:
    """Runs at one compute budget, and the parabola in log N through their losses."""

    flops: float  # geometric mean of the runs' C
    n_params: list[float]
    loss: list[float]
    n_opt: float | None  # parabola vertex; None when the parabola opens downwards
    loss_opt: float | None


def isoflop_profiles(
    n: np.ndarray, flops: np.ndarray, loss: np.ndarray, rtol: float = 0.05, min_sizes: int = 3
) -> list[IsoFlopProfile]:
    """Group runs whose compute agrees within ``rtol`` and that span ``min_sizes`` sizes.

    Runs are sorted by C and cut wherever two neighbours differ by more than ``rtol``; a
    group is a profile when it holds at least ``min_sizes`` distinct N. Repeated N (seeds)
    enter the parabola fit as separate points.

    Args:
        n, flops, loss: per run.
        rtol: relative compute tolerance within a group.
        min_sizes: distinct sizes a profile needs.

    Returns:
        Profiles ordered by compute.
    """
    n, flops, loss = (np.asarray(x, float) for x in (n, flops, loss))
    order = np.argsort(flops)
    groups, cur = [], [order[0]] if len(order) else []
    for i, j in zip(order[:-1], order[1:]):
        if flops[j] > flops[i] * (1 + rtol):
            groups.append(cur)
            cur = []
        cur.append(j)
    if cur:
        groups.append(cur)
    out = []
    for g in groups:
        g = np.array(g)
        if len(np.unique(n[g])) < min_sizes:
            continue
        x = np.log(n[g])
        a2, a1, a0 = np.polyfit(x, loss[g], 2)
        n_opt = loss_opt = None
        if a2 > 0:
            xv = -a1 / (2 * a2)
            n_opt, loss_opt = float(np.exp(xv)), float(a0 + a1 * xv + a2 * xv * xv)
        k = np.argsort(n[g])
        out.append(
            IsoFlopProfile(
                flops=float(np.exp(np.mean(np.log(flops[g])))),
                n_params=[float(v) for v in n[g][k]],
                loss=[float(v) for v in loss[g][k]],
                n_opt=n_opt,
                loss_opt=loss_opt,
            )
        )
    return out
