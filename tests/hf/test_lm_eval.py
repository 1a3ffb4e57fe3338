"""lm-evaluation-harness on an exported model agrees with ``filtertron eval``.

The task (``filtertron export DATA --to lm-eval``) holds the test split from its second token
on, documents separated by the EOD token; see :mod:`filtertron.hf.lm_eval_task` for the
window conventions. Both sides use disjoint windows of L tokens:
``filtertron eval --lengths L`` (stride L) and lm-eval's rolling log-likelihood with
``max_length=L``.

- The recipe (L = the training length, 32): word perplexities within 0.5%. What differs is
  lm-eval's first window (it conditions on EOD where filtertron sees the span's first token)
  and its last window (it sees a full L of context).
- With both differences removed (``prefix_token_id`` = the span's first token, and an L that
  divides the number of scored tokens, so the last windows coincide), they agree to 1e-6.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from filtertron.cli import main
from filtertron.data import load_tokenizer
from filtertron.eval.perplexity import load_span
from filtertron.hf.lm_eval_task import write_task
from tests.train.conftest import launcher_env

L = 32  # the trained model's seq_len


@pytest.fixture(scope="module")
def task(dataset, tmp_path_factory):
    return write_task(dataset, tmp_path_factory.mktemp("task") / "task", "test")


@pytest.fixture(scope="module")
def task_manager(task):
    """lm-eval's task index of the task directory only (indexing its built-in tasks takes
    about 10 s here)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(task.out), include_defaults=False)


def _filtertron_word_ppl(run, dataset, length: int, out) -> float:
    args = [
        "eval",
        str(run),
        "--data",
        str(dataset),
        "--split",
        "test",
        "--lengths",
        str(length),
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    (row,) = [
        r for r in json.loads((out / "results.json").read_text()) if r["kind"] == "perplexity"
    ]
    assert row["stride"] == row["length"] == length
    return row["word_ppl"]


def _lm_eval_word_ppl(hf_dir, task, task_manager, model_args: str) -> float:
    import lm_eval

    args = f"pretrained={hf_dir},trust_remote_code=True,dtype=float32,device=cpu{model_args}"
    res = lm_eval.simple_evaluate(
        model="hf", model_args=args, tasks=[task.name], batch_size=32, task_manager=task_manager
    )
    return res["results"][task.name]["word_perplexity,none"]


def test_task_is_the_span_from_its_second_token(task, dataset, trained_hf):
    from transformers import AutoTokenizer

    span = load_span(dataset, "test")
    (record,) = [json.loads(line) for line in (task.out / "documents.jsonl").open()]
    assert task.aligned and task.requests == 1 and task.documents == span.documents > 1
    assert record["words"] == span.words and record["bytes"] == span.bytes
    hf = AutoTokenizer.from_pretrained(trained_hf, trust_remote_code=True)
    assert hf.encode(record["text"]) == span.tokens[1:].tolist()  # EODs included
    assert (task.out / f"{task.name}.yaml").is_file()
    assert (task.out / "lm_eval_filtertron.py").is_file()


def test_per_document_task(dataset, tmp_path):
    t = write_task(dataset, tmp_path / "t", "test", per_document=True, name="docs")
    records = [json.loads(line) for line in (t.out / "documents.jsonl").open()]
    span = load_span(dataset, "test")
    tok = load_tokenizer(dataset)
    assert len(records) == span.documents and sum(r["words"] for r in records) == span.words
    assert sum(len(tok.encode(r["text"])) + 1 for r in records) == len(span.tokens)


def test_lm_eval_word_perplexity_matches_filtertron_eval(
    trained, trained_hf, task, task_manager, dataset, tmp_path
):
    ours = _filtertron_word_ppl(trained["run"], dataset, L, tmp_path / "eval")
    theirs = _lm_eval_word_ppl(trained_hf, task, task_manager, f",max_length={L}")
    print(f"word perplexity L={L}: filtertron eval {ours:.4f}, lm-eval {theirs:.4f}")
    assert theirs == pytest.approx(ours, rel=5e-3)
    assert theirs != pytest.approx(ours, rel=1e-9)  # the two windows that differ do count


def test_aligned_windows_agree_exactly(trained, trained_hf, task, task_manager, dataset, tmp_path):
    span = load_span(dataset, "test")
    length = next(n for n in range(L, 4 * L) if span.num_targets % n == 0)  # ALiBi extrapolates
    ours = _filtertron_word_ppl(trained["run"], dataset, length, tmp_path / "eval")
    extra = f",max_length={length},prefix_token_id={int(span.tokens[0])}"
    theirs = _lm_eval_word_ppl(trained_hf, task, task_manager, extra)
    print(f"word perplexity L={length}, aligned: filtertron eval {ours:.6f}, lm-eval {theirs:.6f}")
    assert theirs == pytest.approx(ours, rel=1e-6)


@pytest.mark.slow
def test_lm_eval_command_line_recipe(trained, trained_hf, task, dataset, tmp_path):
    """The documented recipe, as a user types it."""
    out = tmp_path / "lm_eval_out"
    cmd = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={trained_hf},trust_remote_code=True,max_length={L},dtype=float32",
        "--device",
        "cpu",
        "--tasks",
        task.name,
        "--include_path",
        str(task.out),
        "--batch_size",
        "32",
        "--output_path",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=launcher_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = list(out.rglob("results_*.json"))
    theirs = json.loads(result.read_text())["results"][task.name]["word_perplexity,none"]
    ours = _filtertron_word_ppl(trained["run"], dataset, L, tmp_path / "eval")
    assert theirs == pytest.approx(ours, rel=5e-3)
