"""The evaluate flow: metrics of the trained model, report.md, and a Prefect markdown artifact."""
from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from pipeline import io
from training.evaluate import evaluate as evaluate_model

from .config import RunConfig
from .report import render_report
from .runtime import stage

evaluate_task = task(evaluate_model, name="evaluate-model")


@flow(name="evaluate", log_prints=True)
def evaluate(config: RunConfig) -> dict:
    run_dir = config.run_dir

    def run():
        metrics = evaluate_task(io.join(run_dir, "train"), io.join(run_dir, "tokens"), config.evaluate, seed=config.train.seed)
        io.write_json(io.join(run_dir, "eval", "_stats.json"), metrics)
        io.write_bytes(io.join(run_dir, "report.md"), render_report(run_dir).encode())
        io.mark_done(io.join(run_dir, "eval"))
        return metrics

    metrics = stage(run_dir, "eval", run)
    fs, path = io.fs_path(io.join(run_dir, "report.md"))
    report = fs.cat_file(path).decode()
    create_markdown_artifact(report, key=f"report-{config.run_id}".lower().replace("_", "-"), description="tokenmill run report")
    return metrics
