"""`tokenmill curate --ray-address` on a real two-node Ray cluster on this machine: a head and a
second node started with `ray start` (separate processes, one CPU each), tasks spread over both,
and the same files as a one-node run; then `tokenmill train` on that cluster with one Ray Train worker per node."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import curated_files

from tokenmill.flows.server import free_port

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")
# The cluster uses token auth; nodes and drivers share this test's token through the environment.
ENV = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def _loopback_alias() -> str:
    """Every node binds 127.0.0.1, but Ray rewrites a literal 127.0.0.1/localhost cluster address to the
    machine's outward IP; a host name that resolves to 127.0.0.1 keeps all traffic on loopback."""
    name = socket.gethostname()
    if socket.gethostbyname(name) != "127.0.0.1":
        pytest.skip(f"host name {name!r} does not resolve to 127.0.0.1; a loopback-only cluster needs one")
    return name


def _start(args: list[str], log: Path) -> subprocess.Popen:
    # --block keeps `ray start` in the foreground: killing its process group stops the whole node.
    return subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=ENV)


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)  # a node that has not stopped by then is killed (a graceful stop took 30 s and more)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def _alive_nodes(address: str) -> int:
    code = "import ray; ray.init(address=%r, logging_level='error'); print(sum(n['Alive'] for n in ray.nodes()))" % address
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=ENV)
    except subprocess.TimeoutExpired:  # a node still starting on a loaded machine: ask again until the deadline
        return 0
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0


@pytest.fixture
def two_node_cluster(tmp_path):
    port, dashboard = free_port(), free_port()
    host = _loopback_alias()
    ray_tmp = tempfile.mkdtemp(prefix="tm-ray-", dir="/tmp")  # short: Ray's unix socket paths must fit 107 bytes
    address = f"{host}:{port}"
    head = _start(["--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
                   "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                   f"--temp-dir={ray_tmp}"], tmp_path / "head.log")
    nodes = [head]
    try:
        deadline = time.monotonic() + 240
        while _alive_nodes(address) < 1:
            assert time.monotonic() < deadline, (tmp_path / "head.log").read_text()
        nodes.append(_start([f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                             '--resources={"second_node": 1}'], tmp_path / "worker.log"))
        while _alive_nodes(address) < 2:
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            time.sleep(1)
        yield address, f"http://127.0.0.1:{dashboard}"
    finally:
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _curate(run_id: str, runs: Path, *args: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tokenmill.flows.cli", "curate", *args, "--run-id", run_id, "--output-dir", str(runs),
         "--set", "curate.tokenizer.vocab_size=512", "--set", "curate.tokens.seq_len=32"],
        capture_output=True, text=True, timeout=600, env=ENV)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert (runs / run_id / "tokens" / "_SUCCESS").exists()


def test_curate_runs_tasks_on_both_nodes_with_the_output_of_one_node(two_node_cluster, tmp_path):
    address, dashboard = two_node_cluster
    _curate("mn", tmp_path / "runs", "--ray-address", address)

    # Ray's state API (through the head's dashboard) says where each finished task ran.
    code = (
        "import json; from ray.util.state import list_nodes, list_tasks\n"
        f"nodes = [n.node_id for n in list_nodes(address={dashboard!r})]\n"
        f"tasks = list_tasks(address={dashboard!r}, filters=[('state', '=', 'FINISHED')], limit=10000, raise_on_missing_output=False)\n"
        "print(json.dumps({'nodes': nodes, 'used': sorted({t.node_id for t in tasks if t.type == 'NORMAL_TASK'})}))"
    )
    state = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV)
    assert state.returncode == 0, state.stderr[-3000:]
    found = json.loads(state.stdout.strip().splitlines()[-1])
    assert len(found["nodes"]) == 2 and sorted(found["used"]) == sorted(found["nodes"]), found

    _curate("one", tmp_path / "runs")  # a local one-node Ray: the same files, byte for byte
    assert curated_files(tmp_path / "runs" / "mn") == curated_files(tmp_path / "runs" / "one")

    # Training on the same cluster, on the tokens its curate made: Ray Train (train.launcher auto with
    # ray.address), one worker per node (STRICT_SPREAD), a tiny model for a few steps.
    out = subprocess.run(
        [sys.executable, "-m", "tokenmill.flows.cli", "train", "--run-id", "mn", "--output-dir", str(tmp_path / "runs"),
         "--set", f"ray.address={address}", "--set", "train.placement=STRICT_SPREAD", "--set", "train.nproc=2",
         "--set", "train.model={n_layer: 1, n_head: 2, d_model: 32}", "--set", "train.micro_batch=2",
         "--set", "train.max_steps=4", "--set", "train.warmup_steps=1", "--set", "train.log_every=1",
         "--set", "train.save_every=4", "--set", "train.threads_per_proc=1"],
        capture_output=True, text=True, timeout=600, env=ENV)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    stats = json.loads((tmp_path / "runs" / "mn" / "train" / "_stats.json").read_text())
    assert stats["steps"] == 4 and stats["world_size"] == 2 and stats["ray"]["run"] == "mn-train"
    workers = stats["ray"]["workers"]  # Ray Train's record of the run's workers (the dashboard's Train page)
    assert sorted(w["world_rank"] for w in workers) == [0, 1]
    assert sorted(w["node_id"] for w in workers) == sorted(found["nodes"]), (workers, found)
