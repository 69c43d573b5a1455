"""Gopher quality and repetition rules (Rae et al. 2021, appendix A, table A1).

Words are tokens (punctuation marks are tokens of their own, as in datatrove's filters); word counts
and the mean word length are over tokens that are not only punctuation.
"""
from __future__ import annotations

import re
from collections import Counter

from ..config import GopherQualityConfig, GopherRepetitionConfig
from .base import Doc, Step, is_symbol

BULLETS = ("•", "-")
ELLIPSES = ("...", "…")


class GopherQuality(Step):
    name = "gopher"

    def __init__(self, cfg: GopherQualityConfig):
        super().__init__()
        self.cfg = cfg
        self.stop_words = frozenset(cfg.stop_words)

    def __call__(self, doc: Doc) -> str | None:
        cfg, text, words = self.cfg, doc.text, doc.words
        content = [w for w in words if not is_symbol(w)]
        n = len(content)
        if n < cfg.min_words:
            return self.reason("min_words")
        if n > cfg.max_words:
            return self.reason("max_words")
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
        if sum(w in self.stop_words for w in words) < cfg.min_stop_words:
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


def top_ngram_chars(words: list[str], n: int) -> int:
    """Characters covered by the most frequent word n-gram (its length times its count)."""
    grams = Counter(zip(*(words[i:] for i in range(n))))
    if not grams:
        return 0
    gram, count = grams.most_common(1)[0]
    return (sum(map(len, gram)) + n - 1) * count


def duplicate_ngram_chars(words: list[str], n: int) -> int:
    """Characters of word n-grams already seen, scanning left to right and skipping past a repeat
    so that overlapping repeats are not counted twice."""
    seen: set[tuple[str, ...]] = set()
    chars, i, last = 0, 0, len(words) - n + 1
    while i < last:
        gram = tuple(words[i:i + n])
        if gram in seen:
            chars += sum(map(len, gram))
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


class GopherRepetition(Step):
    name = "gopher"
    _paragraphs = re.compile(r"\n{2,}")
    _lines = re.compile(r"\n+")

    def __init__(self, cfg: GopherRepetitionConfig):
        super().__init__()
        self.cfg = cfg

    def __call__(self, doc: Doc) -> str | None:
        cfg, text = self.cfg, doc.text
        size = len(text) or 1
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
        words = doc.words
        for n, limit in sorted(cfg.top_ngram_char_fractions.items()):
            if top_ngram_chars(words, n) / size > limit:
                return self.reason(f"top_{n}gram_char_fraction")
        for n, limit in sorted(cfg.duplicate_ngram_char_fractions.items()):
            if duplicate_ngram_chars(words, n) / size > limit:
                return self.reason(f"duplicate_{n}gram_char_fraction")
        return None
