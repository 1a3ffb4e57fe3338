"""Report files: JSON and CSV round trips, plots with several checkpoints, summary tables."""

import csv
import json

from filtertron.eval.report import summary_tables, write_report


def _rows():
    rows = []
    for name, scale in (("base", 1.0), ("bsa", 0.9)):
        for L in (32, 64, 128):
            rows.append({"name": name, "kind": "perplexity", "length": L, "stride": L,
                         "train_length": 32, "token_ppl": scale * 100 * 32 / L,
                         "word_ppl": 300.0, "bits_per_byte": 1.5})
        for p in (0.0, 0.1):
            rows.append({"name": name, "kind": "contamination", "length": 32, "stride": 32,
                         "contamination": p, "contamination_mode": "fixed",
                         "token_ppl": scale * (100 + 500 * p)})
        rows.append({"name": name, "kind": "attack", "length": 32, "stride": 32,
                     "attack": "fgsm", "epsilon": 0.01, "token_ppl": 400.0,
                     "clean_token_ppl": 100.0})
        for layer in range(3):
            rows.append({"name": name, "kind": "diagnostics", "layer": layer,
                         "token_similarity": 0.1 * layer * scale,
                         "attention_entropy": None if layer == 0 else 1.0,
                         "attention_entropy_heads": None if layer == 0 else [0.5, 1.5]})
    return rows


def test_write_report_round_trips_and_plots(tmp_path):
    rows = _rows()
    written = {p.name for p in write_report(rows, tmp_path / "out")}
    assert written == {"results.json", "results.csv", "summary.md", "ppl_vs_length.png",
                       "ppl_vs_contamination.png", "token_similarity.png"}
    out = tmp_path / "out"
    assert json.loads((out / "results.json").read_text()) == rows
    with (out / "results.csv").open() as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(rows)
    assert list(got[0])[:3] == ["name", "kind", "length"]  # known columns first, in order
    assert got[-1]["attention_entropy_heads"] == "[0.5, 1.5]"
    assert float(got[1]["token_ppl"]) == rows[1]["token_ppl"]
    for png in ("ppl_vs_length.png", "ppl_vs_contamination.png", "token_similarity.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_requested_plots_are_written(tmp_path):
    rows = [r for r in _rows() if r["kind"] == "perplexity"]
    names = {p.name for p in write_report(rows, tmp_path)}
    assert "ppl_vs_length.png" in names
    assert not {"ppl_vs_contamination.png", "token_similarity.png"} & names


def test_summary_tables_state_length_and_stride():
    text = summary_tables(_rows())
    assert "disjoint windows (stride = length)" in text
    assert "| base | 100.000 (300.000, 1.500) | 50.000" in text
    assert "Robustness: token perplexity (L=32, S=32)" in text
    assert "| bsa | 90.000 | 135.000 | 400.000 |" in text
    assert "fixed p=0.1" in text and "fgsm eps=0.01" in text
