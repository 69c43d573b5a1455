"""The model-based quality filter of the curate flow (as FineWeb-Edu and DCLM filter their crawls):
a classifier from `tokenmill finetune` (by default its n-gram kind, see training/classifier.py) scores
each document of a part; the score (the probability
of the configured label) goes into a `quality_score` column, and a document scoring below the
threshold is rejected as `quality_model.low_score`."""
from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import pyarrow as pa

from tokenmill.pipeline import storage
from tokenmill.pipeline.config import QualityModelConfig
from tokenmill.pipeline.contracts import CLASSIFIER_CONFIG
from tokenmill.pipeline.stages import PartWriter, shard_of

STAGE = "quality_model"
LOW_SCORE = "quality_model.low_score"
SCORE = pa.field("quality_score", pa.float32())


def score_label(cfg: QualityModelConfig) -> tuple[str, list[str]]:
    """The label whose probability is the score, checked against the classifier's labels (cheap:
    reads classifier.json only, so the flow can fail before it maps anything)."""
    path = Path(cfg.classifier or "") / CLASSIFIER_CONFIG
    if not cfg.classifier or not path.exists():
        raise FileNotFoundError(f"curate.quality_model.classifier: {path} not found; point it at the output directory "
                                "of `tokenmill finetune` (runs/<id>/finetune/<task>)")
    meta = json.loads(path.read_text())
    if cfg.kind and cfg.kind not in meta:
        raise ValueError(f"curate.quality_model.kind {cfg.kind!r}: {cfg.classifier} has no such classifier; "
                         "fine-tune it again with this tokenmill")
    labels = meta["labels"]
    label = cfg.label or labels[-1]
    if label not in labels:
        raise ValueError(f"curate.quality_model.label {label!r} is not a label of {cfg.classifier} ({labels})")
    return label, labels


@functools.lru_cache(maxsize=2)  # a Ray worker scoring several parts loads the classifier once
def _classifier(directory: str, kind: str | None):
    from .classifier import Classifier  # torch: imported where a part is scored, not by the curate flow

    return Classifier(directory, kind)


def score_part(part_url: str, run_dir: str, cfg: QualityModelConfig, batch_rows: int = 1024) -> dict:
    """The quality_model stage for one part, `batch_rows` documents at a time (memory is bounded by a
    batch, not the part): kept and rejected rows both carry `quality_score`."""
    started = time.perf_counter()
    label, _ = score_label(cfg)
    classifier = _classifier(str(Path(cfg.classifier).resolve()), cfg.kind)
    column = classifier.labels.index(label)
    writer = PartWriter(run_dir, STAGE, shard_of(part_url), started=started, extra_fields=[SCORE])
    scored = 0
    try:
        for batch in storage.parquet_batches(part_url, batch_rows):
            table = pa.Table.from_batches([batch])
            scores = classifier.proba(table["text"].to_pylist(), cfg.batch_size)[:, column]
            writer.write(table.append_column(SCORE.name, pa.array(scores, SCORE.type)),
                         [LOW_SCORE if s < cfg.threshold else None for s in scores])
            scored += table.num_rows
    except BaseException:
        writer.abort()
        raise
    return writer.close(counters={f"{STAGE}.scored": scored})
