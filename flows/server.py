"""The Prefect API a run talks to: the user's (PREFECT_API_URL) or a local server started for the run.

Without an API URL every process (the flow and each Ray worker) would start its own temporary
server; one local server, shared through the environment, is faster and keeps the run browsable.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass
class PrefectAPI:
    url: str
    pid: int | None  # None: a server we did not start
    home: str | None
    log: str | None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start_server(host: str = "127.0.0.1", timeout_s: int = 120, home: str | None = None,
                 outlive: bool = False) -> PrefectAPI:
    """A Prefect server on `host` (loopback by default) and a free port, in its own session. Unless
    `outlive` (--keep-server), it runs under `_guard`, which stops it when this process ends however it
    ends (SIGKILL and the OOM killer included), so no server is left behind a dead run."""
    home = home or tempfile.mkdtemp(prefix="tokenmill-prefect-")
    os.makedirs(home, exist_ok=True)
    port = free_port(host)
    log = str(Path(home) / "server.log")
    env = dict(
        os.environ,
        PREFECT_HOME=home,
        PREFECT_SERVER_API_HOST=host,
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=str(timeout_s),
    )
    env.pop("PREFECT_API_URL", None)
    with open(log, "wb") as out:
        server = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
        guard = [] if outlive else [sys.executable, "-m", "tokenmill.flows.server", "--guard", str(os.getpid()), "--"]
        proc = subprocess.Popen(
            guard + server,
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    url = f"http://{host}:{port}/api"
    deadline = time.monotonic() + timeout_s
    while not _healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(PrefectAPI(url, proc.pid, None, log))
            tail = Path(log).read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the local Prefect server did not come up on {url} (log {log}):\n{tail}")
        time.sleep(0.5)
    return PrefectAPI(url, proc.pid, home, log)


def _drain_prefect_clients() -> None:
    """Send buffered logs and events before the server goes away."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        service.drain_all(timeout=10)


def stop_server(api: PrefectAPI, timeout_s: float = 20) -> None:
    if api.pid is None:
        return
    _drain_prefect_clients()
    try:
        os.killpg(api.pid, signal.SIGTERM)  # the server runs in its own session: its group is its own
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if os.waitpid(api.pid, os.WNOHANG)[0]:
                break
        except ChildProcessError:
            break
        time.sleep(0.2)
    else:
        os.killpg(api.pid, signal.SIGKILL)
    if api.home:
        shutil.rmtree(api.home, ignore_errors=True)


def _api_settings(url: str):
    """Prefect reads PREFECT_API_URL from the environment when it is imported; if it already was,
    point its settings at this API too."""
    if "prefect.settings" not in sys.modules:
        return nullcontext()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings(updates={PREFECT_API_URL: url})


@contextmanager
def prefect_api(host: str = "127.0.0.1", keep: bool = False, timeout_s: int = 120) -> Iterator[PrefectAPI]:
    """Yield the API this run uses, with PREFECT_API_URL set for this process and its children."""
    if os.environ.get("PREFECT_API_URL"):
        yield PrefectAPI(os.environ["PREFECT_API_URL"], None, None, None)
        return
    api = start_server(host, timeout_s, outlive=keep)
    os.environ["PREFECT_API_URL"] = api.url
    try:
        with _api_settings(api.url):
            yield api
    finally:
        if not keep:
            os.environ.pop("PREFECT_API_URL", None)
            stop_server(api)


def _guard(parent: int, command: list[str], poll_s: float = 0.5, grace_s: float = 20) -> int:
    """Run `command` until it exits or process `parent` is gone (this process is re-parented: the run
    was SIGKILLed, OOM-killed or crashed), then stop it: SIGTERM to the session, SIGKILL after
    `grace_s`. A watchdog rather than PR_SET_PDEATHSIG: that needs a preexec_fn (unsafe with threads)
    and Linux. The guard leads the server's session; stop_server's SIGTERM to it is the server's."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the session's SIGTERM is for the server; we wait for it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    while child.poll() is None:
        if os.getppid() != parent:
            os.killpg(os.getpgid(0), signal.SIGTERM)
            try:
                child.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(os.getpgid(0), signal.SIGKILL)
            return 1
        time.sleep(poll_s)
    return child.returncode


if __name__ == "__main__":  # python -m tokenmill.flows.server --guard PARENT_PID -- COMMAND...
    assert sys.argv[1] == "--guard" and sys.argv[3] == "--", sys.argv
    sys.exit(_guard(int(sys.argv[2]), sys.argv[4:]))
