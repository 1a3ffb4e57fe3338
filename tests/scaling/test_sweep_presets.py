"""The shipped sweep presets expand into the grids they promise."""

from filtertron.scaling.expand import expand
from filtertron.scaling.sweep_config import load_sweep

from .conftest import ROOT

PRESETS = ROOT / "configs" / "sweeps"


def test_tiny_preset_is_4_variants_by_3_sizes_by_2_budgets(tmp_path):
    sweep, where = load_sweep(PRESETS / "tiny.yaml")
    runs = expand(sweep, where, tmp_path)
    assert set(sweep.variants) == {"baseline", "bilateral", "twicing", "grc"}
    assert len(sweep.all_sizes) >= 3 and len(sweep.budgets.values) >= 2
    assert len(runs) == 4 * len(sweep.all_sizes) * len(sweep.budgets.values)
    assert sweep.budgets.kind == "flops"  # every budget is an isoFLOP profile
    kinds = {r.variant: r.config.model.attention.kind for r in runs}
    assert kinds == {"baseline": "softmax", "bilateral": "bilateral", "twicing": "twicing",
                     "grc": "softmax"}  # fmt: skip
    assert {r.config.model.residual.kind for r in runs if r.variant == "grc"} == {"generalized"}


def test_gpt2_ladder_spans_20m_to_350m_parameters_at_chinchilla_budgets(tmp_path):
    sweep, where = load_sweep(PRESETS / "gpt2-ladder.yaml")
    runs = expand(sweep, where, tmp_path)
    total = sorted({r.params.total for r in runs if r.variant == "baseline"})
    assert 15e6 < min(r.params.non_embedding for r in runs) < 25e6
    assert 300e6 < max(total) < 400e6
    assert sweep.budgets.kind == "tokens_per_param" and 20 in sweep.budgets.values
    assert sweep.nproc == 8 and sweep.slurm["gpus_per_node"] == 8


def _isoflop_design(sweep, runs):
    """4 variants, >= 5 sizes at each of >= 3 compute budgets spanning >= 10x."""
    assert set(sweep.variants) == {"baseline", "bilateral", "twicing", "grc"}
    assert sweep.budgets.kind == "flops" and len(sweep.budgets.values) >= 3
    assert max(sweep.budgets.values) / min(sweep.budgets.values) >= 10
    assert len(sweep.all_sizes) >= 5 and len(runs) == 4 * len(sweep.all_sizes) * 3
    assert sweep.nproc == 1  # the in-process plan


def test_gpu_preset_fits_six_minutes_of_an_h200(tmp_path, capsys):
    # The estimate rests on the note's H200 numbers: the trainer's step on a small model
    # (1024 tokens at 21K tokens/s: 48.8 ms) and the GPT-2 small MFU (27%).
    from filtertron.cli import main
    from filtertron.scaling.estimate import H200, estimate, profile

    assert H200.step_floor_s >= 1024 / 21e3 and H200.mfu_ref <= 0.27
    sweep, where = load_sweep(PRESETS / "gpu-6min.yaml")
    runs = expand(sweep, where, tmp_path)
    _isoflop_design(sweep, runs)
    assert sweep.device_profile == "h200"
    assert max(r.config.model.n_layers for r in runs) <= H200.floor_layers  # the floor measured
    per, total = estimate(runs, profile("h200"), "inprocess")
    assert total < 6 * 60, total
    assert min(r.steps for r in runs) >= 5
    # What a launcher and a process per run would cost instead.
    assert estimate(runs, profile("h200"), "local")[1] > 3 * total
    args = ["sweep", str(PRESETS / "gpu-6min.yaml"), "--out", str(tmp_path / "o")]
    assert main([*args, "--plan", "inprocess", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert f"estimated {total:.0f} s ({total / 60:.1f} min) with --plan inprocess on h200" in text
    assert "source: step floor 49 ms" in text and "twicing.d128.c1e13.s0" in text


def test_cpu_isoflop_preset_is_the_same_design_in_about_an_hour(tmp_path):
    from filtertron.scaling.estimate import estimate, profile

    sweep, where = load_sweep(PRESETS / "tiny-isoflop.yaml")
    runs = expand(sweep, where, tmp_path)
    _isoflop_design(sweep, runs)
    total = estimate(runs, profile("cpu"), "inprocess")[1]
    assert 30 * 60 < total < 75 * 60, total
