"""Plots of an analysis (matplotlib, Agg), small PNGs at 100 dpi:

paired.png           each variant's paired differences to the baseline per cell, against
                     compute, with the mean and its interval
isoflop.png          approach 2: each budget's runs and parabola in ln N, the vertex filled
                     when identified, hollow when not
optima.png           approach 2: the identified optima L*(C) and the power law through them
loss_vs_compute.png  approach 3: runs and fitted frontiers L*(C) with interval bands
multiplier.png       multipliers against compute: approach 3 as lines with bands, approach 2
                     as points with intervals (hollow: not identified)

Bands are pointwise percentile intervals over the bootstrap refits at the analysis level.
"""

from __future__ import annotations

import textwrap
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
        two = a.iso_comparisons[name]
        ok = np.isfinite(two.value)
        if ok.any():
            ax.errorbar(
                two.budgets[ok] * 1.06,
                two.value[ok],
                yerr=[np.clip(two.value - two.lo, 0, None)[ok],
                      np.clip(two.hi - two.value, 0, None)[ok]],
                fmt="s", ms=5, capsize=2, color=color,
                mfc=color if two.identified else "none",
            )  # fmt: skip
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel(f"compute multiplier vs {a.baseline}")
    ax.set_title(
        f"> 1: better than {a.baseline}; lines: approach 3, squares: approach 2 (hollow: not "
        f"identified); {round(100 * a.level)}%",
        fontsize=8,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def isoflop(a: Analysis, path: Path) -> Path | None:
    """Approach 2: loss against N per budget, each budget's parabola and its vertex; None
    if no variant has a profile."""
    with_profiles = [(n, f) for n, f in a.fits.items() if f.iso.profiles]
    if not with_profiles:
        return None
    plt = _pyplot()
    k = len(with_profiles)
    fig, axes = plt.subplots(1, k, figsize=(3 * k + 1, 3.2), dpi=100, squeeze=False, sharey=True)
    for ax, (name, f) in zip(axes[0], with_profiles):
        for j, p in enumerate(f.iso.profiles):
            color = f"C{j}"
            ax.scatter(p.n_params, p.loss, s=12, color=color, label=f"C={p.flops:.2g}")
            if p.coef is not None:
                x = np.linspace(np.log(p.n_params.min()), np.log(p.n_params.max()), 60)
                ax.plot(np.exp(x), np.polyval(p.coef, x), color=color, lw=1)
            if p.n_opt is not None:
                face = color if p.identified else "none"
                ax.scatter([p.n_opt], [p.loss_opt], marker="*", s=90, facecolors=face,
                           edgecolors=color, zorder=3)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("parameters N")
        title = f"{name}: {f.iso.status}" if not f.iso.identified else name
        ax.set_title(textwrap.fill(title, 40), fontsize=8)  # wrapped: panels sit side by side
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("final loss")
    fig.suptitle("isoFLOP profiles (star: vertex; hollow: not identified)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def optima(a: Analysis, path: Path) -> Path | None:
    """Approach 2: each variant's identified optima L*(C) (error bars: the bootstrap range of
    that budget's vertex loss) and its power law; None if no variant has an optimum."""
    if not any(f.iso.optima for f in a.fits.values()):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for i, (name, f) in enumerate(a.fits.items()):
        color = f"C{i}"
        pts = f.iso.optima
        if not pts:
            continue
        c = np.array([p.flops for p in pts])
        y = np.array([p.loss_opt for p in pts])
        lo, hi = [], []
        for p in pts:  # the same budget's identified vertex in every draw
            boot = [q.loss_opt for b in f.iso_boot for q in b.optima
                    if np.isclose(q.flops, p.flops, rtol=0.05)]  # fmt: skip
            band = _band(np.array(boot)[:, None], a.level) if boot else ([p.loss_opt],) * 2
            lo.append(float(band[0][0]))
            hi.append(float(band[1][0]))
        yerr = [np.clip(y - lo, 0, None), np.clip(np.array(hi) - y, 0, None)]
        ax.errorbar(c, y, yerr=yerr, fmt="o", color=color, ms=4, capsize=2, label=name)
        if f.iso.loss_law is not None:
            grid = np.geomspace(c.min() / 1.3, c.max() * 1.3, 40)
            ax.plot(grid, f.iso.loss_law(grid), color=color, lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("optimal loss L*(C)")
    ax.set_title(f"isoFLOP optima and L*(C) = K C^s, {round(100 * a.level)}% bars", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def paired(a: Analysis, path: Path) -> Path | None:
    """Each variant's per-cell loss difference to the baseline against compute, with its
    mean and interval at the right; None without variants."""
    if not a.paired:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    names = list(a.paired)
    for i, name in enumerate(names):
        p = a.paired[name]
        color = f"C{i + 1}"
        if not p.n:
            continue
        jitter = np.exp(0.04 * (i - (len(names) - 1) / 2))
        ax.scatter(p.flops * jitter, p.diff, s=14, color=color, alpha=0.8,
                   label=f"{name}: {p.lower}/{p.n} lower")  # fmt: skip
        x = float(p.flops.max()) * 2.2 * jitter
        ax.errorbar([x], [p.mean], yerr=[[p.mean - p.lo], [p.hi - p.mean]], fmt="D",
                    color=color, ms=5, capsize=3)  # fmt: skip
    ax.axhline(0.0, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("training compute C (FLOPs); diamonds: mean and interval")
    ax.set_ylabel(f"loss minus {a.baseline} (nats)")
    ax.set_title(f"paired differences (< 0: lower than {a.baseline})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_all(a: Analysis, out: Path) -> list[Path]:
    """Write every plot that the analysis has data for; returns the files written."""
    files = [
        paired(a, out / "paired.png"),
        isoflop(a, out / "isoflop.png"),
        optima(a, out / "optima.png"),
        loss_vs_compute(a, out / "loss_vs_compute.png"),
    ]
    if a.comparisons:
        files.append(multiplier_vs_compute(a, out / "multiplier.png"))
    return [f for f in files if f is not None]
