"""filtertron tokenizers as Hugging Face tokenizers: ``tokenizer.json``, ``tokenizer_config.json``.

A SentencePiece model is converted with transformers' ``SpmConverter``, which follows the
model's own normalizer settings (filtertron's: identity normalization, no dummy prefix, no
whitespace collapsing, byte fallback) and ranks BPE merges by piece score, so it encodes as
``SentencePieceProcessor.encode``. A Hugging Face ``tokenizer.json`` is copied, minus any
post-processor that would add special tokens (filtertron's ids never contain them).

The end-of-document (EOD) token becomes the ``eos_token``. One difference remains, by the
Hugging Face convention every GPT-2 tokenizer follows: the literal text ``<|endoftext|>``
encodes to the EOD id (a filtertron SentencePiece model keeps it as text). Load with
``split_special_tokens=True`` to keep it as text too.
"""

from __future__ import annotations

import json
from pathlib import Path

from filtertron.data.tokenizer import Tokenizer, file_hash

HF_FILE = "tokenizer.json"


def backend_tokenizer(tok: Tokenizer):
    """The ``tokenizers.Tokenizer`` that encodes as ``tok`` does."""
    from tokenizers import Tokenizer as RustTokenizer

    if tok.kind == "sentencepiece":
        from transformers.convert_slow_tokenizer import SentencePieceExtractor, SpmConverter

        proto = SentencePieceExtractor(str(tok.path)).proto
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
        return SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    backend = RustTokenizer.from_file(str(tok.path))
    probe = "filtertron probe text"
    if backend.encode(probe).ids != backend.encode(probe, add_special_tokens=False).ids:
        backend.post_processor = None
    return backend


def hf_tokenizer(tok: Tokenizer, model_max_length: int):
    """A ``PreTrainedTokenizerFast`` equivalent to ``tok`` (EOD as ``eos_token``).

    Args:
        tok: A filtertron tokenizer (SentencePiece or Hugging Face).
        model_max_length: The longest input the model takes (``max_position_embeddings``).
    """
    from transformers import PreTrainedTokenizerFast

    backend = backend_tokenizer(tok)
    unk = None
    if tok.kind == "sentencepiece":
        unk = tok.sp.id_to_piece(tok.sp.unk_id()) if tok.sp.unk_id() >= 0 else None
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=tok.eod_token,
        unk_token=unk,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def save_hf_tokenizer(tok: Tokenizer, out: Path, model_max_length: int) -> dict:
    """Write the Hugging Face tokenizer files of ``tok`` into ``out``.

    Returns:
        A description: the source tokenizer's kind and hash, the exported file's hash and the
        EOD id (recorded in ``filtertron_export.json``, so ``filtertron import`` can tell that
        the files still encode as the source did).
    """
    hf = hf_tokenizer(tok, model_max_length)
    hf.save_pretrained(str(out))
    cfg_file = out / "tokenizer_config.json"
    # The portable class name (an alias of transformers 5's TokenizersBackend).
    data = json.loads(cfg_file.read_text())
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_file.write_text(json.dumps(data, indent=2) + "\n")
    return {
        "source_kind": tok.kind,
        "source_hash": tok.hash,
        "exported_hash": file_hash(out / HF_FILE),
        "eod_id": tok.eod_id,
        "eod_token": tok.eod_token,
    }


def mismatches(hf, tok: Tokenizer, texts: list[str]) -> list[int]:
    """Indices of ``texts`` that the Hugging Face tokenizer ``hf`` encodes differently."""
    return [
        i for i, t in enumerate(texts) if hf.encode(t, add_special_tokens=False) != tok.encode(t)
    ]
