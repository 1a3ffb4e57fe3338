"""results.md: an analysis as Markdown, led by what the data can carry.

Sections, in order: the claims (per variant: the conclusion, the approach it rests on, and
every flag), the runs with their paired differences, approach 2 (profiles, optima, power
laws, multipliers), approach 3 (law parameters, multipliers). A number that is not
identified is printed with its reason in its own section, never in the first.
"""

from __future__ import annotations

import math

import numpy as np

from filtertron.scaling.analysis import Analysis
from filtertron.scaling.claims import claims, why_not_2, why_not_3
from filtertron.scaling.law import PARAMS


def _fmt(v: float | None, spec: str = ".4g") -> str:
    return "-" if v is None or not math.isfinite(v) else format(v, spec)


def _ci(lo: float, hi: float, spec: str = ".3g") -> str:
    return f"[{_fmt(lo, spec)}, {_fmt(hi, spec)}]"


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.inf


def _claims(a: Analysis) -> list[str]:
    lines = ["## What the data can carry", ""]
    for name, c in claims(a).items():
        lines.append(f"- **{name}** (rests on {c.rests_on}): {c.headline}.")
        if c.rests_on != "paired differences":
            lines.append(f"  Paired: {c.paired}.")
        lines += [f"  - flag: {f}." for f in c.flags]
    return lines + [""]


def _runs(a: Analysis) -> list[str]:
    """One row per (budget, size, seed) cell: the baseline's loss, each variant's difference."""
    base = a.fits[a.baseline].runs
    by_cell = {c: i for i, c in enumerate(a.cells[a.baseline])}
    others = [n for n in a.fits if n != a.baseline]
    index = {n: {c: i for i, c in enumerate(a.cells[n])} for n in others}
    lines = [
        "## The runs and their paired differences",
        "",
        "Final loss of the baseline per cell (budget, size, seed) and each variant's loss minus "
        "it in the same cell (same size, budget, seed and data order; < 0: the variant is "
        "lower).",
        "",
        f"| budget | size | seed | N | C (FLOPs) | {a.baseline} | " + " | ".join(others) + " |",
        "|---" * (6 + len(others)) + "|",
    ]
    for c in sorted(by_cell, key=lambda c: (_number(c[0]), c[2], base.n_params[by_cell[c]])):
        i = by_cell[c]
        cells = []
        for n in others:
            j = index[n].get(c)
            runs = a.fits[n].runs
            cells.append("-" if j is None else f"{runs.loss[j] - base.loss[i]:+.4f}")
        lines.append(
            f"| {c[0]} | {c[1]} | {c[2]} | {base.n_params[i]:.4g} | {base.flops[i]:.3g} | "
            f"{base.loss[i]:.4f} | " + " | ".join(cells) + " |"
        )
    pct = round(100 * a.level)
    lines += [
        "",
        f"| variant | cells | lower | higher | mean difference [{pct}%] | verdict | sign test p |",
        "|---" * 7 + "|",
    ]
    for n, p in a.paired.items():
        lines.append(
            f"| {n} | {p.n} | {p.lower} | {p.higher} | {p.mean:+.4f} "
            f"{_ci(p.lo, p.hi, '+.4f')} | {p.verdict} | {p.p_sign:.2g} |"
        )
    return lines + [""]


def _approach2(a: Analysis) -> list[str]:
    pct = round(100 * a.level)
    lines = [
        "## Approach 2: isoFLOP profiles",
        "",
        "Per budget a parabola in ln N through the final losses; its vertex is the optimum "
        "N_opt, L*(C) when it is a minimum within the sizes trained (3 or more sizes). Power "
        "laws through the identified optima: L*(C) = K C^s, N_opt(C) = G C^a. Multiplier: "
        "the compute at which the baseline's law reaches the variant's L*(C), over C.",
        "",
        "| variant | C (FLOPs) | sizes | N_opt | L* | status |",
        "|---" * 6 + "|",
    ]
    for n, f in a.fits.items():
        for p in f.iso.profiles:
            lines.append(
                f"| {n} | {p.flops:.3g} | {len(np.unique(p.n_params))} | {_fmt(p.n_opt, '.3g')} "
                f"| {_fmt(p.loss_opt)} | {p.status} |"
            )
    lines += ["", f"| variant | s in L* = K C^s [{pct}%] | a in N_opt = G C^a [{pct}%] | "
              "optima | status |", "|---" * 5 + "|"]  # fmt: skip
    for n, f in a.fits.items():
        cells = []
        for which in ("loss", "n"):
            law = getattr(f.iso, f"{which}_law")
            (lo, hi), share = f.iso_interval(which, a.level)
            cells.append(
                "-" if law is None
                else f"{law.p:.3g} {_ci(lo, hi)} (in {100 * share:.0f}% of draws)"
            )  # fmt: skip
        lines.append(f"| {n} | {cells[0]} | {cells[1]} | {len(f.iso.optima)} | {f.iso.status} |")
    lines += [
        "",
        f"| variant | C (FLOPs) | multiplier | {pct}% interval | defined in | in range | "
        "verdict | identified |",
        "|---" * 8 + "|",
    ]
    for n, c in a.iso_comparisons.items():
        for i, b in enumerate(c.budgets):
            why = "; ".join(why_not_2(c, i)) or "yes"
            lines.append(
                f"| {n} | {b:.3g} | {_fmt(c.value[i], '.3g')} | {_ci(c.lo[i], c.hi[i])} | "
                f"{100 * c.share[i]:.0f}% | {'yes' if c.in_range[i] else 'no'} | "
                f"{c.verdicts[i]} | {why} |"
            )
    return lines + [""]


def _approach3(a: Analysis) -> list[str]:
    pct = round(100 * a.level)
    lines = [
        "## Approach 3: L(N, D) = E + A / N^alpha + B / D^beta",
        "",
        f"Huber (delta {a.delta:g}) on log L, L-BFGS-B from a grid of starts, within a box; "
        "a parameter on the box edge (marked *edge*) was not determined by the runs. p: the "
        "exponent of the frontier L*(C) = E + K C^-p.",
        "",
        "| variant | runs | E | A | B | alpha | beta | p |",
        "|---" * 8 + "|",
    ]
    for n, f in a.fits.items():
        cells = []
        for k in (*PARAMS, "exponent"):
            v = f.frontier.exponent if k == "exponent" else getattr(f.fit.law, k)
            lo, hi = f.interval(k, a.level)
            edge = " *edge*" if k in f.edges else ""
            cells.append(f"{_fmt(v, '.3g')}{edge} {_ci(lo, hi)}")
        lines.append(f"| {n} | {len(f.runs)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"| variant | C (FLOPs) | L* variant | L* {a.baseline} | multiplier | {pct}% interval | "
        "in grid | verdict | identified |",
        "|---" * 9 + "|",
    ]
    base = a.fits[a.baseline].frontier
    for n, c in a.comparisons.items():
        front = a.fits[n].frontier
        for i, b in enumerate(c.budgets):
            why = "; ".join(why_not_3(c, i)) or "yes"
            lines.append(
                f"| {n} | {b:.3g} | {_fmt(float(front.loss(b)))} | {_fmt(float(base.loss(b)))} "
                f"| {_fmt(c.value[i], '.3g')} | {_ci(c.lo[i], c.hi[i])} | "
                f"{'yes' if c.in_grid[i] else 'no'} | {c.verdicts[i]} | {why} |"
            )
    return lines + [""]


def results_md(a: Analysis) -> str:
    """The whole report (see the module docstring)."""
    variants = ", ".join(n for n in a.fits if n != a.baseline)
    head = [
        f"# Scaling comparison: {variants} against {a.baseline}",
        "",
        f"Intervals: {round(100 * a.level)}% percentile, {a.n_boot} paired bootstrap draws of "
        "the design (seeds, then sizes within each budget; the same cells for every variant). "
        "Compute C from the table's flops column (else 6 N D); N as in its n_params.",
        "",
    ]
    return "\n".join(head + _claims(a) + _runs(a) + _approach2(a) + _approach3(a))


__all__ = ["results_md"]
