"""Fine-tuning a classifier and the model-based quality filter.

Unit tests: the stratified split, the metrics on a hand-counted example, bad labeled input. One
integration test runs `tokenmill finetune` as a user does (real local Prefect server, a real
2-process DeepSpeed job on CPU/gloo) on a separable toy task (WikiText paragraphs vs DCLM web pages),
from the session's tiny pretrained model, then runs `tokenmill curate` on the toy documents with the
saved classifier as its quality_model stage."""
from __future__ import annotations

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
from tokenmill.training.finetune import TASKS, classification_metrics, load_labeled, stratified_split

DCLM = TASKS["dclm-quality"]
WIKI = REPO / "training" / "data" / "heldout" / "wikitext2_valid_head.txt"


def test_bundled_task_split_is_stratified_and_deterministic():
    texts, y = load_labeled(DCLM.file, DCLM.labels)
    assert len(texts) == 281 and Counter(y.tolist()) == {1: 152, 0: 129}
    train, heldout = stratified_split(y, 0.2, seed=7)
    assert len(heldout) == 56 and Counter(y[heldout].tolist()) == {1: 30, 0: 26}
    assert set(train).isdisjoint(heldout) and len(train) + len(heldout) == 281
    again, _ = stratified_split(y, 0.2, seed=7)
    other, _ = stratified_split(y, 0.2, seed=8)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


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
    sets = ["finetune.data_file=" + str(tmp_path / "toy.jsonl"), "finetune.labels=[wiki, web]", "finetune.epochs=4",
            "finetune.micro_batch=4", "finetune.lr=1e-3", "finetune.nproc=2", "finetune.threads_per_proc=1"]
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
    assert "fine-tune toy: held-out 16 docs (trained on 64)" in out

    task_dir = run_dir / "finetune" / "toy"
    metrics = json.loads((task_dir / "metrics.json").read_text())
    assert set(metrics) == {"task", "labels", "train_docs", "heldout_docs", "models"}
    assert (metrics["task"], metrics["labels"], metrics["train_docs"], metrics["heldout_docs"]) == ("toy", ["wiki", "web"], 64, 16)
    assert set(metrics["models"]) == {"pretrained", "random_init", "majority"}
    for m in metrics["models"].values():
        assert set(m) == {"accuracy", "macro_precision", "macro_recall", "macro_f1", "per_class", "confusion"}
        assert sum(map(sum, m["confusion"])) == 16 and [sum(row) for row in m["confusion"]] == [8, 8]
        assert {k: c["support"] for k, c in m["per_class"].items()} == {"wiki": 8, "web": 8}
    majority, pretrained = metrics["models"]["majority"], metrics["models"]["pretrained"]
    assert majority["accuracy"] == 0.5 and majority["macro_f1"] == pytest.approx(1 / 3)
    assert pretrained["macro_f1"] >= majority["macro_f1"]
    assert pretrained["accuracy"] >= 0.75  # two clearly different text types
    summary = json.loads((run_dir / "finetune" / "_stats.json").read_text())
    assert summary["tasks"]["toy"]["models"]["pretrained"]["accuracy"] == pretrained["accuracy"]
    classifier = json.loads((task_dir / "classifier.json").read_text())
    assert classifier["labels"] == ["wiki", "web"] and classifier["max_len"] == 32 and (task_dir / classifier["tokenizer"]).exists()
    assert (task_dir / "_SUCCESS").exists() and (run_dir / "report.md").exists()

    # The saved classifier as curate's quality filter (threshold at the median score of the toy
    # documents, so both outcomes occur): every document that dedup kept is scored and kept or
    # rejected with the reason, the books balance, and the stage's scores are the classifier's.
    from tokenmill.training.classifier import Classifier
    from tokenmill.training.quality_model import LOW_SCORE, STAGE

    curate_dir, threshold = curated
    assert funnel.doc_stages(str(curate_dir)) == ["read", "quality", "dedup", STAGE]
    stats = json.loads((curate_dir / STAGE / "_stats.json").read_text())
    kept, rejected = pq.read_table(curate_dir / STAGE), pq.read_table(curate_dir / "rejected" / STAGE)
    assert stats["docs_in"] == json.loads((curate_dir / "dedup" / "_stats.json").read_text())["docs_kept"] > 0
    assert stats["docs_in"] == kept.num_rows + rejected.num_rows and kept.num_rows == stats["docs_kept"]
    assert stats["rejected"] == {LOW_SCORE: rejected.num_rows} and 0 < rejected.num_rows < stats["docs_in"]
    assert min(kept["quality_score"].to_pylist()) >= threshold > max(rejected["quality_score"].to_pylist())
    for table in (kept, rejected):  # the text as the quality stage left it
        expected = Classifier(task_dir).proba(table["text"].to_pylist())[:, 1]
        assert np.allclose(table["quality_score"].to_pylist(), expected, atol=1e-4)
    manifest = json.loads((curate_dir / "tokens" / "manifest.json").read_text())
    assert manifest["source_docs"] == stats["docs_kept"]


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
            "ray.num_cpus=2", "ray.dashboard=false"]
    proc = subprocess.run([sys.executable, "-m", "tokenmill.flows.cli", "curate", str(tmp_path / "toy-docs.jsonl"),
                           "--run-id", "c", "--output-dir", str(tmp_path / "runs"), *(a for s in sets for a in ("--set", s))],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return tmp_path / "runs" / "c", threshold
