"""C4 rules (Raffel et al. 2020, section 2.2), as a line-level cleaner and a document filter.

Line rules (a word over `max_word_length` chars, no terminal punctuation, fewer than
`min_words_per_line` words, "javascript", cookie/policy notices) remove the line when `clean_lines`
is on, else only count it (`<stats>` c4.lines.<rule>); "lorem ipsum", a curly brace, or fewer than `min_sentences` sentences in
the kept lines drop the document.
"""
from __future__ import annotations

import re

from ..config import C4Config
from .base import SENTENCE_END, Doc, Step, count_sentences, is_symbol
from .languages import PerLanguage, has_spaces, splitter

CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
C4_TERMINAL = (".", "?", "!", '"', "'")
_SENTENCE_MARK = re.compile("[" + re.escape("".join(sorted(SENTENCE_END))) + "]")


def _inner_end(line: str) -> bool:
    """Is there a sentence-final mark with more text after it (after a space)? Only such lines can hold
    more than one sentence. (As the regex [marks]\\S*\\s+\\S, which is quadratic on a long run of marks
    without spaces: 10k characters of "a.b" took 1 s, 100k would take 100 s.)"""
    head = line.rstrip()
    last = head.split()[-1:]  # the marks in the last word have no text after them
    return bool(last) and _SENTENCE_MARK.search(head, 0, len(head) - len(last[0])) is not None


class C4(Step):
    name = "c4"

    def __init__(self, cfg: C4Config, languages: dict | None = None):
        super().__init__()
        self.settings = PerLanguage("c4", cfg, languages)

    def line_rule(self, cfg: C4Config, line: str, words: list[str]) -> str | None:
        """Why a (stripped, citation-free) line is removed, or None to keep it."""
        if cfg.terminal_punctuation and (not line.endswith(C4_TERMINAL) or line.endswith("...")):
            return "no_terminal_punctuation"
        if len(words) < cfg.min_words_per_line:
            return "min_words_per_line"
        lower = line.lower()
        if cfg.javascript and "javascript" in lower:
            return "javascript"
        if cfg.policy and any(p in lower for p in POLICY):
            return "policy"
        return None

    def __call__(self, doc: Doc) -> str | None:
        cfg, split = self.settings(doc.lang), splitter(doc.lang)
        spaced = has_spaces(doc.lang)  # else a line's words are its segmenter's (punctuation aside)
        kept: list[str] = []
        sentences = 0
        for raw in doc.text.splitlines():
            line = raw.strip()
            words = line.split() if spaced else [w for w in split(line) if not is_symbol(w)]
            if any(len(w) > cfg.max_word_length for w in words):
                self.stats["c4.lines.max_word_length"] += 1
                continue
            if cfg.remove_citations:
                line = CITATION.sub("", line)
            rule = self.line_rule(cfg, line, words)
            if rule is None:
                lower = line.lower()
                if cfg.lorem_ipsum and "lorem ipsum" in lower:
                    return self.reason("lorem_ipsum")
                if cfg.curly_brace and "{" in line:
                    return self.reason("curly_brace")
                kept.append(line)
                # without spaces a sentence end needs no space after it to start another sentence
                sentences += count_sentences(split(line)) if not spaced or _inner_end(line) else 1
            else:
                self.stats[f"c4.lines.{rule}"] += 1
        if sentences < cfg.min_sentences:
            return self.reason("min_sentences")
        if cfg.clean_lines:
            doc.text = "\n".join(kept).strip()
        return None

