"""Scaling-law comparison: sweeps of training runs, fitted laws, compute multipliers.

Usable without training: read a runs table (variant, n_params, tokens, loss[, flops, seed])
and fit it::

    from filtertron.scaling import analyze, read_table, write_all
    analysis = analyze(read_table("table.csv"), baseline="baseline")
    write_all(analysis, "fit/")

Modules: ``table`` (the runs table), ``cells`` (each run's (budget, size, seed) cell and
the paired bootstrap draws of the design), ``paired`` (variant minus baseline per cell),
``isoflop`` (approach 2: isoFLOP parabolas, optima, power laws, multipliers), ``law`` and
``compute`` (approach 3: L(N, D) = E + A/N^alpha + B/D^beta, Huber fit on log L, frontier
L*(C), multipliers), ``analysis`` (all of it per variant), ``claims`` (what the data can
carry, and on what), ``report``, ``markdown`` and ``plots`` (fits.json, results.csv/.md,
PNGs), ``fit_cli`` (``filtertron fit``); the sweep itself: ``sweep_config``, ``expand``,
``sweep``, ``runner`` (plan local), ``inprocess`` (plan inprocess), ``estimate`` (time per
device), ``sweep_cli`` (``filtertron sweep``).
"""

from filtertron.scaling.analysis import Analysis, analyze
from filtertron.scaling.compute import FlopsModel, Frontier, multiplier
from filtertron.scaling.law import ScalingLaw, bootstrap, fit_law, intervals
from filtertron.scaling.report import write_all
from filtertron.scaling.table import TableError, read_table

__all__ = [
    "Analysis",
    "FlopsModel",
    "Frontier",
    "ScalingLaw",
    "TableError",
    "analyze",
    "bootstrap",
    "fit_law",
    "intervals",
    "multiplier",
    "read_table",
    "write_all",
]
