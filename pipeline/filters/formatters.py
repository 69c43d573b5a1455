"""Formatters: steps that rewrite text and never drop a document."""
from __future__ import annotations

import re
import unicodedata

from ..config import NormalizeConfig
from .base import Doc, Step

# Zero-width and bidi control characters, the BOM, soft hyphens: invisible, and they split words.
_INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_SPACES = re.compile(r"[^\S\n]+")  # runs of whitespace other than newlines (tabs, NBSP, ...)
_BLANK_LINES = re.compile(r"\n\s*\n\s*\n+")


class Normalize(Step):
    """Unicode normalisation (NFC by default), invisible characters removed, whitespace runs
    collapsed to one space, lines stripped, at most one blank line between paragraphs."""

    name = "normalize"

    def __init__(self, cfg: NormalizeConfig):
        super().__init__()
        self.form = cfg.form

    def __call__(self, doc: Doc) -> str | None:
        text = unicodedata.normalize(self.form, doc.text.replace("\r\n", "\n").replace("\r", "\n"))
        text = _SPACES.sub(" ", _INVISIBLE.sub("", text))
        text = "\n".join(line.strip() for line in text.split("\n"))
        text = _BLANK_LINES.sub("\n\n", text).strip()
        if text != doc.text:
            self.stats["normalize.changed"] += 1
            doc.text = text
        return None
