"""Sweep files: validation with named fields, expansion into runs, the LR/warmup rule."""

from pathlib import Path

import pytest

from filtertron.cli import main
from filtertron.config import ConfigError
from filtertron.scaling.expand import expand
from filtertron.scaling.sweep_config import load_sweep
from filtertron.train.flops import flops_per_token

from .conftest import ROOT, TINY_MODEL, write_sweep


def _expand(path: Path, out: Path, overrides=None):
    sweep, where = load_sweep(path)
    return sweep, expand(sweep, where, out, overrides or [])


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"seedz": [0]}, "seedz: unknown key"),
        ({"budgets": {"kind": "flops", "values": ["lots"]}}, "budgets.values[0]='lots'"),
        ({"budgets": {"kind": "steps", "values": [1]}}, "budgets.kind='steps'"),
        ({"budgets": {"kind": "tokens", "values": [-5]}}, "expected a positive number"),
        ({"baseline": "nope"}, "baseline='nope': not among variants (baseline)"),
        ({"variants": {"a b": {}}}, "variants.a b='a b': names may hold only"),
        ({"overrides": {"train": {"steps": 9}}}, "overrides.train.steps: set by the sweep"),
        ({"ladder": {"d_model": [64], "n_layers": [2]}}, "sizes, ladder: give exactly one"),
        ({"schedule": {"warmup_fraction": 1.5}}, "schedule.warmup_fraction=1.5"),
        ({"seeds": [1, 1]}, "seeds=[1, 1]: need distinct seeds"),
    ],
)
def test_bad_sweep_files_name_the_field(tmp_path, fields, message):
    path = write_sweep(tmp_path / "s.yaml", **fields)
    with pytest.raises(ConfigError) as e:
        _expand(path, tmp_path / "out")
    assert message in str(e.value)


def test_bad_run_configs_name_variant_and_size(tmp_path):
    sizes = {"a": dict(TINY_MODEL), "odd": {**TINY_MODEL, "n_heads": 3}}
    path = write_sweep(tmp_path / "s.yaml", sizes=sizes)
    with pytest.raises(ConfigError, match=r"variant 'baseline', size 'odd': .*n_heads=3"):
        _expand(path, tmp_path / "out")
    missing = write_sweep(tmp_path / "m.yaml", variants={"baseline": {}, "x": "nofile.yaml"})
    with pytest.raises(ConfigError, match="nofile.yaml' does not exist"):
        _expand(missing, tmp_path / "out")
    with pytest.raises(ConfigError, match="train.seed is set by the sweep"):
        _expand(write_sweep(tmp_path / "o.yaml"), tmp_path / "out", ["train.seed=3"])
    with pytest.raises(ConfigError, match="model.position"):
        _expand(write_sweep(tmp_path / "p.yaml"), tmp_path / "out", ["model.position=up"])


def test_sweep_cli_reports_config_errors(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.yaml", seedz=[0])
    assert main(["sweep", str(path), "--dry-run"]) == 2
    assert "seedz: unknown key" in capsys.readouterr().err


def test_expansion_ids_budgets_and_schedule(tmp_path, dataset):
    sizes = {"a": dict(TINY_MODEL), "b": {**TINY_MODEL, "d_model": 64, "n_layers": 2}}
    variants = {"baseline": {}, "twicing": str(ROOT / "configs" / "tiny" / "twicing.yaml")}
    path = write_sweep(
        tmp_path / "s.yaml",
        variants=variants,
        sizes=sizes,
        budgets={"kind": "flops", "values": ["2e9", 6e9]},
        seeds=[0, 7],
        schedule={"lr_exponent": 1.0, "lr_ref_d_model": 32, "warmup_fraction": 0.2},
    )
    sweep, runs = _expand(path, tmp_path / "out", [f"data.path={dataset}"])
    assert len(runs) == 2 * 2 * 2 * 2
    assert runs[0].id == "baseline.a.c2e9.s0" and runs[-1].id == "twicing.b.c6e9.s7"
    again = _expand(path, tmp_path / "out", [f"data.path={dataset}"])[1]
    assert [r.id for r in again] == [r.id for r in runs]
    assert [r.config_hash for r in again] == [r.config_hash for r in runs]
    base_lr = 2.0e-3  # configs/tiny.yaml
    for r in runs:
        cfg = r.config
        assert cfg.train.seed == r.seed
        assert cfg.data.path == str(dataset)
        assert cfg.train.out_dir == str((tmp_path / "out" / "runs" / r.id).resolve())
        # Compute budget: the steps' FLOPs land within one step of the budget.
        per_step = r.tokens_per_step * flops_per_token(cfg.model)
        assert abs(r.steps * per_step - r.budget) <= per_step / 2 + 1
        assert cfg.train.lr == pytest.approx(base_lr * 32 / cfg.model.d_model)
        assert cfg.train.min_lr / cfg.train.lr == pytest.approx(0.1)
        assert cfg.train.warmup == int(0.2 * r.steps)
        assert r.variant == "twicing" or cfg.model.attention.kind == "softmax"
    twicing = [r for r in runs if r.variant == "twicing"]
    assert all(r.config.model.attention.kind == "twicing" for r in twicing)
    # twicing costs more per token, so it gets fewer steps for the same compute
    assert twicing[0].steps < runs[0].steps


def test_tokens_per_param_and_ladder(tmp_path, dataset):
    path = write_sweep(
        tmp_path / "s.yaml",
        sizes={},
        ladder={"d_model": [32, 64], "n_layers": [1, 2], "head_dim": 16},
        budgets={"kind": "tokens_per_param", "values": [20]},
        overrides={"model": {"seq_len": 32, "vocab_size": 512}, "train": {"micro_batch_size": 4}},
    )
    _, runs = _expand(path, tmp_path / "out", [f"data.path={dataset}"])
    assert [r.size for r in runs] == ["d32-l1", "d64-l2"]
    assert [r.config.model.n_heads for r in runs] == [2, 4]
    for r in runs:
        assert abs(r.tokens - 20 * r.params.non_embedding) <= r.tokens_per_step / 2


def test_dry_run_lists_the_plan_and_writes_nothing(tmp_path, dataset, capsys):
    path = write_sweep(tmp_path / "s.yaml", budgets={"kind": "tokens", "values": [1280, 2560]})
    out = tmp_path / "out"
    code = main(
        ["sweep", str(path), "--out", str(out), "--dry-run", "--set", f"data.path={dataset}"]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "baseline.a.t1.28e3.s0" in text and "baseline.a.t2.56e3.s0" in text
    assert "2 runs" in text
    assert not out.exists()
