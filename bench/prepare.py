"""Benchmark of ``filtertron prepare``'s tokenization: MB/s and peak memory.

    python bench/prepare.py [--mb 100] [--workers 1,2] [--vocab-size 4096]

Generates ``--mb`` MB of sample-corpus text (WikiText raw format), trains a SentencePiece BPE
tokenizer on its first few MB, then times, each in a fresh process on the same file:

- ``plain loop``: one process, ``for doc in documents: encode(doc) + EOD -> .bin`` (no
  index, no counts): the baseline.
- ``prepare -w N``: :func:`filtertron.data.prepare.prepare` with N worker processes, reading,
  encoding, counting words and bytes, writing .bin/.idx/.json.

MB/s is input megabytes (10^6 bytes) per wall-clock second; MB/cpu-s per CPU second of the
whole process tree (what each process achieves when it has a core to itself). Peak memory is
the largest proportional set size (PSS, so pages shared after fork count once) summed over
the process and its workers, sampled every 50 ms. Ratios are within this run. The cores may be
shared with other jobs, which makes the scaling numbers noisy; the load average is printed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from filtertron.data.prepare import prepare  # noqa: E402
from filtertron.data.sample import generate  # noqa: E402
from filtertron.data.sources import read_lines, wikitext_documents  # noqa: E402
from filtertron.data.tokenizer import load_tokenizer, train_sentencepiece  # noqa: E402


def _pss(pid: int) -> int:
    """PSS in bytes of ``pid`` and its descendants (0 for processes that are gone)."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                total += sum(_pss(int(c)) for c in f.read().split())
    except (OSError, StopIteration):
        pass
    return total


def measured(fn: Callable[..., None], *args: object) -> tuple[float, float, int]:
    """Run ``fn(*args)`` in a forked process; return (seconds, CPU seconds, peak PSS).

    CPU seconds are user + system time of the process and its workers (reaped children
    accrue to RUSAGE_CHILDREN), so MB per CPU second does not depend on other jobs' load.
    """
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=fn, args=args)
    peak = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _pss(proc.pid))
            time.sleep(0.05)

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc.start()
    watcher = threading.Thread(target=watch)
    watcher.start()
    proc.join()
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    done.set()
    watcher.join()
    if proc.exitcode != 0:
        raise SystemExit(f"{fn.__name__}{args} failed with exit code {proc.exitcode}")
    return seconds, cpu, peak[0]


def plain_loop(raw: Path, tok_path: Path, out: Path) -> None:
    """The baseline: a single-process loop over documents with the same tokenizer."""
    tok = load_tokenizer(tok_path)
    with open(out, "wb") as f:
        for doc in wikitext_documents(read_lines(raw)):
            ids = tok.encode(doc)
            ids.append(tok.eod_id)
            f.write(np.array(ids, dtype=np.uint16).tobytes())


def filtertron_prepare(raw: Path, tok_path: Path, out: Path, workers: int) -> None:
    prepare(str(raw), out, tokenizer=str(tok_path), workers=workers, no_progress=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Benchmark filtertron prepare's tokenization.")
    p.add_argument("--mb", type=float, default=100.0, help="MB of generated text")
    p.add_argument("--workers", default="1,2", help="worker counts to time")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        tmp_dir = Path(tmp)
        raw = tmp_dir / "wiki.train.raw"
        t = time.perf_counter()
        with open(raw, "w", encoding="utf-8") as f:
            f.writelines(generate(args.seed, "bench", int(args.mb * 1e6)))
        mb = raw.stat().st_size / 1e6
        print(
            f"input: {mb:.1f} MB of generated WikiText-format text "
            f"({time.perf_counter() - t:.1f} s to generate)"
        )
        t = time.perf_counter()
        docs = wikitext_documents(read_lines(raw))
        tok = train_sentencepiece(
            docs, tmp_dir / "bench.model", args.vocab_size, max_bytes=5_000_000
        )
        print(
            f"tokenizer: SentencePiece BPE, vocab {tok.vocab_size}, trained on 5 MB "
            f"({time.perf_counter() - t:.1f} s)"
        )
        print(
            f"cores: {os.cpu_count()}, load average before: "
            f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )

        rows = [
            ("plain loop (1 process)", *measured(plain_loop, raw, tok.path, tmp_dir / "plain.bin"))
        ]
        for w in workers:
            out = tmp_dir / f"out-w{w}"
            rows.append(
                (f"prepare --workers {w}", *measured(filtertron_prepare, raw, tok.path, out, w))
            )
        same = all(
            (tmp_dir / f"out-w{w}" / "train.bin").read_bytes()
            == (tmp_dir / "plain.bin").read_bytes()
            for w in workers
        )

    base = mb / rows[0][1]
    one = next((mb / r[1] for r in rows if r[0].endswith(" 1")), None)
    print(
        f"\n{'run':<24}{'seconds':>8}{'MB/s':>7}{'MB/s/worker':>12}{'vs plain':>9}"
        f"{'vs 1 worker':>12}{'MB/cpu-s':>9}{'peak MB':>8}"
    )
    for name, seconds, cpu, peak in rows:
        rate = mb / seconds
        n = int(name.split()[-1]) if name.startswith("prepare") else 1
        vs_one = f"{rate / one:.2f}x" if one and name.startswith("prepare") else "-"
        print(
            f"{name:<24}{seconds:>8.1f}{rate:>7.2f}{rate / max(n, 1):>12.2f}{rate / base:>8.2f}x"
            f"{vs_one:>12}{mb / cpu:>9.2f}{peak / 1e6:>8.0f}"
        )
    print(f"\n.bin identical to the plain loop's for every worker count: {same}")
    print(
        f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
        f"(other jobs on these {os.cpu_count()} cores make the scaling noisy)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
