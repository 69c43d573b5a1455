"""Fine-tuning the classifiers and the model-based quality filter.

Unit tests: the stratified folds, the metrics on a hand-counted example, bad labeled input, the n-gram
classifier on text without spaces and its bad settings. One integration test runs `tokenmill finetune`
as a user does (real local Prefect server, a real 2-process DeepSpeed job on CPU/gloo) on a separable
toy task (WikiText paragraphs vs DCLM web pages), from the session's tiny pretrained model: k-fold
metrics of every kind, both classifiers saved; then `tokenmill curate` on the toy documents with the
default (n-gram) classifier as its quality_model stage, and the Transformer kind's stage on a part."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import REPO, write_jsonl

from tokenmill.flows.server import start_server, stop_server
from tokenmill.pipeline import funnel
from tokenmill.training.finetune import TASKS, classification_metrics, cross_validated, load_labeled, stratified_folds

DCLM = TASKS["dclm-quality"]
WIKI = REPO / "training" / "data" / "heldout" / "wikitext2_valid_head.txt"
LEIPZIG = REPO / "tests" / "data" / "multilingual"


def test_bundled_task_folds_are_stratified_and_deterministic():
    texts, y = load_labeled(DCLM.file, DCLM.labels)
    assert len(texts) == 281 and Counter(y.tolist()) == {1: 152, 0: 129}
    folds = stratified_folds(y, 5, seed=7)
    assert sorted(np.concatenate(folds).tolist()) == list(range(281))  # each document held out exactly once
    assert sorted(len(f) for f in folds) == [56, 56, 56, 56, 57]
    for f in folds:  # each label spread evenly: 129 = 4 * 26 + 25, 152 = 2 * 31 + 3 * 30
        assert Counter(y[f].tolist())[0] in (25, 26) and Counter(y[f].tolist())[1] in (30, 31)
    again, other = stratified_folds(y, 5, seed=7), stratified_folds(y, 5, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again)) and not np.array_equal(folds[0], other[0])
    with pytest.raises(ValueError, match="3 folds need at least 3 documents of each label; the rarest has 2"):
        stratified_folds(np.array([0, 0, 1, 1, 1]), 3, seed=0)


def test_cross_validated_scores_are_mean_and_std_over_folds():
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    folds = [np.array([0, 1, 2, 3]), np.array([4, 5, 6, 7])]
    cv = cross_validated(y, folds, [np.array([0, 1, 0, 1]), np.array([0, 0, 0, 0])], ["a", "b"])
    assert cv["accuracy"] == {"mean": pytest.approx(0.75), "std": pytest.approx(0.25)}
    assert [f["macro_f1"] for f in cv["folds"]] == [1.0, pytest.approx(1 / 3)]
    assert cv["confusion"] == [[4, 0], [2, 2]]


def test_metrics_match_a_hand_counted_example():
    m = classification_metrics(np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 1, 0]), ["a", "b", "c"])
    assert m["confusion"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    a, b, c = (m["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["support"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 3)
    assert (b["precision"], b["recall"], b["f1"]) == (pytest.approx(2 / 3), 1.0, pytest.approx(0.8))
    assert c == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}  # never predicted: 0, not NaN
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0) / 3)


def test_a_bad_label_names_the_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "fine", "label": 1}, {"text": "x", "label": "maybe"}])
    with pytest.raises(ValueError, match=r"t\.jsonl:2: label 'maybe' is neither an index below 2 nor one of \['no', 'yes'\]"):
        load_labeled(path, ["no", "yes"])
    path = write_jsonl(tmp_path / "u.jsonl", ['{"text": "cut'])
    with pytest.raises(ValueError, match=r"u\.jsonl:1: not valid JSON"):
        load_labeled(path, ["no", "yes"])


def leipzig(lang: str, n: int) -> list[str]:
    with gzip.open(LEIPZIG / f"leipzig_{lang}.txt.gz", "rt", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()][:n]


def test_ngram_classifier_reads_text_without_spaces():
    """Chinese vs Japanese web sentences: no spaces, so a 'word' is a whole clause, seen once; the
    character n-grams inside it are what generalises to sentences the classifier never saw."""
    from tokenmill.training import ngram
    from tokenmill.training.config import NgramConfig

    texts = leipzig("zh", 200) + leipzig("ja", 200)
    y = np.array([0] * 200 + [1] * 200)
    folds = stratified_folds(y, 2, seed=0)
    cfg = NgramConfig(buckets=1 << 16)

    def cv_accuracy(cfg):
        predictions = []
        for heldout in folds:
            train = np.setdiff1d(np.arange(len(y)), heldout)
            params = ngram.fit([texts[i] for i in train], y[train], 2, cfg)
            predictions.append(ngram.predict_logits([texts[i] for i in heldout], params, cfg).argmax(-1))
        return cross_validated(y, folds, predictions, ["zh", "ja"])["accuracy"]["mean"]

    assert cv_accuracy(cfg) >= 0.95
    # the same with word n-grams only (characters 8..8: rarely inside a clause, never shared) is guessing
    assert cv_accuracy(cfg.model_copy(update={"char_min": 8, "char_max": 8})) < 0.8
    # a document's features do not depend on the documents batched with it
    alone = ngram.features(texts[:1], cfg)
    batched = ngram.features(texts[:3], cfg)
    assert np.array_equal(alone[1], batched[1][: alone[0][1]]) and np.array_equal(alone[2], batched[2][: alone[0][1]])
    assert ngram.features(["", "a"], cfg)[0].tolist() == [0, 0, 4]  # empty: no features; "a": 1 word + "<a", "a>", "<a>"


def test_ngram_settings_are_checked():
    from tokenmill.training.config import NgramConfig

    with pytest.raises(ValueError, match="buckets must be a power of two, got 3000"):
        NgramConfig(buckets=3000)
    with pytest.raises(ValueError, match="char_min 5 is above char_max 3"):
        NgramConfig(char_min=5, char_max=3)


def toy_task(path) -> list[dict]:
    """40 WikiText paragraphs ("wiki") and 40 DCLM web pages ("web"): two text types a tiny model tells apart."""
    wiki = [line.strip() for line in WIKI.read_text(encoding="utf-8").splitlines()
            if len(line.strip()) > 300 and not line.strip().startswith("=")][:40]
    web, _ = load_labeled(DCLM.file, DCLM.labels)
    records = [{"text": t, "label": "wiki"} for t in wiki] + [{"text": t, "label": "web"} for t in web[:40]]
    write_jsonl(path, records)
    return records


@pytest.mark.slow
def test_finetune_cli_then_the_quality_model_stage(trained_run, tmp_path):
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    for part in ("tokens", "train"):  # the session's tiny pretrained run (seq_len 32, vocab 500)
        (run_dir / part).symlink_to(trained_run(0) / part)
    records = toy_task(tmp_path / "toy.jsonl")
    sets = ["finetune.data_file=" + str(tmp_path / "toy.jsonl"), "finetune.labels=[wiki, web]", "finetune.folds=2",
            "finetune.epochs=3", "finetune.micro_batch=4", "finetune.lr=1e-3", "finetune.nproc=2", "finetune.threads_per_proc=1",
            "finetune.ngram.buckets=65536"]
    api = start_server(home=str(tmp_path / "prefect-home"))  # one server for the fine-tune and the curate run
    env = {**os.environ, "PREFECT_API_URL": api.url}
    try:
        proc = subprocess.run([sys.executable, "-m", "tokenmill.flows.cli", "finetune", str(run_dir), "--task", "toy",
                               *(a for s in sets for a in ("--set", s))], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600, env=env)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-5000:]
        curated = _curate_with_classifier(run_dir / "finetune" / "toy", records, tmp_path, env)
    finally:
        stop_server(api)
    assert "fine-tune toy: 2-fold cross-validation of 80 docs" in out

    task_dir = run_dir / "finetune" / "toy"
    metrics = json.loads((task_dir / "metrics.json").read_text())
    assert set(metrics) == {"task", "labels", "docs", "classifier", "folds", "seed", "fold_docs", "models"}
    assert (metrics["task"], metrics["labels"], metrics["docs"], metrics["classifier"]) == ("toy", ["wiki", "web"], 80, "ngram")
    assert (metrics["folds"], metrics["fold_docs"]) == (2, [40, 40])
    assert set(metrics["models"]) == {"ngram", "pretrained", "random_init", "majority"}
    for m in metrics["models"].values():
        assert set(m) == {"accuracy", "macro_precision", "macro_recall", "macro_f1", "folds", "confusion"}
        assert len(m["folds"]) == 2 and [sum(row) for row in m["confusion"]] == [40, 40]  # every document scored once
        assert m["macro_f1"]["mean"] == pytest.approx(np.mean([f["macro_f1"] for f in m["folds"]]))
    majority, ngram, pretrained = (metrics["models"][k] for k in ("majority", "ngram", "pretrained"))
    assert majority["accuracy"] == {"mean": 0.5, "std": 0.0} and majority["macro_f1"]["mean"] == pytest.approx(1 / 3)
    assert ngram["accuracy"]["mean"] >= 0.9  # two clearly different text types
    assert pretrained["macro_f1"]["mean"] >= majority["macro_f1"]["mean"]
    summary = json.loads((run_dir / "finetune" / "_stats.json").read_text())
    assert summary["tasks"]["toy"]["models"]["ngram"]["accuracy"] == ngram["accuracy"]["mean"]
    classifier = json.loads((task_dir / "classifier.json").read_text())
    assert classifier["labels"] == ["wiki", "web"] and classifier["kind"] == "ngram"
    assert classifier["transformer"]["max_len"] == 32 and (task_dir / classifier["transformer"]["tokenizer"]).exists()
    assert classifier["ngram"]["buckets"] == 65536 and (task_dir / classifier["ngram"]["weights"]).exists()
    assert (task_dir / "_SUCCESS").exists() and "| macro F1 |" in (run_dir / "report.md").read_text()

    # The saved (n-gram) classifier as curate's quality filter (threshold at the median score of the
    # toy documents, so both outcomes occur): every document that dedup kept is scored and kept or
    # rejected with the reason, the books balance, and the stage's scores are the classifier's.
    from tokenmill.pipeline.config import QualityModelConfig
    from tokenmill.training.classifier import Classifier
    from tokenmill.training.quality_model import LOW_SCORE, STAGE, score_part

    curate_dir, threshold = curated
    stages = funnel.doc_stages(str(curate_dir))
    assert stages[:3] == ["read", "quality", "dedup"] and stages[-1] == STAGE  # (decontam may come between)
    stats = json.loads((curate_dir / STAGE / "_stats.json").read_text())
    kept, rejected = pq.read_table(curate_dir / STAGE), pq.read_table(curate_dir / "rejected" / STAGE)
    assert stats["docs_in"] == json.loads((curate_dir / stages[-2] / "_stats.json").read_text())["docs_kept"] > 0
    assert stats["docs_in"] == kept.num_rows + rejected.num_rows and kept.num_rows == stats["docs_kept"]
    assert stats["rejected"] == {LOW_SCORE: rejected.num_rows} and 0 < rejected.num_rows < stats["docs_in"]
    assert min(kept["quality_score"].to_pylist()) >= threshold > max(rejected["quality_score"].to_pylist())
    for table in (kept, rejected):  # the text as the quality stage left it
        expected = Classifier(task_dir).proba(table["text"].to_pylist())[:, 1]
        assert np.allclose(table["quality_score"].to_pylist(), expected, atol=1e-5)
    manifest = json.loads((curate_dir / "tokens" / "manifest.json").read_text())
    assert manifest["source_docs"] == stats["docs_kept"]

    # The Transformer classifier saved beside it scores the stage's input part with kind=transformer;
    # trained on all 80 documents, it tells the two types apart.
    transformer = Classifier(task_dir, "transformer")
    texts = [r["text"] for r in records]
    assert (transformer.proba(texts).argmax(-1) == [r["label"] == "web" for r in records]).mean() >= 0.75
    part = min((curate_dir / stages[-2]).glob("part-*.parquet"))
    cfg = QualityModelConfig(classifier=str(task_dir), kind="transformer", label="web", threshold=0.5)
    part_stats = score_part(str(part), str(tmp_path / "runs" / "t"), cfg)
    scored = pq.read_table(tmp_path / "runs" / "t" / STAGE).to_pylist() + pq.read_table(tmp_path / "runs" / "t" / "rejected" / STAGE).to_pylist()
    assert part_stats["docs_in"] == len(scored) == pq.read_table(part).num_rows
    assert np.allclose([r["quality_score"] for r in scored], transformer.proba([r["text"] for r in scored])[:, 1], atol=1e-4)


def _curate_with_classifier(classifier, records: list[dict], tmp_path, env: dict):
    """`tokenmill curate` of the toy documents with `classifier` as the quality_model stage, its
    threshold the median of the classifier's scores of them: (run directory, threshold)."""
    from tokenmill.training.classifier import Classifier

    texts = [r["text"] for r in records]
    scores = Classifier(classifier).proba(texts)[:, 1]  # of "web"
    threshold = float(np.median(scores))
    write_jsonl(tmp_path / "toy-docs.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
    sets = [f"curate.quality_model.classifier={classifier}", "curate.quality_model.label=web",
            f"curate.quality_model.threshold={threshold}", "curate.tokenizer.vocab_size=300", "curate.tokens.seq_len=32",
            "curate.decontam.enabled=false",  # the toy's WikiText paragraphs are evaluation text: decontam would drop them
            "ray.num_cpus=2", "ray.dashboard=false"]
    proc = subprocess.run([sys.executable, "-m", "tokenmill.flows.cli", "curate", str(tmp_path / "toy-docs.jsonl"),
                           "--run-id", "c", "--output-dir", str(tmp_path / "runs"), *(a for s in sets for a in ("--set", s))],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return tmp_path / "runs" / "c", threshold


def test_compare_shows_each_models_cross_validated_macro_f1(tmp_path):
    from tokenmill.flows.report import compare_rows

    def model(f1):
        score = {"mean": f1, "std": 0.04}
        return {"accuracy": score, "macro_precision": score, "macro_recall": score, "macro_f1": score, "folds": [],
                "confusion": [[4, 1], [1, 4]]}
    for run, models in (("a", {"ngram": model(0.87), "majority": model(0.35)}), ("b", {"ngram": model(0.8)})):
        out = tmp_path / run / "finetune" / "q"
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps({"task": "q", "labels": ["low", "high"], "docs": 10, "classifier": "ngram",
                                                      "folds": 2, "seed": 1, "fold_docs": [5, 5], "models": models}))
    header, rows = compare_rows([str(tmp_path / "a"), str(tmp_path / "b")])
    assert header[-2:] == ["q ngram macro F1 (CV)", "q majority macro F1 (CV)"]
    assert [r[-2:] for r in rows] == [["0.870 ± 0.040", "0.350 ± 0.040"], ["0.800 ± 0.040", "-"]]
