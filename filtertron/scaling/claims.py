"""What an analysis can carry: per variant, the conclusion, what it rests on, and the flags.

The rules, in order:

1. The paired differences (:mod:`filtertron.scaling.paired`) are measurements: they are
   always reported, with their interval, their count of cells won and lost, and a sign test.
2. A compute multiplier may lead only if its approach is *identified* for both the variant
   and the baseline. Approach 2: the power laws exist (two or more identified optima: a
   minimum within the sizes trained, three or more sizes), the multiplier is read off the
   runs (the variant's vertex at C, the baseline's compute for it between two of its
   optima) and was defined in at least 80% of the bootstrap draws. Approach 3: no parameter
   of either law at its box edge, and the compute-optimal sizes behind the value within the
   sizes trained. The headline quotes only the budgets where this holds.
3. A multiplier whose point estimate puts the variant on the other side of 1 than the
   paired differences do (the variant lower in more cells than higher, yet m < 1 at some
   budget, or the reverse) is flagged as contradicting the runs and never leads.
4. Approach 2 leads when it qualifies (it reads the optima off the runs); else approach 3;
   else no multiplier leads and the conclusion rests on the paired differences alone.
   Numbers that do not qualify stay in their approach's section, marked with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from filtertron.scaling.analysis import MIN_SHARE, Analysis, Comparison, Comparison2
from filtertron.scaling.paired import Paired


@dataclass(frozen=True)
class Claim:
    """What the report leads with for one variant."""

    variant: str
    rests_on: str  # "approach 2", "approach 3" or "paired differences"
    headline: str
    paired: str
    flags: list[str] = field(default_factory=list)


def _range(values: np.ndarray) -> str:
    v = values[np.isfinite(values)]
    if not len(v):
        return "none"
    lo, hi = float(v.min()), float(v.max())
    return f"{lo:.3g}" if np.isclose(lo, hi, rtol=5e-3) else f"{lo:.3g}-{hi:.3g}"


def paired_sentence(p: Paired, baseline: str) -> str:
    if not p.n:
        return f"no cell shared with {baseline} (nothing to pair)"
    pct = round(100 * p.level)
    return (
        f"lower loss than {baseline} in {p.lower} of {p.n} paired cells, higher in "
        f"{p.higher}; mean difference {p.mean:+.4f} nats [{pct}%: {p.lo:+.4f}, {p.hi:+.4f}] "
        f"({p.verdict}; sign test p = {p.p_sign:.2g})"
    )


def contradicts(value: np.ndarray, p: Paired) -> bool:
    """Whether a multiplier's point values put the variant on the other side of 1 than the
    majority of the paired cells."""
    v = value[np.isfinite(value)]
    if not len(v) or p.majority == 0:
        return False
    return bool(np.any(v > 1.0) if p.majority > 0 else np.any(v < 1.0))


def why_not_3(c: Comparison, i: int | None = None) -> list[str]:
    """Why approach 3's multiplier (at budget ``i``, or anywhere) is not identified."""
    why = [f"{e} at the fit's box edge" for e in c.edges]
    inside = c.in_grid & np.isfinite(c.value)
    if i is not None and not inside[i]:
        why.append("compute-optimal size outside the sizes trained (extrapolated)")
    elif i is None and not inside.any():
        why.append("compute-optimal sizes outside the sizes trained at every budget")
    return why


def why_not_2(c: Comparison2, i: int | None = None) -> list[str]:
    """Why approach 2's multiplier (at budget ``i``, or anywhere) is not identified."""
    if c.status != "identified":
        return [c.status]
    if i is not None:
        why = [] if c.in_range[i] else ["extrapolated beyond the optima"]
        if c.share[i] < MIN_SHARE:
            why.append(f"defined in only {100 * c.share[i]:.0f}% of the bootstrap draws")
        return why
    if not c.in_range.any():
        return ["extrapolated beyond the optima at every budget"]
    if (c.share[c.in_range] < MIN_SHARE).any():
        low = 100 * c.share[c.in_range].min()
        return [f"defined in only {low:.0f}% of the bootstrap draws"]
    return []


def _multiplier_sentence(c: Comparison | Comparison2, approach: str) -> str:
    """The identified budgets' multipliers (the others stay in the approach's section)."""
    pct = round(100 * c.level)
    why = why_not_2 if approach == "approach 2" else why_not_3
    keep = [i for i in range(len(c.budgets)) if not why(c, i)]
    parts = [f"{c.value[i]:.3g} [{c.lo[i]:.3g}, {c.hi[i]:.3g}] at C = {c.budgets[i]:.3g}"
             for i in keep]  # fmt: skip
    verdicts = sorted({c.verdicts[i] for i in keep})
    return (
        f"compute multiplier ({approach}, {pct}% intervals) {'; '.join(parts)}: "
        f"{' / '.join(verdicts)}"
    )


def claim(a: Analysis, variant: str) -> Claim:
    """The claim the analysis supports for ``variant`` (the rules of the module docstring)."""
    p = a.paired[variant]
    flags: list[str] = []
    leads: list[tuple[str, Comparison | Comparison2]] = []
    for approach, c, why in (
        ("approach 2", a.iso_comparisons[variant], why_not_2(a.iso_comparisons[variant])),
        ("approach 3", a.comparisons[variant], why_not_3(a.comparisons[variant])),
    ):
        if np.isfinite(c.value).any() and contradicts(c.value, p):
            side = "ahead of" if p.majority > 0 else "behind"
            flags.append(
                f"{approach} puts {variant} {side} {a.baseline} (multiplier "
                f"{_range(c.value)}) while its loss was "
                f"{'higher' if p.majority > 0 else 'lower'} in "
                f"{max(p.higher, p.lower)} of {p.n} paired cells: it contradicts the runs"
            )
            continue
        if why:
            flags.append(f"{approach} not identified: {'; '.join(why)}")
            continue
        leads.append((approach, c))
    if leads:
        approach, c = leads[0]
        return Claim(variant, approach, _multiplier_sentence(c, approach),
                     paired_sentence(p, a.baseline), flags)  # fmt: skip
    headline = "no compute multiplier is identified; " + paired_sentence(p, a.baseline)
    return Claim(variant, "paired differences", headline, paired_sentence(p, a.baseline), flags)


def claims(a: Analysis) -> dict[str, Claim]:
    """Every variant's claim, in the table's order."""
    return {v: claim(a, v) for v in a.fits if v != a.baseline}
