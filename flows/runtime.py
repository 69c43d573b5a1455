"""What every flow shares: the Ray task runner, bounded mapping with progress, stage skipping."""
from __future__ import annotations

import fcntl
import os
import secrets
import sys
import threading
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from prefect import get_run_logger, task
from prefect_ray import RayTaskRunner
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tokenmill.pipeline import storage
from tokenmill.pipeline.stages import Step, bundles, check_stage_config

from .config import RayConfig

# What Ray's workers need to reach the same Prefect API and stay out of $HOME. No secret is listed:
# the runtime env is shown in the Ray dashboard and sent to whatever cluster `ray.address` names, so
# PREFECT_API_KEY and AWS_* come from each node's own environment (a local Ray's workers inherit
# this process's; a cluster's nodes get them from their deployment, e.g. infra/kuberay's secretRef).
_FORWARDED_ENV = ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_LOGGING_LEVEL", "PYTHONPATH",
                  "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def _local_ray_settings() -> None:
    """Settings of a Ray this process starts, made in the environment its servers inherit.

    Loopback: Ray binds its GCS, raylet, object manager and workers to the machine's outward IP unless
    it takes itself for a one-machine install (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), then to 127.0.0.1.
    Ray and its child processes read the switch from the environment. Not for `ray.address`: a driver
    of a multi-node cluster must advertise a reachable IP.

    Token auth: every gRPC and dashboard call must carry the cluster's token (Ray's RAY_AUTH_MODE=token).
    The token is the one in RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH when set, else a fresh one for this
    process, kept in its environment (not written to ~/.ray/auth_token)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_AUTH_MODE"] = "token"
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    # prefect_ray imports ray lazily: if ray is loaded already, it read these at import, so its
    # constant, config and token cache are refreshed (as Ray's own `_enable_token_auth` does); if
    # not, it reads them from the environment when it loads.
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False
    raylet = sys.modules.get("ray._raylet")
    if raylet is not None:
        raylet.Config.initialize("")
        raylet.AuthenticationTokenLoader.instance().reset_cache()


def ray_task_runner(cfg: RayConfig) -> RayTaskRunner:
    """The Ray task runner of every flow, whoever starts it (the CLI, a Prefect worker, a test).

    Without `cfg.address` it starts a local Ray on 127.0.0.1 with token auth (`_local_ray_settings`);
    with one it joins that cluster, whose nodes bring their own secrets and auth token."""
    env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    init_kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False}
    if cfg.address is None:
        _local_ray_settings()
        init_kwargs.update(
            num_cpus=cfg.num_cpus,
            include_dashboard=cfg.dashboard,
            dashboard_host=cfg.dashboard_host,
        )
    # "local": a new Ray even when `ray start` (--keep-server) left a head on this machine, which a
    # plain ray.init() would join.
    return RayTaskRunner(address=cfg.address or "local", init_kwargs=init_kwargs)


def run_step(step: Step, max_in_flight: int, retries: int = 0, retry_delay_s: float = 0, max_tasks: int | None = None) -> list:
    """Run the calls of `step` that an earlier run did not finish as at most `max_tasks` Prefect tasks
    (None: one per call), each a bundle of consecutive calls (Step.bundle: every call still commits its
    own marker, so resume stays per call), at most `max_in_flight` pending; every call's result, in order.

    Bundles bound the Prefect task runs of a step (each costs the Prefect server and this driver
    ~0.16 CPU-s, whatever its size) whatever the number of parts: progress shows per bundle in the
    Prefect UI and the Ray dashboard, per call on this process's progress bar. prefect-ray misbehaves
    with many pending futures, so submission is windowed rather than .map()."""
    results = [step.done(call) for call in step.calls]
    todo = [i for i, r in enumerate(results) if r is None]
    if len(todo) < len(results):
        get_run_logger().info("%s: %d of %d parts done in an earlier run, reused", step.name,
                              len(results) - len(todo), len(results))
    groups = bundles(todo, max_tasks or len(todo))
    run_bundle = task(step.bundle(), name=step.name, retries=retries, retry_delay_seconds=retry_delay_s)
    pending: deque = deque()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False, disable=not todo) as progress:
        bar = progress.add_task(step.name, total=len(todo))
        for n, group in enumerate(groups):
            name = f"{step.name}-{group[0]}" + (f"-to-{group[-1]}" if len(group) > 1 else "")
            pending.append((group, run_bundle.with_options(task_run_name=name).submit(calls=[step.calls[i] for i in group])))
            while len(pending) >= max_in_flight or (n == len(groups) - 1 and pending):
                done, future = pending.popleft()
                for i, result in zip(done, future.result()):
                    results[i] = result
                progress.advance(bar, len(done))
    if todo:
        get_run_logger().info("%s: %d calls in %d task runs", step.name, len(todo), len(groups))
    return results


class RunLocked(RuntimeError):
    """Another process is running the same run directory."""


_held_locks: dict[str, list] = {}  # run directory -> [fd, depth]: re-entered by nested flows of one process
_held_locks_guard = threading.Lock()


@contextmanager
def run_lock(run_dir: str) -> Iterator[None]:
    """Hold an exclusive lock on a local run directory (flock on the directory itself: no file is
    written, and the kernel releases it when the process dies, SIGKILL included), so two runs of one
    run id refuse to interleave instead of writing the same parts. Re-entrant within a process. An
    object-store run directory (s3://...) has no such lock: give concurrent runs distinct ids."""
    if "://" in run_dir and not run_dir.startswith("file://"):
        yield
        return
    path = os.path.realpath(run_dir.removeprefix("file://"))
    with _held_locks_guard:
        held = _held_locks.get(path)
        if held is None:
            os.makedirs(path, exist_ok=True)
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLocked(f"run directory {path} is in use by another tokenmill process; wait for it to "
                                "finish (or stop it), or use another --run-id") from None
            held = _held_locks[path] = [fd, 0]
        held[1] += 1
    try:
        yield
    finally:
        with _held_locks_guard:
            held[1] -= 1
            if held[1] == 0:
                del _held_locks[path]
                os.close(held[0])  # closing the descriptor releases the lock


def stage(run_dir: str, name: str, fn: Callable[[], dict], settings: dict | None = None) -> dict:
    """Run a stage unless <run>/<name>/_SUCCESS exists; return its _stats.json either way.

    `settings` (the config the stage's output depends on) are recorded with the stage; a rerun with
    other settings is refused (stages.ConfigChanged) instead of reusing what was made under the old ones."""
    with run_lock(run_dir):
        return _stage(run_dir, name, fn, settings)


def _stage(run_dir: str, name: str, fn: Callable[[], dict], settings: dict | None) -> dict:
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
