"""Document filters. Each rule returns a stable reason code when a document should be dropped.

Rules and default thresholds follow Gopher (Rae et al. 2021, appendix A): quality heuristics over
whitespace-split words and repetition heuristics over lines.
"""
from __future__ import annotations

import re
import time
from collections import Counter

from . import io
from .config import QualityConfig
from .stages import shard_of, write_part

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("●", "•", "*", "-", "‣", "⁃", "◦", "▪", "▫", "–")
ELLIPSES = ("...", "…")
_ALPHA = re.compile(r"[^\W\d_]")


def gopher_quality(text: str, cfg: QualityConfig) -> str | None:
    words = text.split()
    n = len(words)
    if n < cfg.min_words:
        return "gopher.min_words"
    if n > cfg.max_words:
        return "gopher.max_words"
    mean_len = sum(map(len, words)) / n
    if mean_len < cfg.min_mean_word_length:
        return "gopher.min_mean_word_length"
    if mean_len > cfg.max_mean_word_length:
        return "gopher.max_mean_word_length"
    symbols = text.count("#") + sum(text.count(e) for e in ELLIPSES)
    if symbols / n > cfg.max_symbol_word_ratio:
        return "gopher.symbol_word_ratio"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines:
        if sum(line.startswith(BULLETS) for line in lines) / len(lines) > cfg.max_bullet_lines_ratio:
            return "gopher.bullet_lines_ratio"
        if sum(line.endswith(ELLIPSES) for line in lines) / len(lines) > cfg.max_ellipsis_lines_ratio:
            return "gopher.ellipsis_lines_ratio"
    if sum(bool(_ALPHA.search(w)) for w in words) / n < cfg.min_alpha_words_ratio:
        return "gopher.alpha_words_ratio"
    if sum(w.lower().strip(".,;:!?\"'()") in STOP_WORDS for w in words) < cfg.min_stop_words:
        return "gopher.stop_words"
    return None


def gopher_repetition(text: str, cfg: QualityConfig) -> str | None:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    counts = Counter(lines)
    dup_lines = sum(c for c in counts.values() if c > 1)
    if dup_lines / len(lines) > cfg.max_duplicate_line_fraction:
        return "gopher.duplicate_line_fraction"
    dup_chars = sum(len(line) * c for line, c in counts.items() if c > 1)
    if dup_chars / max(1, sum(map(len, lines))) > cfg.max_duplicate_line_char_fraction:
        return "gopher.duplicate_line_char_fraction"
    return None


def quality_reason(text: str, cfg: QualityConfig) -> str | None:
    """The first rule a document fails, or None to keep it."""
    return gopher_quality(text, cfg) or gopher_repetition(text, cfg)


def filter_part(part_url: str, run_dir: str, cfg: QualityConfig) -> dict:
    """The quality stage for one part."""
    started = time.perf_counter()
    docs = io.read_parquet(part_url)
    reasons = [quality_reason(text, cfg) for text in docs["text"].to_pylist()]
    return write_part(run_dir, "quality", shard_of(part_url), docs, reasons, started=started)
