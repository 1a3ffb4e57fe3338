"""Tokenizers: train a SentencePiece BPE model, or load SentencePiece / Hugging Face ones.

A tokenizer here is the model file plus the id of its end-of-document (EOD) token. A prepared
dataset directory holds the model file (``tokenizer.model`` for SentencePiece,
``tokenizer.hf.json`` for a Hugging Face ``tokenizer.json``) and a description
``tokenizer.json``: ``{"kind", "file", "hash", "vocab_size", "eod_id", "eod_token", ...}``.
The hash is the SHA-256 of the model file's bytes; datasets record it so that a model is
never trained or evaluated on ids from another tokenizer.

SentencePiece models trained here round-trip any text exactly: identity normalization, no
whitespace collapsing, no dummy prefix, and byte fallback, so newlines and unseen characters
become byte tokens instead of ``<unk>``. The EOD token is a control symbol, which encoding
never produces from text, so the literal string ``<|endoftext|>`` in a document stays text.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from filtertron.data.errors import DataError

DESCRIPTION = "tokenizer.json"
SENTENCEPIECE_FILE = "tokenizer.model"
HUGGINGFACE_FILE = "tokenizer.hf.json"
DEFAULT_EOD = "<|endoftext|>"
# Tried in order when a loaded tokenizer names no EOD token itself.
EOD_CANDIDATES = (DEFAULT_EOD, "</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>", "[SEP]")


def file_hash(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Tokenizer:
    """A loaded tokenizer: ``encode``, ``decode``, ``eod_id``, ``vocab_size``, ``hash``."""

    kind = ""

    def __init__(self, path: Path, eod_id: int, eod_token: str, vocab_size: int) -> None:
        self.path = path
        self.eod_id = eod_id
        self.eod_token = eod_token
        self.vocab_size = vocab_size
        self.hash = file_hash(path)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no EOD added)."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of several texts, in one call to the backend."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids; EOD tokens decode to nothing."""
        raise NotImplementedError

    def describe(self) -> dict:
        """The description written next to a dataset as ``tokenizer.json``."""
        return {
            "kind": self.kind,
            "file": self.path.name,
            "hash": self.hash,
            "vocab_size": self.vocab_size,
            "eod_id": self.eod_id,
            "eod_token": self.eod_token,
        }


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model file (``.model``)."""

    kind = "sentencepiece"

    def __init__(self, path: Path, eod_token: str | None = None) -> None:
        import sentencepiece as spm

        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as e:
            raise DataError(f"{path}: not a readable SentencePiece model ({e})") from e
        if eod_token is not None:
            eod_id = self.sp.piece_to_id(eod_token)
            if self.sp.id_to_piece(eod_id) != eod_token:
                raise DataError(f"{path}: EOD token {eod_token!r} is not in the vocabulary")
        elif self.sp.eos_id() >= 0:
            eod_id = self.sp.eos_id()
        else:
            found = [t for t in EOD_CANDIDATES if self.sp.id_to_piece(self.sp.piece_to_id(t)) == t]
            if not found:
                raise DataError(
                    f"{path}: the model has no end-of-sentence piece; name the "
                    "end-of-document token with --eod-token"
                )
            eod_id = self.sp.piece_to_id(found[0])
        super().__init__(path, eod_id, self.sp.id_to_piece(eod_id), self.sp.get_piece_size())

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, num_threads=1)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])


class HuggingFaceTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers`` file (``tokenizer.json``)."""

    kind = "huggingface"

    def __init__(self, path: Path, eod_token: str | None = None) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self.tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises its own Exception type
            raise DataError(f"{path}: not a readable Hugging Face tokenizer.json ({e})") from e
        names = [eod_token] if eod_token is not None else list(EOD_CANDIDATES)
        ids = [(t, self.tok.token_to_id(t)) for t in names]
        ids = [(t, i) for t, i in ids if i is not None]
        if not ids:
            raise DataError(
                f"{path}: none of {names} is in the vocabulary; name the "
                "end-of-document token with --eod-token"
            )
        super().__init__(
            path, ids[0][1], ids[0][0], self.tok.get_vocab_size(with_added_tokens=True)
        )

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(
            [int(i) for i in ids if int(i) != self.eod_id], skip_special_tokens=False
        )


def load_tokenizer(path_or_dir: str | os.PathLike, eod_token: str | None = None) -> Tokenizer:
    """Load a tokenizer from a dataset directory, a description, or a model file.

    Args:
        path_or_dir: A prepared dataset directory (its ``tokenizer.json`` description), a
            SentencePiece ``.model`` file, or a Hugging Face ``tokenizer.json`` file.
        eod_token: The end-of-document token; by default the description's, SentencePiece's
            end-of-sentence piece, or the first of :data:`EOD_CANDIDATES` in the vocabulary.

    Returns:
        A :class:`Tokenizer`.

    Raises:
        DataError: the path is missing or unreadable, or the model file's hash differs from
            the one its description records.
    """
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / DESCRIPTION
    if not path.exists():
        raise DataError(f"{path}: no such tokenizer file or directory")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: not valid JSON ({e})") from e
        if isinstance(data, dict) and {"kind", "file", "hash"} <= data.keys():
            return _load_described(path, data, eod_token)
        return HuggingFaceTokenizer(path, eod_token)
    return SentencePieceTokenizer(path, eod_token)


def _load_described(path: Path, desc: dict, eod_token: str | None) -> Tokenizer:
    model = path.parent / desc["file"]
    if not model.exists():
        raise DataError(f"{path} describes {model}, which does not exist")
    classes = {"sentencepiece": SentencePieceTokenizer, "huggingface": HuggingFaceTokenizer}
    if desc["kind"] not in classes:
        raise DataError(f"{path}: unknown tokenizer kind {desc['kind']!r}")
    tok = classes[desc["kind"]](model, eod_token or desc.get("eod_token"))
    if tok.hash != desc["hash"]:
        raise DataError(
            f"{model} has hash {tok.hash[:12]}..., but {path} records "
            f"{desc['hash'][:12]}...: the model file was replaced after preparing"
        )
    return tok


def save_tokenizer(tokenizer: Tokenizer, out_dir: str | os.PathLike, **extra: object) -> Path:
    """Copy the model file into ``out_dir`` and write its ``tokenizer.json`` description.

    Args:
        tokenizer: The tokenizer to save.
        out_dir: Target directory (a prepared dataset directory).
        **extra: More fields for the description (e.g. how it was trained).

    Returns:
        Path of the description.
    """
    out = Path(out_dir)
    name = SENTENCEPIECE_FILE if tokenizer.kind == "sentencepiece" else HUGGINGFACE_FILE
    if tokenizer.path.resolve() != (out / name).resolve():
        shutil.copyfile(tokenizer.path, out / name)
    desc = tokenizer.describe() | {"file": name} | extra
    (out / DESCRIPTION).write_text(json.dumps(desc, indent=2) + "\n", encoding="utf-8")
    return out / DESCRIPTION


def _training_lines(documents: Iterable[str], max_docs: int, max_bytes: int) -> Iterator[str]:
    """Non-blank lines of the first documents, within the sample bounds, long lines cut."""
    size = 0
    for n, doc in enumerate(documents):
        if n >= max_docs or size >= max_bytes:
            return
        size += len(doc)
        for line in doc.split("\n"):
            # SentencePiece drops sentences over max_sentence_length; cut at spaces instead.
            while len(line) > 4000:
                cut = line.rfind(" ", 0, 4000)
                cut = cut if cut > 0 else 4000
                yield line[:cut]
                line = line[cut:]
            if line.strip():
                yield line


def train_sentencepiece(
    documents: Iterable[str],
    out_file: str | os.PathLike,
    vocab_size: int,
    *,
    max_docs: int = 200_000,
    max_bytes: int = 20_000_000,
    byte_fallback: bool = True,
    eod_token: str = DEFAULT_EOD,
    threads: int = 1,
) -> SentencePieceTokenizer:
    """Train a SentencePiece BPE model on a bounded sample of documents.

    Args:
        documents: Training documents; only the first ``max_docs`` (and about ``max_bytes``
            characters) are read, so memory stays bounded for any corpus.
        out_file: Where to write the ``.model`` file.
        vocab_size: Vocabulary size, including 256 byte tokens (with byte fallback), ``<unk>``
            and the EOD token.
        max_docs: Sample bound in documents.
        max_bytes: Sample bound in characters.
        byte_fallback: Encode characters outside the vocabulary as UTF-8 byte tokens.
        eod_token: The end-of-document piece (SentencePiece's end-of-sentence id 1).
        threads: Training threads.

    Returns:
        The trained tokenizer.
    """
    import sentencepiece as spm

    model = io.BytesIO()
    lines = _training_lines(documents, max_docs, max_bytes)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines,
            model_writer=model,
            vocab_size=vocab_size,
            model_type="bpe",
            byte_fallback=byte_fallback,
            character_coverage=0.9995,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            max_sentence_length=1 << 14,
            unk_id=0,
            eos_id=1,
            bos_id=-1,
            pad_id=-1,
            eos_piece=eod_token,
            num_threads=threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise DataError(f"SentencePiece training failed with vocab_size={vocab_size}: {e}") from e
    tmp = Path(str(out_file) + ".tmp")
    tmp.write_bytes(model.getvalue())
    os.replace(tmp, out_file)
    return SentencePieceTokenizer(Path(out_file), eod_token)
