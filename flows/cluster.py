"""The run's one Ray runtime: started (local Ray) or joined (`ray.address`) once per run and used by
every stage, so the Ray dashboard shows the whole run: curate's tasks (prefect-ray joins a Ray this
process has initialised instead of starting its own), the training workers (Ray Train, when the train
stage runs on Ray) and the evaluation task."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .config import RayConfig
from .runtime import ray_task_runner

# Named actors of a run (the train job's event queue) live in this namespace.
NAMESPACE = "tokenmill"


@contextmanager
def ray_runtime(cfg: RayConfig, run_id: str | None = None, stage: str = "run", keep: bool = False) -> Iterator[None]:
    """Ray for the `with` block: the one this process already has (an enclosing run's), else a new
    local one / the cluster at cfg.address with ray_task_runner's settings (127.0.0.1, token auth, the
    workers' environment), shut down on leaving. The dashboard's address is printed with how to sign in.
    `keep` (--keep-server): a local Ray is started as its own head (`ray start`) and left running."""
    import ray

    if ray.is_initialized():
        yield
        return
    from ray.job_config import JobConfig

    runner = ray_task_runner(cfg)  # also applies the local-Ray settings here
    kwargs, address = {**runner.init_kwargs, "namespace": NAMESPACE}, runner.address
    if keep and cfg.address is None:
        address = start_kept_head(cfg)
        kwargs = {k: v for k, v in kwargs.items() if k in ("runtime_env", "log_to_driver", "namespace")}
    job = JobConfig(metadata={"tokenmill_run": run_id or "", "tokenmill_stage": stage})
    context = ray.init(address, job_config=job, logging_level="error", **kwargs)
    try:
        print(dashboard_line(context.dashboard_url, local=cfg.address is None))
        yield
    finally:
        ray.shutdown()
        if keep and cfg.address is None:
            print(f"Ray left running at {address} with its dashboard (stop it with: ray stop)")


def start_kept_head(cfg: RayConfig) -> str:
    """A local Ray head that outlives this process, on 127.0.0.1 with this process's Ray settings
    (loopback, token auth: the environment `ray_task_runner` prepared); its address."""
    from .server import free_port

    port, dashboard_port = free_port(), free_port()
    argv = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
            "--disable-usage-stats", f"--include-dashboard={str(cfg.dashboard).lower()}",
            f"--dashboard-host={cfg.dashboard_host}", f"--dashboard-port={dashboard_port}"]
    if cfg.num_cpus:
        argv.append(f"--num-cpus={cfg.num_cpus}")
    started = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if started.returncode != 0:
        raise RuntimeError(f"could not start a local Ray head ({' '.join(argv)}): {started.stderr[-2000:]}")
    return f"127.0.0.1:{port}"


def dashboard_line(url: str | None, local: bool) -> str:
    """Where the Ray dashboard is and how to sign in to it: the command or file that gives the token,
    never the token."""
    if not url:
        return "Ray dashboard: off (ray.dashboard: false)"
    url = url if "://" in url else "http://" + url
    if not local:
        return (f"Ray dashboard: {url} (a token-auth cluster asks for its token: `ray get-auth-token` "
                "where the cluster's token is, e.g. on its head node)")
    return f"Ray dashboard: {url} (sign in with the token that `{token_command()}` prints)"


def token_command() -> str:
    """The command that prints this process's Ray token. A token of its own (runtime._local_ray_settings
    makes one, in the environment only) is written to a file only the user can read, in this Ray
    session's directory, which goes away with the session."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    token = os.environ.get("RAY_AUTH_TOKEN")
    if path or not token:
        return (f"RAY_AUTH_TOKEN_PATH={path} " if path else "") + "ray get-auth-token"
    import ray

    path = os.path.join(ray._private.worker._global_node.get_session_dir_path(), "auth_token")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return f"RAY_AUTH_TOKEN_PATH={path} ray get-auth-token"


def has_ray_runtime() -> bool:
    """Whether this process is connected to a Ray (the run's `ray_runtime`), without importing ray when
    nothing has."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def task_gpus(resources: dict[str, float]) -> float:
    """GPUs a model task (evaluation, lm-eval) asks for on a Ray whose resources are `resources`
    (ray.cluster_resources()): one when the cluster has any, so the task lands on a GPU worker and its
    model on that GPU (the task picks cuda when torch sees one); none on a CPU cluster."""
    return 1 if resources.get("GPU", 0) >= 1 else 0


def on_ray(fn: Callable, name: str, *args, num_gpus: float | None = None, **kwargs):
    """fn(*args, **kwargs) as the Ray task `name` on the run's Ray, so it runs on the cluster's workers
    and shows in the dashboard; in this process when there is no Ray. num_gpus: None = task_gpus of the cluster."""
    if not has_ray_runtime():
        return fn(*args, **kwargs)
    import ray

    if num_gpus is None:
        num_gpus = task_gpus(ray.cluster_resources())
    task = ray.remote(fn).options(name=name, num_cpus=1, num_gpus=num_gpus, max_retries=0)
    return ray.get(task.remote(*args, **kwargs))


def located(fn: Callable) -> Callable:
    """fn, returning (its result, where it ran): the Ray session, job, node and task name (None outside
    Ray). The evaluate flow keeps that in eval/_stats.json, so a run says which Ray did its work."""
    def run(*args, **kwargs):  # a function, not a partial: ray.remote takes only functions and classes
        return fn(*args, **kwargs), ray_place()

    run.__name__ = run.__qualname__ = getattr(fn, "__name__", "run")
    return run


def ray_place() -> dict | None:
    """This process's place on Ray (session, job id, node id, task name), or None without Ray."""
    if not has_ray_runtime():
        return None
    import ray

    context = ray.get_runtime_context()
    return {"session": context.get_session_name(), "job_id": context.get_job_id(), "node_id": context.get_node_id(),
            "task": context.get_task_name()}
