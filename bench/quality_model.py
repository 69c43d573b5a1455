"""The model-based quality filter: is the default (n-gram) classifier as good as a bag-of-words baseline,
and fast enough for a crawl?

    python bench/quality_model.py [--docs 6000] [--repeats 4] [--folds 5] [--classifier DIR]

Accuracy: the 281 human-labeled DCLM pages (training/data/finetune), split into stratified folds with
several seeds; each split trains the n-gram classifier (finetune.ngram defaults, and the variants
below) and a TF-IDF + logistic-regression baseline (scikit-learn's TfidfVectorizer + LogisticRegression,
defaults) on the same training pages and scores both on the pages neither trained on. Prints macro-F1
mean ± std over the splits and the paired difference (n-gram minus baseline) with its standard error.
scikit-learn is a bench-only dependency (installed with the dev extra's lm-eval).

Speed: the bundled corpus (pipeline/data/corpus) repeated to --docs documents, as one read part, then
the curate stages in this process on one core (torch and BLAS on one thread): the quality stage
(filters.filter_part) and the quality_model stage (quality_model.score_part, what a Ray task runs) with
each kind. docs/s per core = documents / CPU seconds of this process (time.process_time, so other
load on the machine does not count); wall-clock seconds are printed too. "cost with the filter" is
(quality + quality_model) / quality. The Transformer kind is --classifier's (a `tokenmill finetune`
output), or else the default preset at the default seq_len from random init with a tokenizer trained
on the corpus: scoring cost depends on the shape, not on the weights.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from tokenmill.pipeline import filters, storage
from tokenmill.pipeline.config import BUNDLED_CORPUS, QualityConfig, QualityModelConfig, TokenizerConfig
from tokenmill.pipeline.contracts import CLASSIFIER_CONFIG, docs_table
from tokenmill.training import ngram
from tokenmill.training.config import NgramConfig
from tokenmill.training.finetune import TASKS, classification_metrics, load_labeled, stratified_folds

VARIANTS = {  # n-gram settings compared (speed and F1); "default" is finetune.ngram's
    "default": {},
    "chars 2-5, 20k chars, 2^20 rows": {"char_min": 2, "char_max": 5, "max_chars": 20_000, "buckets": 1 << 20},
    "3k chars": {"max_chars": 3_000},
    "chars 2-4": {"char_max": 4},
    "chars 3-5, 5k chars": {"char_min": 3, "char_max": 5, "max_chars": 5_000},
    "words only": {"char_min": 8, "char_max": 8},  # 8-grams: rare inside a word, so nearly words alone
}


def corpus_texts() -> list[str]:
    texts = []
    for path in sorted(Path(BUNDLED_CORPUS).glob("*.jsonl*")):
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
            texts += [json.loads(line).get("text") or "" for line in f if line.strip()]
    return texts


def accuracy(repeats: int, k: int) -> tuple[dict, dict]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    task = TASKS["dclm-quality"]
    texts, y = load_labeled(task.file, task.labels)
    f1: dict[str, list[float]] = {"tfidf+logreg": [], **{name: [] for name in VARIANTS}}
    fit_s: dict[str, float] = dict.fromkeys(f1, 0.0)
    for seed in range(repeats):
        for heldout in stratified_folds(y, k, seed):
            train = np.setdiff1d(np.arange(len(y)), heldout)
            x_train, x_test = [texts[i] for i in train], [texts[i] for i in heldout]
            started = time.process_time()
            baseline = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(x_train, y[train])
            f1["tfidf+logreg"].append(classification_metrics(y[heldout], baseline.predict(x_test), task.labels)["macro_f1"])
            fit_s["tfidf+logreg"] += time.process_time() - started
            for name, settings in VARIANTS.items():
                cfg = NgramConfig(**settings)
                started = time.process_time()
                params = ngram.fit(x_train, y[train], len(task.labels), cfg)
                predicted = ngram.predict_logits(x_test, params, cfg).argmax(-1)
                fit_s[name] += time.process_time() - started
                f1[name].append(classification_metrics(y[heldout], predicted, task.labels)["macro_f1"])
    return f1, fit_s


def build_classifier(out: Path, corpus_part: str) -> Path:
    """A classifier directory with both kinds: the n-gram one trained on the DCLM pages, the Transformer
    one of the default shape from random init (for speed only)."""
    import torch

    from tokenmill.pipeline.tokenize import train_tokenizer
    from tokenmill.training.checkpoint import save_fp32
    from tokenmill.training.classifier import TOKENIZER, WEIGHTS, SequenceClassifier
    from tokenmill.training.config import FinetuneConfig, TrainConfig
    from tokenmill.training.model import Transformer

    task = TASKS["dclm-quality"]
    texts, y = load_labeled(task.file, task.labels)
    cfg = FinetuneConfig()
    out.mkdir(parents=True, exist_ok=True)
    ngram.save(ngram.fit(texts, y, len(task.labels), cfg.ngram), out)
    train_tokenizer([corpus_part], str(out / TOKENIZER), TokenizerConfig())
    model_cfg = TrainConfig().resolve_model(TokenizerConfig().vocab_size, 256)
    torch.manual_seed(0)
    save_fp32(SequenceClassifier(Transformer(model_cfg), len(task.labels)).state_dict(), out / WEIGHTS)
    storage.write_json(str(out / CLASSIFIER_CONFIG), {
        "task": "dclm-quality", "labels": task.labels, "kind": "ngram",
        "ngram": {**cfg.ngram.model_dump(), "weights": ngram.WEIGHTS},
        "transformer": {"weights": WEIGHTS, "max_len": 256, "pooling": "mean", "tokenizer": TOKENIZER,
                        "model": model_cfg.model_dump(), "note": "random init: for speed only"}})
    return out


def timed(fn):
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def speed(n_docs: int, classifier: str | None, work: Path) -> None:
    import torch

    torch.set_num_threads(1)
    from tokenmill.training.quality_model import _classifier, score_part

    texts = corpus_texts()
    rows = [{"id": f"d{i}", "text": texts[i % len(texts)], "source": "bench", "url": None, "meta": "{}", "lang": None,
             "lang_score": None} for i in range(n_docs)]
    read_part = str(work / "run" / "read" / "part-00000.parquet")
    storage.write_parquet(read_part, docs_table(rows))
    classifier = classifier or str(build_classifier(work / "classifier", read_part))
    print(f"\n== speed: {n_docs} documents ({len(texts)} of the bundled corpus, repeated), one core ==")
    filters.filter_part(read_part, str(work / "warm"), QualityConfig())  # language-id model load, numba compile
    stats, q_cpu, q_wall = timed(lambda: filters.filter_part(read_part, str(work / "run"), QualityConfig()))
    quality_part = str(work / "run" / "quality" / "part-00000.parquet")
    kept = stats["docs_kept"]
    print(f"{'stage':28s} {'docs':>6s} {'CPU s':>7s} {'wall s':>7s} {'docs/s/core':>12s} {'cost x quality':>14s}")
    print(f"{'quality (heuristic filters)':28s} {n_docs:6d} {q_cpu:7.2f} {q_wall:7.2f} {n_docs / q_cpu:12,.0f} {1:14.2f}")
    for kind in ("ngram", "transformer"):
        cfg = QualityModelConfig(classifier=classifier, kind=kind)
        _classifier(str(Path(classifier).resolve()), kind).proba(texts[:16])  # load it (cached per process), compile
        _, cpu, wall = timed(lambda cfg=cfg, kind=kind: score_part(quality_part, str(work / f"qm-{kind}"), cfg))
        print(f"{'quality_model, ' + kind:28s} {kept:6d} {cpu:7.2f} {wall:7.2f} {kept / cpu:12,.0f} {(q_cpu + cpu) / q_cpu:14.2f}")
    cfg = QualityModelConfig(classifier=classifier, kind="ngram")
    _, cpu, wall = timed(lambda: score_part(read_part, str(work / "qm-all"), cfg))
    print(f"{'quality_model, ngram, all':28s} {n_docs:6d} {cpu:7.2f} {wall:7.2f} {n_docs / cpu:12,.0f}"
          "   (every document of the corpus, unfiltered)")
    print("cost x quality: CPU of quality + quality_model over quality alone (the filter's added cost)")
    print("(the quality_model stage scores the documents the quality stage kept; dedup, between them in a run, is left out)")

    from tokenmill.training.classifier import Classifier

    print("\nscoring only (Classifier.proba on the kept texts, no Parquet):")
    texts_kept = storage.read_parquet(quality_part)["text"].to_pylist()
    for kind, n in (("ngram", len(texts_kept)), ("transformer", 200)):
        model = Classifier(classifier, kind)
        model.proba(texts_kept[:32])
        _, cpu, wall = timed(lambda model=model, n=n: model.proba(texts_kept[:n]))
        print(f"  {kind:12s} {n / cpu:10,.0f} docs/s per core ({n} docs, {cpu:.2f} CPU s, {wall:.2f} wall s)")
    for name, settings in VARIANTS.items():
        cfg = NgramConfig(**settings)
        task = TASKS["dclm-quality"]
        texts_l, y = load_labeled(task.file, task.labels)
        params = ngram.fit(texts_l, y, 2, cfg)
        ngram.predict_logits(texts_kept[:32], params, cfg)
        _, cpu, _ = timed(lambda cfg=cfg, params=params: ngram.predict_logits(texts_kept, params, cfg))
        print(f"  ngram {name:32s} {len(texts_kept) / cpu:10,.0f} docs/s per core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=4, help="seeds of the k-fold splits")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--classifier", help="a `tokenmill finetune` output directory (default: one built here)")
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()

    if not args.skip_accuracy:
        f1, fit_s = accuracy(args.repeats, args.folds)
        n = len(f1["tfidf+logreg"])
        print(f"== macro-F1 on DCLM pages never trained on: {args.repeats} x stratified {args.folds}-fold ({n} splits) ==")
        base = np.array(f1["tfidf+logreg"])
        for name, scores in f1.items():
            s = np.array(scores)
            diff = "" if name == "tfidf+logreg" else \
                f"   vs baseline {np.mean(s - base):+.3f} ± {np.std(s - base, ddof=1) / np.sqrt(n):.3f} (paired, s.e.)"
            print(f"{'ngram ' + name if name in VARIANTS else name:40s} {s.mean():.3f} ± {s.std():.3f}  "
                  f"(train+score {fit_s[name] / n:.2f} CPU s a split){diff}")
    with tempfile.TemporaryDirectory() as tmp:
        speed(args.docs, args.classifier, Path(tmp))
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
