"""Decontamination quality and speed (pipeline/decontam.py) on real pages with planted evaluation passages.

    python bench/decontam.py [--hosts 300] [--seed 0]

Evaluation sets: what a default run is scored on (the bundled lm-eval tasks tokenmill_cloze and
tokenmill_wikitext, and evaluate's held-out WikiText text), indexed as the curate flow does (13-grams).
Documents: real web pages of the bundled corpus (pipeline/data/corpus). A page gets at most one passage,
inserted between two of its lines:
    cloze        a whole cloze item (sentence + true ending, 10-30 words)
    window-W     a WikiText article's text holding W consecutive words (W = 13, 20, 50, 200)
each passage in one of these forms:
    verbatim     as in the evaluation set
    upper        upper-cased
    rewrapped    every space a newline or two spaces
    repunct      WikiText's tokenized punctuation (" , ", " @-@ ") written as on the web, quotes curly
    mixed        lower-cased + rewrapped + repunct
Positives: pages with a passage of at least 13 words. Negatives: the untouched pages, and pages with a
WikiText window of 8-12 words (shorter than an n-gram: by design not contamination at n=13).
Prints precision, recall (per passage kind and per form), false positives, and docs/s against a plain
Python set of n-gram strings (the same decisions, checked), both single-process, in the same run.
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from tokenmill.pipeline import decontam
from tokenmill.pipeline.config import DecontamConfig
from tokenmill.pipeline.contracts import read_eval_texts, write_eval_texts
from tokenmill.training.eval_sets import HELDOUT, HELDOUT_SET, bundled_texts

CORPUS = Path(__file__).resolve().parent.parent / "pipeline" / "data" / "corpus"
FORMS = ("verbatim", "upper", "rewrapped", "repunct", "mixed")
KINDS = ("cloze", "window-13", "window-20", "window-50", "window-200", "short-window")


def corpus_pages() -> list[str]:
    pages = []
    for path in sorted(CORPUS.glob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            pages += [json.loads(line)["text"] for line in f]
    return [p for p in pages if len(p.split()) >= 50]


def reform(text: str, form: str, rng: random.Random) -> str:
    def rewrap(t):
        return "".join(rng.choice(["\n", "  ", " "]) if c == " " else c for c in t)

    def repunct(t):
        return t.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" , ", ", ").replace(" . ", ". ").replace('"', "”")

    return {"verbatim": lambda t: t, "upper": str.upper, "rewrapped": rewrap, "repunct": repunct,
            "mixed": lambda t: rewrap(repunct(t.lower()))}[form](text)


def passage(kind: str, cloze: list[str], articles: list[list[str]], rng: random.Random) -> str:
    if kind == "cloze":
        return rng.choice(cloze)
    tokens = rng.choice([a for a in articles if len(a) > 400])
    width = rng.randint(8, 12) if kind == "short-window" else int(kind.split("-")[1])
    start = end = rng.randrange(len(tokens) - 2 * width)
    while len(decontam.words(" ".join(tokens[start:end]))) < width:  # W normalised words (" , " is no word)
        end += 1
    return " ".join(tokens[start:end])


def naive_check(index: set[str], sets: dict[str, str], text: str, n: int) -> str | None:
    """The baseline: a Python set of n-gram strings (what a first implementation would do)."""
    w = decontam.words(text)
    for i in range(len(w) - n + 1):
        gram = " ".join(w[i : i + n])
        if gram in index:
            return sets[gram]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=300, help="pages that get a planted passage")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    cfg = DecontamConfig()

    cloze = list(bundled_texts("tokenmill_cloze"))
    wikitext = list(bundled_texts("tokenmill_wikitext"))
    articles = [a.split() for a in wikitext]
    work = Path(tempfile.mkdtemp(prefix="bench-decontam-"))
    texts_url, index_url = str(work / "eval_texts.jsonl.gz"), str(work / "index.npz")
    write_eval_texts(texts_url, [(HELDOUT_SET, HELDOUT.read_text(encoding="utf-8"))]
                     + [("tokenmill_cloze", t) for t in cloze] + [("tokenmill_wikitext", t) for t in wikitext])
    started = time.perf_counter()
    index_stats = decontam.build_index(texts_url, index_url, cfg)
    build_s = time.perf_counter() - started
    index = decontam.load_index(index_url)

    pages = corpus_pages()
    rng.shuffle(pages)
    hosts, clean = pages[: args.hosts], pages[args.hosts :]
    docs: list[tuple[str, str | None, str | None]] = [(p, None, None) for p in clean]  # text, kind, form
    for i, host in enumerate(hosts):
        kind, form = KINDS[i % len(KINDS)], FORMS[(i // len(KINDS)) % len(FORMS)]
        lines = host.split("\n")
        lines.insert(rng.randrange(len(lines) + 1), reform(passage(kind, cloze, articles, rng), form, rng))
        docs.append(("\n".join(lines), kind, form))

    started = time.perf_counter()
    found = [decontam.check(index, text, cfg.min_matches) for text, _, _ in docs]
    fast_s = time.perf_counter() - started

    naive_index: dict[str, str] = {}
    started = time.perf_counter()
    for name, text in read_eval_texts(texts_url):
        w = decontam.words(text)
        for i in range(len(w) - cfg.n + 1):
            naive_index.setdefault(" ".join(w[i : i + cfg.n]), name)
    naive_build_s = time.perf_counter() - started
    started = time.perf_counter()
    keys = set(naive_index)
    naive = [naive_check(keys, naive_index, text, cfg.n) for text, _, _ in docs]
    naive_s = time.perf_counter() - started

    positive = [kind not in (None, "short-window") for _, kind, _ in docs]
    flagged = [f is not None for f in found]
    tp = sum(p and f for p, f in zip(positive, flagged))
    fp = sum(f and not p for p, f in zip(positive, flagged))
    fn = sum(p and not f for p, f in zip(positive, flagged))
    by_kind, by_form = defaultdict(Counter), defaultdict(Counter)
    for (_, kind, form), f in zip(docs, flagged):
        if kind is not None:
            by_kind[kind][f] += 1
            by_form[form][f] += 1
    # the n-gram baseline knows no whole short texts: compare on the decisions it can make
    agree = sum((f is None) == (b is None) for f, b in zip(found, naive))
    mb = sum(len(t.encode()) for t, _, _ in docs) / 1e6

    print(f"index: {index_stats['ngrams']:,} n-grams (n={cfg.n}) of {sum(index_stats['texts'].values()):,} evaluation "
          f"texts {index_stats['texts']}, short texts indexed whole: {index_stats['indexed_whole']}; "
          f"built in {build_s:.2f} s; file {Path(index_url).stat().st_size / 1e6:.2f} MB")
    print(f"documents: {len(docs):,} ({len(clean):,} untouched pages, {len(hosts):,} with a passage), {mb:.1f} MB")
    print(f"precision {tp / max(tp + fp, 1):.4f}  recall {tp / max(tp + fn, 1):.4f}  (tp {tp}, fp {fp}, fn {fn})")
    print("flagged per passage kind: " + ", ".join(f"{k} {c[True]}/{c[True] + c[False]}" for k, c in sorted(by_kind.items())))
    print("flagged per form:         " + ", ".join(f"{k} {c[True]}/{c[True] + c[False]}" for k, c in sorted(by_form.items())))
    for (text, kind, _), f in zip(docs, found):
        if f is not None and kind is None:
            print(f"  flagged untouched page: {f[0]} on '{f[1]}'")
    naive_mb = (sys.getsizeof(keys) + sum(sys.getsizeof(k) for k in keys)) / 1e6
    index_mb = sum(a.nbytes for a in (index.hashes, index.sets)) / 1e6
    print(f"memory per task: {index_mb:.2f} MB of n-gram hashes (+ the words' dict) vs {naive_mb:.2f} MB as a set of "
          f"n-gram strings -> {naive_mb / index_mb:.1f}x smaller")
    print(f"speed: {len(docs) / fast_s:,.0f} docs/s, {mb / fast_s:.2f} MB/s (index + searchsorted); "
          f"python set of n-gram strings: {len(docs) / naive_s:,.0f} docs/s -> {naive_s / fast_s:.2f}x; "
          f"index build {naive_build_s / build_s:.2f}x; same decision on {agree}/{len(docs)} documents")


if __name__ == "__main__":
    main()
