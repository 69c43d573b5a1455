"""Fine-tune the run's pretrained model as a sequence classifier, and measure what pre-training bought.

`run_finetune` (called by the finetune flow) reads a labeled JSONL task, splits it (stratified, by
seed), tokenizes it with the run's tokenizer and launches the DeepSpeed job
`python -m tokenmill.training.finetune --job JOB.json` the way pre-training is launched (torchrun, N processes,
gloo on CPU, NCCL on GPU). The job fine-tunes two models on the same batches: the pretrained body and
the same architecture from random init; it saves the pretrained one's classifier and both models'
held-out predictions. The driver adds a majority-class baseline and writes metrics.json:

    {"task", "labels", "train_docs", "heldout_docs",
     "models": {"pretrained": M, "random_init": M, "majority": M}}
    M = {"accuracy", "macro_precision", "macro_recall", "macro_f1",
         "per_class": {label: {"precision", "recall", "f1", "support"}},
         "confusion": [[int]]  (rows: true label, columns: predicted, in `labels` order)}
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from tokenmill.pipeline import storage
from tokenmill.pipeline.contracts import load_manifest, load_tokenizer

from .checkpoint import load_model
from .classifier import TOKENIZER, SequenceClassifier, encode, predict_proba, save_classifier
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
VARIANTS = ("pretrained", "random_init")


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


def stratified_split(y: np.ndarray, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, heldout) indices: round(heldout_fraction * n) of each label held out, picked by seed."""
    rng = np.random.default_rng(seed)
    train, heldout = [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        k = int(round(heldout_fraction * len(idx)))
        heldout.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(heldout))


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

def train_variant(variant: str, job: dict, cfg: FinetuneConfig, data: dict, rank: int, world: int) -> dict:
    """Fine-tune one model; rank 0 returns its held-out predictions (and saves the pretrained one)."""
    import deepspeed

    num_labels, out_dir = len(job["labels"]), Path(job["out_dir"])
    torch.manual_seed(cfg.seed)  # the same head init and batches for both variants
    body = load_model(job["pretrained_dir"]) if variant == "pretrained" else Transformer(ModelConfig(**job["model"]))
    model = SequenceClassifier(body.train(), num_labels)
    batches = RankBatches(np.arange(len(data["train_labels"])), cfg.micro_batch, rank, world, cfg.seed)
    max_steps = cfg.epochs * batches.per_epoch
    config = ds_config(cfg.train_config(max_steps), world)
    engine, _, _, scheduler = deepspeed.initialize(model=model, model_parameters=param_groups(model, cfg.weight_decay), config=config)
    device = engine.device
    if rank == 0:
        emit("model", variant=variant, params=sum(p.numel() for p in model.parameters()), processes=world,
             device=device.type, zero_stage=cfg.zero_stage, steps=max_steps, global_batch=config["train_batch_size"])
    started, loss_value = time.perf_counter(), None
    for step in range(1, max_steps + 1):
        take = batches.next()
        ids = torch.from_numpy(data["train_ids"][take]).to(device)
        lengths = torch.from_numpy(data["train_lengths"][take]).to(device)
        mask = torch.arange(ids.shape[1], device=device)[None, :] < lengths[:, None]
        loss = F.cross_entropy(engine(ids, mask).float(), torch.from_numpy(data["train_labels"][take]).to(device))
        engine.backward(loss)
        engine.step()
        loss_avg = loss.detach().float()
        torch.distributed.all_reduce(loss_avg)
        loss_value = loss_avg.item() / world
        if rank == 0 and (step % 10 == 0 or step in (1, max_steps)):
            emit("step", step=step, max_steps=max_steps, variant=variant, loss=loss_value, lr=scheduler.get_last_lr()[0])
    state = consolidated_state(engine, cfg.zero_stage, rank)  # every rank takes part under ZeRO-3
    if rank != 0:
        return {}
    trained = SequenceClassifier(Transformer(body.cfg), num_labels)
    trained.load_state_dict(state)
    if variant == "pretrained":
        save_classifier(state, out_dir, {**job["meta"], "model": body.cfg.model_dump()})
    proba = predict_proba(trained, data["heldout_ids"], data["heldout_lengths"], batch_size=cfg.micro_batch)
    return {"steps": max_steps, "final_loss": loss_value, "seconds": round(time.perf_counter() - started, 2),
            "heldout_predictions": proba.argmax(-1).tolist()}


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    cfg = FinetuneConfig(**job["finetune"])
    rank, world = init_distributed()
    with np.load(job["data"]) as npz:  # no pickle: plain arrays only
        data = {k: npz[k] for k in npz.files}
    results = {variant: train_variant(variant, job, cfg, data, rank, world) for variant in VARIANTS}
    if rank == 0:
        emit("done", result={"world_size": world, "zero_stage": cfg.zero_stage, **results})
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


# ---- the driver (the flow calls this) -------------------------------------------------------------

def run_finetune(cfg: FinetuneConfig, run_dir: str, on_line: Callable[[str], None] = print) -> dict:
    """Fine-tune on the run's pretrained model (run_dir/train) and tokenizer (run_dir/tokens); write
    run_dir/finetune/<task>/ (classifier, metrics.json) and return the metrics."""
    run, train_dir, tokens_dir = Path(run_dir), Path(run_dir) / "train", Path(run_dir) / "tokens"
    if not (train_dir / "model.safetensors").exists():
        raise FileNotFoundError(f"{train_dir}/model.safetensors not found: fine-tuning starts from a pretrained model; "
                                f"run `tokenmill train --run-id {run.name}` first")
    task = resolve_task(cfg)
    texts, y = load_labeled(task.file, task.labels, cfg.text_key, cfg.label_key)
    train_idx, heldout_idx = stratified_split(y, cfg.heldout_fraction, cfg.seed)
    model_cfg = ModelConfig.model_validate_json((train_dir / "model_config.json").read_text())
    max_len = cfg.max_len or model_cfg.seq_len
    if max_len > model_cfg.seq_len:
        raise ValueError(f"finetune.max_len {max_len} is longer than the pretrained model's seq_len {model_cfg.seq_len}")

    out = run / "finetune" / cfg.task
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_file = tokens_dir / load_manifest(tokens_dir)["tokenizer"]
    shutil.copyfile(tokenizer_file, out / TOKENIZER)  # the classifier directory scores text on its own
    ids, lengths = encode(load_tokenizer(str(tokenizer_file)), texts, max_len)
    np.savez(out / "data.npz", train_ids=ids[train_idx], train_lengths=lengths[train_idx], train_labels=y[train_idx],
             heldout_ids=ids[heldout_idx], heldout_lengths=lengths[heldout_idx], heldout_labels=y[heldout_idx])
    meta = {"task": cfg.task, "labels": task.labels, "max_len": max_len, "pooling": "mean", "tokenizer": TOKENIZER,
            "tokenizer_sha256": storage.sha256_file(str(tokenizer_file)), "pretrained_from": str(train_dir),
            "data_file": str(task.file)}
    job = out / "job.json"
    job.write_text(json.dumps({"finetune": cfg.model_dump(), "labels": task.labels, "pretrained_dir": str(train_dir),
                               "model": model_cfg.model_dump(), "data": str(out / "data.npz"), "out_dir": str(out),
                               "meta": meta}, indent=2))
    on_line(f"fine-tune {cfg.task}: {len(train_idx)} train / {len(heldout_idx)} held-out documents, labels {task.labels}, "
            f"max_len {max_len}, {cfg.epochs} epochs")
    summary = run_module("tokenmill.training.finetune", cfg, job, str(out), "finetune.log", on_line)

    y_heldout = y[heldout_idx]
    majority = int(np.bincount(y[train_idx], minlength=len(task.labels)).argmax())
    predictions = {**{v: np.array(summary[v]["heldout_predictions"]) for v in VARIANTS},
                   "majority": np.full(len(heldout_idx), majority)}
    metrics = {"task": cfg.task, "labels": task.labels, "train_docs": int(len(train_idx)), "heldout_docs": int(len(heldout_idx)),
               "models": {name: classification_metrics(y_heldout, pred, task.labels) for name, pred in predictions.items()}}
    storage.write_json(str(out / "metrics.json"), metrics)
    training = {v: {k: summary[v][k] for k in ("steps", "final_loss", "seconds")} for v in VARIANTS}
    storage.write_json(str(out / "_stats.json"), {"task": cfg.task, "world_size": summary["world_size"], "training": training,
                                             **{name: {k: m[k] for k in ("accuracy", "macro_f1")} for name, m in metrics["models"].items()}})
    (out / "data.npz").unlink()
    for line in metrics_table(metrics):
        on_line("heldout " + line)
    return metrics


def metrics_table(metrics: dict) -> list[str]:
    """The held-out comparison as text lines (model, accuracy, macro P/R/F1)."""
    lines = [f"{'model':12s} {'accuracy':>8s} {'macro_P':>8s} {'macro_R':>8s} {'macro_F1':>8s}"]
    for name, m in metrics["models"].items():
        lines.append(f"{name:12s} {m['accuracy']:8.3f} {m['macro_precision']:8.3f} {m['macro_recall']:8.3f} {m['macro_f1']:8.3f}")
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, help="job JSON written by run_finetune")
    run_job_main(main, parser.parse_args().job)
