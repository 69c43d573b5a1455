"""The whole DAG: curate (on Ray) -> train (DeepSpeed job) -> evaluate [-> finetune, with finetune.in_run],
all on one Ray runtime (cluster.ray_runtime)."""
from __future__ import annotations

from prefect import flow

from .cluster import ray_runtime
from .config import RunConfig
from .curate import curate
from .evaluate import evaluate
from .finetune import finetune
from .runtime import ray_task_runner, run_lock
from .train import train


@flow(name="end-to-end", log_prints=True)
def end_to_end(config: RunConfig) -> dict:
    config = config.with_run_id()  # a scheduled run gets a fresh id; its stages share it
    # One process runs this id's stages (a second run is refused, not interleaved), on one Ray for the whole run.
    with run_lock(config.run_dir), ray_runtime(config.ray, config.run_id, keep=config.prefect.keep_server):
        curated = curate.with_options(task_runner=ray_task_runner(config.ray))(config)
        trained = train(config)
        evaluated = evaluate(config)
        result = {"curate": curated, "train": trained, "eval": evaluated}
        if config.finetune.in_run:
            result["finetune"] = finetune(config)
    return result
