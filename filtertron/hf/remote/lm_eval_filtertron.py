"""Helpers of an lm-evaluation-harness task written by ``filtertron export DATA --to lm-eval``.

Copied next to the task's YAML and ``documents.jsonl``; it imports nothing from filtertron.
Each record of ``documents.jsonl`` is one rolling log-likelihood request: ``text`` plus the
word and byte counts filtertron counts for it (whitespace words and UTF-8 bytes of the
original documents), so word perplexity = exp(-sum loglikelihood / sum words) over the
requests, the same quotient ``filtertron eval`` forms.
"""

from __future__ import annotations

import json
from pathlib import Path

DOCUMENTS = Path(__file__).with_name("documents.jsonl")


def load_documents(**kwargs):
    """The task's dataset: a DatasetDict with one split, ``test`` (read from local files)."""
    import datasets

    with DOCUMENTS.open(encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(records)})


def doc_to_target(doc: dict) -> str:
    """The text scored, verbatim."""
    return doc["text"]


def process_results(doc: dict, results: list) -> dict:
    """Per-request (loglikelihood, count) pairs for lm-eval's weighted_perplexity and
    bits_per_byte aggregations."""
    (loglikelihood,) = results
    return {
        "word_perplexity": (loglikelihood, doc["words"]),
        "byte_perplexity": (loglikelihood, doc["bytes"]),
        "bits_per_byte": (loglikelihood, doc["bytes"]),
    }
