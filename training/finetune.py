"""Fine-tune the quality (or any text) classifiers of a run, and measure them honestly.

`run_finetune` (called by the finetune flow) reads a labeled JSONL task and cross-validates every kind
on the same stratified, seeded k folds (`finetune.folds`): the n-gram classifier (training/ngram.py,
trained in this process), the run's pretrained Transformer fine-tuned as a sequence classifier and the
same architecture from random init (both in one DeepSpeed job, `python -m tokenmill.training.finetune
--job JOB.json`, launched like pre-training: torchrun, N processes, gloo on CPU, NCCL on GPU), and the
majority class. Then it trains the n-gram classifier and the pretrained Transformer on every labeled
document and saves both in the output directory; classifier.json names `finetune.model` as the kind
curate's quality_model uses. metrics.json:

    {"task", "labels", "docs", "classifier": kind, "folds": k, "seed", "fold_docs": [held-out docs per fold],
     "models": {"ngram": M, "pretrained": M, "random_init": M, "majority": M}}
    M = {"accuracy", "macro_precision", "macro_recall", "macro_f1": {"mean", "std"} over the folds,
         "folds": [{"accuracy", "macro_precision", "macro_recall", "macro_f1"} per fold],
         "confusion": [[int]]  (summed over the folds; rows: true label, columns: predicted, in `labels` order)}
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tokenmill.pipeline import storage
from tokenmill.pipeline.contracts import CLASSIFIER_CONFIG, load_manifest, load_tokenizer

from . import ngram
from .checkpoint import load_model, save_fp32
from .classifier import TOKENIZER, WEIGHTS, SequenceClassifier, encode, predict_proba
from .config import FinetuneConfig, ModelConfig
from .data import RankBatches
from .launch import emit, run_job_main, run_module
from .model import Transformer
from .train import consolidated_state, ds_config, init_distributed, param_groups

DATA = Path(__file__).parent / "data" / "finetune"


@dataclass(frozen=True)
class Task:
    file: Path
    labels: list[str]


# Bundled tasks (licence notes in training/data/finetune/SOURCE.md).
TASKS = {
    # DCLM's human quality annotations: 0 = low quality, 1 = high quality.
    "dclm-quality": Task(DATA / "dclm_quality_labeled_agreement_281docs.jsonl", ["low", "high"]),
}
VARIANTS = ("pretrained", "random_init")  # the Transformer kinds the DeepSpeed job cross-validates
SCORES = ("accuracy", "macro_precision", "macro_recall", "macro_f1")


def resolve_task(cfg: FinetuneConfig) -> Task:
    bundled = TASKS.get(cfg.task)
    if cfg.data_file is None and bundled is None:
        raise ValueError(f"unknown fine-tune task {cfg.task!r}: choose one of {sorted(TASKS)}, "
                         "or set finetune.data_file (and finetune.labels) for your own")
    file = Path(cfg.data_file) if cfg.data_file else bundled.file
    labels = cfg.labels or (bundled.labels if bundled else None)
    if not labels or len(labels) < 2 or len(set(labels)) != len(labels):
        raise ValueError(f"fine-tune task {cfg.task!r}: finetune.labels must name two or more distinct labels, got {labels}")
    return Task(file, list(labels))


def load_labeled(path: Path, labels: list[str], text_key: str = "text", label_key: str = "label") -> tuple[list[str], np.ndarray]:
    """Texts and label indices of a JSONL file; a label is an index into `labels` or one of its names.
    A bad record stops the run with its file and line: a silently skipped labeled example would bias the metrics."""
    texts, ys = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_key), str):
                raise ValueError(f"{where}: no string field {text_key!r}")
            label = record.get(label_key)
            if isinstance(label, bool) or not (isinstance(label, int) and 0 <= label < len(labels) or label in labels):
                raise ValueError(f"{where}: label {label!r} is neither an index below {len(labels)} nor one of {labels}")
            texts.append(record[text_key])
            ys.append(label if isinstance(label, int) else labels.index(label))
    if not texts:
        raise ValueError(f"{path}: no labeled records")
    return texts, np.array(ys, dtype=np.int64)


def stratified_folds(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """The held-out indices of k folds: each label's documents, shuffled by seed, dealt round-robin (fold
    sizes of a label differ by at most one); every document is held out exactly once."""
    counts = np.bincount(y)
    if k > counts[counts > 0].min():
        raise ValueError(f"{k} folds need at least {k} documents of each label; the rarest has {counts[counts > 0].min()}")
    rng = np.random.default_rng(seed)
    folds: list[list[np.ndarray]] = [[] for _ in range(k)]
    offset = 0
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        for i in range(k):
            folds[(i + offset) % k].append(idx[i::k])
        offset += len(idx)  # the next label's first (larger) fold continues where this one ended
    return [np.sort(np.concatenate(f)) for f in folds]


def cross_validated(y: np.ndarray, folds: list[np.ndarray], predictions: list[np.ndarray], labels: list[str]) -> dict:
    """Mean and standard deviation of each score over the folds, each fold's scores, the summed confusion."""
    per_fold = [classification_metrics(y[f], p, labels) for f, p in zip(folds, predictions)]
    return {**{k: {"mean": float(np.mean([m[k] for m in per_fold])), "std": float(np.std([m[k] for m in per_fold]))}
               for k in SCORES},
            "folds": [{k: m[k] for k in SCORES} for m in per_fold],
            "confusion": np.sum([m["confusion"] for m in per_fold], axis=0).tolist()}


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, per-class and macro precision/recall/F1, confusion matrix (rows true, columns
    predicted). A class never predicted has precision 0 (sklearn's zero_division=0)."""
    k = len(labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (np.asarray(y_true), np.asarray(y_pred)), 1)
    tp = np.diag(confusion).astype(float)
    predicted, support = confusion.sum(0), confusion.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=precision + recall > 0)
    return {
        "accuracy": float(tp.sum() / max(1, confusion.sum())),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(labels)},
        "confusion": confusion.tolist(),
    }


# ---- the DeepSpeed job (every rank) ---------------------------------------------------------------

def train_variant(variant: str, job: dict, cfg: FinetuneConfig, data: dict, train: np.ndarray, rank: int, world: int,
                  tag: str) -> tuple[SequenceClassifier | None, dict]:
    """Fine-tune one model on the documents `train`; rank 0 returns it (the others None) and its summary."""
    import deepspeed

    num_labels = len(job["labels"])
    torch.manual_seed(cfg.seed)  # the same head init and batches for both variants
    body = load_model(job["pretrained_dir"]) if variant == "pretrained" else Transformer(ModelConfig(**job["model"]))
    model = SequenceClassifier(body.train(), num_labels)
    batches = RankBatches(train, cfg.micro_batch, rank, world, cfg.seed)
    max_steps = cfg.epochs * batches.per_epoch
    config = ds_config(cfg.train_config(max_steps), world)
    engine, _, _, scheduler = deepspeed.initialize(model=model, model_parameters=param_groups(model, cfg.weight_decay), config=config)
    device = engine.device
    if rank == 0:
        emit("model", variant=variant, run=tag, params=sum(p.numel() for p in model.parameters()), processes=world,
             device=device.type, zero_stage=cfg.zero_stage, steps=max_steps, global_batch=config["train_batch_size"])
    started, loss_value = time.perf_counter(), None
    for step in range(1, max_steps + 1):
        take = batches.next()
        ids = torch.from_numpy(data["ids"][take]).to(device)
        lengths = torch.from_numpy(data["lengths"][take]).to(device)
        mask = torch.arange(ids.shape[1], device=device)[None, :] < lengths[:, None]
        loss = F.cross_entropy(engine(ids, mask).float(), torch.from_numpy(data["labels"][take]).to(device))
        engine.backward(loss)
        engine.step()
        loss_avg = loss.detach().float()
        torch.distributed.all_reduce(loss_avg)
        loss_value = loss_avg.item() / world
        if rank == 0 and (step % 10 == 0 or step in (1, max_steps)):
            emit("step", step=step, max_steps=max_steps, variant=variant, run=tag, loss=loss_value, lr=scheduler.get_last_lr()[0])
    state = consolidated_state(engine, cfg.zero_stage, rank)  # every rank takes part under ZeRO-3
    summary = {"steps": max_steps, "final_loss": loss_value, "seconds": round(time.perf_counter() - started, 2)}
    if rank != 0:
        return None, summary
    trained = SequenceClassifier(Transformer(body.cfg), num_labels)
    trained.load_state_dict(state)
    return trained, summary


def main(job_path: str) -> None:
    """Each fold: both variants trained on the other folds, predicting this one; then the pretrained
    variant on every document, saved as the transformer classifier."""
    job = json.loads(Path(job_path).read_text())
    cfg = FinetuneConfig(**job["finetune"])
    rank, world = init_distributed()
    with np.load(job["data"]) as npz:  # no pickle: plain arrays only
        data = {k: npz[k] for k in npz.files}
    everything = np.arange(len(data["labels"]))
    result: dict = {"world_size": world, "zero_stage": cfg.zero_stage, **{v: {"predictions": [], "training": []} for v in VARIANTS}}
    for f, heldout in enumerate(job["folds"]):
        heldout = np.array(heldout, dtype=np.int64)
        for variant in VARIANTS:
            model, summary = train_variant(variant, job, cfg, data, np.setdiff1d(everything, heldout), rank, world, f"fold {f + 1}")
            if rank == 0:
                proba = predict_proba(model, data["ids"][heldout], data["lengths"][heldout], batch_size=cfg.micro_batch)
                result[variant]["predictions"].append(proba.argmax(-1).tolist())
                result[variant]["training"].append(summary)
    model, summary = train_variant("pretrained", job, cfg, data, everything, rank, world, "all documents")
    if rank == 0:
        save_fp32(model.state_dict(), Path(job["out_dir"]) / WEIGHTS)
        result["final"] = summary
        emit("done", result=result)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


# ---- the driver (the flow calls this) -------------------------------------------------------------

def run_finetune(cfg: FinetuneConfig, run_dir: str, on_line: Callable[[str], None] = print,
                 ray_name: str | None = None) -> dict:
    """Cross-validate every kind and save both classifiers, from the run's pretrained model (run_dir/train) and
    tokenizer (run_dir/tokens); write run_dir/finetune/<task>/ (classifier, metrics.json) and return the metrics."""
    run, train_dir, tokens_dir = Path(run_dir), Path(run_dir) / "train", Path(run_dir) / "tokens"
    if not (train_dir / "model.safetensors").exists():
        raise FileNotFoundError(f"{train_dir}/model.safetensors not found: fine-tuning starts from a pretrained model; "
                                f"run `tokenmill train --run-id {run.name}` first")
    task = resolve_task(cfg)
    texts, y = load_labeled(task.file, task.labels, cfg.text_key, cfg.label_key)
    folds = stratified_folds(y, cfg.folds, cfg.seed)
    model_cfg = ModelConfig.model_validate_json((train_dir / "model_config.json").read_text())
    max_len = cfg.max_len or model_cfg.seq_len
    if max_len > model_cfg.seq_len:
        raise ValueError(f"finetune.max_len {max_len} is longer than the pretrained model's seq_len {model_cfg.seq_len}")

    out = run / "finetune" / cfg.task
    out.mkdir(parents=True, exist_ok=True)
    (out / CLASSIFIER_CONFIG).unlink(missing_ok=True)  # written last: its presence means both classifiers are saved
    on_line(f"fine-tune {cfg.task}: {len(y)} documents, labels {task.labels}, {cfg.folds}-fold cross-validation; "
            f"Transformer: max_len {max_len}, {cfg.epochs} epochs")

    # The n-gram kind, here: seconds for every fold, then the classifier from all documents.
    started = time.perf_counter()
    predictions: dict[str, list[np.ndarray]] = {"ngram": []}
    for heldout in folds:
        train = np.setdiff1d(np.arange(len(y)), heldout)
        params = ngram.fit([texts[i] for i in train], y[train], len(task.labels), cfg.ngram)
        predictions["ngram"].append(ngram.predict_logits([texts[i] for i in heldout], params, cfg.ngram).argmax(-1))
    ngram.save(ngram.fit(texts, y, len(task.labels), cfg.ngram), out)
    ngram_seconds = round(time.perf_counter() - started, 2)
    on_line(f"n-gram classifier: {cfg.folds} folds and the final fit in {ngram_seconds} s")

    # The Transformer kinds: one DeepSpeed job.
    tokenizer_file = tokens_dir / load_manifest(tokens_dir)["tokenizer"]
    shutil.copyfile(tokenizer_file, out / TOKENIZER)  # the classifier directory scores text on its own
    ids, lengths = encode(load_tokenizer(str(tokenizer_file)), texts, max_len)
    np.savez(out / "data.npz", ids=ids, lengths=lengths, labels=y)
    job = out / "job.json"
    job.write_text(json.dumps({"finetune": cfg.model_dump(), "labels": task.labels, "pretrained_dir": str(train_dir),
                               "model": model_cfg.model_dump(), "data": str(out / "data.npz"), "out_dir": str(out),
                               "folds": [f.tolist() for f in folds]}, indent=2))
    summary = run_module("tokenmill.training.finetune", cfg, job, str(out), "finetune.log", on_line, ray_name)
    (out / "data.npz").unlink()

    for v in VARIANTS:
        predictions[v] = [np.array(p) for p in summary[v]["predictions"]]
    majority = [np.full(len(f), np.bincount(np.delete(y, f), minlength=len(task.labels)).argmax()) for f in folds]
    predictions["majority"] = majority
    metrics = {"task": cfg.task, "labels": task.labels, "docs": len(y), "classifier": cfg.model, "folds": cfg.folds,
               "seed": cfg.seed, "fold_docs": [len(f) for f in folds],
               "models": {name: cross_validated(y, folds, p, task.labels) for name, p in predictions.items()}}
    storage.write_json(str(out / "metrics.json"), metrics)
    training = {v: summary[v]["training"] for v in VARIANTS}
    storage.write_json(str(out / "_stats.json"), {
        "task": cfg.task, "world_size": summary["world_size"], "ngram_seconds": ngram_seconds,
        "training": {**training, "final": summary["final"]},
        **{name: {k: m[k]["mean"] for k in ("accuracy", "macro_f1")} for name, m in metrics["models"].items()}})
    storage.write_json(str(out / CLASSIFIER_CONFIG), {
        "task": cfg.task, "labels": task.labels, "data_file": str(task.file), "kind": cfg.model,
        "ngram": {**cfg.ngram.model_dump(), "weights": ngram.WEIGHTS},
        "transformer": {"weights": WEIGHTS, "max_len": max_len, "pooling": "mean", "tokenizer": TOKENIZER,
                        "tokenizer_sha256": storage.sha256_file(str(tokenizer_file)), "pretrained_from": str(train_dir),
                        "model": model_cfg.model_dump()}})
    for line in metrics_table(metrics):
        on_line(f"{cfg.folds}-fold CV " + line)
    return metrics


def metrics_table(metrics: dict) -> list[str]:
    """The cross-validated comparison as text lines: per model, mean ± std over the folds of accuracy and macro P/R/F1."""
    lines = [f"{'model':12s} " + " ".join(f"{name:>13s}" for name in ("accuracy", "macro_P", "macro_R", "macro_F1"))]
    for name, m in metrics["models"].items():
        lines.append(f"{name:12s} " + " ".join(f"{m[k]['mean']:6.3f} ± {m[k]['std']:.3f}" for k in SCORES))
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, help="job JSON written by run_finetune")
    run_job_main(main, parser.parse_args().job)
