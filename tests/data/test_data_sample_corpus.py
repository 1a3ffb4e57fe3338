"""The sample corpus generator: deterministic, WikiText layout, a real word distribution."""

from __future__ import annotations

import collections
import hashlib
from pathlib import Path

from filtertron.data.sample import SPLIT_FILES, generate, write_corpus
from filtertron.data.sources import is_heading, wikitext_documents

SHIPPED = Path(__file__).resolve().parents[2] / "corpus" / "sample"


def _text(seed: int, split: str, size: int) -> str:
    return "".join(generate(seed, split, size))


def test_deterministic_and_splits_differ() -> None:
    a = _text(3, "train", 50_000)
    assert a == _text(3, "train", 50_000)
    assert a != _text(4, "train", 50_000)
    assert a[:2000] != _text(3, "validation", 50_000)[:2000]


def test_wikitext_layout() -> None:
    lines = _text(3, "train", 100_000).splitlines(keepends=True)
    assert lines[0] == " \n"
    assert all(line.startswith(" ") and line.endswith(" \n") for line in lines)
    titles = [line for line in lines if is_heading(line)]
    sections = [ln for ln in lines if ln.startswith(" = = ") and not ln.startswith(" = = = ")]
    subsections = [line for line in lines if line.startswith(" = = = ")]
    assert len(titles) > 20 and len(sections) > 3 * len(titles) and subsections
    docs = list(wikitext_documents(lines))
    assert len(docs) == len(titles)
    assert is_heading(docs[0].split("\n")[1])  # the file's leading blank line joins article 0
    assert all(is_heading(d.split("\n")[0]) for d in docs[1:])
    assert "".join(docs) == "".join(lines)


def test_word_frequencies_are_a_real_mix() -> None:
    words = _text(3, "train", 1_000_000).split()
    counts = collections.Counter(words)
    freq = sorted(counts.values(), reverse=True)
    assert len(counts) > 2000  # a few thousand distinct words
    assert freq[0] / len(words) > 0.03  # frequent function words ...
    assert sum(1 for c in freq if c == 1) > 300  # ... and a long tail of rare ones
    top100 = sum(freq[:100]) / len(words)
    assert 0.4 < top100 < 0.85


def test_write_corpus(tmp_path: Path) -> None:
    paths = write_corpus(tmp_path, seed=3, sizes_mb={"train": 0.05, "test": 0.01})
    assert sorted(p.name for p in paths.values()) == ["wiki.test.raw", "wiki.train.raw"]
    assert 50_000 <= paths["train"].stat().st_size < 60_000
    assert not list(tmp_path.glob("*.tmp"))


def test_shipped_corpus_is_regenerable(tmp_path: Path) -> None:
    """corpus/sample/ is exactly `python -m filtertron.data.sample --out corpus/sample`."""
    write_corpus(tmp_path)
    for name in SPLIT_FILES.values():
        shipped = SHIPPED / name
        assert shipped.exists(), f"{shipped} missing; regenerate the sample corpus"
        digest = hashlib.sha256(shipped.read_bytes()).hexdigest()
        assert digest == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest(), name
    assert (SHIPPED / "wiki.train.raw").stat().st_size < 4_000_000
