"""Services tokenmill starts listen on 127.0.0.1 only: the run's Prefect server and Ray's dashboard."""
from __future__ import annotations

import psutil
import pytest

from flows.config import RayConfig
from flows.runtime import ray_task_runner
from flows.server import start_server, stop_server


def _listening(pids: set[int]) -> set[tuple[str, int]]:
    found = set()
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            found.add((conn.laddr.ip, conn.laddr.port))
    return found


def test_local_prefect_server_binds_loopback_only(tmp_path):
    api = start_server(home=str(tmp_path / "home"))
    try:
        proc = psutil.Process(api.pid)
        pids = {proc.pid, *(c.pid for c in proc.children(recursive=True))}
        listening = _listening(pids)
        assert listening, "the server listens on nothing?"
        assert {ip for ip, _ in listening} == {"127.0.0.1"}
        assert int(api.url.split(":")[2].split("/")[0]) in {port for _, port in listening}
    finally:
        stop_server(api)
    assert not psutil.pid_exists(api.pid) or psutil.Process(api.pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow
def test_ray_dashboard_binds_loopback_only():
    import ray

    kwargs = ray_task_runner(RayConfig(num_cpus=1)).init_kwargs
    context = ray.init(**kwargs)
    try:
        host, port = context.dashboard_url.rsplit(":", 1)
        assert host == "127.0.0.1"
        listeners = {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == int(port)}
        assert listeners == {("127.0.0.1", int(port))}
    finally:
        ray.shutdown()
