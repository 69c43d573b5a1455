"""The finetune flow: the n-gram and the Transformer classifiers (training/finetune.py: k-fold
cross-validated next to the same Transformer from random init and a majority baseline, then saved), the
cross-validated metrics as a Prefect table artifact, a finetune/_stats.json over every task fine-tuned in the run, and the report updated."""
from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from tokenmill.pipeline import storage

from .cluster import ray_runtime
from .config import RunConfig

SCORES = ("accuracy", "macro_precision", "macro_recall", "macro_f1")  # of metrics.json (training/finetune.py)
from .report import artifact_key, write_reports
from .runtime import stage
from .train import on_ray_train


@task(name="deepspeed-finetune-job")
def finetune_job(config: RunConfig) -> dict:
    # torch: imported where the job is prepared, not with the flow
    from tokenmill.training.finetune import run_finetune

    on_line = get_run_logger().info
    if not on_ray_train(config):
        return run_finetune(config.finetune, config.run_dir, on_line=on_line)
    # train.launcher decides for both DeepSpeed jobs: on a Ray cluster, Ray Train workers
    with ray_runtime(config.ray, config.run_id, "finetune"):
        return run_finetune(config.finetune, config.run_dir, on_line=on_line,
                            ray_name=f"{config.run_id}-finetune-{config.finetune.task}")


def summarize_tasks(run_dir: str) -> dict:
    """finetune/_stats.json: per task fine-tuned in this run, its size, folds and each model's mean CV accuracy and macro F1."""
    tasks = {}
    for url in sorted(storage.list_files(storage.join(run_dir, "finetune"), "*/metrics.json")):
        m = storage.read_json(url)
        tasks[m["task"]] = {"labels": m["labels"], "docs": m["docs"], "folds": m["folds"], "classifier": m["classifier"],
                            "models": {name: {k: v[k]["mean"] for k in ("accuracy", "macro_f1")} for name, v in m["models"].items()}}
    summary = {"tasks": tasks}
    storage.write_json(storage.join(run_dir, "finetune", "_stats.json"), summary)
    return summary


def metrics_rows(metrics: dict) -> list[dict]:
    """One artifact row per model: mean and std over the folds of accuracy and macro P/R/F1."""
    return [{"model": name, **{f"{k} {s}": round(m[k][s], 4) for k in SCORES for s in ("mean", "std")}}
            for name, m in metrics["models"].items()]


@flow(name="finetune", log_prints=True)
def finetune(config: RunConfig) -> dict:
    run_dir, name = config.run_dir, config.finetune.task
    out = storage.join(run_dir, "finetune", name)

    def job():
        finetune_job(config)
        storage.mark_done(out)
        return storage.read_json(storage.join(out, "_stats.json"))

    # A rerun with other fine-tune settings is refused rather than answered with the old metrics.
    stage(run_dir, f"finetune/{name}", job, config.finetune.model_dump(exclude={"in_run"}))
    metrics = storage.read_json(storage.join(out, "metrics.json"))
    summarize_tasks(run_dir)
    create_table_artifact(metrics_rows(metrics), key=artifact_key("finetune", config.run_id, name),
                          description=f"fine-tune {name}: {metrics['folds']}-fold cross-validated metrics ({metrics['docs']} "
                          "documents) of the n-gram classifier, the pretrained Transformer, the same Transformer from "
                          f"random init and the majority class; curate's quality_model uses {metrics['classifier']}")
    write_reports(run_dir)  # report.md + report.html, now with the fine-tune section
    return metrics
