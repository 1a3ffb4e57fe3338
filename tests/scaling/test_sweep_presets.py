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
