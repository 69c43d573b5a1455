"""Services tokenmill starts listen on 127.0.0.1 only: the run's Prefect server and the local Ray."""
from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest

from tokenmill.flows.server import start_server, stop_server


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
def test_local_ray_binds_loopback_only():
    """Every server of the local Ray tokenmill starts (GCS, raylet, workers, dashboard and its agents)."""
    code = """
import json, psutil
from tokenmill.flows.cli import keep_local_ray_on_loopback
from tokenmill.flows.config import RunConfig
keep_local_ray_on_loopback(RunConfig())
import ray
from tokenmill.flows.config import RayConfig
from tokenmill.flows.runtime import ray_task_runner
context = ray.init(**ray_task_runner(RayConfig(num_cpus=1)).init_kwargs)
ray.get(ray.remote(lambda: 1).remote())
me = psutil.Process()
family = {me.pid, *(c.pid for c in me.children(recursive=True))}
ips = sorted({c.laddr.ip for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in family})
print(json.dumps({"dashboard": context.dashboard_url, "ips": ips}))
ray.shutdown()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["dashboard"].startswith("127.0.0.1:")
    assert found["ips"] and set(found["ips"]) <= {"127.0.0.1", "::ffff:127.0.0.1"}, found
