"""The isoFLOP design end to end on CPU: a reduced grid trained in-process on the sample
corpus, fitted by both approaches, written to one folder and one archive."""

import json
import tarfile

import pytest

from filtertron.cli import main

from .conftest import ROOT, TINY_MODEL, write_sweep

SIZES = {
    f"l{n}d{d}": {**TINY_MODEL, "d_model": d, "n_heads": 2, "n_layers": n}
    for d, n in ((16, 1), (32, 1), (32, 2), (48, 2), (64, 2))
}


def _sweep(tmp_path, variants, sizes, budgets=(2e8, 6.3e8, 2e9)):
    return write_sweep(
        tmp_path / "s.yaml",
        name="iso",
        variants=variants,
        sizes=sizes,
        budgets={"kind": "flops", "values": list(budgets)},
        schedule={"warmup_fraction": 0.1, "checkpoints": 1},
    )


def _check_outputs(out, variants, n_runs):
    fits = json.loads((out / "fit" / "fits.json").read_text())
    assert set(fits["claims"]) == set(variants) - {"baseline"}
    for v in variants:
        profiles = fits["approach2"]["variants"][v]["profiles"]
        assert len(profiles) == 3 and all(len(p["n_params"]) == n_runs // 3 // len(variants)
                                          for p in profiles)  # fmt: skip
    for p in fits["paired"].values():
        assert p["n"] == n_runs // len(variants)  # every cell paired
    text = (out / "fit" / "results.md").read_text()
    assert text.index("## What the data can carry") < text.index("## Approach 2")
    assert (out / "fit" / "table.csv").read_text() == (out / "table.csv").read_text()
    with tarfile.open(out / "iso-results.tar.gz") as tar:
        names = set(tar.getnames())
    for f in ("table.csv", "sweep.json", "fit/results.md", "fit/isoflop.png", "fit/paired.png"):
        assert f"iso/{f}" in names, f
    assert not any("checkpoints" in n for n in names)
    assert sum(n.endswith("/result.json") for n in names) == n_runs


@pytest.mark.slow  # 58 s; the in-process plan, resume and fits have default tests
def test_reduced_isoflop_grid_in_process_fit_and_archive(tmp_path, dataset):
    # 2 variants x 3 sizes x 3 budgets spanning 10x: 18 runs of 2-63 steps.
    variants = {"baseline": {}, "bilateral": str(ROOT / "configs" / "tiny" / "bilateral.yaml")}
    sizes = {k: SIZES[k] for k in ("l1d16", "l1d32", "l2d32")}
    path = _sweep(tmp_path, variants, sizes, budgets=(6e7, 1.9e8, 6e8))
    out = tmp_path / "out"
    args = ["sweep", str(path), "--out", str(out), "--set", f"data.path={dataset}"]
    assert main([*args, "--plan", "inprocess", "--fit", "--archive", "--n-boot", "20"]) == 0
    _check_outputs(out, variants, 18)


@pytest.mark.slow
def test_full_isoflop_design_in_process(tmp_path, dataset):
    # The design of configs/sweeps/tiny-isoflop.yaml at test scale: 4 variants x 5 sizes x
    # 3 budgets, 60 runs.
    tiny = ROOT / "configs" / "tiny"
    variants = {"baseline": {}, "bilateral": str(tiny / "bilateral.yaml"),
                "twicing": str(tiny / "twicing.yaml"), "grc": str(tiny / "grc.yaml")}  # fmt: skip
    path = _sweep(tmp_path, variants, SIZES)
    out = tmp_path / "out"
    args = ["sweep", str(path), "--out", str(out), "--set", f"data.path={dataset}"]
    assert main([*args, "--plan", "inprocess", "--fit", "--archive", "--n-boot", "50"]) == 0
    _check_outputs(out, variants, 60)
