"""What tokenmill exposes and leaves behind: its Prefect server and local Ray listen on 127.0.0.1 only (Ray with
token auth, no secret in its runtime_env), names are checked before use, a run directory is locked, and the
server goes when its run dies."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil
import pytest


def _listening(pids: set[int]) -> set[tuple[str, int]]:
    found = set()
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            found.add((conn.laddr.ip, conn.laddr.port))
    return found


_RUN_WITH_SERVER = """
import json, sys, time
from tokenmill.flows.server import start_server
api = start_server(home=sys.argv[1])
print(json.dumps({"pid": api.pid, "url": api.url}), flush=True)
time.sleep(600)
"""


def test_local_prefect_server_binds_loopback_only_and_dies_with_its_run(tmp_path):
    """The server a run starts listens on 127.0.0.1 only, and goes when the run is SIGKILLed (no
    `finally` runs then: the server's guard sees its parent gone)."""
    run = subprocess.Popen([sys.executable, "-c", _RUN_WITH_SERVER, str(tmp_path / "home")], stdout=subprocess.PIPE,
                           text=True)
    try:
        api = json.loads(run.stdout.readline())
        server = psutil.Process(api["pid"])
        family = [server, *server.children(recursive=True)]
        listening = _listening({p.pid for p in family})
        assert listening, "the server listens on nothing?"
        assert {ip for ip, _ in listening} == {"127.0.0.1"}
        assert int(api["url"].split(":")[2].split("/")[0]) in {port for _, port in listening}
    finally:
        run.kill()
        run.wait()
    _, alive = psutil.wait_procs(family, timeout=60)
    assert not alive, f"left running after its run was killed: {alive}"


# A flow's process as a Prefect worker starts it: ray is imported first (prefect_ray), nothing of the
# CLI is, and the node environment holds secrets. The runner every flow uses starts the local Ray.
_WORKER_STARTED_RAY = """
import json, os, sys, urllib.error, urllib.request
import psutil, ray, ray.util.state
os.environ.update(PREFECT_API_KEY="pnu_secret_key", AWS_SECRET_ACCESS_KEY="aws_secret_value")
from tokenmill.flows.config import RayConfig
from tokenmill.flows.runtime import ray_task_runner

def status(url, token=None):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code

@ray.remote
def seen():
    ctx = ray.get_runtime_context()
    return {"runtime_env": ctx.runtime_env, "key": os.environ.get("PREFECT_API_KEY")}

with ray_task_runner(RayConfig(num_cpus=1)) as runner:
    task = ray.get(seen.remote())
    me = psutil.Process()
    family = {me.pid, *(c.pid for c in me.children(recursive=True))}
    ips = sorted({c.laddr.ip for c in psutil.net_connections(kind="inet")
                  if c.status == psutil.CONN_LISTEN and c.pid in family})
    api = "http://" + runner._ray_context.dashboard_url  # by address: other Rays may run on this machine
    dashboard = api + "/api/version"
    print(json.dumps({"dashboard": runner._ray_context.dashboard_url, "ips": ips, "task": task,
                      "driver_runtime_env": ray.get_runtime_context().runtime_env,
                      "jobs_runtime_env": [j.runtime_env for j in ray.util.state.list_jobs(address=api)],
                      "no_token": status(dashboard), "token": status(dashboard, os.environ["RAY_AUTH_TOKEN"])}))
"""


@pytest.mark.slow
def test_worker_started_flow_ray_is_loopback_token_auth_and_secret_free(tmp_path):
    """Every server of the local Ray a flow starts (GCS, raylet, workers, dashboard and its agents)
    listens on 127.0.0.1; the dashboard refuses a request without the run's token; the secrets of the
    node environment reach the workers from there, never through the job's runtime_env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ENABLE"))}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    out = subprocess.run([sys.executable, "-c", _WORKER_STARTED_RAY], capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["dashboard"].startswith("127.0.0.1:")
    assert found["ips"] and set(found["ips"]) <= {"127.0.0.1", "::ffff:127.0.0.1"}, found
    assert (found["no_token"], found["token"]) == (401, 200)
    assert found["task"]["key"] == "pnu_secret_key"  # from the node's environment
    shown = json.dumps([found["task"]["runtime_env"], found["driver_runtime_env"], found["jobs_runtime_env"]])
    assert "PREFECT_HOME" in shown or "PYTHONPATH" in shown or "env_vars" in shown, shown
    assert "pnu_secret_key" not in shown and "aws_secret_value" not in shown and "PREFECT_API_KEY" not in shown
    assert not (tmp_path / ".ray").exists()  # the token stayed in the environment


@pytest.mark.parametrize("run_id", ["../escape", "x;touch pwned", "$(id)", ".hidden"])
def test_bad_run_id_is_refused_before_anything_is_written(tmp_path, run_id):
    out = subprocess.run([sys.executable, "-m", "tokenmill.flows.cli", "curate", "--run-id", run_id,
                          "--output-dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert out.returncode == 2, out.stdout + out.stderr
    assert "invalid configuration" in out.stdout and "run id" in out.stdout
    assert list(tmp_path.iterdir()) == []  # no run directory, no lock, nothing beside


def test_names_used_in_paths_and_commands_are_checked_once():
    from tokenmill.flows.config import load_config
    from tokenmill.pipeline.storage import check_name

    assert load_config(run_id="2026-11-30_run.v2", overrides=["finetune.task=my-task.v2",
                                                               "evaluate.lm_eval_tasks=[arc_easy, early-signal]"])
    for override in ("finetune.task=../x", "evaluate.lm_eval_tasks=[../../etc/passwd]", "run_id='a;b'"):
        with pytest.raises(ValueError, match="is not allowed"):
            load_config(overrides=[override])
    with pytest.raises(ValueError, match="is not allowed"):
        check_name("a..b")
    with pytest.raises(ValueError, match="sent to every node in a shell command"):  # pdsh quotes only spaces
        load_config(output_dir="/tmp/$(id)", overrides=["train.hostfile=hosts"])
    assert load_config(output_dir="/tmp/$(id)").output_dir == "/tmp/$(id)"  # one machine: an argv, no shell
    # the default run id has sub-second resolution: two made in a row differ
    assert load_config().with_run_id().run_id != load_config().with_run_id().run_id


_TAKE_LOCK = """
import sys
from tokenmill.flows.runtime import RunLocked, run_lock
try:
    with run_lock(sys.argv[1]):
        print("locked")
except RunLocked as e:
    print("refused:", e)
"""


def test_a_run_directory_is_locked_against_a_second_process(tmp_path):
    from tokenmill.flows.runtime import run_lock

    run_dir = str(tmp_path / "runs" / "same-id")

    def other_process() -> str:
        out = subprocess.run([sys.executable, "-c", _TAKE_LOCK, run_dir], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip()

    with run_lock(run_dir):
        with run_lock(run_dir):  # re-entered by a nested flow of the same process
            pass
        assert other_process().startswith(f"refused: run directory {run_dir} is in use")
    assert other_process() == "locked"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["runs", "same-id"]  # the lock writes no file


def test_infra_files_expose_nothing_without_auth():
    """The shipped CI workflow expands no workflow input inside a shell script; a Ray dashboard bound
    beyond loopback comes with Ray's token auth."""
    import re
    from pathlib import Path

    import yaml

    infra = Path(__file__).resolve().parent.parent / "infra"
    workflow = yaml.safe_load((infra / "ci" / "github-actions.yml").read_text())
    scripts = [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]
    assert scripts and not [s for s in scripts if re.search(r"\$\{\{[^}]*(inputs|github\.event)", s)]
    for name in ("raycluster.yaml", "rayjob.yaml"):
        spec = yaml.safe_load((infra / "kuberay" / name).read_text())["spec"]
        cluster = spec.get("rayClusterSpec", spec)
        if cluster["headGroupSpec"]["rayStartParams"].get("dashboard-host", "127.0.0.1") != "127.0.0.1":
            assert cluster.get("authOptions", {}).get("mode") == "token", name


def test_inspect_prints_data_as_plain_text(tmp_path):
    """Ids, urls, reasons and text come from crawled data: no rich markup is applied to them and no
    terminal escape reaches the terminal."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from tokenmill.flows.cli import app

    run = tmp_path / "run"
    (run / "read").mkdir(parents=True)
    (run / "rejected" / "read").mkdir(parents=True)
    (run / "read" / "_stats.json").write_text(json.dumps({"docs_in": 1, "docs_kept": 0, "rejected": {"read.bad": 1}}))
    pq.write_table(pa.table({"id": ["[bold]id[/bold]"], "text": ["[red]text[/red] \x1b]0;owned\x07 \x1b[2J tail"],
                             "source": ["s"], "url": ["http://x/[link=file:///etc]u[/link]"], "reason": ["read.bad"]}),
                   run / "rejected" / "read" / "part-00000.parquet")
    shown = CliRunner().invoke(app, ["inspect", str(run), "--reason", "read"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    for literal in ("[bold]id[/bold]", "[red]text[/red]", "[link=file:///etc]u[/link]", r"\x1b]0;owned\x07",
                    r"\x1b[2J"):
        assert literal in shown.output, (literal, shown.output)
    assert "\x1b" not in shown.output and "\x07" not in shown.output
