"""Write an :class:`~filtertron.scaling.analysis.Analysis`: fits.json, results.csv/.md, plots.

fits.json            per variant E, A, B, alpha, beta (value, 95% and 90% intervals), the
                     frontier exponent p, the FLOPs model, isoFLOP profiles; multipliers
results.csv          one row per (variant, budget): frontier loss, multiplier, interval,
                     verdict
results.md           the same as tables, with the conventions used
loss_vs_compute.png  runs and fitted frontiers L*(C) with interval bands, log-log
multiplier.png       each variant's multiplier against compute, with its band
isoflop.png          isoFLOP profiles with the law's curve at each budget (if any)
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from filtertron.scaling.analysis import Analysis, VariantFit
from filtertron.scaling.law import PARAMS


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _param_block(f: VariantFit, name: str, value: float) -> dict[str, Any]:
    return {
        "value": float(value),
        "ci95": [_num(v) for v in f.interval(name, 0.95)],
        "ci90": [_num(v) for v in f.interval(name, 0.90)],
    }


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
            "flops_model": f.flops.as_dict(),
            "flops_given": f.runs.flops_given,
            "isoflop": [p.__dict__ for p in f.isoflop],
        }
    mult = {
        name: [
            {
                "flops": float(c),
                "value": _num(v),
                "ci": [_num(lo), _num(hi)],
                "verdict": verdict,
                "frontier_in_grid": bool(inside),
            }
            for c, v, lo, hi, verdict, inside in zip(
                cmp.budgets, cmp.value, cmp.lo, cmp.hi, cmp.verdicts, cmp.in_grid
            )
        ]
        for name, cmp in a.comparisons.items()
    }
    return {
        "law": "L(N, D) = E + A / N^alpha + B / D^beta, Huber on log L",
        "delta": a.delta,
        "n_boot": a.n_boot,
        "level": a.level,
        "baseline": a.baseline,
        "variants": variants,
        "multipliers": mult,
    }


def result_rows(a: Analysis) -> list[dict[str, Any]]:
    rows = []
    for name, cmp in a.comparisons.items():
        frontier = a.fits[name].frontier
        for c, v, lo, hi, verdict, inside in zip(
            cmp.budgets, cmp.value, cmp.lo, cmp.hi, cmp.verdicts, cmp.in_grid
        ):
            rows.append(
                {
                    "variant": name,
                    "baseline": a.baseline,
                    "flops": f"{c:.4g}",
                    "loss": f"{float(frontier.loss(c)):.4f}",
                    "baseline_loss": f"{float(a.fits[a.baseline].frontier.loss(c)):.4f}",
                    "multiplier": f"{v:.4g}",
                    "lo": f"{lo:.4g}",
                    "hi": f"{hi:.4g}",
                    "level": a.level,
                    "verdict": verdict,
                    "frontier_in_grid": bool(inside),
                }
            )
    return rows


def _fmt(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else str(v)


def results_md(a: Analysis) -> str:
    pct = round(100 * a.level)
    lines = [
        "# Scaling-law fits",
        "",
        f"L(N, D) = E + A / N^alpha + B / D^beta per variant, Huber (delta {a.delta:g}) on "
        f"log L, L-BFGS-B from a grid of starts; intervals: {pct}% percentile bootstrap over "
        f"runs ({a.n_boot} resamples). N as given in the table's n_params; compute C from its "
        "flops column (else 6 N D).",
        "",
        "| variant | runs | E | A | B | alpha | beta | p in L*(C) = E + K C^-p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, f in a.fits.items():
        law = f.fit.law
        cells = []
        for k in (*PARAMS, "exponent"):
            v = f.frontier.exponent if k == "exponent" else getattr(law, k)
            lo, hi = f.interval(k, a.level)
            cells.append(f"{_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]")
        lines.append(f"| {name} | {len(f.runs)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Compute multiplier against {a.baseline}",
        "",
        "The compute the baseline needs to reach the variant's frontier loss L*(C), divided by "
        f"C; > 1: the variant is better. Verdict from the {pct}% interval. In grid: whether "
        "the compute-optimal sizes behind the value lie within the sizes trained (no: the "
        "value extrapolates the fitted laws).",
        "",
        f"| variant | C (FLOPs) | L* variant | L* {a.baseline} | multiplier | {pct}% interval "
        "| verdict | in grid |",
        "|---" * 8 + "|",
    ]
    for r in result_rows(a):
        lines.append(
            f"| {r['variant']} | {r['flops']} | {r['loss']} | {r['baseline_loss']} | "
            f"{r['multiplier']} | [{r['lo']}, {r['hi']}] | {r['verdict']} | "
            f"{'yes' if r['frontier_in_grid'] else 'no'} |"
        )
    profiles = [(n, p) for n, f in a.fits.items() for p in f.isoflop]
    if profiles:
        lines += ["", "## IsoFLOP profiles (parabola in log N)", ""]
        lines += ["| variant | C (FLOPs) | sizes | N_opt | loss at N_opt |", "|---" * 5 + "|"]
        for n, p in profiles:
            n_opt = _fmt(p.n_opt) if p.n_opt else "none (concave)"
            loss = f"{p.loss_opt:.4f}" if p.loss_opt else "-"
            lines.append(f"| {n} | {p.flops:.4g} | {len(p.n_params)} | {n_opt} | {loss} |")
    return "\n".join(lines) + "\n"


def write_all(a: Analysis, out: str | Path, plots: bool = True) -> list[Path]:
    """Write every output file under ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fits.json").write_text(json.dumps(fits_json(a), indent=1) + "\n")
    rows = result_rows(a)
    with (out / "results.csv").open("w", newline="") as fh:
        fields = list(rows[0]) if rows else ["variant"]
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    (out / "results.md").write_text(results_md(a))
    files = [out / "fits.json", out / "results.csv", out / "results.md"]
    if plots:
        from filtertron.scaling import plots as plotting

        files += plotting.plot_all(a, out)
    return files


__all__ = ["fits_json", "result_rows", "results_md", "write_all"]
