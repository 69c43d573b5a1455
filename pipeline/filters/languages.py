"""Words, stop words and thresholds per language, chosen by the document's `lang` (fastText's label).

Words (`splitter(lang)`), what the Gopher, C4 and FineWeb rules count:
- English, and a document with no language: `words.split_words`, spaCy's English rules (what
  datatrove's filters count), unchanged;
- Chinese: jieba's dictionary through rjieba (Rust; 3.7 MB wheel, ~5.7 M chars/s on one core);
- Japanese: IPADIC through lindera (Rust, the dictionary is inside the wheel; 18 MB, ~1.2 M chars/s);
- Thai: pythainlp's newmm with its bundled dictionary (pure Python, ~190 k chars/s);
- Lao, Khmer, Burmese, Tibetan (no segmenter bundled): one word per character with its marks;
- every other language: whitespace, with punctuation and symbols as tokens of their own; a word keeps
  its combining marks (Devanagari and Bengali vowel signs) and inner apostrophes, hyphens and dots.
Segmenters load their dictionary on first use, never from the network.

Settings: a section's values for a language are the section's, then the language's built-in ones
(`defaults()`: word-length and short-line thresholds scaled from English's by the language's own
word lengths, fastText score floors, stop words), then the user's
`quality.languages.<code>.<section>.<key>`. Stop words are the stopwords-iso list of the language (the
`stopwordsiso` package, 58 languages) without its punctuation, digits and multi-word entries; English
keeps Gopher's eight words; a language with no list skips the stop-word rule.
"""
from __future__ import annotations

import functools
import os
import re
import unicodedata
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from .words import split_words

Splitter = Callable[[str], list[str]]
# The sections whose values may differ per language (quality.languages.<code>.<section>).
SECTIONS = ("language", "gopher_repetition", "gopher_quality", "c4", "fineweb")

# Median over clean documents of their mean word length (words as `splitter` makes them, punctuation
# aside), measured on the Leipzig web sentences of tests/data/multilingual: `python bench/multilingual.py
# --stats` prints them. The word-length and short-line thresholds of a language are English's
# (published) ones scaled by its median over English's, as FineWeb-2 derives its thresholds from each
# language's own statistics.
WORD_LENGTH = {
    "en": 4.92, "ar": 4.66, "bn": 5.02, "de": 5.96, "es": 4.69, "fa": 3.64, "fr": 5.11, "hi": 3.80, "id": 6.11,
    "it": 5.33, "ja": 1.73, "ko": 3.11, "nl": 5.32, "pl": 5.89, "pt": 4.90, "ru": 5.42, "sw": 5.30, "tr": 6.74,
    "uk": 5.90, "vi": 3.44, "zh": 1.76,
}
# fastText's lid.176 spreads these over close relatives, so clean text scores low: Swahili 0.44-0.65 on
# the Leipzig documents, Indonesian 0.74-0.82 (Malay takes the rest); other languages score 0.9 and more.
MIN_LANGUAGE_SCORE = {"sw": 0.3, "id": 0.5}


def _derived(lang: str) -> dict[str, dict[str, Any]]:
    scale = WORD_LENGTH[lang] / WORD_LENGTH["en"]
    # a line's characters per word: the word and, where words are spaced, its space
    line_scale = (WORD_LENGTH[lang] + has_spaces(lang)) / (WORD_LENGTH["en"] + 1)
    return {"gopher_quality": {"min_mean_word_length": round(3.0 * scale, 1),
                               "max_mean_word_length": round(10.0 * scale, 1)},
            "fineweb": {"short_line_length": round(30 * line_scale)}}


# Scripts without spaces and without a bundled segmenter: one character a word (not measured: no sample).
_CHARACTER_DEFAULTS = {"gopher_quality": {"min_mean_word_length": 1.0, "max_mean_word_length": 3.0},
                       "fineweb": {"short_line_length": 10}}


@functools.cache
def defaults() -> dict[str, dict[str, dict[str, Any]]]:
    """Built-in values per language: only what differs from the sections' (English, published) ones."""
    table: dict[str, dict[str, dict[str, Any]]] = {lang: _derived(lang) for lang in WORD_LENGTH if lang != "en"}
    for lang in ("zh", "ja"):  # dialogue lines end in a closing quote: 「まだ駄目かなあ」
        table[lang]["fineweb"]["line_end_closers"] = "」』”）"
    for lang in ("yue", "wuu"):
        table[lang] = table["zh"]
    for lang in _CHARACTER_WORDS:
        table[lang] = _CHARACTER_DEFAULTS
    for lang, score in MIN_LANGUAGE_SCORE.items():
        table[lang] = {**table[lang], "language": {"min_score": score}}
    return table


# fastText labels that are written like English for the word rules (no language: English rules)
ENGLISH = frozenset({None, "en"})
_CHARACTER_WORDS = frozenset({"lo", "km", "my", "bo", "dz"})


@functools.cache
def _marks() -> str:
    """Every combining mark (Mn, Mc, Me: planes 0-1 and the variation selectors), as regex class ranges."""
    codes = [c for c in (*range(0x300, 0x20000), *range(0xE0100, 0xE01F0))
             if unicodedata.category(chr(c)) in ("Mn", "Mc", "Me")]
    ranges, start = [], codes[0]
    for prev, c in zip(codes, codes[1:] + [-1]):
        if c != prev + 1:
            ranges.append(re.escape(chr(start)) + (f"-{re.escape(chr(prev))}" if prev > start else ""))
            start = c
    return "".join(ranges)


@functools.cache
def _spaced_word() -> re.Pattern:
    w = rf"[\w{_marks()}]"
    return re.compile(rf"{w}+(?:['’\-.]{w}+)*|[^\s\w{_marks()}]")


def split_spaced(text: str) -> list[str]:
    """Whitespace and punctuation rules: words (with their marks and inner ' - .) and single symbols."""
    return _spaced_word().findall(text)


@functools.cache
def _grapheme() -> re.Pattern:
    return re.compile(rf"\w[{_marks()}]*|[^\s\w]")


def split_characters(text: str) -> list[str]:
    """One word per character (with its combining marks), for scripts without spaces and no segmenter."""
    return _grapheme().findall(text)


@functools.cache
def _jieba():
    import rjieba

    return rjieba


def split_chinese(text: str) -> list[str]:
    return [w for w in _jieba().cut(text) if not w.isspace()]


@functools.cache
def _lindera():
    import lindera

    return lindera.TokenizerBuilder().set_mode("normal").set_dictionary("embedded://ipadic").build()


def split_japanese(text: str) -> list[str]:
    return [t.surface for t in _lindera().tokenize(text) if not t.surface.isspace()]


def split_thai(text: str) -> list[str]:
    os.environ.setdefault("PYTHAINLP_READ_ONLY", "1")  # else it makes ~/pythainlp-data; newmm needs none
    from pythainlp.tokenize import word_tokenize

    return word_tokenize(text, engine="newmm", keep_whitespace=False)


_SEGMENTERS: dict[str, Splitter] = {"zh": split_chinese, "yue": split_chinese, "wuu": split_chinese,
                                    "ja": split_japanese, "th": split_thai}


def splitter(lang: str | None) -> Splitter:
    """The word splitter for a fastText language code."""
    if lang in ENGLISH:
        return split_words
    if lang in _SEGMENTERS:
        return _SEGMENTERS[lang]
    if lang in _CHARACTER_WORDS:
        return split_characters
    return split_spaced


def has_spaces(lang: str | None) -> bool:
    """Whether the language separates words with spaces (C4 counts such a line's words by whitespace)."""
    return lang not in _SEGMENTERS and lang not in _CHARACTER_WORDS


@functools.cache
def stop_words(lang: str) -> list[str] | None:
    """The stopwords-iso list of a language (words only), or None when it has none."""
    import stopwordsiso

    if not stopwordsiso.has_lang(lang):
        return None
    return sorted(w for w in stopwordsiso.stopwords(lang) if " " not in w and any(c.isalpha() for c in w))


def language_defaults(lang: str, section: str) -> dict[str, Any]:
    """The built-in values of a section for a language (thresholds and, for Gopher, stop words)."""
    values = dict(defaults().get(lang, {}).get(section, {}))
    if section == "gopher_quality" and lang not in ENGLISH:
        words = stop_words(lang)
        if words is None:
            values.setdefault("min_stop_words", 0)  # no list for it: the rule cannot apply
        else:
            values.setdefault("stop_words", words)
    return values


S = TypeVar("S", bound=BaseModel)


class PerLanguage(Generic[S]):
    """A section's settings per language: `settings(lang)` is the section with the language's defaults
    and the user's overrides (`overrides[lang][section]`) applied, validated once per language."""

    def __init__(self, section: str, cfg: S, overrides: dict[str, dict[str, dict[str, Any]]] | None = None):
        self.section, self.cfg, self.overrides = section, cfg, overrides or {}
        self._cache: dict[str | None, S] = {}

    def __call__(self, lang: str | None) -> S:
        if lang not in self._cache:
            values = {} if lang in ENGLISH else language_defaults(lang, self.section)
            values.update(self.overrides.get(lang, {}).get(self.section, {}))
            self._cache[lang] = (type(self.cfg).model_validate({**self.cfg.model_dump(), **values})
                                 if values else self.cfg)
        return self._cache[lang]
