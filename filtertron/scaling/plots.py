"""Plots of an analysis (matplotlib, Agg): loss against compute, multipliers, isoFLOP curves.

Bands are pointwise percentile intervals over the bootstrap refits at the analysis level.
Figures are small PNGs (6 x 4 in at 100 dpi).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from filtertron.scaling.analysis import Analysis


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise percentile band of (n_boot, points), ignoring nan rows per point."""
    q = (50 * (1 - level), 50 * (1 + level))
    with np.errstate(invalid="ignore"):
        lo, hi = np.nanpercentile(np.where(np.isfinite(values), values, np.nan), q, axis=0)
    return lo, hi


def _compute_axis(a: Analysis, pad: float = 2.0) -> np.ndarray:
    lo = min(float(f.runs.flops.min()) for f in a.fits.values()) / pad
    hi = max(float(f.runs.flops.max()) for f in a.fits.values()) * pad
    return np.geomspace(lo, hi, 80)


def loss_vs_compute(a: Analysis, path: Path) -> Path:
    """Runs (points) and each variant's frontier L*(C) (line) with its band, log-log."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    c = _compute_axis(a)
    for i, (name, f) in enumerate(a.fits.items()):
        color = f"C{i}"
        ax.scatter(f.runs.flops, f.runs.loss, s=14, color=color, alpha=0.7)
        ax.plot(c, f.frontier.loss(c), color=color, label=name)
        lo, hi = _band(np.array([b.loss(c) for b in f.boot_frontiers]), a.level)
        ax.fill_between(c, lo, hi, color=color, alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("loss")
    ax.set_title(f"runs and fitted frontier L*(C), {round(100 * a.level)}% bands")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def multiplier_vs_compute(a: Analysis, path: Path) -> Path:
    """Each variant's compute multiplier over the baseline against C, with its band."""
    from filtertron.scaling.compute import multiplier

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    c = _compute_axis(a, pad=1.0)
    base = a.fits[a.baseline]
    for i, (name, f) in enumerate(a.fits.items()):
        if name == a.baseline:
            continue
        color = f"C{i}"
        ax.plot(c, multiplier(f.frontier, base.frontier, c), color=color, label=name)
        boot = np.array(
            [multiplier(v, b, c) for v, b in zip(f.boot_frontiers, base.boot_frontiers)]
        )
        lo, hi = _band(boot, a.level)
        ax.fill_between(c, lo, hi, color=color, alpha=0.15, linewidth=0)
        cmp = a.comparisons[name]
        ax.errorbar(
            cmp.budgets,
            cmp.value,
            yerr=[np.clip(cmp.value - cmp.lo, 0, None), np.clip(cmp.hi - cmp.value, 0, None)],
            fmt="o",
            color=color,
            ms=3,
            capsize=2,
        )
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel(f"compute multiplier vs {a.baseline}")
    ax.set_title(f"> 1: better than {a.baseline}; {round(100 * a.level)}% bands")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def isoflop(a: Analysis, path: Path) -> Path | None:
    """Loss against N at each isoFLOP budget, with the fitted law's curve; None if no
    variant has a profile."""
    with_profiles = [(n, f) for n, f in a.fits.items() if f.isoflop]
    if not with_profiles:
        return None
    plt = _pyplot()
    k = len(with_profiles)
    fig, axes = plt.subplots(1, k, figsize=(3 * k + 1, 3.2), dpi=100, squeeze=False)
    for ax, (name, f) in zip(axes[0], with_profiles):
        for j, p in enumerate(f.isoflop):
            color = f"C{j}"
            ax.scatter(p.n_params, p.loss, s=14, color=color, label=f"C={p.flops:.2g}")
            n = np.geomspace(min(p.n_params) / 1.5, max(p.n_params) * 1.5, 60)
            ax.plot(n, f.fit.law.loss(n, p.flops / f.flops.per_token(n)), color=color, lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("parameters N")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_all(a: Analysis, out: Path) -> list[Path]:
    """Write every plot that the analysis has data for; returns the files written."""
    files = [loss_vs_compute(a, out / "loss_vs_compute.png")]
    if a.comparisons:
        files.append(multiplier_vs_compute(a, out / "multiplier.png"))
    iso = isoflop(a, out / "isoflop.png")
    return files + ([iso] if iso else [])
