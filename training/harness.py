"""Downstream tasks through lm-evaluation-harness (installed with tokenmill: see pyproject.toml).

The tasks are named in `evaluate.lm_eval_tasks` (training/eval_sets.py resolves them): the bundled local
ones (task YAMLs + JSONL data in training/data/lm_eval, built from public-domain text by build_tasks.py
there), which run offline, lm-eval's own tasks and groups, whose data comes from where `datasets` finds it
(the HF cache under HF_HOME, else the Hub), task YAML directories in `evaluate.lm_eval_include`, and
presets (early-signal). The model is the run's export as a Hugging Face Llama directory, loaded by
lm-eval's `hf` backend; the same architecture untrained is scored too, as the baseline.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import time
from pathlib import Path

import torch

from tokenmill.pipeline import storage
from tokenmill.pipeline.contracts import MANIFEST

from .checkpoint import checkpoint_tag, latest_tag
from .config import EvalConfig
from .eval_sets import expand, hf_offline, local_tasks, task_manager
from .evaluate import torch_threads
from .export import consolidate, export_run, run_tokenizer, write_hf
from .model import Transformer

NOT_INSTALLED = "lm-eval not installed (pip install lm-eval[hf]==0.4.13)"


class TaskDataError(RuntimeError):
    """An lm-eval task whose data could not be reached: one line saying which, what was tried, how to pre-fetch."""


def lm_eval_version() -> str | None:
    try:
        return importlib.metadata.version("lm-eval")
    except importlib.metadata.PackageNotFoundError:
        return None


def _dataset_of(manager, name: str) -> str:
    """'dataset_path[/dataset_name]' of a task as its YAML says, for error messages."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index.get(name)
    try:
        cfg = load_yaml(Path(entry.yaml_path), resolve_func=False) if entry and entry.yaml_path else {}
    except Exception:  # noqa: BLE001 - only for the message
        cfg = {}
    if "dataset_path" not in cfg:
        return "its tasks' datasets"
    return "/".join(str(x) for x in (cfg["dataset_path"], cfg.get("dataset_name")) if x)


def unreachable(name: str, dataset: str, offline: bool, error: BaseException) -> str:
    from datasets.config import HF_DATASETS_CACHE

    tried = f"the datasets cache {HF_DATASETS_CACHE}" + (" only (offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set)"
                                                          if offline else ", then the Hugging Face Hub")
    cause = " ".join(str(error).split())[:300] or type(error).__name__
    return (f"lm-eval task {name!r}: its data ({dataset}) could not be loaded; tried {tried}: {cause}. "
            f"Pre-fetch it where there is network with the same HF_HOME (`HF_HOME=... lm-eval run --model dummy "
            f"--tasks {name} --limit 1`, or datasets.load_dataset on {dataset}) and copy that HF_HOME here, or "
            "point evaluate.lm_eval_include at a directory holding a copy of the task's YAML that reads local files")


def load_tasks(manager, tasks: list[str]) -> list:
    """The Task/Group objects of `tasks`, each built (its data loaded) on its own so that a task whose data
    cannot be reached is named in one line (TaskDataError) instead of a stack of library errors."""
    from datasets.config import HF_DATASETS_OFFLINE

    built = []
    for name in tasks:
        try:
            obj = manager._load_spec(name)  # the pinned lm-eval's loader of one name (TaskManager.load takes objects)
        except Exception as e:  # noqa: BLE001 - whatever datasets/fsspec/requests raised
            raise TaskDataError(unreachable(name, _dataset_of(manager, name), HF_DATASETS_OFFLINE, e)) from None
        built += obj if isinstance(obj, list) else [obj]
    return built


def run_tasks(hf_dir: Path, tasks: list[str], include: list[str], work_dir: Path, limit: int | None, batch_size: int,
              seed: int) -> dict:
    """lm_eval.simple_evaluate on a local HF model directory; the raw results (JSON-safe). Offline when every
    task is a bundled one; otherwise the Hub and HF cache as the user's environment says."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bundled tasks only: no Hub at all; otherwise offline only where the user's environment says so (set
    # here again: datasets and huggingface_hub read the variables once, at import)
    offline = set(tasks) <= set(local_tasks()) or any(os.environ.get(k, "").lower() in ("1", "true", "yes")
                                                       for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    with hf_offline(offline):
        from lm_eval import simple_evaluate

        manager = task_manager(tasks, include, work_dir)
        loaded = load_tasks(manager, tasks)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        out = simple_evaluate(model="hf", model_args={"pretrained": str(hf_dir), "dtype": "float32", "device": device},
                              tasks=loaded, task_manager=manager, limit=limit, batch_size=batch_size,
                              random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                              bootstrap_iters=1000, log_samples=False)
    keys = ("results", "groups", "group_subtasks", "n-samples", "configs", "versions")
    return json.loads(json.dumps({k: out[k] for k in keys if k in out}, default=str)) | {"offline": offline}


def summarize(raw: dict, tasks: list[str]) -> dict[str, dict]:
    """{task: {metric: value, metric_stderr: value, samples: n}} for each requested task or group (a group's
    metrics are lm-eval's aggregate of its tasks, its samples their sum) from simple_evaluate's results."""
    results = {**raw.get("results", {}), **raw.get("groups", {})}
    subtasks = raw.get("group_subtasks", {})

    def samples(name: str) -> int:
        if subtasks.get(name):
            return sum(samples(child) for child in subtasks[name])
        return int(raw.get("n-samples", {}).get(name, {}).get("effective", 0))

    out = {}
    for task in [t for t in tasks if t in results] or list(results):
        row = {}
        for key, value in results[task].items():
            metric, _, _filter = key.partition(",")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and metric != "sample_len":
                row[metric] = float(value)
        row["samples"] = samples(task)
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
    # From object storage: a local copy of what the export reads, whose new files (export/, lm_eval.json) are
    # uploaded at the end.
    run_dir = str(run_dir)
    fetch = () if storage.is_local(run_dir) else export_inputs(run_dir, step)
    with storage.LocalDir(run_dir, fetch=fetch) as local:
        return _evaluate_run(Path(local.path), cfg, seed, step, version, run_dir)


def export_inputs(run_dir: str, step: int | None) -> list[str]:
    """The files under a run directory that export_run reads: the manifest, the tokenizer and the checkpoint."""
    tokens = storage.join(run_dir, "tokens")
    ckpt_dir = storage.join(run_dir, "train", "checkpoints")
    tag = latest_tag(ckpt_dir) if step is None else checkpoint_tag(ckpt_dir, step)
    if tag is None:
        raise FileNotFoundError(f"{ckpt_dir}: no checkpoint (no 'latest' file); train the run first")
    tokenizer = storage.read_json(storage.join(tokens, MANIFEST))["tokenizer"]
    return [f"tokens/{MANIFEST}", f"tokens/{tokenizer}", "train/checkpoints/latest", f"train/checkpoints/{tag}"]


def _evaluate_run(run_dir: Path, cfg: EvalConfig, seed: int, step: int | None, version: str, shown: str) -> dict:
    eval_dir = run_dir / "eval" if step is None else run_dir / "eval" / f"step-{step}"
    export_dir = run_dir / "export" if step is None else eval_dir / "export"
    export_run(run_dir, export_dir, step)  # reused only if made from this checkpoint (export.EXPORT_SOURCE)
    work = eval_dir / "lm_eval_work"
    tasks = expand(cfg.lm_eval_tasks)
    started = time.monotonic()
    try:
        with torch_threads(cfg.threads):
            trained = run_tasks(export_dir, tasks, cfg.lm_eval_include, work, cfg.lm_eval_limit, cfg.lm_eval_batch_size,
                                seed)
            untrained = run_tasks(_untrained_hf(run_dir, step, work / "untrained_model", seed), tasks,
                                  cfg.lm_eval_include, work, cfg.lm_eval_limit, cfg.lm_eval_batch_size, seed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"version": version, "tasks": tasks, "limit": cfg.lm_eval_limit, "offline": trained["offline"],
              "trained": summarize(trained, tasks), "untrained": summarize(untrained, tasks), "seconds": round(time.monotonic() - started, 1)}
    eval_dir.mkdir(parents=True, exist_ok=True)
    model = storage.join(shown, str(export_dir.relative_to(run_dir)))  # where it is kept, not the local copy
    (eval_dir / "lm_eval.json").write_text(json.dumps({"model": model, "trained": trained, "untrained": untrained},
                                                      indent=2))
    return result
