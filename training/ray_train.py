"""A job (pre-training, fine-tuning) on a Ray cluster through Ray Train: `train.nproc` workers of a
`TorchTrainer`, each running the same `main(JOB.json)` as a torchrun rank, on GPUs when the cluster
has them (NCCL), else on CPUs (gloo, DeepSpeed's CPU accelerator).

Ray schedules the workers (the resources each asks for: `train.resources_per_worker`), shows them in
its dashboard under the job's name (`<run id>-train`), and restarts the whole group when one dies
(`FailureConfig(max_failures=train.max_failures)`); the restarted ranks continue from
`checkpoints/latest` in the run directory exactly as a rerun does (checkpoint.resume), so the loss
curve is the uninterrupted run's. The run directory must therefore be one that every worker reads and
writes: local on one machine, a shared filesystem or object storage (s3://..., through fsspec: see
train.py) on a cluster.

Events (launch.py's protocol) reach the driver through a Ray queue instead of stdout, which Ray keeps
in its worker logs; the driver logs them and appends them to `train.log` as torchrun's output would be.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

from tokenmill.pipeline import storage

from .launch import EVENT, JobFailed, Launch, describe

RAY_TRAIN_DIR = "ray_train"  # <out_dir>/ray_train: Ray Train's own run state (its storage_path)


def job_url(job: str | Path) -> str:
    """JOB.json as every worker reads it: an absolute path (a shared filesystem on a cluster) or a URL."""
    return str(Path(job).resolve()) if storage.is_local(str(job)) else str(job)


def ray_storage(out_dir: str) -> dict:
    """RunConfig's storage_path (and storage_filesystem) for <out_dir>/ray_train: object storage through
    fsspec, wrapped for Ray's pyarrow filesystem API, so Ray Train uses the run directory's credentials."""
    url = storage.join(out_dir, RAY_TRAIN_DIR)
    if storage.is_local(url):
        return {"storage_path": str(Path(url.removeprefix("file://")).resolve())}
    import pyarrow.fs

    fs, path = storage.fs_path(url)
    return {"storage_path": path, "storage_filesystem": pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))}


def worker_loop(config: dict) -> None:
    """One Ray Train worker: the job's `main` on this rank, its events also put on the driver's queue."""
    import torch

    from . import launch

    if not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
        torch.set_num_threads(config["threads"])
    events = config["events"]
    launch.event_sink = events.put
    try:
        importlib.import_module(config["module"]).main(config["job"])
    except Exception as e:
        launch.emit("error", rank=int(os.environ.get("RANK", "0")), message=f"{type(e).__name__}: {e}")
        raise
    finally:
        launch.event_sink = None


def worker_resources(cluster: dict[str, float], nproc: int, asked: dict[str, float] | None) -> dict[str, float]:
    """What each of `nproc` workers asks for on a Ray with `cluster` resources: `asked`
    (train.resources_per_worker) when given; else a GPU and a CPU when the cluster has GPUs; else one CPU,
    or an equal share of the CPUs when there are fewer than nproc (a small machine's local Ray, where
    whole CPUs would leave a worker waiting forever while torchrun would just share the cores)."""
    if asked:
        return dict(asked)
    if cluster.get("GPU", 0) > 0:
        return {"GPU": 1, "CPU": 1}
    cpus = cluster.get("CPU", 0)
    return {"CPU": math.floor(cpus / nproc * 100) / 100 if 0 < cpus < nproc else 1}  # rounded down: they fit


def scaling(launch: Launch):
    """Ray Train's ScalingConfig: launch.nproc workers, on GPUs when the cluster has any, placed by
    train.placement (STRICT_SPREAD: one per node)."""
    import ray
    from ray.train import ScalingConfig

    cluster = ray.cluster_resources()
    gpus = cluster.get("GPU", 0) > 0
    resources = worker_resources(cluster, launch.nproc, getattr(launch, "resources_per_worker", None))
    return ScalingConfig(num_workers=launch.nproc, use_gpu=gpus, resources_per_worker=resources,
                         placement_strategy=getattr(launch, "placement", "PACK")), gpus


def run_on_ray(module: str, launch: Launch, job: Path, out_dir: str, log_name: str, name: str,
               on_line: Callable[[str], None] = print) -> dict:
    """Run `MODULE.main(JOB)` on launch.nproc Ray Train workers of the connected Ray cluster (ray.init
    done by the caller, or a local one started here); return the result of its `done` event."""
    import ray
    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    # The state the dashboard's Train page shows (runs, attempts, workers); Ray records it only when asked.
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    if not ray.is_initialized():
        ray.init(logging_level="error", log_to_driver=False)
    if len([n for n in ray.nodes() if n["Alive"]]) == 1:
        # One node (a local Ray): no node can be drained from under the job, so skip Ray Train's preemption
        # watcher, an actor process of its own that polls every 5 s beside the job on the same cores.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    scaling_config, gpus = scaling(launch)
    threads = launch.threads_per_proc or max(1, int(scaling_config.resources_per_worker.get("CPU", 1)))
    events = Queue(actor_options={"name": f"{name}-events", "num_cpus": 0})
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"module": module, "job": job_url(job), "events": events, "threads": threads},
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
        scaling_config=scaling_config,
        run_config=RunConfig(name=name, **ray_storage(out_dir),
                             failure_config=FailureConfig(max_failures=getattr(launch, "max_failures", 0))),
    )
    on_line(f"launching: Ray Train {name!r}, {launch.nproc} workers ({'GPU' if gpus else 'CPU'}, "
            f"{scaling_config.resources_per_worker} each)")
    outcome: dict = {}

    def fit():
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 -- reported by the driver below
            outcome["error"] = e

    thread = threading.Thread(target=fit, name=f"{name}-fit", daemon=True)
    thread.start()
    done, errors = None, []
    with storage.LocalDir(out_dir, fetch=[log_name]) as work, open(Path(work.path, log_name), "a") as log:
        while True:
            try:
                event = events.get(timeout=0.5)
            except queue.Empty:
                if thread.is_alive():
                    continue
                if events.empty():
                    break
                continue
            log.write(EVENT + json.dumps(event) + "\n")
            log.flush()
            on_line(describe(event))
            if event["event"] == "done":
                done = event["result"]
            elif event["event"] == "error":
                errors.append(event["message"])
    thread.join()
    ray.kill(events.actor)
    if "error" in outcome or done is None:
        cause = errors[-1] if errors else repr(outcome.get("error", "no done event"))
        raise JobFailed(f"{module} job on Ray Train {name!r} failed: {cause}\n"
                        f"worker logs: Ray dashboard, job {name!r} (or <ray temp dir>/session_latest/logs)")
    # Where it ran (the run's _stats.json keeps it): this Ray session and job, and the workers Ray Train
    # recorded for the run's last attempt (rank, node, pid).
    context = ray.get_runtime_context()
    return {**done, "ray": {"run": name, "session": context.get_session_name(), "job_id": context.get_job_id(),
                            "workers": train_workers(name)}}


def train_workers(name: str) -> list[dict]:
    """The workers of the newest attempt of the Ray Train run called `name` (what the dashboard's Train
    page shows): world_rank, pid, node_id, actor_id and status of each; [] before the run has started."""
    import ray
    from ray.train.v2._internal.state.state_actor import get_state_actor

    actor = get_state_actor()
    if actor is None:
        return []
    runs = [run for run in ray.get(actor.get_train_runs.remote()).values() if run.name == name]
    if not runs:
        return []
    run = max(runs, key=lambda r: r.start_time_ns)
    attempts = ray.get(actor.get_train_run_attempts.remote()).get(run.id, {})
    if not attempts:
        return []
    attempt = max(attempts.values(), key=lambda a: a.start_time_ns)
    return [{"world_rank": w.world_rank, "pid": w.pid, "node_id": w.node_id, "actor_id": w.actor_id,
             "status": str(w.status.value if hasattr(w.status, "value") else w.status)} for w in attempt.workers]

