"""The evaluate flow: metrics of the trained model (or of a kept checkpoint), lm-eval tasks, the
report (report.md + report.html), and Prefect artifacts (the report as markdown, the metrics as a table)."""
from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tokenmill.pipeline import storage
from tokenmill.training.config import EvalConfig

from .cluster import located, on_ray
from .config import RunConfig
from .report import artifact_key, metric_rows, write_reports
from .runtime import stage


# torch (and lm-eval's transformers) are imported in the tasks, where the work runs: importing the
# flows (the CLI, a deployment) must not pay for them. Each runs as a Ray task on the run's Ray (on the
# cluster's workers, a GPU one when the cluster has GPUs, in its dashboard), in this process without one,
# and returns (result, where it ran: cluster.ray_place).
@task(name="evaluate-model")
def evaluate_task(train_dir: str, tokens_dir: str, cfg: EvalConfig, seed: int, step: int | None,
                  ray_name: str = "evaluate-model") -> tuple[dict, dict | None]:
    from tokenmill.training.evaluate import evaluate

    return on_ray(located(evaluate), ray_name, train_dir, tokens_dir, cfg, seed=seed, step=step)


@task(name="lm-eval")
def lm_eval_task(run_dir: str, cfg: EvalConfig, seed: int, step: int | None,
                 ray_name: str = "lm-eval") -> tuple[dict, dict | None]:
    from tokenmill.training.harness import evaluate_run

    return on_ray(located(evaluate_run), ray_name, run_dir, cfg, seed=seed, step=step)


def eval_settings(config: RunConfig) -> dict:
    """What an eval stage's metrics depend on: the evaluate section (less `threads`, which only sets
    how fast it runs) and the seed of its samples. The checkpoint evaluated is in the stage's name."""
    return {"evaluate": config.evaluate.model_dump(exclude={"threads"}), "seed": config.train.seed}


@flow(name="evaluate", log_prints=True)
def evaluate(config: RunConfig, checkpoint: int | None = None) -> dict:
    """Evaluate the final model into eval/, or the kept checkpoint of step `checkpoint` into eval/step-<N>/."""
    run_dir = config.run_dir
    name = "eval" if checkpoint is None else f"eval/step-{checkpoint}"

    def run():
        task_name = name.replace("/", "-")  # Ray tasks <run id>-eval and <run id>-lm-eval (-step-N for a checkpoint)
        metrics, place = evaluate_task(storage.join(run_dir, "train"), storage.join(run_dir, "tokens"), config.evaluate,
                                       seed=config.train.seed, step=checkpoint, ray_name=f"{config.run_id}-{task_name}")
        places = {"eval": place}
        if config.evaluate.lm_eval:
            lm_name = f"{config.run_id}-lm-{task_name}"
            metrics["lm_eval"], places["lm_eval"] = lm_eval_task(run_dir, config.evaluate, seed=config.train.seed,
                                                                 step=checkpoint, ray_name=lm_name)
            get_run_logger().info("lm-eval: %s", metrics["lm_eval"].get("skipped") or metrics["lm_eval"]["trained"])
        if place is not None:
            metrics["ray"] = places  # which Ray session, job and node did the work
        storage.write_json(storage.join(run_dir, name, "_stats.json"), metrics)
        write_reports(run_dir)
        storage.mark_done(storage.join(run_dir, name))
        return metrics

    # A rerun with other evaluate settings is refused rather than answered with the old metrics.
    metrics = stage(run_dir, name, run, eval_settings(config))
    key = artifact_key(config.run_id)
    report = storage.read_bytes(storage.join(run_dir, "report.md")).decode()
    create_markdown_artifact(report, key=f"report-{key}", description=f"tokenmill run report ({run_dir}/report.html)")
    rows = metric_rows(run_dir)
    if rows:
        create_table_artifact(rows, key=f"eval-metrics-{key}", description="evaluation metrics, trained vs untrained")
    return metrics
