"""Evaluation reports: rows to JSON and CSV, plots with several checkpoints per figure.

A result row is a flat dict (see :data:`COLUMNS`); ``kind`` says which measurement it is:

    perplexity     clean perplexity at one (length, stride)
    contamination  perplexity with a fraction ``contamination`` of input tokens replaced
    attack         perplexity under an embedding attack (fgsm / pgd, ``epsilon``), with
                   ``clean_token_ppl`` at the same (length, stride)
    diagnostics    one layer's token similarity and attention entropy (mean over heads)

Files: ``results.json`` (a list of rows), ``results.csv`` (one line per row, lists as JSON),
``summary.md`` (tables) and, when their rows exist, ``ppl_vs_length.png``,
``ppl_vs_contamination.png`` and ``token_similarity.png`` (with attention entropy beside it).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

COLUMNS = [
    "name", "checkpoint", "step", "kind", "split", "length", "stride", "train_length", "impl",
    "windows", "tokens", "words", "bytes", "nll_sum", "token_ppl", "word_ppl", "bits_per_byte",
    "contamination", "contamination_mode", "contamination_token", "attack", "epsilon",
    "pgd_steps", "pgd_alpha", "clean_token_ppl", "layer", "token_similarity",
    "attention_entropy", "attention_entropy_heads", "scored_span", "world_size", "seed",
]
Row = dict[str, Any]


def write_json(rows: list[Row], path: Path) -> None:
    """Write rows as a JSON list."""
    path.write_text(json.dumps(rows, indent=1) + "\n")


def write_csv(rows: list[Row], path: Path) -> None:
    """Write rows as CSV: known columns first, in :data:`COLUMNS` order, then any others."""
    keys = {k for r in rows for k in r}
    fields = [c for c in COLUMNS if c in keys] + sorted(keys - set(COLUMNS))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v
                        for k, v in r.items()})


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log_axis(axis) -> None:
    """Log-scale tick labels as plain numbers (4.5, 20, 1024) instead of powers."""
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _pos: f"{v:g}")
    axis.set_major_formatter(fmt)
    axis.set_minor_formatter(fmt)


def _by_name(rows: list[Row], kind: str) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for r in rows:
        if r.get("kind") == kind:
            out.setdefault(r["name"], []).append(r)
    return out


def _stride_note(rows: list[Row]) -> str:
    if all(r["stride"] == r["length"] for r in rows):
        return "disjoint windows (stride = length)"
    strides = sorted({r["stride"] for r in rows})
    return "stride " + ", ".join(map(str, strides))


def plot_ppl_vs_length(rows: list[Row], path: Path) -> bool:
    """Token perplexity against context length, one line per checkpoint; False if no data."""
    groups = _by_name(rows, "perplexity")
    if not groups:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["length"])
        line, = ax.plot([r["length"] for r in rs], [r["token_ppl"] for r in rs], "o-",
                        label=name)
        train = rs[0].get("train_length")
        if train:
            ax.axvline(train, color=line.get_color(), ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted({r["length"] for rs in groups.values() for r in rs}))
    _plain_log_axis(ax.xaxis)
    _plain_log_axis(ax.yaxis)
    ax.set_xlabel("context length L (tokens; dotted: training length)")
    ax.set_ylabel("token perplexity")
    all_rows = [r for rs in groups.values() for r in rs]
    ax.set_title(f"Perplexity vs context length, {_stride_note(all_rows)}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_ppl_vs_contamination(rows: list[Row], path: Path) -> bool:
    """Token perplexity against contamination rate, one line per checkpoint."""
    groups = _by_name(rows, "contamination")
    if not groups:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["contamination"])
        ax.plot([r["contamination"] for r in rs], [r["token_ppl"] for r in rs], "o-",
                label=f"{name} (L={rs[0]['length']}, S={rs[0]['stride']})")
    modes = sorted({r["contamination_mode"] for rs in groups.values() for r in rs})
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
    ax.set_xlabel("contamination rate p (fraction of input tokens replaced)")
    ax.set_ylabel("token perplexity (clean targets)")
    ax.set_title(f"Perplexity vs contamination ({', '.join(modes)})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_token_similarity(rows: list[Row], path: Path) -> bool:
    """Token cosine similarity and mean attention entropy against layer, per checkpoint."""
    groups = _by_name(rows, "diagnostics")
    if not groups:
        return False
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    for name, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["layer"])
        ax1.plot([r["layer"] for r in rs], [r["token_similarity"] for r in rs], "o-", label=name)
        ent = [r for r in rs if r.get("attention_entropy") is not None]
        ax2.plot([r["layer"] for r in ent], [r["attention_entropy"] for r in ent], "o-",
                 label=name)
    ax1.set_xlabel("layer (0: embedding output)")
    ax1.set_ylabel("mean pairwise cosine similarity")
    ax1.set_title("Token uniformity across depth", fontsize=10)
    ax2.set_xlabel("layer (block index + 1)")
    ax2.set_ylabel("attention entropy (nats, mean over heads)")
    ax2.set_title("Attention entropy", fontsize=10)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _fmt(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3f}"


def summary_tables(rows: list[Row]) -> str:
    """Markdown tables: perplexity per length, and robustness (clean vs attacked)."""
    parts = []
    ppl = _by_name(rows, "perplexity")
    if ppl:
        lengths = sorted({r["length"] for rs in ppl.values() for r in rs})
        parts.append("Token perplexity (word ppl, bits/byte) by context length L, "
                     + _stride_note([r for rs in ppl.values() for r in rs]) + "\n")
        parts.append("| model | " + " | ".join(f"L={n}" for n in lengths) + " |")
        parts.append("|---" * (len(lengths) + 1) + "|")
        for name, rs in ppl.items():
            at = {r["length"]: r for r in rs}
            cells = [f"{_fmt(at[n]['token_ppl'])} ({_fmt(at[n]['word_ppl'])}, "
                     f"{_fmt(at[n]['bits_per_byte'])})" if n in at else "-" for n in lengths]
            parts.append(f"| {name} | " + " | ".join(cells) + " |")
    names = dict.fromkeys(r["name"] for r in rows if r.get("kind") in ("contamination", "attack"))
    rob = {n: _by_name(rows, "contamination").get(n, []) + _by_name(rows, "attack").get(n, [])
           for n in names}
    if rob:
        def label(r: Row) -> str:
            if r["kind"] == "contamination":
                return "clean" if r["contamination"] == 0 else (
                    f"{r['contamination_mode']} p={r['contamination']:g}")
            return f"{r['attack']} eps={r['epsilon']:g}"

        cols: list[str] = []
        for rs in rob.values():
            cols += [label(r) for r in rs if label(r) not in cols]
        any_row = next(r for rs in rob.values() for r in rs)
        parts.append(f"\nRobustness: token perplexity (L={any_row['length']}, "
                     f"S={any_row['stride']})\n")
        parts.append("| model | " + " | ".join(cols) + " |")
        parts.append("|---" * (len(cols) + 1) + "|")
        for name in rob:
            at = {label(r): r for r in rob[name]}
            parts.append(f"| {name} | " + " | ".join(
                _fmt(at[c]["token_ppl"]) if c in at else "-" for c in cols) + " |")
    return "\n".join(parts) + "\n"


def write_report(rows: list[Row], out_dir: str | Path) -> list[Path]:
    """Write results.json, results.csv, summary.md and the plots that have data.

    Returns:
        The paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json", out / "results.csv", out / "summary.md"]
    write_json(rows, written[0])
    write_csv(rows, written[1])
    written[2].write_text(summary_tables(rows))
    for fn, name in ((plot_ppl_vs_length, "ppl_vs_length.png"),
                     (plot_ppl_vs_contamination, "ppl_vs_contamination.png"),
                     (plot_token_similarity, "token_similarity.png")):
        if fn(rows, out / name):
            written.append(out / name)
    return written
