"""Document sources: local WikiText raw, .txt, .jsonl, .parquet files, or Hugging Face hub names.

A source resolves to one :class:`SplitSource` per split (``train``, ``validation``,
``test``), each a restartable stream of documents (str). Readers stream: memory holds one
line, one JSON record or one parquet batch at a time, never a whole file.

- WikiText raw (``.raw``, ``.tokens``): an article starts at a top-level heading line
  `` = Title = `` (not `` = = Section = = ``); the document is the article's lines verbatim,
  so joining the documents gives back the file.
- ``.txt``: documents separated by blank lines (``--txt-docs paragraph``), one per line
  (``line``) or one per file (``file``).
- ``.jsonl``: one JSON object per line, the text in ``--field`` (default ``text``).
- ``.parquet``: the string column ``--field``.
- A directory: its files of these kinds, assigned to splits by a name part (``train``;
  ``valid``/``validation``/``val``/``dev``; ``test``), e.g. ``wiki.valid.raw``; files
  without one are training data.
- Hub names (``wikitext`` = ``wikitext-103-raw-v1``, ``wikitext-2-raw-v1``, ``openwebtext``,
  or any ``owner/name``) stream through ``datasets``; without network they fail at once.

Bytes that are not UTF-8 fail with the file, line and byte offset (``errors="strict"``, the
default), or become U+FFFD with ``errors="replace"``; either way the choice is recorded.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from filtertron.data.errors import DataError, HubUnavailableError

SPLITS = ("train", "validation", "test")
SPLIT_WORDS = {
    "train": "train",
    "valid": "validation",
    "validation": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}
FORMATS = {
    ".raw": "wikitext",
    ".tokens": "wikitext",
    ".txt": "txt",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}
# Hub aliases -> (repository, config, text field, document layout).
HUB = {
    "wikitext": ("Salesforce/wikitext", "wikitext-103-raw-v1", "text", "wikitext"),
    "wikitext-103-raw-v1": ("Salesforce/wikitext", "wikitext-103-raw-v1", "text", "wikitext"),
    "wikitext-2-raw-v1": ("Salesforce/wikitext", "wikitext-2-raw-v1", "text", "wikitext"),
    "openwebtext": ("Skylion007/openwebtext", None, "text", "rows"),
}
MAX_DOCUMENT_BYTES = 1 << 28
LOCAL_HINT = """Without network, prepare from local files instead:
  WikiText-103: put wiki.train.raw, wiki.valid.raw and wiki.test.raw (wikitext-103-raw-v1)
    in a directory DIR, then: filtertron prepare --source DIR --output data/wikitext103
  OpenWebText or other text: --source FILE_OR_DIR holding .txt, .jsonl (--field NAME) or
    .parquet files
  A copy already in the datasets cache is used with HF_DATASETS_OFFLINE=1."""
_HEADING = re.compile(r" = [^=](?:.*[^=])? = ?")

Progress = Callable[[int], None]


@dataclass
class SplitSource:
    """One split of a source: a restartable document stream and its size for progress bars."""

    split: str
    name: str
    open: Callable[[Progress | None], Iterator[str]]  # progress gets input bytes consumed
    total_bytes: int | None = None


def is_heading(line: str) -> bool:
    """Whether a WikiText line is a top-level article heading `` = Title = ``."""
    return line.startswith(" = ") and _HEADING.fullmatch(line.rstrip("\r\n")) is not None


def wikitext_documents(lines: Iterable[str]) -> Iterator[str]:
    """Group WikiText lines into articles; blank lines before the first heading join it."""
    buf: list[str] = []
    has_text = False
    size = 0
    for line in lines:
        if has_text and line.startswith(" = ") and is_heading(line):
            yield "".join(buf)
            buf, has_text, size = [], False, 0
        buf.append(line)
        has_text = has_text or (line != "" and not line.isspace())
        size += len(line)
        if size > MAX_DOCUMENT_BYTES:  # memory stays bounded on files that are not WikiText
            raise DataError(
                f"no ' = Title = ' heading for {MAX_DOCUMENT_BYTES >> 20} MB: not WikiText "
                "articles? Choose another --format"
            )
    if has_text:
        yield "".join(buf)


def read_lines(
    path: Path, errors: str = "strict", progress: Progress | None = None
) -> Iterator[str]:
    """Decode a file line by line; invalid UTF-8 raises DataError naming line and byte."""
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8", errors)
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}:{lineno}: invalid UTF-8 at byte {offset + e.start} ({e.reason}); "
                    "fix the file or pass --encoding-errors replace"
                ) from None
            offset += len(raw)
            if progress:
                progress(len(raw))
            yield line


def _txt_documents(path: Path, mode: str, errors: str, progress: Progress | None) -> Iterator[str]:
    lines = read_lines(path, errors, progress)
    if mode == "line":
        yield from (line for line in lines if not line.isspace())
        return
    buf: list[str] = []
    size = 0
    for line in lines:
        if mode == "paragraph" and line.isspace():
            if buf:
                yield "".join(buf)
            buf, size = [], 0
            continue
        buf.append(line)
        size += len(line)
        if size > MAX_DOCUMENT_BYTES:
            raise DataError(
                f"{path}: a document exceeds {MAX_DOCUMENT_BYTES >> 20} MB; "
                "split it (--txt-docs paragraph or line)"
            )
    if buf:
        yield "".join(buf)


def _jsonl_documents(
    path: Path, field: str, errors: str, progress: Progress | None
) -> Iterator[str]:
    for lineno, line in enumerate(read_lines(path, errors, progress), 1):
        if line.isspace() or not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(
                f"{path}:{lineno}: no field {field!r} (has {keys}); choose one with --field"
            )
        if not isinstance(record[field], str):
            raise DataError(
                f"{path}:{lineno}: field {field!r} is {type(record[field]).__name__}, not a string"
            )
        yield record[field]


def _parquet_documents(path: Path, field: str, progress: Progress | None) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for unreadable files
        raise DataError(f"{path}: not a readable parquet file ({e})") from e
    if field not in pf.schema_arrow.names:
        raise DataError(
            f"{path}: no column {field!r} (has {pf.schema_arrow.names}); choose one with --field"
        )
    total, rows = path.stat().st_size, max(pf.metadata.num_rows, 1)
    for batch in pf.iter_batches(batch_size=256, columns=[field]):
        for value in batch.column(0).to_pylist():
            if not isinstance(value, str):
                raise DataError(
                    f"{path}: column {field!r} holds {type(value).__name__}, not strings"
                )
            yield value
        if progress:  # parquet is compressed: report the file's share of rows read
            progress(total * batch.num_rows // rows)


def file_documents(
    path: Path,
    fmt: str,
    field: str = "text",
    txt_docs: str = "paragraph",
    errors: str = "strict",
    progress: Progress | None = None,
) -> Iterator[str]:
    """Documents of one local file in format ``fmt`` (wikitext, txt, jsonl or parquet)."""
    if fmt == "wikitext":
        return wikitext_documents(read_lines(path, errors, progress))
    if fmt == "txt":
        return _txt_documents(path, txt_docs, errors, progress)
    if fmt == "jsonl":
        return _jsonl_documents(path, field, errors, progress)
    if fmt == "parquet":
        return _parquet_documents(path, field, progress)
    raise DataError(f"unknown format {fmt!r}; choose one of {sorted(set(FORMATS.values()))}")


def split_of(path: Path) -> str | None:
    """The split a file name names (``wiki.valid.raw`` -> validation), or None."""
    for part in re.split(r"[._\-]", path.name.lower()):
        if part in SPLIT_WORDS:
            return SPLIT_WORDS[part]
    return None


def local_splits(
    source: Path, fmt: str | None = None, split: str | None = None, **read: str
) -> dict[str, SplitSource]:
    """Split sources of a local file or directory (see the module docstring)."""
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and (fmt or p.suffix in FORMATS))
        if not files:
            raise DataError(f"{source}: no input files (expected {sorted(FORMATS)})")
    else:
        files = [source]
    by_split: dict[str, list[Path]] = {}
    for f in files:
        if fmt is None and f.suffix not in FORMATS:
            raise DataError(
                f"{f}: unknown file type {f.suffix!r}; expected one of "
                f"{sorted(FORMATS)} or pass --format"
            )
        by_split.setdefault(split or split_of(f) or "train", []).append(f)

    def opener(paths: list[Path]) -> Callable[[Progress | None], Iterator[str]]:
        def docs(progress: Progress | None = None) -> Iterator[str]:
            for p in paths:
                yield from file_documents(p, fmt or FORMATS[p.suffix], progress=progress, **read)

        return docs

    order = sorted(by_split, key=lambda s: (SPLITS + (s,)).index(s))
    return {
        s: SplitSource(
            s,
            ", ".join(str(p) for p in by_split[s]),
            opener(by_split[s]),
            sum(p.stat().st_size for p in by_split[s]),
        )
        for s in order
    }


def _check_hub(repo: str) -> None:
    """Fail fast when the hub is unreachable, instead of datasets' long retry loop."""
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return  # the user asks for the datasets cache
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        HfApi().dataset_info(repo, timeout=10)
    except RepositoryNotFoundError:
        raise DataError(f"{repo!r} is neither a local path nor a dataset on the hub") from None
    except Exception as e:  # connection errors come from httpx or requests
        raise HubUnavailableError(
            f"cannot reach the Hugging Face hub for {repo!r} ({type(e).__name__}: {e}).\n"
            + LOCAL_HINT
        ) from None


def hub_splits(
    name: str, field: str | None = None, config: str | None = None
) -> dict[str, SplitSource]:
    """Split sources of a hub dataset, streamed with ``datasets.load_dataset``."""
    repo, default_config, default_field, layout = HUB.get(name, (name, None, "text", "rows"))
    config, field = config or default_config, field or default_field
    _check_hub(repo)
    import datasets

    try:
        names = datasets.get_dataset_split_names(repo, config)
    except Exception as e:  # offline without a cached copy, or an unknown config
        raise HubUnavailableError(f"cannot load {repo!r} ({config}): {e}\n" + LOCAL_HINT) from e

    def opener(hub_split: str) -> Callable[[Progress | None], Iterator[str]]:
        def docs(progress: Progress | None = None) -> Iterator[str]:
            rows = datasets.load_dataset(repo, config, split=hub_split, streaming=True)

            def texts() -> Iterator[str]:
                for row in rows:
                    if field not in row:
                        raise DataError(f"{repo}: no field {field!r} (has {sorted(row)})")
                    if progress:
                        progress(len(row[field]))
                    yield row[field]

            if layout == "wikitext":  # rows are lines; "" rows are blank lines
                return wikitext_documents(t if t.endswith("\n") else t + "\n" for t in texts())
            return texts()

        return docs

    out = {}
    for hub_split in names:
        split = SPLIT_WORDS.get(hub_split, hub_split)
        out[split] = SplitSource(
            split,
            f"hf://{repo}" + (f"/{config}" if config else "") + f":{hub_split}",
            opener(hub_split),
        )
    return out


def resolve_source(
    source: str,
    fmt: str | None = None,
    split: str | None = None,
    field: str | None = None,
    hub_config: str | None = None,
    txt_docs: str = "paragraph",
    errors: str = "strict",
) -> dict[str, SplitSource]:
    """Splits of a local path or hub name.

    Args:
        source: A file, a directory, or a hub name (see the module docstring).
        fmt: Force the local file format instead of guessing it from the suffix.
        split: Put every local file into this split.
        field: The text field of .jsonl / .parquet / hub rows (default ``text``).
        hub_config: The hub dataset's configuration name.
        txt_docs: How .txt files are cut into documents: paragraph, line or file.
        errors: "strict" (fail) or "replace" for bytes that are not UTF-8.

    Returns:
        Mapping split name -> :class:`SplitSource`.
    """
    path = Path(source).expanduser()
    if path.exists():
        return local_splits(
            path, fmt, split, field=field or "text", txt_docs=txt_docs, errors=errors
        )
    looks_local = source.startswith((".", "/", "~")) or Path(source).suffix in FORMATS
    if looks_local or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", source):
        raise DataError(f"{source}: no such file or directory")
    return hub_splits(source, field, hub_config)
