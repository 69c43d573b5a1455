"""Gopher quality and repetition rules (Rae et al. 2021, appendix A, table A1).

Words are tokens (punctuation marks are tokens of their own, as in datatrove's filters); word counts
and the mean word length are over tokens that are not only punctuation.
"""
from __future__ import annotations

import re

import numpy as np

from ..config import GopherQualityConfig, GopherRepetitionConfig
from .base import Doc, Step, is_symbol
from .languages import PerLanguage

BULLETS = ("•", "-")
ELLIPSES = ("...", "…")


class GopherQuality(Step):
    name = "gopher"

    def __init__(self, cfg: GopherQualityConfig, languages: dict | None = None):
        super().__init__()
        self.settings = PerLanguage("gopher_quality", cfg, languages)
        self._stop_words: dict[str | None, frozenset[str]] = {}

    def stop_words(self, lang: str | None) -> frozenset[str]:
        if lang not in self._stop_words:
            self._stop_words[lang] = frozenset(self.settings(lang).stop_words)
        return self._stop_words[lang]

    def __call__(self, doc: Doc) -> str | None:
        cfg, text, words = self.settings(doc.lang), doc.text, doc.words
        content = [w for w in words if not is_symbol(w)]
        n = len(content)
        if n < cfg.min_words:
            return self.reason("min_words")
        if n > cfg.max_words:
            return self.reason("max_words")
        if n == 0:  # min_words 0: nothing to measure the other rules on
            return self.reason("empty")
        mean = sum(map(len, content)) / n
        if mean < cfg.min_mean_word_length:
            return self.reason("min_mean_word_length")
        if mean > cfg.max_mean_word_length:
            return self.reason("max_mean_word_length")
        if text.count("#") / len(words) > cfg.max_symbol_word_ratio:
            return self.reason("hash_word_ratio")
        if (text.count("...") + text.count("…")) / len(words) > cfg.max_symbol_word_ratio:
            return self.reason("ellipsis_word_ratio")
        lines = text.splitlines()
        if sum(line.lstrip().startswith(BULLETS) for line in lines) / len(lines) > cfg.max_bullet_lines_ratio:
            return self.reason("bullet_lines_ratio")
        if sum(line.rstrip().endswith(ELLIPSES) for line in lines) / len(lines) > cfg.max_ellipsis_lines_ratio:
            return self.reason("ellipsis_lines_ratio")
        counted = words if cfg.alpha_ratio_counts_punctuation else content
        if sum(any(c.isalpha() for c in w) for w in counted) / len(counted) < cfg.min_alpha_words_ratio:
            return self.reason("alpha_words_ratio")
        if len(self.stop_words(doc.lang).intersection(words)) < cfg.min_stop_words:  # "at least two of" them
            return self.reason("stop_words")
        return None


def duplicates(items: list[str]) -> tuple[int, int]:
    """(repeated elements, their chars): every occurrence after the first counts."""
    seen: set[str] = set()
    count = chars = 0
    for x in items:
        if x in seen:
            count += 1
            chars += len(x)
        else:
            seen.add(x)
    return count, chars


class NGrams:
    """A document's word n-grams as 64-bit hashes (numpy), so counting repeats is vectorised."""

    _P = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial hash

    def __init__(self, words: list[str]):
        vocab: dict[str, int] = {}
        self.ids = np.fromiter((vocab.setdefault(w, len(vocab)) + 1 for w in words), np.uint64, len(words))
        self.cum = np.concatenate(([0], np.cumsum(np.fromiter(map(len, words), np.int64, len(words)))))

    def keys(self, n: int) -> np.ndarray:
        size = len(self.ids) - n + 1
        if size <= 0:
            return np.zeros(0, np.uint64)
        h = np.zeros(size, np.uint64)
        for j in range(n):
            h = h * self._P + self.ids[j:j + size]  # wraps modulo 2**64
        return h

    def chars(self, n: int) -> np.ndarray:
        """Characters of each n-gram's words (without separators)."""
        return self.cum[n:] - self.cum[:-n] if len(self.ids) >= n else np.zeros(0, np.int64)


def top_ngram_chars(grams: NGrams, n: int) -> int:
    """Characters covered by the most frequent word n-gram (its words and spaces, times its count;
    among equally frequent ones, the first seen)."""
    keys = grams.keys(n)
    if not len(keys):
        return 0
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    top = counts.max()
    i = first[counts == top].min()
    return int(grams.chars(n)[i] + n - 1) * int(top)


def duplicate_ngram_chars(grams: NGrams, n: int, at_most: float | None = None) -> int:
    """Characters of word n-grams already seen, scanning left to right and skipping past a repeat
    so that overlapping repeats are not counted twice. When `at_most` is given and an upper bound
    (every repeated position counted) is already within it, the bound is returned instead."""
    keys = grams.keys(n)
    if not len(keys):
        return 0
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    repeated = first[inverse] < np.arange(len(keys))
    chars = grams.chars(n)
    bound = int(chars[repeated].sum())
    if bound == 0 or (at_most is not None and bound <= at_most):
        return bound
    seen: set[int] = set()
    total, i, last, keys_list = 0, 0, len(keys), keys.tolist()
    while i < last:
        if keys_list[i] in seen:
            total += int(chars[i])
            i += n
        else:
            seen.add(keys_list[i])
            i += 1
    return total


class GopherRepetition(Step):
    name = "gopher"
    _paragraphs = re.compile(r"\n{2,}")
    _lines = re.compile(r"\n+")

    def __init__(self, cfg: GopherRepetitionConfig, languages: dict | None = None):
        super().__init__()
        self.settings = PerLanguage("gopher_repetition", cfg, languages)

    def __call__(self, doc: Doc) -> str | None:
        cfg, text = self.settings(doc.lang), doc.text
        if not text.strip():  # as GopherQuality and FineWeb: a blank document is rejected, not measured
            return self.reason("empty")
        size = len(text)
        paragraphs = self._paragraphs.split(text.strip())
        count, chars = duplicates(paragraphs)
        if count / len(paragraphs) > cfg.max_duplicate_paragraph_fraction:
            return self.reason("duplicate_paragraph_fraction")
        if chars / size > cfg.max_duplicate_paragraph_char_fraction:
            return self.reason("duplicate_paragraph_char_fraction")
        lines = self._lines.split(text)
        count, chars = duplicates(lines)
        if count / len(lines) > cfg.max_duplicate_line_fraction:
            return self.reason("duplicate_line_fraction")
        if chars / size > cfg.max_duplicate_line_char_fraction:
            return self.reason("duplicate_line_char_fraction")
        grams = NGrams(doc.words)
        for n, limit in sorted(cfg.top_ngram_char_fractions.items()):
            if top_ngram_chars(grams, n) / size > limit:
                return self.reason(f"top_{n}gram_char_fraction")
        for n, limit in sorted(cfg.duplicate_ngram_char_fractions.items()):
            if duplicate_ngram_chars(grams, n, at_most=limit * size) / size > limit:
                return self.reason(f"duplicate_{n}gram_char_fraction")
        return None
