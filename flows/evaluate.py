"""The evaluate flow: metrics of the trained model (or of a kept checkpoint), lm-eval tasks, the
report (report.md + report.html), and Prefect artifacts (the report as markdown, the metrics as a table)."""
from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from tokenmill.pipeline import storage
from tokenmill.training.evaluate import evaluate as evaluate_model
from tokenmill.training.harness import evaluate_run as run_lm_eval

from .config import RunConfig
from .report import artifact_key, metric_rows, write_reports
from .runtime import stage

evaluate_task = task(evaluate_model, name="evaluate-model")
lm_eval_task = task(run_lm_eval, name="lm-eval")


@flow(name="evaluate", log_prints=True)
def evaluate(config: RunConfig, checkpoint: int | None = None) -> dict:
    """Evaluate the final model into eval/, or the kept checkpoint of step `checkpoint` into eval/step-<N>/."""
    run_dir = config.run_dir
    name = "eval" if checkpoint is None else f"eval/step-{checkpoint}"

    def run():
        metrics = evaluate_task(storage.join(run_dir, "train"), storage.join(run_dir, "tokens"), config.evaluate,
                                seed=config.train.seed, step=checkpoint)
        if config.evaluate.lm_eval:
            metrics["lm_eval"] = lm_eval_task(run_dir, config.evaluate, seed=config.train.seed, step=checkpoint)
            get_run_logger().info("lm-eval: %s", metrics["lm_eval"].get("skipped") or metrics["lm_eval"]["trained"])
        storage.write_json(storage.join(run_dir, name, "_stats.json"), metrics)
        write_reports(run_dir)
        storage.mark_done(storage.join(run_dir, name))
        return metrics

    metrics = stage(run_dir, name, run)
    key = artifact_key(config.run_id)
    report = storage.read_bytes(storage.join(run_dir, "report.md")).decode()
    create_markdown_artifact(report, key=f"report-{key}", description=f"tokenmill run report ({run_dir}/report.html)")
    rows = metric_rows(run_dir)
    if rows:
        create_table_artifact(rows, key=f"eval-metrics-{key}", description="evaluation metrics, trained vs untrained")
    return metrics
