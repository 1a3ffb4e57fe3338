"""``filtertron prepare``: layout, counts, round trips, megatron compatibility, bad input."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from filtertron.data import (
    DataError,
    DatasetNotFoundError,
    TokenizerMismatchError,
    check_tokenizer_hash,
    load_tokenizer,
    open_split,
)
from filtertron.data.cli import add_arguments, run
from filtertron.data.prepare import prepare
from filtertron.data.sources import wikitext_documents

ROOT = Path(__file__).resolve().parents[2]
RAW = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run(parser.parse_args([*argv, "--no-progress"]))


def test_layout_and_metadata(prepared: Path, corpus_dir: Path) -> None:
    names = sorted(p.name for p in prepared.iterdir())
    assert names == sorted(
        [f"{s}.{ext}" for s in RAW for ext in ("bin", "idx", "json")]
        + ["tokenizer.json", "tokenizer.model"]
    )
    desc = json.loads((prepared / "tokenizer.json").read_text())
    assert desc["hash"] == hashlib.sha256((prepared / "tokenizer.model").read_bytes()).hexdigest()
    tok = load_tokenizer(prepared)
    for split, raw in RAW.items():
        text = (corpus_dir / raw).read_text(encoding="utf-8")
        docs = list(wikitext_documents(text.splitlines(keepends=True)))
        ds = open_split(prepared, split)
        m = ds.metadata
        assert m["split"] == split and m["source"] == str(corpus_dir / raw)
        assert (m["tokenizer_hash"], m["vocab_size"], m["eod_id"]) == (tok.hash, 1024, tok.eod_id)
        assert m["documents"] == len(docs) == ds.num_documents
        assert m["words"] == len(text.split())
        assert m["bytes"] == len(text.encode("utf-8")) == (corpus_dir / raw).stat().st_size
        assert m["tokens"] == sum(len(tok.encode(d)) + 1 for d in docs) == ds.num_tokens
        assert m["dtype"] == "uint16"


def test_round_trip_and_document_boundaries(prepared: Path, corpus_dir: Path) -> None:
    tok = load_tokenizer(prepared)
    text = (corpus_dir / RAW["validation"]).read_text(encoding="utf-8")
    docs = list(wikitext_documents(text.splitlines(keepends=True)))
    ds = open_split(prepared, "validation")
    stream = ds.tokens(0, ds.num_tokens)
    assert (stream == ds.eod_id).sum() == len(docs)
    pos = 0
    for i, doc in enumerate(docs):
        ids = ds.document(i)
        assert ids[-1] == ds.eod_id and ds.eod_id not in ids[:-1]
        assert tok.decode(ids[:-1]) == doc
        assert np.array_equal(stream[pos : pos + len(ids)], ids)
        pos += len(ids)
    assert tok.decode(stream) == text


def test_megatron_reads_the_files(prepared: Path) -> None:
    """megatron-core's own reader, and its builder writing byte-identical files."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

    ds = open_split(prepared, "test")
    mega = IndexedDataset(str(prepared / "test"))
    assert len(mega) == ds.num_documents and mega.index.dtype == np.uint16
    assert np.array_equal(mega.document_indices, np.arange(ds.num_documents + 1))
    assert int(mega.sequence_lengths.sum()) == ds.num_tokens
    for i in range(ds.num_documents):
        assert np.array_equal(mega[i], ds.document(i))

    out = prepared.parent / "megatron-built"
    builder = IndexedDatasetBuilder(f"{out}.bin", dtype=np.uint16)
    for i in range(ds.num_documents):
        doc = torch.from_numpy(ds.document(i).astype(np.int64))
        builder.add_document(doc, [len(doc)])
    builder.finalize(f"{out}.idx")
    for ext in ("bin", "idx"):
        assert Path(f"{out}.{ext}").read_bytes() == (prepared / f"test.{ext}").read_bytes()


def test_worker_count_does_not_change_output(
    tmp_path: Path, corpus_dir: Path, prepared: Path
) -> None:
    out = tmp_path / "w0"
    prepare(
        str(corpus_dir),
        out,
        tokenizer=str(prepared),
        workers=0,
        splits="validation,test",
        chunk_mb=0.01,
        no_progress=True,
    )
    for ext in ("bin", "idx", "json"):
        assert (out / f"test.{ext}").read_bytes() == (prepared / f"test.{ext}").read_bytes()
    check_tokenizer_hash(out, load_tokenizer(prepared).hash)
    assert not (out / "train.json").exists()


def test_jsonl_with_holdout_and_hf_tokenizer(tmp_path: Path, hf_tokenizer_file) -> None:
    docs = [f"document number {i} .\nsecond line {i}" for i in range(50)]
    src = tmp_path / "web.jsonl"
    src.write_text("".join(json.dumps({"content": d}) + "\n" for d in docs))
    tok_file = hf_tokenizer_file(tmp_path / "hf.json", docs)
    out = tmp_path / "web"
    assert (
        _run(
            "--source",
            str(src),
            "--output",
            str(out),
            "--tokenizer",
            str(tok_file),
            "--field",
            "content",
            "--holdout-every",
            "10",
            "--workers",
            "1",
        )
        == 0
    )
    tok = load_tokenizer(out)
    assert tok.kind == "huggingface" and (out / "tokenizer.hf.json").exists()
    val = open_split(out, "validation")
    assert val.num_documents == 5
    assert [tok.decode(val.document(i)[:-1]) for i in range(5)] == docs[9::10]
    assert open_split(out, "train").num_documents == 45


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")), "staging directory left behind"


@pytest.mark.parametrize("content", [b"", b" \n \n\n"])
def test_empty_input(tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "wiki.train.raw").write_bytes(content)
    out = tmp_path / "out"
    assert _run("--source", str(tmp_path / "wiki.train.raw"), "--output", str(out)) == 2
    assert "empty input" in capsys.readouterr().err
    _assert_nothing_written(out)


def test_invalid_utf8(tmp_path: Path, prepared: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "wiki.test.raw"
    src.write_bytes(b" = T = \n a \xe9t\xe9 b \n")
    out = tmp_path / "out"
    assert _run("--source", str(src), "--output", str(out), "--tokenizer", str(prepared)) == 2
    assert "wiki.test.raw:2: invalid UTF-8 at byte 11" in capsys.readouterr().err
    _assert_nothing_written(out)
    assert (
        _run(
            "--source",
            str(src),
            "--output",
            str(out),
            "--tokenizer",
            str(prepared),
            "--encoding-errors",
            "replace",
        )
        == 0
    )
    meta = open_split(out, "test").metadata
    assert meta["encoding_errors"] == "replace" and meta["words"] == 6


def test_jsonl_missing_field(tmp_path: Path, prepared: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    out = tmp_path / "out"
    assert _run("--source", str(src), "--output", str(out), "--tokenizer", str(prepared)) == 2
    assert "a.jsonl:2: no field 'text'" in capsys.readouterr().err
    _assert_nothing_written(out)


def test_failed_run_keeps_existing_output(tmp_path: Path, prepared: Path, copy_dataset) -> None:
    out = copy_dataset(prepared, tmp_path / "kept")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\n")
    assert _run("--source", str(tmp_path / "missing"), "--output", str(out)) == 2
    assert (
        _run(
            "--source", str(bad), "--output", str(out), "--tokenizer", str(prepared), "--overwrite"
        )
        == 2
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".kept.*"))


def test_truncated_files(tmp_path: Path, prepared: Path, copy_dataset) -> None:
    out = copy_dataset(prepared, tmp_path / "cut")
    bin_path, idx_path = out / "train.bin", out / "train.idx"
    data = bin_path.read_bytes()
    bin_path.write_bytes(data[:-2])
    with pytest.raises(DataError, match=r"train\.bin: truncated .* prepare the dataset again"):
        open_split(out, "train")
    bin_path.write_bytes(data)
    idx = idx_path.read_bytes()
    idx_path.write_bytes(idx[:-8])
    with pytest.raises(DataError, match=r"train\.idx: truncated"):
        open_split(out, "train")
    idx_path.write_bytes(idx[:20])
    with pytest.raises(DataError, match=r"train\.idx: not a Megatron index file"):
        open_split(out, "train")
    idx_path.unlink()
    with pytest.raises(DatasetNotFoundError, match=r"train\.idx: missing"):
        open_split(out, "train")


def test_missing_dataset_and_split(tmp_path: Path, prepared: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="no such dataset directory"):
        open_split(tmp_path / "nope", "train")
    with pytest.raises(DatasetNotFoundError, match=r"no split 'dev' .*train, validation"):
        open_split(prepared, "dev")


def test_tokenizer_hash_check(tmp_path: Path, prepared: Path, copy_dataset) -> None:
    good = load_tokenizer(prepared).hash
    check_tokenizer_hash(prepared, good)
    with pytest.raises(TokenizerMismatchError, match="but the model expects 000000000000"):
        check_tokenizer_hash(prepared, "0" * 64)
    out = copy_dataset(prepared, tmp_path / "mixed")
    meta = json.loads((out / "test.json").read_text())
    (out / "test.json").write_text(json.dumps(meta | {"tokenizer_hash": "f" * 64}))
    with pytest.raises(TokenizerMismatchError, match="test.json"):
        check_tokenizer_hash(out, good)
    with pytest.raises(TokenizerMismatchError, match="mixes tokenizers"):
        open_split(out, "test")


def test_existing_output_needs_overwrite(
    tmp_path: Path, prepared: Path, copy_dataset, capsys: pytest.CaptureFixture
) -> None:
    out = copy_dataset(prepared, tmp_path / "exists")
    src = tmp_path / "wiki.test.raw"
    src.write_text(" = T = \n words here \n")
    assert _run("--source", str(src), "--output", str(out), "--tokenizer", str(prepared)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (
        _run(
            "--source", str(src), "--output", str(out), "--tokenizer", str(prepared), "--overwrite"
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "test.bin",
        "test.idx",
        "test.json",
        "tokenizer.json",
        "tokenizer.model",
    ]


def test_tools_wrapper(tmp_path: Path, prepared: Path) -> None:
    src = tmp_path / "wiki.valid.raw"
    src.write_text(" = T = \n some words \n")
    out = tmp_path / "tool"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "prepare_data.py"),
            "--source",
            str(src),
            "--output",
            str(out),
            "--tokenizer",
            str(prepared / "tokenizer.model"),
            "--workers",
            "0",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "validation: 1 documents" in proc.stdout
    assert open_split(out, "validation").metadata["words"] == 5


def test_public_api_is_lazy() -> None:
    import filtertron.data as data

    assert sorted(data.__all__) == sorted(data._EXPORTS)
    assert all(callable(getattr(data, name)) for name in data.__all__)
    code = "import sys, filtertron.data.prepare; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
