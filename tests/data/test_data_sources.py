"""Document sources: WikiText articles, .txt/.jsonl/.parquet, directories, hub names."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from filtertron.data import sources
from filtertron.data.errors import DataError, HubUnavailableError
from filtertron.data.sources import is_heading, resolve_source, wikitext_documents


def _docs(source: str | Path, **kw: str) -> dict[str, list[str]]:
    return {s: list(src.open(None)) for s, src in resolve_source(str(source), **kw).items()}


def test_headings() -> None:
    assert is_heading(" = Valkyria Chronicles III = \n")
    assert is_heading(" = A = \n") and is_heading(" = Title =\n")
    assert not is_heading(" = = Career = = \n")
    assert not is_heading(" = = = 2000 – 2005 = = = \n")
    assert not is_heading(" The sum = 3 . \n")


def test_wikitext_articles_are_documents(corpus_dir: Path) -> None:
    text = (corpus_dir / "wiki.valid.raw").read_text(encoding="utf-8")
    docs = _docs(corpus_dir / "wiki.valid.raw")["validation"]
    assert "".join(docs) == text
    assert len(docs) == sum(1 for line in text.splitlines() if is_heading(line))
    assert all(" = = " in d for d in docs[:5])  # sections stay inside their article


def test_wikitext_hub_rows_without_newlines() -> None:
    rows = ["", " = One = ", "", " a b ", "", " = = S = = ", " c ", " = Two = ", " d "]
    docs = list(wikitext_documents(r + "\n" for r in rows))
    assert docs == ["\n = One = \n\n a b \n\n = = S = = \n c \n", " = Two = \n d \n"]


def test_directory_splits(corpus_dir: Path) -> None:
    splits = resolve_source(str(corpus_dir))
    assert list(splits) == ["train", "validation", "test"]
    assert splits["validation"].total_bytes == (corpus_dir / "wiki.valid.raw").stat().st_size


def test_txt_modes(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("a b\nc\n\n\nd e\n \nf\n", encoding="utf-8")
    assert _docs(f)["train"] == ["a b\nc\n", "d e\n", "f\n"]
    assert _docs(f, txt_docs="line")["train"] == ["a b\n", "c\n", "d e\n", "f\n"]
    assert _docs(f, txt_docs="file")["train"] == ["a b\nc\n\n\nd e\n \nf\n"]
    assert list(_docs(f, split="test")) == ["test"]


def test_jsonl_field(tmp_path: Path) -> None:
    f = tmp_path / "web.jsonl"
    f.write_text("\n".join(json.dumps({"body": f"doc {i}", "id": i}) for i in range(3)) + "\n")
    assert _docs(f, field="body")["train"] == ["doc 0", "doc 1", "doc 2"]
    with pytest.raises(DataError, match=r"web.jsonl:1: no field 'text' \(has \['body', 'id'\]\)"):
        _docs(f)
    f.write_text('{"text": "ok"}\n{"text": 3}\n')
    with pytest.raises(DataError, match=r"web.jsonl:2: field 'text' is int"):
        _docs(f)
    f.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(DataError, match=r"web.jsonl:2: not valid JSON"):
        _docs(f)


def test_parquet_column(tmp_path: Path) -> None:
    f = tmp_path / "train-00000.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(600)], "n": list(range(600))}), f)
    docs = _docs(tmp_path)["train"]
    assert docs[:2] == ["row 0", "row 1"] and len(docs) == 600
    with pytest.raises(DataError, match="no column 'body'"):
        _docs(f, field="body")


def test_invalid_utf8_fails_or_is_replaced(tmp_path: Path) -> None:
    f = tmp_path / "bad.txt"
    f.write_bytes(b"fine line\nbad \xff\xfe byte\n")
    with pytest.raises(DataError, match=r"bad.txt:2: invalid UTF-8 at byte 14 .*--encoding-errors"):
        _docs(f)
    assert _docs(f, errors="replace")["train"] == ["fine line\nbad \ufffd\ufffd byte\n"]


def test_unknown_paths_and_types(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        resolve_source(str(tmp_path / "missing.jsonl"))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown file type '.csv'"):
        resolve_source(str(tmp_path / "data.csv"))


def test_hub_without_network_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def unreachable(self: object, repo: str, **kw: object) -> None:
        raise ConnectionError("Name or service not known")

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", unreachable)
    t = time.perf_counter()
    with pytest.raises(HubUnavailableError) as err:
        resolve_source("wikitext")
    assert time.perf_counter() - t < 5
    msg = str(err.value)
    assert "Salesforce/wikitext" in msg and "--source DIR --output" in msg
    assert ".jsonl" in msg and "HF_DATASETS_OFFLINE=1" in msg


def test_hub_path_streams_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub code path, with datasets' loader replaced by local rows."""
    import datasets

    rows = {"train": [" = A = \n", "", " x y \n", " = B = \n", " z \n"], "test": [" = C = \n"]}
    calls = []

    def load_dataset(repo: str, config: str, split: str, streaming: bool) -> list[dict]:
        calls.append((repo, config, split, streaming))
        return [{"text": t} for t in rows[split]]

    monkeypatch.setattr(sources, "_check_hub", lambda repo: None)
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda repo, config: list(rows))
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    splits = resolve_source("wikitext")
    assert list(splits) == ["train", "test"]
    assert list(splits["train"].open(None)) == [" = A = \n\n x y \n", " = B = \n z \n"]
    assert calls == [("Salesforce/wikitext", "wikitext-103-raw-v1", "train", True)]
    assert splits["train"].name == "hf://Salesforce/wikitext/wikitext-103-raw-v1:train"
