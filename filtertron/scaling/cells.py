"""Cells of a comparison, and the bootstrap draws that every estimate shares.

A run sits in a cell (stratum, unit, seed): the stratum is its budget (the table's
``budget`` column, else its isoFLOP group of compute within 5%, else one stratum for all
runs), the unit its size within the stratum (the ``size`` column, else the rank of
(N, D) among the variant's runs of that stratum and seed), the seed the ``seed`` column
(else 0). Two variants' runs in one cell are a pair: same size, budget and seed, so the same
data order (the sweep seeds the data from ``train.seed``).

A bootstrap draw resamples the design, not each variant on its own: seeds with replacement
(when there are several), then within every stratum its units with replacement; every
variant takes the runs of the drawn cells. So the b-th draw of a variant and of the baseline
hold the same cells (a paired bootstrap), every draw keeps every budget, and a draw is a
multiset of run indices per variant (shape (n_drawn,), runs may repeat).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from filtertron.scaling.table import Runs

Cell = tuple[str, str, int]  # (stratum, unit, seed)
RTOL = 0.05  # compute tolerance of an isoFLOP group


def flops_groups(flops: np.ndarray, rtol: float = RTOL) -> np.ndarray:
    """Group ids (0, 1, ... by compute) of runs whose compute agrees within ``rtol``:
    sorted by C and cut wherever neighbours differ by more than ``rtol``."""
    flops = np.asarray(flops, float)
    order = np.argsort(flops, kind="stable")
    ids = np.zeros(len(flops), int)
    g = 0
    for i, j in zip(order[:-1], order[1:]):
        if flops[j] > flops[i] * (1 + rtol):
            g += 1
        ids[j] = g
    return ids


def _strata(runs: dict[str, Runs]) -> dict[str, list[str]]:
    """Per variant, each run's stratum label."""
    if all(r.budget is not None for r in runs.values()):
        return {v: [f"{b:.6g}" for b in r.budget] for v, r in runs.items()}
    # IsoFLOP groups over all variants' runs together, used only when every group holds at
    # least three sizes of every variant that has runs in it (a design of isoFLOP profiles).
    names = list(runs)
    flops = np.concatenate([runs[v].flops for v in names])
    ids = flops_groups(flops)
    offsets = np.cumsum([0] + [len(runs[v]) for v in names])
    per = {v: ids[offsets[i] : offsets[i + 1]] for i, v in enumerate(names)}
    isoflop = all(
        len(np.unique(runs[v].n_params[per[v] == g])) >= 3 for v in names for g in np.unique(per[v])
    )
    if not isoflop:
        return {v: ["all"] * len(runs[v]) for v in names}
    labels = {g: f"{np.exp(np.mean(np.log(flops[ids == g]))):.6g}" for g in np.unique(ids)}
    return {v: [labels[g] for g in per[v]] for v in names}


def cells(runs: dict[str, Runs]) -> dict[str, list[Cell]]:
    """Each run's cell, per variant (see the module docstring)."""
    strata = _strata(runs)
    out: dict[str, list[Cell]] = {}
    for v, r in runs.items():
        seeds = r.seed if r.seed is not None else np.zeros(len(r), int)
        if r.size is not None:
            units = [str(s) for s in r.size]
        else:  # rank of (N, D) among the variant's runs of one stratum and seed
            units = [""] * len(r)
            for key in set(zip(strata[v], seeds.tolist())):
                idx = [i for i in range(len(r)) if (strata[v][i], int(seeds[i])) == key]
                idx.sort(key=lambda i: (r.n_params[i], r.tokens[i]))
                for rank, i in enumerate(idx):
                    units[i] = f"#{rank}"
        out[v] = [(strata[v][i], units[i], int(seeds[i])) for i in range(len(r))]
    return out


@dataclass(frozen=True)
class Draws:
    """Bootstrap draws shared by every estimate: ``index[v][b]`` are variant v's run indices
    in draw b, ``cells[b]`` the drawn cells (with repeats)."""

    index: dict[str, list[np.ndarray]]
    cells: list[list[Cell]]

    def __len__(self) -> int:
        return len(self.cells)


def draw(cells_of: dict[str, list[Cell]], n_boot: int, seed: int) -> Draws:
    """``n_boot`` paired draws of the design (seeds, then units within each stratum)."""
    rng = np.random.default_rng(seed)
    every = sorted({c for cs in cells_of.values() for c in cs})
    seeds = sorted({c[2] for c in every})
    units = {s: sorted({c[1] for c in every if c[0] == s}) for s in sorted({c[0] for c in every})}
    where = {v: {} for v in cells_of}
    for v, cs in cells_of.items():
        for i, c in enumerate(cs):
            where[v].setdefault(c, []).append(i)
    index: dict[str, list[np.ndarray]] = {v: [] for v in cells_of}
    drawn: list[list[Cell]] = []
    for _ in range(n_boot):
        ss = rng.choice(seeds, len(seeds)) if len(seeds) > 1 else np.array(seeds)
        chosen = []
        for stratum, us in units.items():
            for u in rng.choice(len(us), len(us)):
                chosen += [(stratum, us[u], int(s)) for s in ss]
        drawn.append(chosen)
        for v in cells_of:
            idx = [i for c in chosen for i in where[v].get(c, [])]
            index[v].append(np.array(idx, int))
    return Draws(index, drawn)
