"""Downstream tasks through lm-evaluation-harness (`pip install tokenmill[eval]`), fully offline.

The tasks are local: task YAMLs + JSONL data shipped in training/data/lm_eval (built from public-domain
text by build_tasks.py there). The model is the run's export as a Hugging Face Llama directory, loaded
by lm-eval's `hf` backend; the same architecture untrained is scored too, as the baseline.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import time
from pathlib import Path

import torch
import yaml

from .checkpoint import checkpoint_tag
from .config import EvalConfig
from .evaluate import torch_threads
from .export import consolidate, export_run, run_tokenizer, write_hf
from .model import Transformer

TASKS_DIR = Path(__file__).parent / "data" / "lm_eval"
NOT_INSTALLED = "lm-eval not installed (pip install tokenmill[eval])"


def lm_eval_version() -> str | None:
    try:
        return importlib.metadata.version("lm-eval")
    except importlib.metadata.PackageNotFoundError:
        return None


def write_task_dir(tasks: list[str], out_dir: Path, cache_dir: Path) -> Path:
    """The shipped task YAMLs with their data files made absolute and the datasets cache pointed at
    `cache_dir` (nothing written under $HOME)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in tasks:
        src = TASKS_DIR / f"{name}.yaml"
        if not src.exists():
            known = sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))
            raise ValueError(f"evaluate.lm_eval_tasks: no local task {name!r} in {TASKS_DIR}; known: {known}")
        task = yaml.safe_load(src.read_text())
        kwargs = task.setdefault("dataset_kwargs", {})
        kwargs["data_files"] = {split: str(TASKS_DIR / f) for split, f in kwargs["data_files"].items()}
        kwargs["cache_dir"] = str(cache_dir)
        (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return out_dir


def _offline(hf_home: Path) -> None:
    """No hub access at all: the model is a local directory and the data local JSON files."""
    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                       "HF_HOME": str(hf_home), "HF_DATASETS_CACHE": str(hf_home / "datasets"),
                       "HF_EVALUATE_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    # the libraries read these at import; set them too in case one was imported before
    import datasets.config
    import huggingface_hub.constants

    datasets.config.HF_DATASETS_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def run_tasks(hf_dir: Path, tasks: list[str], work_dir: Path, limit: int | None, batch_size: int, seed: int) -> dict:
    """lm_eval.simple_evaluate on a local HF model directory; the raw results (JSON-safe)."""
    _offline(work_dir / "hf_home")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    task_dir = write_task_dir(tasks, work_dir / "tasks", work_dir / "hf_home" / "datasets")
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = simple_evaluate(model="hf", model_args={"pretrained": str(hf_dir), "dtype": "float32", "device": device},
                          tasks=tasks, task_manager=manager, limit=limit, batch_size=batch_size,
                          random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                          bootstrap_iters=1000, log_samples=False)
    return json.loads(json.dumps({k: out[k] for k in ("results", "n-samples", "configs", "versions") if k in out}, default=str))


def summarize(raw: dict) -> dict[str, dict]:
    """{task: {metric: value, metric_stderr: value, samples: n}} from simple_evaluate's results."""
    out = {}
    for task, metrics in raw["results"].items():
        row = {}
        for key, value in metrics.items():
            metric, _, _filter = key.partition(",")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and metric != "sample_len":
                row[metric] = float(value)
        row["samples"] = int(raw.get("n-samples", {}).get(task, {}).get("effective", 0))
        out[task] = row
    return out


def _untrained_hf(run_dir: Path, step: int | None, out_dir: Path, seed: int) -> Path:
    """The same architecture at random init (seeded as evaluate's baseline), exported like the trained one."""
    ckpt_dir = run_dir / "train" / "checkpoints"
    _, cfg = consolidate(ckpt_dir, None if step is None else checkpoint_tag(ckpt_dir, step))
    torch.manual_seed(seed)
    model = Transformer(cfg)
    return write_hf(model.state_dict(), cfg, run_tokenizer(run_dir), out_dir)


def evaluate_run(run_dir: str | Path, cfg: EvalConfig, seed: int = 0, step: int | None = None) -> dict:
    """lm-eval on the run's exported model (runs/<id>/export/, written unless made from this checkpoint; a
    checkpoint's goes to eval/step-<N>/export/) and on the untrained baseline. Writes <eval dir>/lm_eval.json; returns
    {"version", "tasks", "trained": summary, "untrained": summary, "seconds"} or {"skipped": why}."""
    version = lm_eval_version()
    if version is None:
        return {"skipped": NOT_INSTALLED}
    run_dir = Path(run_dir)
    eval_dir = run_dir / "eval" if step is None else run_dir / "eval" / f"step-{step}"
    export_dir = run_dir / "export" if step is None else eval_dir / "export"
    export_run(run_dir, export_dir, step)  # reused only if made from this checkpoint (export.EXPORT_SOURCE)
    work = eval_dir / "lm_eval_work"
    started = time.monotonic()
    try:
        with torch_threads(cfg.threads):
            trained = run_tasks(export_dir, cfg.lm_eval_tasks, work, cfg.lm_eval_limit, cfg.lm_eval_batch_size, seed)
            untrained = run_tasks(_untrained_hf(run_dir, step, work / "untrained_model", seed), cfg.lm_eval_tasks, work,
                                  cfg.lm_eval_limit, cfg.lm_eval_batch_size, seed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"version": version, "tasks": list(cfg.lm_eval_tasks), "limit": cfg.lm_eval_limit,
              "trained": summarize(trained), "untrained": summarize(untrained), "seconds": round(time.monotonic() - started, 1)}
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / "lm_eval.json").write_text(json.dumps({"model": str(export_dir), "trained": trained, "untrained": untrained}, indent=2))
    return result
