"""An lm-evaluation-harness task over a prepared split: rolling log-likelihood, local files.

    filtertron export DATA --to lm-eval TASKDIR [--split test] [--max-tokens N] [--per-document]
    lm_eval --model hf --model_args pretrained=MODEL,trust_remote_code=True,max_length=L \
            --tasks NAME --include_path TASKDIR

TASKDIR gets ``NAME.yaml``, ``documents.jsonl``, ``lm_eval_filtertron.py`` (the task's helper,
from :mod:`filtertron.hf.remote`) and a README. Nothing is read from the hub.

Window conventions. ``filtertron eval --lengths L --stride L`` scores the span x_0 .. x_{N-1}
(documents each followed by EOD) in disjoint windows of L inputs; x_0 is context only, every
other token (EOD included) is scored once. lm-eval's rolling log-likelihood (``--model hf``,
``max_length=L``) scores every token of a request's text in disjoint windows of L, the first
token conditioned on a prefix token (the tokenizer's EOD) and the last window given a full L
of context. The default task therefore holds one request: the span from x_1 on, as text with
the EOD token written ``<|endoftext|>`` between documents (the exported tokenizer reads it as
EOD). Both then score the same N - 1 targets in the same windows; what differs is that
lm-eval's first window sees EOD where filtertron's sees x_0, and that lm-eval's last window
sees up to L - 1 more tokens of context. (If x_1.. does not re-encode to the same ids, the
request starts at x_0 instead, lm-eval scores x_0 too and the windows shift by one token.)

``--per-document`` writes one request per document instead, without the EOD token: lm-eval's
usual convention (as its wikitext task), where documents do not see each other.
Word and byte counts are filtertron's (:func:`filtertron.eval.perplexity.load_span`).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from filtertron.data import DataError
from filtertron.hf.staging import check_outdir, staged

log = logging.getLogger("filtertron")
HELPER = "lm_eval_filtertron.py"
YAML = """task: {name}
custom_dataset: !function lm_eval_filtertron.load_documents
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: !function lm_eval_filtertron.doc_to_target
process_results: !function lm_eval_filtertron.process_results
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
metadata:
  version: 1.0
"""


@dataclass(frozen=True)
class TaskReport:
    out: Path
    name: str
    documents: int
    words: int
    requests: int
    aligned: bool  # the request starts at x_1 (windows line up with filtertron eval's)


def _documents(tokens: np.ndarray, eod: int) -> list[list[int]]:
    """Split a span of whole documents (each ending in EOD) into documents without EOD."""
    ends = np.flatnonzero(tokens == eod)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokens[s:e].tolist() for s, e in zip(starts, ends)]


def _text(tok, ids: list[int], where: str) -> str:
    """Text of ``ids`` that encodes back to them; raises DataError if there is none."""
    text = tok.decode(ids)
    if tok.eod_token in text:
        raise DataError(
            f"{where} contains the literal {tok.eod_token!r}, which the exported "
            "tokenizer reads as the end-of-document token; use --per-document"
        )
    if tok.encode(text) != list(ids):
        raise DataError(f"{where}: its text does not encode back to the same token ids")
    return text


def task_records(
    dataset_dir: str | Path, split: str, max_tokens: int | None, per_document: bool
) -> tuple[list[dict], object, bool]:
    """The task's requests, the span they come from and whether they align (see above)."""
    from filtertron.data import load_tokenizer
    from filtertron.eval.perplexity import load_span

    span = load_span(dataset_dir, split, max_tokens)
    tok = load_tokenizer(dataset_dir)
    docs = _documents(span.tokens, tok.eod_id)
    if per_document:
        records = []
        for i, d in enumerate(docs):
            text = _text(tok, d, f"{split} document {i}")
            records.append(
                {
                    "text": text,
                    "words": len(text.split()),
                    "bytes": len(text.encode("utf-8")),
                    "tokens": len(d),
                }
            )
        return records, span, False
    texts = [_text(tok, d, f"{split} document {i}") for i, d in enumerate(docs)]
    aligned = True
    try:
        texts[0] = _text(tok, docs[0][1:], f"{split} document 0 after its first token")
    except DataError as e:
        log.warning(
            "%s; the lm-eval request starts at the span's first token instead, so "
            "its windows are shifted by one token from filtertron eval's",
            e,
        )
        aligned = False
    text = "".join(t + tok.eod_token for t in texts)
    record = {
        "text": text,
        "words": span.words,
        "bytes": span.bytes,
        "tokens": span.num_targets + (0 if aligned else 1),
        "documents": len(docs),
    }
    return [record], span, aligned


def write_task(
    dataset_dir: str | Path,
    out: str | Path,
    split: str = "test",
    max_tokens: int | None = None,
    name: str | None = None,
    per_document: bool = False,
    force: bool = False,
) -> TaskReport:
    """Write an lm-eval task over ``split`` of a prepared dataset into ``out``.

    Args:
        dataset_dir: A directory written by ``filtertron prepare``.
        out: Task directory (absent or empty unless ``force``).
        split: The split to score.
        max_tokens: Only the longest prefix of whole documents within this many tokens.
        name: Task name (letters, digits, underscores); default filtertron_<dataset>_<split>.
        per_document: One request per document (lm-eval's convention) instead of the span.
        force: Replace a non-empty ``out``.

    Returns:
        What was written.

    Raises:
        DataError, ValueError: bad input, before anything is written.
    """
    dataset_dir, out = Path(dataset_dir), Path(out)
    name = name or re.sub(r"\W", "_", f"filtertron_{dataset_dir.resolve().name}_{split}")
    if not re.fullmatch(r"[A-Za-z_]\w*", name):
        raise ValueError(f"--task-name {name!r}: use letters, digits and underscores")
    check_outdir(out, force, [dataset_dir])
    records, span, aligned = task_records(dataset_dir, split, max_tokens, per_document)
    mode = "per-document" if per_document else ("span from x_1" if aligned else "span from x_0")
    with staged(out) as tmp:
        (tmp / f"{name}.yaml").write_text(YAML.format(name=name))
        with (tmp / "documents.jsonl").open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        shutil.copyfile(Path(__file__).parent / "remote" / HELPER, tmp / HELPER)
        (tmp / "README.md").write_text(
            f"# lm-eval task `{name}`\n\n{span.documents} documents of split `{split}` of "
            f"`{dataset_dir.resolve()}` ({span.words} words, {span.bytes} bytes, "
            f"{span.num_targets} scored tokens in filtertron eval); requests: {mode}.\n\n"
            f"    lm_eval --model hf --model_args pretrained=MODEL,trust_remote_code=True,"
            f"max_length=L --tasks {name} --include_path {out.resolve()}\n\n"
            f"compares with `filtertron eval CHECKPOINT --data {dataset_dir.resolve()} "
            f"--split {split} --lengths L --stride L"
            + (f" --max-tokens {max_tokens}" if max_tokens else "")
            + "`; the window "
            "conventions are in filtertron/hf/lm_eval_task.py.\n"
        )
    return TaskReport(out, name, span.documents, span.words, len(records), aligned)
