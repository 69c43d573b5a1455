"""The train flow: launch the DeepSpeed job as its own process group and stream its log."""
from __future__ import annotations

import subprocess
from collections import deque
from pathlib import Path

from prefect import flow, get_run_logger, task

from pipeline import io
from training import launch

from .config import RunConfig
from .runtime import stage


@task(name="deepspeed-job")
def run_training_job(config: RunConfig) -> dict:
    logger = get_run_logger()
    run_dir = Path(config.run_dir)
    out = run_dir / "train"
    job = launch.write_job(config.train, str(run_dir / "tokens"), str(out))
    argv = launch.command(config.train, job)
    logger.info("launching: %s", " ".join(argv))
    tail: deque[str] = deque(maxlen=40)
    log_path = out / "train.log"
    with open(log_path, "a") as log, subprocess.Popen(
        argv, env=launch.environment(config.train), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, text=True, bufsize=1,
    ) as proc:
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip())
            # Progress and results go to the flow log; library chatter stays in train.log.
            if line.startswith(("step ", "model:", "resumed", "done:")):
                logger.info(line.rstrip())
    if proc.returncode != 0:
        raise RuntimeError(f"training job failed with exit code {proc.returncode}; last lines:\n"
                           + "\n".join(tail) + f"\nfull log: {log_path}")
    return io.read_json(str(out / "summary.json"))


@flow(name="train", log_prints=True)
def train(config: RunConfig) -> dict:
    def job():
        summary = run_training_job(config)
        io.write_json(io.join(config.run_dir, "train", "_stats.json"), summary)
        io.mark_done(io.join(config.run_dir, "train"))
        return summary

    return stage(config.run_dir, "train", job)
