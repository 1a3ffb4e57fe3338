"""Write an :class:`~filtertron.scaling.analysis.Analysis`: fits.json, results.csv/.md, plots.

fits.json            the claims (what the data can carry, and on what), the paired
                     differences, approach 2 (profiles, optima, power laws, multipliers) and
                     approach 3 (E, A, B, alpha, beta with 95% and 90% intervals, which sit
                     at the box edge, the frontier exponent, FLOPs model, multipliers);
                     ``variants`` and ``multipliers`` at the top level are approach 3's
results.csv          one row per (variant, approach, budget): multiplier, interval,
                     verdict, identified or the reason not
results.md           the same as tables, led by the claims (:mod:`filtertron.scaling.markdown`)
*.png                :mod:`filtertron.scaling.plots`
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from filtertron.scaling.analysis import Analysis, Comparison, Comparison2, VariantFit
from filtertron.scaling.claims import claims, why_not_2, why_not_3
from filtertron.scaling.law import PARAMS


def _num(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _param_block(f: VariantFit, name: str, value: float) -> dict[str, Any]:
    return {
        "value": float(value),
        "ci95": [_num(v) for v in f.interval(name, 0.95)],
        "ci90": [_num(v) for v in f.interval(name, 0.90)],
    }


def _profile(p) -> dict[str, Any]:
    return {
        "flops": p.flops,
        "n_params": [float(x) for x in p.n_params],
        "loss": [float(x) for x in p.loss],
        "n_opt": _num(p.n_opt),
        "loss_opt": _num(p.loss_opt),
        "status": p.status,
    }


def _law(f: VariantFit, which: str, level: float) -> dict[str, Any] | None:
    law = getattr(f.iso, f"{which}_law")
    if law is None:
        return None
    (lo, hi), share = f.iso_interval(which, level)
    return {"k": law.k, "p": law.p, "p_ci": [_num(lo), _num(hi)], "defined_in": share,
            "n_points": law.n_points, "c_range": list(law.c_range)}  # fmt: skip


def _mult(c: Comparison | Comparison2, approach: str) -> list[dict[str, Any]]:
    rows = []
    for i, (b, v, lo, hi, verdict) in enumerate(zip(c.budgets, c.value, c.lo, c.hi, c.verdicts)):
        why = why_not_2(c, i) if approach == "2" else why_not_3(c, i)
        row = {"flops": float(b), "value": _num(v), "ci": [_num(lo), _num(hi)], "verdict": verdict}
        if approach == "2":
            row.update(defined_in=float(c.share[i]), in_range=bool(c.in_range[i]))
        else:
            row.update(frontier_in_grid=bool(c.in_grid[i]))
        rows.append({**row, "identified": not why, "not_identified": why})
    return rows


def fits_json(a: Analysis) -> dict[str, Any]:
    """The analysis as a JSON-ready dict (see the module docstring)."""
    variants = {}
    for name, f in a.fits.items():
        law = f.fit.law
        block = {k: _param_block(f, k, getattr(law, k)) for k in PARAMS}
        block["exponent"] = _param_block(f, "exponent", f.frontier.exponent)
        variants[name] = {
            "n_runs": len(f.runs),
            "objective": f.fit.objective,
            "params": block,
            "at_edge": f.edges,
            "flops_model": f.flops.as_dict(),
            "flops_given": f.runs.flops_given,
            "isoflop": [_profile(p) for p in f.iso.profiles],
        }
    approach2 = {
        name: {
            "status": f.iso.status,
            "profiles": [_profile(p) for p in f.iso.profiles],
            "loss_law": _law(f, "loss", a.level),
            "n_law": _law(f, "n", a.level),
        }
        for name, f in a.fits.items()
    }
    paired = {
        name: {
            "n": p.n, "lower": p.lower, "higher": p.higher, "mean": _num(p.mean),
            "ci": [_num(p.lo), _num(p.hi)], "verdict": p.verdict, "p_sign": p.p_sign,
            "cells": [
                {"budget": c[0], "size": c[1], "seed": c[2], "flops": float(fl),
                 "n_params": float(n), "diff": float(d)}
                for c, fl, n, d in zip(p.cells, p.flops, p.n_params, p.diff)
            ],
        }
        for name, p in a.paired.items()
    }  # fmt: skip
    return {
        "baseline": a.baseline,
        "level": a.level,
        "n_boot": a.n_boot,
        "resampling": "paired bootstrap of the design: seeds, then sizes within each budget; "
        "the same cells for every variant",
        "claims": {v: c.__dict__ for v, c in claims(a).items()},
        "paired": paired,
        "approach2": {
            "variants": approach2,
            "multipliers": {n: _mult(c, "2") for n, c in a.iso_comparisons.items()},
        },
        "law": "L(N, D) = E + A / N^alpha + B / D^beta, Huber on log L",
        "delta": a.delta,
        "variants": variants,
        "multipliers": {n: _mult(c, "3") for n, c in a.comparisons.items()},
    }


def result_rows(a: Analysis) -> list[dict[str, Any]]:
    """One row per (variant, approach, budget)."""
    rows = []
    for approach, comparisons in (("2", a.iso_comparisons), ("3", a.comparisons)):
        for name, cmp in comparisons.items():
            for m in _mult(cmp, approach):
                rows.append(
                    {
                        "variant": name,
                        "baseline": a.baseline,
                        "approach": approach,
                        "flops": f"{m['flops']:.4g}",
                        "multiplier": "" if m["value"] is None else f"{m['value']:.4g}",
                        "lo": "" if m["ci"][0] is None else f"{m['ci'][0]:.4g}",
                        "hi": "" if m["ci"][1] is None else f"{m['ci'][1]:.4g}",
                        "level": a.level,
                        "verdict": m["verdict"],
                        "identified": m["identified"],
                        "not_identified": "; ".join(m["not_identified"]),
                    }
                )
    return rows


def write_all(a: Analysis, out: str | Path, plots: bool = True) -> list[Path]:
    """Write every output file under ``out``; returns their paths."""
    from filtertron.scaling.markdown import results_md

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fits.json").write_text(json.dumps(fits_json(a), indent=1, default=_default) + "\n")
    rows = result_rows(a)
    with (out / "results.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["variant"])
        w.writeheader()
        w.writerows(rows)
    (out / "results.md").write_text(results_md(a))
    files = [out / "fits.json", out / "results.csv", out / "results.md"]
    if plots:
        from filtertron.scaling import plots as plotting

        files += plotting.plot_all(a, out)
    return files


def _default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


__all__ = ["fits_json", "result_rows", "write_all"]
