"""What every flow shares: the Ray task runner, bounded mapping with progress, stage skipping."""
from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable

from prefect import get_run_logger, task
from prefect_ray import RayTaskRunner
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tokenmill.pipeline import storage
from tokenmill.pipeline.stages import Step, check_stage_config

from .config import RayConfig

# Environment the Ray workers need to reach the same Prefect API and stay out of $HOME.
# Secrets (PREFECT_API_KEY, AWS_*) travel in the runtime env, never in task parameters or logs.
_FORWARDED_ENV = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_HOME", "PREFECT_LOGGING_LEVEL", "PYTHONPATH",
                  "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                  "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def ray_task_runner(cfg: RayConfig) -> RayTaskRunner:
    env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    init_kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False}
    if cfg.address is None:
        init_kwargs.update(
            num_cpus=cfg.num_cpus,
            include_dashboard=cfg.dashboard,
            dashboard_host=cfg.dashboard_host,
        )
    return RayTaskRunner(address=cfg.address, init_kwargs=init_kwargs)


def run_step(step: Step, max_in_flight: int, retries: int = 0, retry_delay_s: float = 0) -> list:
    """Run `step` as one Prefect task per call that an earlier run did not finish (stages.Step: the
    task commits its own marker), at most `max_in_flight` pending; every call's result, in order.

    prefect-ray misbehaves with many pending futures, so submission is windowed rather than .map()."""
    results = [step.done(call) for call in step.calls]
    todo = [i for i, r in enumerate(results) if r is None]
    if len(todo) < len(results):
        get_run_logger().info("%s: %d of %d parts done in an earlier run, reused", step.name,
                              len(results) - len(todo), len(results))
    unit = task(step.unit(), name=step.name, retries=retries, retry_delay_seconds=retry_delay_s)
    pending: deque = deque()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False, disable=not todo) as progress:
        bar = progress.add_task(step.name, total=len(todo))
        for n, i in enumerate(todo):
            pending.append((i, unit.submit(**step.calls[i])))
            while len(pending) >= max_in_flight or (n == len(todo) - 1 and pending):
                j, future = pending.popleft()
                results[j] = future.result()
                progress.advance(bar)
    return results


def stage(run_dir: str, name: str, fn: Callable[[], dict], settings: dict | None = None) -> dict:
    """Run a stage unless <run>/<name>/_SUCCESS exists; return its _stats.json either way.

    `settings` (the config the stage's output depends on) are recorded with the stage; a rerun with
    other settings is refused (stages.ConfigChanged) instead of reusing what was made under the old ones."""
    logger = get_run_logger()
    stage_dir = storage.join(run_dir, name)
    if settings is not None:
        check_stage_config(run_dir, name, settings)
    if storage.stage_done(stage_dir):
        logger.info("stage %s: done in an earlier run, skipped", name)
        stats = storage.read_json(storage.join(stage_dir, "_stats.json"))
        return {**stats, "skipped": True}
    stats = fn()
    # Every unit is done: a temporary left is a writer's that an earlier, killed run interrupted.
    for directory in (stage_dir, storage.join(run_dir, "rejected", name)):
        storage.remove_temporaries(directory)
    counts = {k: stats[k] for k in ("docs_in", "docs_kept", "docs_rejected") if k in stats}
    logger.info("stage %s: %s", name, counts or stats)
    return {**stats, "skipped": False}
