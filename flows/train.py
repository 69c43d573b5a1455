"""The train flow: run the DeepSpeed job as its own processes and stream its progress to the flow log."""
from __future__ import annotations

from prefect import flow, get_run_logger, task

from pipeline import io
from training import launch

from .config import RunConfig
from .runtime import stage


@task(name="deepspeed-job")
def run_training_job(config: RunConfig) -> dict:
    logger = get_run_logger()
    tokens_dir, out_dir = io.join(config.run_dir, "tokens"), io.join(config.run_dir, "train")
    return launch.run_job(config.train, tokens_dir, out_dir, on_line=logger.info)


@flow(name="train", log_prints=True)
def train(config: RunConfig) -> dict:
    def job():
        summary = run_training_job(config)
        io.write_json(io.join(config.run_dir, "train", "_stats.json"), summary)
        io.mark_done(io.join(config.run_dir, "train"))
        return summary

    return stage(config.run_dir, "train", job)
