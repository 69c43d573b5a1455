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


def on_ray(fn: Callable, name: str, *args, num_gpus: float = 0, **kwargs):
    """fn(*args, **kwargs) as the Ray task `name` on the run's Ray, so it runs on the cluster's workers
    and shows in the dashboard; in this process when there is no Ray."""
    import ray

    if not ray.is_initialized():
        return fn(*args, **kwargs)
    task = ray.remote(fn).options(name=name, num_cpus=1, num_gpus=num_gpus, max_retries=0)
    return ray.get(task.remote(*args, **kwargs))
