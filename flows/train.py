"""The train flow: run the DeepSpeed job as its own processes (torchrun, a hostfile's nodes, or Ray Train
workers on the run's Ray cluster), stream its progress to the flow log,
and publish its loss curve (PNG) and final table as Prefect artifacts."""
from __future__ import annotations

import base64

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_image_artifact, create_table_artifact

from tokenmill.pipeline import storage
from tokenmill.pipeline.contracts import MANIFEST
from tokenmill.training import launch
from tokenmill.training.metrics import final_table, loss_curve_png, read_metrics

from .cluster import has_ray_runtime, ray_runtime
from .config import RunConfig
from .report import artifact_key, write_run_config
from .runtime import stage

# How the job runs, not what it computes: changing them between attempts (more threads, a quieter log,
# another checkpoint cadence) must neither refuse the resume of a killed train stage nor a rerun.
RUN_ONLY = {"threads_per_proc", "log_every", "save_every", "keep_checkpoints", "launcher", "resources_per_worker",
            "max_failures", "placement"}


def train_settings(config: RunConfig) -> dict:
    """What the train stage's output depends on: the train section and the tokens it trains on (their
    manifest names every shard and the tokenizer by sha256)."""
    manifest = storage.join(config.run_dir, "tokens", MANIFEST)
    if not storage.exists(manifest):
        raise FileNotFoundError(f"{manifest} not found: curate first (tokenmill curate INPUTS --run-id {config.run_id})")
    return {"train": config.train.model_dump(exclude=RUN_ONLY), "tokens_manifest_sha256": storage.sha256_file(manifest)}


def on_ray_train(config: RunConfig) -> bool:
    """Whether the job runs through Ray Train (train.launcher): see uses_ray_train."""
    return uses_ray_train(config.train.launcher, config.ray.address, has_ray_runtime())


def uses_ray_train(launcher: str, ray_address: str | None, has_ray: bool) -> bool:
    """ray: always; torchrun: never; auto: whenever the run has a Ray (`has_ray`: inside `tokenmill run`,
    whose one Ray then shows the training workers beside curate's and evaluate's tasks) or names a cluster
    (ray.address). So only a train/finetune flow run alone without ray.address uses torchrun."""
    return launcher == "ray" or (launcher == "auto" and (ray_address is not None or has_ray))


@task(name="deepspeed-job")
def run_training_job(config: RunConfig) -> dict:
    logger = get_run_logger()
    tokens_dir, out_dir = storage.join(config.run_dir, "tokens"), storage.join(config.run_dir, "train")
    if not on_ray_train(config):
        return launch.run_job(config.train, tokens_dir, out_dir, on_line=logger.info)
    with ray_runtime(config.ray, config.run_id, "train"):  # the run's Ray, or one for this flow alone
        return launch.run_job(config.train, tokens_dir, out_dir, on_line=logger.info, ray_name=f"{config.run_id}-train")


@task(name="publish-training-artifacts")
def publish_artifacts(config: RunConfig, summary: dict) -> None:
    train_dir = storage.join(config.run_dir, "train")
    metrics = read_metrics(storage.join(train_dir, "metrics.jsonl"))
    png_url = storage.join(train_dir, "loss.png")
    png = storage.read_bytes(png_url)
    key = artifact_key(config.run_id)
    create_image_artifact("data:image/png;base64," + base64.b64encode(png).decode(), key=f"loss-curve-{key}",
                          description=f"training loss and learning rate per step ({png_url})")
    create_table_artifact(final_table(summary, metrics), key=f"training-{key}", description="training job summary")


@flow(name="train", log_prints=True)
def train(config: RunConfig) -> dict:
    out_dir = storage.join(config.run_dir, "train")
    write_run_config(config.run_dir, config.model_dump(mode="json"))  # what the report shows as "config used"

    def job():
        summary = run_training_job(config)
        png = loss_curve_png(read_metrics(storage.join(out_dir, "metrics.jsonl")), title=f"tokenmill {config.run_id}: training loss")
        storage.write_bytes(storage.join(out_dir, "loss.png"), png)
        storage.write_json(storage.join(out_dir, "_stats.json"), summary)
        storage.mark_done(out_dir)
        return summary

    # A rerun with other settings (or other tokens) is refused rather than answered with the old model.
    summary = stage(config.run_dir, "train", job, train_settings(config))
    publish_artifacts(config, summary)
    return summary
