"""FineWeb's own quality rules (Penedo et al. 2024, section 3.2.3), published thresholds."""
from __future__ import annotations

from ..config import FineWebConfig
from .base import TERMINAL_PUNCTUATION, Doc, Step
from .gopher import duplicates
from .languages import PerLanguage


class FineWeb(Step):
    name = "fineweb"

    def __init__(self, cfg: FineWebConfig, languages: dict | None = None):
        super().__init__()
        self.settings = PerLanguage("fineweb", cfg, languages)

    def __call__(self, doc: Doc) -> str | None:
        cfg, text = self.settings(doc.lang), doc.text
        lines = [line for line in text.split("\n") if line.strip()]
        if not lines:
            return self.reason("empty")
        ends = TERMINAL_PUNCTUATION + tuple(cfg.line_end_closers)
        if sum(line.endswith(ends) for line in lines) / len(lines) <= cfg.min_line_punctuation_ratio:
            return self.reason("line_punctuation_ratio")
        if sum(len(line) <= cfg.short_line_length for line in lines) / len(lines) >= cfg.max_short_line_ratio:
            return self.reason("short_line_ratio")
        if duplicates(lines)[1] / max(1, len(text) - text.count("\n")) >= cfg.max_char_duplication_ratio:
            return self.reason("char_duplication_ratio")
        if text.count("\n") / max(1, len(doc.words)) > cfg.max_newline_word_ratio:
            return self.reason("list_ratio")
        return None
