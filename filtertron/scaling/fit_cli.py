"""``filtertron fit TABLE.csv --out DIR [--baseline NAME] [--budgets C1,C2,...]``.

Fits the Chinchilla law per variant of a runs table (columns variant,n_params,tokens,loss;
optional flops, seed) with bootstrap intervals, compares every variant with the baseline by
its compute multiplier, and writes fits.json, results.csv, results.md and the plots to DIR
(see :mod:`filtertron.scaling.report`).
"""

from __future__ import annotations

import argparse
import sys


def _budgets(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--budgets {text!r}: expected C1,C2,... (FLOPs)"
        ) from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"--budgets {text!r}: budgets must be positive")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("table", help="runs table CSV (e.g. a sweep's table.csv)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--baseline", default=None, help="reference variant (default: baseline)")
    p.add_argument(
        "--budgets",
        type=_budgets,
        default=None,
        help="compute budgets for the multipliers, comma-separated FLOPs "
        "(default: 5 log-spaced over the runs' shared compute range)",
    )
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples per variant")
    p.add_argument("--level", type=float, default=0.95, help="interval level")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def run(args: argparse.Namespace) -> int:
    from filtertron.scaling.analysis import analyze
    from filtertron.scaling.markdown import results_md
    from filtertron.scaling.report import write_all
    from filtertron.scaling.table import TableError, read_table

    if args.n_boot < 10:
        print("filtertron fit: --n-boot must be >= 10", file=sys.stderr)
        return 2
    if not 0 < args.level < 1:
        print("filtertron fit: --level must be in (0, 1)", file=sys.stderr)
        return 2
    try:
        runs = read_table(args.table)
        analysis = analyze(runs, args.baseline, args.budgets, args.n_boot, args.seed, args.level)
    except TableError as e:
        print(f"filtertron fit: {e}", file=sys.stderr)
        return 2
    files = write_all(analysis, args.out, plots=not args.no_plots)
    print(results_md(analysis))
    print("wrote " + ", ".join(str(f) for f in files))
    return 0
