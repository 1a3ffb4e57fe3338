"""Tokenizers: exact round trips, the EOD token, hashes, Hugging Face files, long documents."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from filtertron.data import load_tokenizer
from filtertron.data.errors import DataError
from filtertron.data.pipeline import LONG_DOCUMENT, encode_documents, split_long
from filtertron.data.tokenizer import save_tokenizer, train_sentencepiece

TRICKY = [
    " = Title = \n \n Hello wörld , 3 @,@ 400 . \n",
    "  two  spaces\tand a tab\n\n\nthree newlines",
    "日本語のテキスト 😀 and ünïcödé",
    "a literal <|endoftext|> stays text",
    "",
]


@pytest.fixture(scope="module")
def sp_tok(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path):
    out = tmp_path_factory.mktemp("tok") / "sp.model"
    docs = (corpus_dir / "wiki.train.raw").read_text(encoding="utf-8").split(" \n \n")
    return train_sentencepiece(iter(docs), out, 600, max_docs=400)


def test_sentencepiece_round_trip(sp_tok) -> None:
    assert sp_tok.vocab_size == 600 and sp_tok.eod_id == 1
    for text in TRICKY:
        ids = sp_tok.encode(text)
        assert sp_tok.decode(ids) == text
        assert sp_tok.eod_id not in ids
    assert sp_tok.decode(sp_tok.encode("a b") + [sp_tok.eod_id]) == "a b"


def test_hash_and_reload(sp_tok, tmp_path: Path) -> None:
    assert sp_tok.hash == hashlib.sha256(sp_tok.path.read_bytes()).hexdigest()
    desc = json.loads(save_tokenizer(sp_tok, tmp_path).read_text())
    assert desc["hash"] == sp_tok.hash and desc["file"] == "tokenizer.model"
    for where in (tmp_path, tmp_path / "tokenizer.json", tmp_path / "tokenizer.model"):
        tok = load_tokenizer(where)
        assert (tok.hash, tok.eod_id, tok.vocab_size) == (sp_tok.hash, 1, 600)
    (tmp_path / "tokenizer.json").write_text(json.dumps(desc | {"hash": "0" * 64}))
    with pytest.raises(DataError, match="was replaced after preparing"):
        load_tokenizer(tmp_path)


def test_missing_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such tokenizer"):
        load_tokenizer(tmp_path / "none.model")
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(DataError, match="not a readable SentencePiece model"):
        load_tokenizer(tmp_path / "bad.model")


def test_too_small_vocab_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="SentencePiece training failed with vocab_size=50"):
        train_sentencepiece(iter(["some text here"] * 10), tmp_path / "x.model", 50)


def test_huggingface_tokenizer(tmp_path: Path, corpus_dir: Path, hf_tokenizer_file) -> None:
    text = (corpus_dir / "wiki.valid.raw").read_text(encoding="utf-8")
    tok = load_tokenizer(hf_tokenizer_file(tmp_path / "tokenizer.json", text.split("\n")))
    assert tok.kind == "huggingface" and tok.eod_id == 0 and tok.eod_token == "<|endoftext|>"
    for t in TRICKY[:3]:
        assert tok.decode(tok.encode(t)) == t
    long_doc = (corpus_dir / "wiki.train.raw").read_text(encoding="utf-8")[: 3 * LONG_DOCUMENT]
    assert len(split_long(long_doc)) >= 3
    assert encode_documents(tok, [long_doc]).tokens[:-1].tolist() == tok.encode(long_doc)
    with pytest.raises(DataError, match="none of"):
        load_tokenizer(tmp_path / "tokenizer.json", eod_token="<nope>")


def test_long_documents_encode_as_a_whole(sp_tok, corpus_dir: Path) -> None:
    doc = (corpus_dir / "wiki.train.raw").read_text(encoding="utf-8")[: 3 * LONG_DOCUMENT]
    pieces = split_long(doc)
    assert len(pieces) >= 3 and "".join(pieces) == doc
    enc = encode_documents(sp_tok, [doc, "short"])
    whole = sp_tok.sp.encode(doc)
    assert enc.tokens[: len(whole)].tolist() == whole
    assert enc.lengths.tolist() == [len(whole) + 1, len(sp_tok.encode("short")) + 1]
    assert enc.words == len(doc.split()) + 1 and enc.bytes == len(doc.encode()) + 5
