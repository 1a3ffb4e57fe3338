"""Bad input gets a clear error (exit status 2, the file or field named) before anything is
written, and an existing output directory survives a failed export."""

from __future__ import annotations

import json

import pytest

from filtertron.cli import main
from tests.hf.conftest import save_checkpoint, variant_model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A checkpoint whose data.path does not exist (the default config's)."""
    return save_checkpoint(variant_model(position="learned"), tmp_path_factory.mktemp("r") / "r")


def _fails(capsys, argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    for n in needles:
        assert n in err, err
    return err


def test_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    _fails(
        capsys,
        ["export", str(tmp_path / "junk"), "--to", "hf", str(tmp_path / "out")],
        "no committed filtertron checkpoint",
    )
    _fails(capsys, ["generate", str(tmp_path / "junk")], "no committed filtertron checkpoint")
    assert not (tmp_path / "out").exists()


def test_outdir_not_empty_needs_force(run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _fails(
        capsys,
        ["export", str(run), "--to", "hf", str(out), "--no-tokenizer"],
        f"output {out} exists and is not empty; pass --force",
    )
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["export", str(run), "--to", "hf", str(out), "--no-tokenizer", "--force"]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()
    assert not list(tmp_path.glob(".out.*"))  # no staging directory left behind


def test_outdir_holding_the_checkpoint_is_refused(run, capsys):
    _fails(
        capsys,
        ["export", str(run), "--to", "hf", str(run), "--force", "--no-tokenizer"],
        "holds the input",
    )
    assert (run / "checkpoints").is_dir()


def test_missing_tokenizer_names_data_path(run, tmp_path, capsys):
    _fails(
        capsys,
        ["export", str(run), "--to", "hf", str(tmp_path / "out")],
        "data.path",
        "--tokenizer",
        "--no-tokenizer",
    )
    assert not (tmp_path / "out").exists()


def test_unknown_format(run, tmp_path, capsys):
    _fails(capsys, ["export", str(run), "--to", "onnx", str(tmp_path / "o")], "--to onnx")


def test_failed_export_keeps_the_old_output(run, tmp_path, monkeypatch):
    """A write that fails half-way (after the weights, before the generation config)."""
    from transformers import GenerationConfig

    from filtertron.hf.export import export_hf

    out = tmp_path / "out"
    assert main(["export", str(run), "--to", "hf", str(out), "--no-tokenizer"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(GenerationConfig, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        export_hf(run, out, force=True, no_tokenizer=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".out.*"))


def _hf_dir(tmp_path, config: dict):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    return d


def test_import_unsupported_architecture(tmp_path, capsys):
    d = _hf_dir(tmp_path, {"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    _fails(
        capsys,
        ["import", str(d), "--out", str(tmp_path / "run")],
        "config.json: unsupported architecture for import",
        "model_type='llama'",
        "LlamaForCausalLM",
    )
    assert not (tmp_path / "run").exists()


def test_import_unsupported_gpt2_settings(tmp_path, capsys):
    d = _hf_dir(
        tmp_path,
        {
            "model_type": "gpt2",
            "activation_function": "relu",
            "scale_attn_by_inverse_layer_idx": True,
        },
    )
    _fails(
        capsys,
        ["import", str(d), "--out", str(tmp_path / "run")],
        "activation_function='relu'",
        "scale_attn_by_inverse_layer_idx=True",
    )
    assert not (tmp_path / "run").exists()


def test_import_not_a_model_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _fails(
        capsys,
        ["import", str(tmp_path / "empty"), "--out", str(tmp_path / "run")],
        "no config.json; not a Hugging Face model directory",
    )


def test_import_outdir_not_empty(tmp_path, capsys):
    d = _hf_dir(tmp_path, {"model_type": "gpt2"})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("x")
    _fails(capsys, ["import", str(d), "--out", str(tmp_path / "run")], "exists and is not empty")


def test_lm_eval_task_bad_dataset(tmp_path, dataset, capsys):
    _fails(capsys, ["export", str(tmp_path), "--to", "lm-eval", str(tmp_path / "t")])
    _fails(
        capsys,
        ["export", str(dataset), "--to", "lm-eval", str(tmp_path / "t"), "--split", "nope"],
        "nope",
    )
    assert not (tmp_path / "t").exists()
