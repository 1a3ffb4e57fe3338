"""``filtertron fit``: the runs table's checks and the files it writes."""

import csv
import json

import numpy as np
import pytest

from filtertron.cli import main
from filtertron.scaling.law import ScalingLaw
from filtertron.scaling.table import TableError, read_table

LAW = ScalingLaw(E=2.0, A=300.0, B=900.0, alpha=0.35, beta=0.33)


def write_table(path, rows, header=("variant", "n_params", "tokens", "loss", "flops", "seed")):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def synthetic_rows(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for name, scale in (("baseline", 1.0), ("wide", 1.5)):
        for n in np.geomspace(1e6, 1e8, 4):
            for d in np.geomspace(1e8, 3e10, 4):  # other ratios than N: no isoFLOP groups
                loss = LAW.loss(scale * n, d) * np.exp(rng.normal(0, 0.003))
                rows.append((name, n, d, loss, 7.0 * n * d, 0))
    return rows


def test_fit_cli_writes_fits_results_and_plots(tmp_path, capsys):
    table = write_table(tmp_path / "t.csv", synthetic_rows())
    out = tmp_path / "fit"
    assert main(["fit", str(table), "--out", str(out), "--n-boot", "20"]) == 0
    fits = json.loads((out / "fits.json").read_text())
    assert set(fits["variants"]) == {"baseline", "wide"}
    for v in fits["variants"].values():
        for k in ("E", "A", "B", "alpha", "beta"):
            p = v["params"][k]
            assert p["ci95"][0] <= p["ci90"][0] <= p["ci90"][1] <= p["ci95"][1]
        assert v["flops_model"]["c"] == pytest.approx(7.0)
        assert len(v["isoflop"]) == 0  # a tokens grid has no isoFLOP profiles
    mult = fits["multipliers"]["wide"]
    assert len(mult) == 5 and all(m["verdict"] == "better" for m in mult)
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    # One row per approach and budget; a tokens grid has no isoFLOP profiles, so approach 2
    # has no multiplier and says why.
    assert [(r["variant"], r["approach"]) for r in rows] == [("wide", "2")] * 5 + [
        ("wide", "3")
    ] * 5
    assert {r["not_identified"] for r in rows[:5]} == {
        "variant: no isoFLOP profiles (no compute budget with 3 sizes)"
    }
    assert [r["identified"] for r in rows[5:]] == ["True"] * 4 + ["False"]  # the top budget:
    assert rows[-1]["not_identified"].startswith("compute-optimal size outside")  # N* > grid
    text = (out / "results.md").read_text()
    assert "wide** (rests on approach 3): compute multiplier (approach 3" in text
    for name in ("loss_vs_compute.png", "multiplier.png", "paired.png"):
        size = (out / name).stat().st_size
        assert 5_000 < size < 150_000, (name, size)
    assert not (out / "isoflop.png").exists()
    assert "better" in capsys.readouterr().out


def test_missing_column_is_named(tmp_path, capsys):
    table = write_table(tmp_path / "t.csv", [("a", 1, 2)], header=("variant", "n_params", "loss"))
    assert main(["fit", str(table), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "missing column(s) tokens" in err and "t.csv" in err


def test_bad_values_and_small_variants_are_named(tmp_path):
    rows = synthetic_rows()
    bad = [list(r) for r in rows]
    bad[3][3] = "nan"
    with pytest.raises(TableError, match=r"line 5: column loss='nan' must be positive"):
        read_table(write_table(tmp_path / "a.csv", bad))
    bad[3][3] = "x"
    with pytest.raises(TableError, match=r"line 5: column loss='x' is not a number"):
        read_table(write_table(tmp_path / "b.csv", bad))
    few = rows[:16] + rows[16:19]
    with pytest.raises(TableError, match=r"variant 'wide' has 3 run\(s\)"):
        read_table(write_table(tmp_path / "c.csv", few))
    with pytest.raises(TableError, match="no such file"):
        read_table(tmp_path / "missing.csv")


def test_unknown_baseline_is_named(tmp_path, capsys):
    table = write_table(tmp_path / "t.csv", synthetic_rows())
    code = main(["fit", str(table), "--out", str(tmp_path / "o"), "--baseline", "nope"])
    assert code == 2
    assert "--baseline 'nope': no such variant" in capsys.readouterr().err


def test_table_without_flops_uses_six_n_d(tmp_path):
    rows = [r[:4] for r in synthetic_rows()]
    header = ("variant", "n_params", "tokens", "loss")
    runs = read_table(write_table(tmp_path / "t.csv", rows, header=header))
    r = runs["baseline"]
    assert not r.flops_given
    np.testing.assert_allclose(r.flops, 6 * r.n_params * r.tokens)
