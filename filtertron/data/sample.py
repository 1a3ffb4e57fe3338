"""Seeded generator of filtertron's sample corpus, in WikiText raw format.

The corpus is synthetic encyclopedia articles (towns, rivers, species, musicians, ships,
battles) written from the templates in :mod:`filtertron.data.sample_grammar`: license-clean,
a few thousand distinct words with Zipf-like frequencies, topic-coherent articles (an
article's entities recur through it), and the WikiText layout::

     = Title =
     <blank>
     paragraph ...
     <blank>
     = = Section = =
     <blank>
     = = = Subsection = = =

Every line starts with a space as in ``wiki.train.raw``; blank lines are ``" \\n"``.
Output is a pure function of the seed: the word pools come from the seed, each split's
articles from (seed, split), so splits share a vocabulary but not articles.

    python -m filtertron.data.sample --out corpus/sample
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from filtertron.data import sample_grammar as G

SPLIT_FILES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}
DEFAULT_SIZES_MB = {"train": 3.0, "validation": 0.25, "test": 0.25}
DEFAULT_SEED = 1234

_TOKEN = re.compile(r"\{(\w+)\}|[<>|\[\]]|[^{}<>|\[\]]+")


def _parse(template: str) -> list:
    """Compile a template into parts: str, ("slot", name), ("alt", [parts...]), ("opt", parts)."""
    groups: list[list] = [[]]  # open groups, innermost last; a "<" group lists alternatives
    kinds: list[str] = [""]

    def current() -> list:
        return groups[-1][-1] if kinds[-1] == "<" else groups[-1]

    for m in _TOKEN.finditer(template):
        tok = m.group(0)
        if m.group(1):
            current().append(("slot", m.group(1)))
        elif tok in "<[":
            kinds.append(tok)
            groups.append([[]] if tok == "<" else [])
        elif tok == "|" and kinds[-1] == "<":
            groups[-1].append([])
        elif tok in ">]" and kinds[-1] == {">": "<", "]": "["}[tok]:
            done, kind = groups.pop(), kinds.pop()
            current().append(("alt" if kind == "<" else "opt", done))
        elif tok in "|>]":
            raise ValueError(f"unbalanced template: {template!r}")
        else:
            current().append(tok)
    if len(kinds) > 1:
        raise ValueError(f"unbalanced template: {template!r}")
    return groups[0]


def _zipf(pool: list[str], s: float = 1.0) -> tuple[list[str], list[float]]:
    """Pool with cumulative Zipf weights: rank r has weight 1 / (r + 2)^s."""
    return pool, list(itertools.accumulate(1.0 / (r + 2) ** s for r in range(len(pool))))


class Lexicon:
    """Word pools and slot generators derived from one seed."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(f"lexicon-{seed}")
        seen: set[str] = set()

        def names(n: int, endings: list[str] | None = None, syllables: tuple = (1, 2)) -> list:
            out: list[str] = []
            while len(out) < n:
                k = rng.randint(*syllables)
                w = "".join(rng.choice(G.ONSETS) + rng.choice(G.VOWELS) for _ in range(k))
                w += rng.choice(endings) if endings else rng.choice(G.CODAS)
                w = w.capitalize()
                if len(w) > 3 and w not in seen:
                    seen.add(w)
                    out.append(w)
            return out

        self.pools = {
            "place": _zipf(names(1500, G.PLACE_ENDINGS)),
            "region": _zipf(names(60, G.REGION_ENDINGS), 0.7),
            "country": _zipf(names(24, G.REGION_ENDINGS), 0.5),
            "given": _zipf(names(300)),
            "surname": _zipf(names(800, syllables=(1, 3))),
            "name": _zipf(names(1500)),
            "genus": _zipf(names(300, G.GENUS_ENDINGS)),
        }
        for key, words in G.WORDS.items():
            self.pools[key] = _zipf(words)
        names_ = self.pools["name"][0]
        self.pools["war"] = _zipf([f"{n} War" for n in names_[:40]])
        self.pools["band"] = _zipf(
            [
                f"{n} {rng.choice(['Brothers', 'Quartet', 'Collective', 'Band', 'Union', 'Club'])}"
                for n in names_[40:240]
            ]
        )
        self.pools["label"] = _zipf([f"{n} Records" for n in names_[240:280]])
        self.pools["owner"] = _zipf(
            [
                f"{n} {rng.choice(['Line', 'Steamship Company', 'Shipping Company', 'Navy'])}"
                for n in names_[280:340]
            ]
        )
        self.pools["yard"] = _zipf([f"{p} Shipyard" for p in self.pools["place"][0][:40]])
        self.pools["family"] = _zipf(
            [g[:-2] + G.FAMILY_ENDING for g in self.pools["genus"][0][:80]]
        )
        albums = [
            f"{c.capitalize()} {n}"
            for c, n in zip(
                rng.choices(G.WORDS["colour"], k=300), rng.choices(names_, k=300), strict=True
            )
        ]
        self.pools["album"] = _zipf(albums)
        self.generators: dict[str, Callable[[random.Random], str]] = {
            "num": lambda r: str(r.randint(2, 99)),
            "num3": lambda r: str(r.randint(100, 999)),
            "year": lambda r: str(r.randint(1700, 2015)),
            "day": lambda r: str(r.randint(1, 28)),
            "bignum": lambda r: f"{r.randint(1, 99)} @,@ {r.randint(0, 999):03d}",
            "dec": lambda r: f"{r.randint(1, 99)} @.@ {r.randint(1, 9)}",
            "person": lambda r: f"{self.draw(r, 'given')} {self.draw(r, 'surname')}",
            "river": lambda r: f"{self.draw(r, 'name')} River",
        }

    def draw(self, rng: random.Random, key: str) -> str:
        """Draw one value of slot ``key``."""
        gen = self.generators.get(key)
        if gen is not None:
            return gen(rng)
        if key not in self.pools:
            raise KeyError(f"sample grammar uses unknown slot {{{key}}}")
        pool, cum = self.pools[key]
        return rng.choices(pool, cum_weights=cum)[0]


class ArticleWriter:
    """Renders articles of the grammar's kinds with one :class:`Lexicon`."""

    def __init__(self, lexicon: Lexicon) -> None:
        self.lex = lexicon
        self.kinds = {}
        for name, kind in G.KINDS.items():
            self.kinds[name] = {
                "title": _parse(kind["title"]),
                "context": [slot.split("=") for slot in kind["context"].split()],
                "derived": [(k, _parse(t)) for k, t in kind.get("derived", {}).items()],
                "intro": [_parse(t) for t in G.lines(kind["intro"])],
                "sections": [
                    (heading, [_parse(t) for t in G.lines(block)], subs)
                    for heading, subs, block in kind["sections"]
                ],
            }
        self.kind_names = list(G.KIND_WEIGHTS)
        self.kind_cum = list(itertools.accumulate(G.KIND_WEIGHTS.values()))

    def _render(self, parts: list, rng: random.Random, ctx: dict[str, str], out: list) -> None:
        for p in parts:
            if isinstance(p, str):
                out.append(p)
            elif p[0] == "slot":
                out.append(ctx[p[1]] if p[1] in ctx else self.lex.draw(rng, p[1]))
            elif p[0] == "alt":
                self._render(rng.choice(p[1]), rng, ctx, out)
            elif rng.random() < 0.5:  # ("opt", parts)
                self._render(p[1], rng, ctx, out)

    def sentence(self, parts: list, rng: random.Random, ctx: dict[str, str]) -> str:
        out: list[str] = []
        self._render(parts, rng, ctx, out)
        return " ".join("".join(out).split())  # empty alternatives leave double spaces

    def article(self, rng: random.Random) -> list[str]:
        """One article as WikiText raw lines (each ending in a newline)."""
        kind = self.kinds[rng.choices(self.kind_names, cum_weights=self.kind_cum)[0]]
        ctx: dict[str, str] = {}
        for slot, gen in kind["context"]:
            if gen == "binomial":
                epithet, meaning = rng.choice(G.EPITHETS)
                ctx[slot] = f"{self.lex.draw(rng, 'genus')} {epithet}"
                ctx["meaning"] = meaning
            else:
                ctx[slot] = self.lex.draw(rng, gen)
        for slot, template in kind["derived"]:
            ctx[slot] = self.sentence(template, rng, ctx)
        lines = [f" = {self.sentence(kind['title'], rng, ctx)} = \n", " \n"]

        def paragraph(templates: list) -> None:
            text = " ".join(self.sentence(t, rng, ctx) for t in templates)
            lines.extend([f" {text} \n", " \n"])

        paragraph([t for i, t in enumerate(kind["intro"]) if i == 0 or rng.random() < 0.8])
        for i, (heading, templates, subs) in enumerate(kind["sections"]):
            if i > 0 and rng.random() < 0.15:
                continue
            order = rng.sample(templates, len(templates))
            lines.extend([f" = = {heading} = = \n", " \n"])
            if subs and len(order) >= 4 and rng.random() < 0.5:
                cut = len(order) // 2
                for sub, chunk in zip(subs[:2], (order[:cut], order[cut:]), strict=False):
                    lines.extend([f" = = = {sub} = = = \n", " \n"])
                    paragraph(chunk)
                continue
            while order:
                k = rng.randint(2, 4)
                paragraph(order[:k])
                order = order[k:]
        return lines


def generate(
    seed: int = DEFAULT_SEED,
    split: str = "train",
    max_bytes: int = 1 << 20,
) -> Iterator[str]:
    """Yield the lines of one split until it holds at least ``max_bytes`` UTF-8 bytes.

    Args:
        seed: Corpus seed; pools depend on it only, articles on (seed, split).
        split: Split name; different splits get different articles.
        max_bytes: Stop after the article that crosses this size.

    Returns:
        An iterator of lines, each ending in a newline; the first is a blank line, as in
        WikiText's raw files.
    """
    writer = ArticleWriter(Lexicon(seed))
    rng = random.Random(f"articles-{seed}-{split}")
    yield " \n"
    size = 2
    while size < max_bytes:
        for line in writer.article(rng):
            size += len(line.encode("utf-8"))
            yield line


def write_corpus(
    out_dir: str | os.PathLike, seed: int = DEFAULT_SEED, sizes_mb: dict[str, float] | None = None
) -> dict[str, Path]:
    """Write wiki.{train,valid,test}.raw into ``out_dir`` (each via a temporary name).

    Args:
        out_dir: Directory to create or fill.
        seed: Corpus seed.
        sizes_mb: Target size per split in MB (10^6 bytes); defaults to DEFAULT_SIZES_MB.

    Returns:
        Mapping split -> written path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, mb in (sizes_mb or DEFAULT_SIZES_MB).items():
        path = out / SPLIT_FILES[split]
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                f.writelines(generate(seed, split, int(mb * 1e6)))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)
        written[split] = path
    return written


def main(argv: list[str] | None = None) -> int:
    """Command line: python -m filtertron.data.sample --out DIR [--seed N] [--train-mb X]."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--train-mb", type=float, default=DEFAULT_SIZES_MB["train"])
    p.add_argument(
        "--eval-mb",
        type=float,
        default=DEFAULT_SIZES_MB["validation"],
        help="size of the validation and of the test split",
    )
    args = p.parse_args(argv)
    sizes = {"train": args.train_mb, "validation": args.eval_mb, "test": args.eval_mb}
    for split, path in write_corpus(args.out, args.seed, sizes).items():
        print(f"{split}: {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
