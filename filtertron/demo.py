"""``filtertron demo``: the whole pipeline on the bundled sample corpus, in minutes on a CPU.

1. prepare ``corpus/sample`` (WikiText raw format) into ``data/sample`` (BPE, 2048 tokens);
2. train the tiny baseline (softmax + ALiBi), BSA + GRC and twicing models, each with ZeRO-2
   on 2 processes through the deepspeed launcher;
3. evaluate them on the test split: perplexity (token, word, bits per byte) at 1x-8x the
   training length, robustness to contaminated input, token uniformity per layer;
4. write ``runs/demo/report.md`` with the tables and plots (loss curves, long context,
   contamination, token similarity).

Steps whose output already exists are skipped (``--fresh`` redoes them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name -> config
    "baseline": "configs/tiny.yaml",
    "bilateral-grc": "configs/tiny/bilateral-grc.yaml",
    "twicing": "configs/tiny/twicing.yaml",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="where runs, eval and report go")
    p.add_argument("--data", default="data/sample", help="prepared dataset directory")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="override train.steps")
    p.add_argument("--fresh", action="store_true", help="redo steps whose output exists")


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "filtertron.cli", *args]


def plot_losses(runs: dict[str, Path], path: Path) -> dict[str, dict]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    summary = {}
    for name, run in runs.items():
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
        val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
        (line,) = ax.plot(*zip(*train), lw=1, alpha=0.8, label=f"{name} train")
        if val:
            ax.plot(*zip(*val), "o--", color=line.get_color(), label=f"{name} validation")
        summary[name] = {
            "final_train_loss": train[-1][1],
            "final_val_loss": val[-1][1],
            "tokens_per_s": rows[-2].get("tokens_per_s") if len(rows) > 1 else None,
        }
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("tiny models on the sample corpus (ZeRO-2, 2 processes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return summary


def write_report(out: Path, summary: dict[str, dict], eval_dir: Path, seconds: float) -> Path:
    lines = [
        "# filtertron demo report",
        "",
        f"Three tiny models (configs/tiny*.yaml) trained on the bundled sample corpus with "
        f"ZeRO-2 on 2 processes; total time {seconds / 60:.1f} min.",
        "",
        "![loss curves](loss_curves.png)",
        "",
        "| model | final train loss | final validation loss | tokens/s (last step) |",
        "|---|---|---|---|",
    ]
    for name, s in summary.items():
        tps = f"{s['tokens_per_s']:,.0f}" if s["tokens_per_s"] else "-"
        lines.append(
            f"| {name} | {s['final_train_loss']:.4f} | {s['final_val_loss']:.4f} | {tps} |"
        )
    results = eval_dir / "results.json"
    if results.is_file():
        from filtertron.eval.report import summary_tables

        lines += [
            "",
            "## Test-split evaluation",
            "",
            summary_tables(json.loads(results.read_text())),
        ]
        for png, title in (
            ("ppl_vs_length.png", "long context"),
            ("ppl_vs_contamination.png", "contaminated input"),
            ("token_similarity.png", "token uniformity and attention entropy across depth"),
        ):
            if (eval_dir / png).is_file():
                rel = (eval_dir / png).relative_to(out)
                lines += ["", f"### {title}", "", f"![{title}]({rel})"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(args: argparse.Namespace) -> int:
    start = time.time()
    out, data = ROOT / args.out, ROOT / args.data
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    if args.fresh or not (data / "test.bin").exists():
        _run(
            _cli(
                "prepare",
                "--source",
                "corpus/sample",
                "--output",
                args.data,
                "--vocab-size",
                "2048",
                "--workers",
                "2",
            )
        )
    runs = {}
    for name, config in MODELS.items():
        run_dir = out / name
        runs[name] = run_dir
        if (run_dir / "metrics.jsonl").exists() and list(
            run_dir.glob("checkpoints/step_*/model.pt")
        ):
            print(f"[demo] {name}: trained already in {run_dir} (use --fresh to retrain)")
            continue
        shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished demo run of our own
        overrides = [f"data.path={args.data}", f"train.out_dir={run_dir}", "parallel.zero_stage=2"]
        if args.steps:
            overrides += [f"train.steps={args.steps}", f"train.save_every={args.steps}"]
        cmd = _cli("train", config, "--nproc", str(args.nproc))
        for o in overrides:
            cmd += ["--set", o]
        _run(cmd)
    summary = plot_losses(runs, out / "loss_curves.png")
    eval_dir = out / "eval"
    # Checkpoints come before --name, which takes several values.
    cmd = _cli(
        "eval",
        *map(str, runs.values()),
        "--data",
        args.data,
        "--split",
        "test",
        "--lengths",
        "128,256,512,1024",
        "--contamination",
        "0,0.1,0.2",
        "--attack",
        "fgsm",
        "--epsilon",
        "0.01",
        "--diagnostics",
        "--out",
        str(eval_dir),
        "--name",
        *runs,
    )
    _run(cmd)
    report = write_report(out, summary, eval_dir, time.time() - start)
    print(f"[demo] report: {report}")
    return 0
