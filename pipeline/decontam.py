"""Decontamination: drop training documents that contain text of the evaluation sets the run is scored on.

N-gram overlap as GPT-3 (Brown et al. 2020, appendix C) and datatrove's n-gram decontamination do it:
the text is normalised to words (Unicode NFKC, case-folded, split on everything that is not a letter
or digit, so whitespace, punctuation and case changes do not hide a copy), every run of `n` words
(13) of every evaluation text is hashed into an index, and a training document sharing at least
`min_matches` of those n-grams with one evaluation set is rejected as `decontam.<set>`, with the
first n-gram it shares kept in `duplicate_of`. An evaluation text shorter than `n` words but at least
`min_words` long is indexed whole (a short question would otherwise never match).

The index is built once (`build_index`: sorted 64-bit n-gram hashes, the set each came from, the lengths
indexed, the evaluation texts' words with their hashes) into one .npz file; each part's task loads that
file (cached per process), never the evaluation texts or the corpus.
"""
from __future__ import annotations

import functools
import hashlib
import re
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from . import storage
from .config import DecontamConfig
from .contracts import read_eval_texts
from .stages import PartWriter, shard_of

STAGE = "decontam"
_WORD = re.compile(r"[^\W_]+")  # letters and digits: \w without '_'
# Odd multiplier of the polynomial rolling hash over word hashes (mod 2**64): a different odd constant per
# position, so reordered words hash differently.
_BASE = np.uint64(0x9E3779B97F4A7C15)


def words(text: str) -> list[str]:
    """The normalised words of `text`: NFKC, case-folded, letters and digits only."""
    if not text.isascii():  # ASCII is NFKC already
        text = unicodedata.normalize("NFKC", text)
    return _WORD.findall(text.casefold())


def _word_hash(word: str) -> int:
    """A stable 64-bit hash of a word, never 0 (0 stands for a word no evaluation text has)."""
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little") or 1


def _powers(n: int) -> np.ndarray:
    p = np.ones(n, dtype=np.uint64)
    for i in range(n - 2, -1, -1):
        p[i] = p[i + 1] * _BASE
    return p


def ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """One uint64 per run of `n` consecutive words (none when there are fewer), the length mixed in."""
    if len(word_hashes) < n:
        return np.empty(0, dtype=np.uint64)
    windows = np.lib.stride_tricks.sliding_window_view(word_hashes, n)
    with np.errstate(over="ignore"):
        return (windows * _powers(n)).sum(axis=1, dtype=np.uint64) ^ np.uint64(n)


@dataclass(frozen=True)
class Index:
    hashes: np.ndarray  # sorted uint64
    sets: np.ndarray  # uint16: the evaluation set of each hash
    names: list[str]  # evaluation set names, by id
    lengths: list[int]  # n-gram lengths indexed: n, and those of short texts indexed whole
    vocab: dict[str, int]  # every word of the evaluation texts -> its hash

    def match(self, word_list: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(positions, set ids) of the document's n-grams found in the index, over every indexed length.

        A word no evaluation text has hashes to 0 (one dict lookup a word, no hashing of the document);
        only runs of words that all have a hash are looked up."""
        if not len(self.hashes):
            return np.empty(0, np.int64), np.empty(0, np.uint16)
        h = np.array([self.vocab.get(w, 0) for w in word_list], dtype=np.uint64)
        unknown = np.concatenate([[0], np.cumsum(h == 0)])
        found_pos, found_sets = [], []
        for n in self.lengths:
            if len(h) < n:
                continue
            candidates = np.nonzero(unknown[n:] == unknown[:-n])[0]
            if not len(candidates):
                continue
            grams = ngram_hashes(h, n)[candidates]
            i = np.minimum(np.searchsorted(self.hashes, grams), len(self.hashes) - 1)
            hit = self.hashes[i] == grams
            found_pos.append(candidates[hit] + (n << 32))  # the length rides in the high bits
            found_sets.append(self.sets[i[hit]])
        if not found_pos:
            return np.empty(0, np.int64), np.empty(0, np.uint16)
        return np.concatenate(found_pos), np.concatenate(found_sets)


def build_index(texts_url: str, index_url: str, cfg: DecontamConfig) -> dict:
    """The n-gram index of the evaluation texts in `texts_url`, written to `index_url` (.npz); its stats."""
    started = time.perf_counter()
    names: list[str] = []
    chunks, set_chunks = [], []
    texts, short, too_short = Counter(), Counter(), Counter()
    lengths = {cfg.n}
    vocab: dict[str, int] = {}
    for name, text in read_eval_texts(texts_url):
        if name not in names:
            names.append(name)
        w = words(text)
        texts[name] += 1
        wh = np.array([vocab[x] if x in vocab else vocab.setdefault(x, _word_hash(x)) for x in w], dtype=np.uint64)
        if len(w) >= cfg.n:
            h = ngram_hashes(wh, cfg.n)
        elif len(w) >= cfg.min_words:
            h, short[name] = ngram_hashes(wh, len(w)), short[name] + 1
            lengths.add(len(w))
        else:
            too_short[name] += 1
            continue
        chunks.append(h)
        set_chunks.append(np.full(len(h), names.index(name), np.uint16))
    hashes = np.concatenate(chunks) if chunks else np.empty(0, np.uint64)
    sets = np.concatenate(set_chunks) if set_chunks else np.empty(0, np.uint16)
    hashes, first = np.unique(hashes, return_index=True)  # an n-gram of several sets counts for the first
    sets = sets[first]

    def write(f):
        np.savez(f, hashes=hashes, sets=sets, names=np.array(names, dtype=str), lengths=np.array(sorted(lengths)),
                 words=np.array(list(vocab), dtype=str), word_hashes=np.array(list(vocab.values()), dtype=np.uint64))

    storage.atomic_write(index_url, write)
    return {"sets": names, "texts": dict(texts), "indexed_whole": dict(short), "too_short": dict(too_short),
            "ngrams": len(hashes), "words": len(vocab), "lengths": sorted(lengths), "seconds": round(time.perf_counter() - started, 3)}


@functools.lru_cache(maxsize=2)  # a Ray worker decontaminating several parts loads the index once
def load_index(index_url: str) -> Index:
    fs, path = storage.fs_path(index_url)
    with fs.open(path, "rb") as f, np.load(f) as z:
        return Index(z["hashes"], z["sets"], [str(s) for s in z["names"]], [int(n) for n in z["lengths"]],
                     dict(zip(z["words"].tolist(), z["word_hashes"].tolist())))


def check(index: Index, text: str, min_matches: int) -> tuple[str, str] | None:
    """(reason, the first shared n-gram) when `text` shares at least `min_matches` distinct n-grams with
    one evaluation set, else None."""
    w = words(text)
    pos, sets = index.match(w)
    if not len(pos):
        return None
    counts = np.bincount(sets, minlength=len(index.names))
    best = int(np.argmax(counts))  # the set sharing the most n-grams (the first such set on a tie)
    if counts[best] < min_matches:
        return None
    at = int(pos[sets == best].min())
    n, start = at >> 32, at & 0xFFFFFFFF
    return f"{STAGE}.{index.names[best]}", " ".join(w[start : start + n])


def decontam_part(part_url: str, run_dir: str, index_url: str, cfg: DecontamConfig, batch_rows: int = 1024) -> dict:
    """The decontam stage for one part, `batch_rows` documents at a time."""
    index = load_index(index_url)
    writer = PartWriter(run_dir, STAGE, shard_of(part_url))
    try:
        for batch in storage.parquet_batches(part_url, batch_rows):
            table = pa.Table.from_batches([batch])
            found = [check(index, t, cfg.min_matches) for t in table["text"].to_pylist()]
            writer.write(table, [m and m[0] for m in found], [m and m[1] for m in found])
    except BaseException:
        writer.abort()
        raise
    return writer.close(counters={f"{STAGE}.checked": writer.totals["docs_in"]})
