"""The exported tokenizer encodes as filtertron's: ``AutoTokenizer.from_pretrained(OUTDIR)``
gives the dataset's ids for every document of every split, and for random text (whitespace
runs, digits, accents, CJK, emoji, unseen characters through byte fallback), for both
tokenizer kinds filtertron prepares with (its SentencePiece BPE, a Hugging Face
tokenizer.json). The one documented difference: the literal text ``<|endoftext|>``, which the
Hugging Face tokenizer reads as the EOD token unless loaded with ``split_special_tokens``.
"""

from __future__ import annotations

import random

import pytest

from filtertron.data import load_tokenizer, open_split
from filtertron.data.sample import write_corpus
from tests.data.conftest import hf_tokenizer_file  # noqa: F401
from tests.hf.conftest import export, save_checkpoint, variant_model

POOL = list("abcdefghij XYZ  \n\n\t.,;:!?'\"()-0123456789") + list(
    "éüñçßøå日本語中文🙂🚀\u00a0\u2028"
)


def _auto(path, **kw):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=True, **kw)


def _documents(dataset) -> list[list[int]]:
    docs = []
    for split in ("train", "validation", "test"):
        ds = open_split(dataset, split)
        docs += [ds.document(i)[:-1].tolist() for i in range(ds.num_documents)]
    return docs


def _random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(POOL, k=rng.randint(1, 60))) for _ in range(n)]


def test_every_document_encodes_to_the_dataset_ids(trained_hf, dataset):
    hf, tok = _auto(trained_hf), load_tokenizer(dataset)
    docs = _documents(dataset)
    assert len(docs) > 20
    for ids in docs:
        text = tok.decode(ids)
        assert hf(text)["input_ids"] == ids  # the default call adds nothing
        assert hf.decode(ids) == text


def test_random_text_encodes_alike(trained_hf, dataset):
    hf, tok = _auto(trained_hf), load_tokenizer(dataset)
    for text in _random_texts(300):
        assert hf.encode(text) == tok.encode(text), repr(text)


def test_literal_end_of_document_text(trained_hf, dataset):
    tok = load_tokenizer(dataset)
    text = f"before {tok.eod_token} after"
    assert tok.eod_id not in tok.encode(text)  # filtertron keeps it as text
    assert tok.eod_id in _auto(trained_hf).encode(text)  # Hugging Face reads the EOD token
    assert _auto(trained_hf, split_special_tokens=True).encode(text) == tok.encode(text)
    hf = _auto(trained_hf)
    assert hf.eos_token_id == tok.eod_id and hf.eos_token == tok.eod_token


def test_plain_export_tokenizer_needs_no_remote_code(tmp_path, dataset):
    from transformers import AutoTokenizer

    tok = load_tokenizer(dataset)
    run = save_checkpoint(
        variant_model(position="learned"), tmp_path / "r", tokenizer_hash=tok.hash
    )
    hf = AutoTokenizer.from_pretrained(export(run, tmp_path / "hf", "--tokenizer", str(dataset)))
    split = open_split(dataset, "test")  # memory-mapped: keep it open while reading
    ids = split.document(0)[:-1].tolist()
    assert hf.encode(tok.decode(ids)) == ids


def test_huggingface_tokenizer_source(tmp_path, hf_tokenizer_file):  # noqa: F811
    """A dataset prepared with a tokenizer.json exports that tokenizer, encoding alike."""
    from filtertron.data.prepare import prepare

    corpus = tmp_path / "corpus"
    write_corpus(corpus, seed=4, sizes_mb={"train": 0.02, "validation": 0.005, "test": 0.005})
    texts = (corpus / "wiki.train.raw").read_text().split("\n")
    tok_file = hf_tokenizer_file(tmp_path / "bpe.json", texts)
    data = tmp_path / "data"
    prepare(str(corpus), data, tokenizer=str(tok_file), workers=0, no_progress=True)
    tok = load_tokenizer(data)
    assert tok.kind == "huggingface"
    model = variant_model(position="rotary", vocab_size=tok.vocab_size)
    run = save_checkpoint(model, tmp_path / "r", tokenizer_hash=tok.hash)
    hf = _auto(export(run, tmp_path / "hf", "--tokenizer", str(data)))
    for ids in _documents(data):
        assert hf.encode(tok.decode(ids)) == ids
    for text in _random_texts(100, seed=1):
        assert hf.encode(text) == tok.encode(text), repr(text)


@pytest.mark.parametrize("bad", ["hash", "vocab"])
def test_export_refuses_a_tokenizer_that_does_not_fit(bad, tmp_path, dataset):
    from filtertron.hf.export import export_hf

    tok = load_tokenizer(dataset)
    if bad == "hash":
        model, saved = variant_model(position="learned"), "0" * 64
        match = "differs from"
    else:
        model, saved = variant_model(position="learned", vocab_size=100), tok.hash
        match = "exceeds the model's model.vocab_size=100"
    run = save_checkpoint(model, tmp_path / "r", tokenizer_hash=saved)
    with pytest.raises(ValueError, match=match):
        export_hf(run, tmp_path / "hf", tokenizer=str(dataset))
    assert not (tmp_path / "hf").exists()
