"""The quality stage: a chain of small steps over documents, each with stable reason codes.

Order (FineWeb's, Penedo et al. 2024): Unicode/whitespace normalisation, URL filter, language id,
Gopher repetition, Gopher quality, C4 (cleaner + filter), FineWeb rules, then PII redaction of what
is kept. A document is dropped by the first step that returns a reason; formatters and cleaners
change `text` and count what they did.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

import pyarrow as pa

from .. import storage
from ..config import QualityConfig
from ..stages import PartWriter, shard_of
from .base import Doc, Step
from .c4 import C4
from .fineweb import FineWeb
from .formatters import Normalize
from .gopher import GopherQuality, GopherRepetition
from .language import Language
from .languages import SECTIONS as PER_LANGUAGE
from .pii import PII
from .url import URLFilter

__all__ = ["Doc", "Step", "build_chain", "apply_chain", "filter_docs", "filter_part"]


def build_chain(cfg: QualityConfig) -> list[Step]:
    """The enabled steps in order; the word rules take each document's language's settings."""
    steps = [("normalize", Normalize), ("url", URLFilter), ("language", Language),
             ("gopher_repetition", GopherRepetition), ("gopher_quality", GopherQuality), ("c4", C4),
             ("fineweb", FineWeb), ("pii", PII)]
    return [make(getattr(cfg, name), cfg.languages) if name in PER_LANGUAGE else make(getattr(cfg, name))
            for name, make in steps if getattr(cfg, name).enabled]


def apply_chain(steps: list[Step], doc: Doc) -> str | None:
    """Run `doc` through the steps; the first reason returned, or None when it is kept."""
    for step in steps:
        reason = step(doc)
        if reason is not None:
            return reason
    return None


def filter_docs(steps: list[Step], docs: Iterable[Doc]) -> list[str | None]:
    return [apply_chain(steps, doc) for doc in docs]


def step_stats(steps: list[Step]) -> dict[str, int]:
    total: Counter = Counter()
    for step in steps:
        total.update(step.stats)
    return dict(sorted(total.items()))


def filter_part(part_url: str, run_dir: str, cfg: QualityConfig, batch_rows: int = 1024) -> dict:
    """The quality stage for one part, `batch_rows` documents at a time (memory is bounded by a batch,
    not the part). Kept rows carry the cleaned text; rejected rows the text as it came in, so
    `inspect` shows what was dropped."""
    steps = build_chain(cfg)
    writer = PartWriter(run_dir, "quality", shard_of(part_url))
    try:
        for batch in storage.parquet_batches(part_url, batch_rows):
            table = pa.Table.from_batches([batch])
            originals = table["text"].to_pylist()
            # lang: the input's label (if any) until language identification sets it
            docs = [Doc(i, t, u, lang, score) for i, t, u, lang, score in zip(
                table["id"].to_pylist(), originals, table["url"].to_pylist(), table["lang"].to_pylist(),
                table["lang_score"].to_pylist())]
            reasons = filter_docs(steps, docs)
            texts = [orig if r else d.text for d, orig, r in zip(docs, originals, reasons)]
            table = (table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))
                     .set_column(table.schema.get_field_index("lang"), "lang", pa.array([d.lang for d in docs], pa.string()))
                     .set_column(table.schema.get_field_index("lang_score"), "lang_score",
                                 pa.array([d.lang_score for d in docs], pa.float32())))
            writer.write(table, reasons)
    except BaseException:
        writer.abort()
        raise
    return writer.close(counters=step_stats(steps))
