"""``filtertron eval`` end to end on saved checkpoints: files, refusals, DP=2 equals DP=1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from filtertron.checkpoint.shards import load_model
from filtertron.cli import main
from filtertron.data import open_split
from filtertron.eval.perplexity import load_span, score, sliding_windows
from tests.eval.conftest import save_checkpoint, tiny_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
    """Two committed runs: a softmax + ALiBi baseline and a bilateral model."""
    root = tmp_path_factory.mktemp("runs")
    tok = open_split(dataset, "test").tokenizer_hash
    return [
        save_checkpoint(tiny_model(seq_len=16, seed=1), root / "baseline", 3, tok),
        save_checkpoint(
            tiny_model(kind="bilateral", position="none", seq_len=16, seed=2),
            root / "bilateral",
            5,
            tok,
        ),
    ]


def _eval(*args):
    return main(["eval", *map(str, args), "--no-progress"])


def test_eval_end_to_end(dataset, runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        _eval(
            *runs,
            "--data",
            dataset,
            "--lengths",
            "1x,4x",
            "--stride",
            "8",
            "--max-tokens",
            1500,
            "--contamination",
            "0.1,0.3",
            "--attack",
            "fgsm",
            "--epsilon",
            "0.02",
            "--diagnostics",
            "--out",
            out,
        )
        == 0
    )
    assert {p.name for p in out.iterdir()} == {
        "results.json",
        "results.csv",
        "summary.md",
        "ppl_vs_length.png",
        "ppl_vs_contamination.png",
        "token_similarity.png",
        "logs",
    }
    # quiet: the attention implementation chosen (an INFO line) is in the log, not on stderr
    assert "attention impl=" in (out / "logs" / "rank0.log").read_text()
    assert "attention impl=" not in capsys.readouterr().err
    rows = json.loads((out / "results.json").read_text())
    span = load_span(dataset, "test", max_tokens=1500)
    for run, step in zip(runs, (3, 5), strict=True):
        mine = [r for r in rows if r["name"] == run.name]  # default name: the run dir
        kinds = [r["kind"] for r in mine]
        assert (
            kinds == ["perplexity"] * 2 + ["contamination"] * 3 + ["attack"] + ["diagnostics"] * 3
        )
        assert all(r["step"] == step and r["scored_span"].startswith("first ") for r in mine)
        ppl = {r["length"]: r for r in mine if r["kind"] == "perplexity"}
        assert set(ppl) == {16, 64} and all(r["stride"] == 8 for r in ppl.values())
        # Independent recomputation of the 4x row from the saved checkpoint.
        model, _, _ = load_model(run)
        tot = score(model, span.tokens, sliding_windows(span.num_targets, 64, 8), 3)
        row = ppl[64]
        assert row["tokens"] == tot.tokens == len(span.tokens) - 1
        assert abs(row["nll_sum"] - tot.nll_sum) <= 1e-5 * tot.nll_sum
        assert (row["words"], row["bytes"]) == (span.words, span.bytes)
        rob = [r for r in mine if r["kind"] in ("contamination", "attack")]
        assert [r.get("contamination") for r in rob[:3]] == [0.0, 0.1, 0.3]
        assert rob[0]["token_ppl"] == ppl[16]["token_ppl"]  # p = 0 is the clean value
        assert all(r["length"] == 16 and r["stride"] == 8 for r in rob)
        assert rob[3]["clean_token_ppl"] == ppl[16]["token_ppl"]
        assert rob[3]["token_ppl"] > ppl[16]["token_ppl"]
        diag = [r for r in mine if r["kind"] == "diagnostics"]
        assert [r["layer"] for r in diag] == [0, 1, 2]
        assert diag[0]["attention_entropy"] is None and len(diag[1]["attention_entropy_heads"]) == 2


def test_diagnostics_rows_equal_diagnose(dataset, runs, tmp_path):
    from filtertron.model.diagnostics import diagnose

    assert (
        _eval(
            runs[0],
            "--data",
            dataset,
            "--diagnostics",
            "--diagnostics-windows",
            2,
            "--impl",
            "reference",
            "--name",
            "b",
            "--out",
            tmp_path,
        )
        == 0
    )
    rows = [
        r for r in json.loads((tmp_path / "results.json").read_text()) if r["kind"] == "diagnostics"
    ]
    import torch

    model, _, _ = load_model(runs[0])
    d = diagnose(model, torch.from_numpy(load_span(dataset, "test").tokens[:32].reshape(2, 16)))
    assert [r["token_similarity"] for r in rows] == pytest.approx(d["token_similarity"], rel=1e-6)
    assert [r["attention_entropy_heads"] for r in rows[1:]] == [
        pytest.approx(h, rel=1e-6) for h in d["attention_entropy"]
    ]


def test_learned_positions_are_refused_before_anything_runs(dataset, tmp_path, capsys):
    tok = open_split(dataset, "test").tokenizer_hash
    run = save_checkpoint(tiny_model(position="learned", seq_len=16), tmp_path / "gpt2", 1, tok)
    assert _eval(run, "--data", dataset, "--lengths", "16,32", "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "context length 32 exceeds its learned position table (model.seq_len=16" in err
    assert not (tmp_path / "o").exists()


def test_bad_requests_exit_2(dataset, runs, tmp_path, capsys):
    assert _eval(*runs, "--data", dataset, "--name", "one", "--out", tmp_path) == 2
    assert "2 checkpoints" in capsys.readouterr().err
    assert (
        _eval(runs[0], "--data", dataset, "--lengths", "8", "--stride", "16", "--out", tmp_path)
        == 2
    )
    assert "--stride 16" in capsys.readouterr().err
    assert _eval(runs[0], "--data", dataset, "--attack", "pgd", "--out", tmp_path) == 2
    assert "--epsilon" in capsys.readouterr().err
    other = save_checkpoint(tiny_model(seq_len=16), tmp_path / "other", 1, "0" * 64)
    assert _eval(other, "--data", dataset, "--out", tmp_path) == 2
    assert "tokenizer" in capsys.readouterr().err


@pytest.mark.slow  # 62 s; the float64 reduction on 2 gloo ranks is tested by default in
# tests/parallel/test_collectives.py
@pytest.mark.distributed
def test_dp2_equals_dp1(dataset, runs, tmp_path):
    args = [
        str(runs[0]),
        "--data",
        str(dataset),
        "--lengths",
        "16,48",
        "--stride",
        "8",
        "--contamination",
        "0.2",
        "--contamination-mode",
        "random",
        "--attack",
        "pgd",
        "--epsilon",
        "0.02",
        "--pgd-steps",
        "2",
        "--max-tokens",
        "3000",
        "--no-progress",
    ]
    assert main(["eval", *args, "--out", str(tmp_path / "dp1")]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "filtertron.cli",
            "eval",
            *args,
            "--nproc",
            "2",
            "--out",
            str(tmp_path / "dp2"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "dp1" / "results.json").read_text())
    two = json.loads((tmp_path / "dp2" / "results.json").read_text())
    assert len(one) == len(two) == 5
    for a, b in zip(one, two, strict=True):
        assert (a["kind"], a["length"], a["tokens"]) == (b["kind"], b["length"], b["tokens"])
        assert (a["world_size"], b["world_size"]) == (1, 2)
        # Same windows, split over two ranks and batched differently: float32 per-window sums
        # agree to rounding, so the perplexities agree to 1e-6 relative.
        assert abs(a["token_ppl"] - b["token_ppl"]) <= 1e-6 * a["token_ppl"], (a, b)
