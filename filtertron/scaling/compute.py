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
better); m = inf when the variant's loss is below the baseline's irreducible E. (Approach 2,
the same multiplier from isoFLOP optima without the law: :mod:`filtertron.scaling.isoflop`.)
"""

from __future__ import annotations

import math
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
    """Plain reading of a multiplier interval: better, worse, not distinguishable, or no
    estimate (an interval that could not be formed)."""
    if math.isnan(lo) or math.isnan(hi):
        return "no estimate"
    if lo > 1.0:
        return "better"
    if hi < 1.0:
        return "worse"
    return "not distinguishable"
