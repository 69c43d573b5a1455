"""The finetune flow: a classifier fine-tuned from the run's pretrained model (a DeepSpeed job, next to
the same architecture from random init and a majority baseline), its held-out metrics as a Prefect
table artifact, a finetune/_stats.json over every task fine-tuned in the run, and the report updated."""
from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from tokenmill.pipeline import storage

from .config import RunConfig
from .report import artifact_key, write_reports
from .runtime import stage


@task(name="deepspeed-finetune-job")
def finetune_job(config: RunConfig) -> dict:
    # torch: imported where the job is prepared, not with the flow
    from tokenmill.training.finetune import run_finetune

    return run_finetune(config.finetune, config.run_dir, on_line=get_run_logger().info)


def summarize_tasks(run_dir: str) -> dict:
    """finetune/_stats.json: per task fine-tuned in this run, its sizes and each model's accuracy and macro F1."""
    tasks = {}
    for url in sorted(storage.list_files(storage.join(run_dir, "finetune"), "*/metrics.json")):
        m = storage.read_json(url)
        tasks[m["task"]] = {"labels": m["labels"], "train_docs": m["train_docs"], "heldout_docs": m["heldout_docs"],
                            "models": {name: {k: v[k] for k in ("accuracy", "macro_f1")} for name, v in m["models"].items()}}
    summary = {"tasks": tasks}
    storage.write_json(storage.join(run_dir, "finetune", "_stats.json"), summary)
    return summary


def metrics_rows(metrics: dict) -> list[dict]:
    """One artifact row per model: accuracy, macro and per-class F1."""
    rows = []
    for name, m in metrics["models"].items():
        row = {"model": name, **{k: round(m[k], 4) for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1")}}
        row.update({f"f1 {label}": round(c["f1"], 4) for label, c in m["per_class"].items()})
        rows.append(row)
    return rows


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
                          description=f"fine-tune {name}: held-out metrics ({metrics['heldout_docs']} documents, "
                          f"{metrics['train_docs']} trained on) of the pretrained model, the same model from random init "
                          "and the majority class")
    write_reports(run_dir)  # report.md + report.html, now with the fine-tune section
    return metrics
