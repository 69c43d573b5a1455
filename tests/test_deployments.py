"""Prefect deployments as a user runs them: a real server on 127.0.0.1, `tokenmill deploy` (every
deployment created), a process worker, `tokenmill trigger end-to-end/bundled --wait` on tiny settings,
then the flow run's state and artifacts read back through the Prefect client. Server and worker are
stopped by pid. (`tokenmill dedup` itself is test_dedup_cli's.)"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading

import psutil
import pytest

from tokenmill.flows.server import start_server, stop_server

pytestmark = pytest.mark.slow

TINY = [
    "curate.tokenizer.vocab_size=512", "curate.tokens.seq_len=32", "curate.tokens.val_fraction=0.1",
    "train.model={n_layer: 1, n_head: 2, d_model: 32}", "train.nproc=1", "train.max_steps=8",
    "train.warmup_steps=2", "train.save_every=8", "evaluate.max_val_rows=16", "evaluate.max_new_tokens=4",
    "evaluate.lm_eval=false",  # lm-eval is tested in test_evaluate_report and test_end_to_end
    "train.launcher=torchrun",  # training through Ray Train (the default in a run) is test_end_to_end's
    "ray.num_cpus=1", "ray.dashboard=false",
]


@pytest.fixture
def prefect_server(tmp_path):
    api = start_server(home=str(tmp_path / "prefect-home"))
    yield api
    stop_server(api)


class ListeningWatch(threading.Thread):
    """Every address a process tree listens on while it runs (polled): the worker, its flow runs and
    the Ray each flow starts, by process name; the training job's (torchrun and its ranks) apart."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.seen, self.training, self.stop = pid, set(), set(), threading.Event()

    @staticmethod
    def _in_training_job(proc: psutil.Process) -> bool:
        return any(p.name() == "pt_elastic" or "torch.distributed.run" in " ".join(p.cmdline())
                   for p in (proc, *proc.parents()))

    def run(self):
        while not self.stop.wait(0.5):
            try:
                family = {self.pid: psutil.Process(self.pid)}
                family.update({c.pid: c for c in family[self.pid].children(recursive=True)})
                for conn in psutil.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN and conn.pid in family:
                        proc = family[conn.pid]
                        found = (conn.laddr.ip, proc.name())
                        (self.training if self._in_training_job(proc) else self.seen).add(found)
            except psutil.Error:  # a process ended between the listing and the look-up
                continue


def _tokenmill(env, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "tokenmill.flows.cli", *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_deploy_then_trigger_end_to_end_from_a_worker(prefect_server, tmp_path):
    env = {**os.environ, "PREFECT_API_URL": prefect_server.url, "PREFECT_WORKER_QUERY_SECONDS": "2"}
    deployed = _tokenmill(env, "deploy", timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    for name in ("end-to-end/bundled", "curate-on-ray/curate", "dedup-on-ray/dedup", "train/train", "evaluate/evaluate",
                 "finetune/finetune"):
        assert f"Deployment '{name}'" in deployed.stdout
    assert deployed.stdout.count("successfully created") == 6

    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "tokenmill"], env=env,
                              stdout=open(tmp_path / "worker.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    listening = ListeningWatch(worker.pid)
    listening.start()
    try:
        sets = [a for s in TINY + [f"output_dir={tmp_path / 'runs'}", "run_id=deployed"] for a in ("--set", s)]
        triggered = _tokenmill(env, "trigger", "end-to-end/bundled", "--wait", "--timeout", "540", *sets)
        log = (tmp_path / "worker.log").read_text(errors="replace")
        assert triggered.returncode == 0, triggered.stdout + triggered.stderr + log[-4000:]
        assert "Completed" in triggered.stdout

    finally:
        listening.stop.set()
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a loaded machine can outlast the worker's graceful shutdown
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()

    # The worker, its flow runs and the local Ray they started (its GCS among them) listen on loopback
    # only. The training job's torchrun rendezvous store is launch.py's (recorded, not asserted here).
    assert "gcs_server" in {name for _, name in listening.seen}, listening.seen
    assert {ip for ip, _ in listening.seen} <= {"127.0.0.1", "::ffff:127.0.0.1"}, (listening.seen, listening.training)
    assert (tmp_path / "runs" / "deployed" / "report.md").exists()
    assert (tmp_path / "runs" / "deployed" / "eval" / "_SUCCESS").exists()

    async def read_back():
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            ArtifactFilter,
            ArtifactFilterKey,
            DeploymentFilter,
            DeploymentFilterName,
        )

        async with get_client() as client:
            [deployment] = await client.read_deployments(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["bundled"])))
            runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(id={"any_": [deployment.id]}))
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["report-deployed", "loss-curve-deployed", "training-deployed"])))
            return runs, artifacts

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.url}):
        runs, artifacts = asyncio.run(read_back())
    assert [r.state.type.value for r in runs] == ["COMPLETED"]
    by_key = {a.key: a for a in artifacts}
    assert "Data funnel" in by_key["report-deployed"].data
    assert by_key["loss-curve-deployed"].type == "image" and by_key["loss-curve-deployed"].data.startswith("data:image/png;base64,")
    assert by_key["training-deployed"].type == "table" and "final loss" in str(by_key["training-deployed"].data)
