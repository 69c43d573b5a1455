"""The training job through Ray Train (training/ray_train.py) on a real local Ray: 2 CPU workers, gloo,
ZeRO-2. One worker is SIGKILLed mid-run; Ray restarts the group from the latest checkpoint and the
whole loss curve, steps before the kill included, equals the torchrun run's (trained_run) within 1e-6."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tokenmill.training.launch import write_job


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    import ray

    from tokenmill.flows.server import free_port

    # Ray Train's controller checks its workers every 2 s: 0.5 s here notices the SIGKILL and the end of
    # each attempt sooner (the job's own steps take ~1 s of this test; its two Ray Train start-ups the rest).
    ours = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" not in os.environ
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # The dashboard serves the state API (list_actors).
    context = ray.init("local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port(),
                       logging_level="error", log_to_driver=False)
    yield "http://" + context.dashboard_url
    ray.shutdown()
    if ours:
        os.environ.pop("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", None)


def metrics(train_dir) -> list[dict]:
    return [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_sigkilled_ray_train_worker_is_restarted_with_the_torchrun_loss_curve(
        local_ray, train_tokens, trained_run, tiny_train_config, tmp_path):
    from ray.util.state import list_actors

    from tokenmill.training.ray_train import run_on_ray, train_workers

    cfg, train_dir = tiny_train_config(2, max_failures=1), tmp_path / "train"
    name, seen, killed = "r19-train", [], {}

    def on_line(line: str) -> None:
        seen.append(line)
        # Right after the checkpoint of step 4 (before that of step 8): the workers are training.
        if line.startswith("step 5/") and not killed:
            workers = train_workers(name)
            alive = {a.actor_id for a in list_actors(address=local_ray, filters=[("class_name", "=", "RayTrainWorker"),
                                                              ("state", "=", "ALIVE")])}
            assert sorted(w["world_rank"] for w in workers) == [0, 1] and {w["actor_id"] for w in workers} <= alive
            victim = next(w for w in workers if w["world_rank"] == 1)
            os.kill(victim["pid"], signal.SIGKILL)
            killed.update(victim)

    summary = run_on_ray("tokenmill.training.train", cfg, write_job(cfg, str(train_tokens), str(train_dir)),
                         str(train_dir), "train.log", name, on_line=on_line)
    assert killed and summary["steps"] == cfg.max_steps and summary["world_size"] == 2
    assert any(line == "resumed from " + str(train_dir / "checkpoints" / "step0000004") + " at step 4" for line in seen)
    new_ranks = {w["pid"] for w in train_workers(name)}
    assert killed["pid"] not in new_ranks  # a new worker group trained the rest

    reference, got = metrics(trained_run(2) / "train"), metrics(train_dir)
    assert [m["step"] for m in got] == list(range(1, cfg.max_steps + 1))  # the killed attempt's extra lines dropped
    for ref, m in zip(reference, got):
        assert abs(ref["loss"] - m["loss"]) <= 1e-6 and abs(ref["lr"] - m["lr"]) <= 1e-12, (ref, m)
    assert (train_dir / "model.safetensors").exists() and "tokenmill-event: " in (train_dir / "train.log").read_text()


def test_work_on_the_runs_ray_is_a_named_task_and_the_dashboard_line_never_shows_the_token(local_ray, monkeypatch):
    """cluster.on_ray (the evaluate flow's model work) runs as a Ray task of that name, in a Ray worker;
    the dashboard line names the command that prints the token, whose file only the user can read."""
    import re
    import time

    from ray.util.state import list_tasks

    from tokenmill.flows.cluster import dashboard_line, on_ray

    assert on_ray(lambda: os.getpid(), "r19-eval") != os.getpid()  # a lambda: Ray pickles it by value
    deadline = time.monotonic() + 30
    while not list_tasks(address=local_ray, filters=[("name", "=", "r19-eval"), ("state", "=", "FINISHED")]):
        assert time.monotonic() < deadline, "the state API never listed the task r19-eval"
        time.sleep(0.5)

    monkeypatch.setenv("RAY_AUTH_TOKEN", "tok-" + "7" * 40)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    line = dashboard_line("127.0.0.1:8265", local=True)
    assert line.startswith("Ray dashboard: http://127.0.0.1:8265") and "7" * 40 not in line
    path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+) ray get-auth-token", line).group(1)
    assert Path(path).read_text() == "tok-" + "7" * 40 and os.stat(path).st_mode & 0o777 == 0o600


def test_launcher_auto_is_ray_train_whenever_the_run_has_a_ray():
    from tokenmill.flows.train import uses_ray_train

    assert uses_ray_train("auto", None, has_ray=True)  # inside `tokenmill run`: its one Ray
    assert uses_ray_train("auto", "head:6379", has_ray=False)  # `tokenmill train --set ray.address=...`
    assert not uses_ray_train("auto", None, has_ray=False)  # `tokenmill train` alone: torchrun
    assert uses_ray_train("ray", None, has_ray=False) and not uses_ray_train("torchrun", "head:6379", has_ray=True)


def test_model_tasks_and_training_workers_ask_for_gpus_only_where_the_cluster_has_them():
    """What the eval/lm-eval tasks (cluster.task_gpus) and each Ray Train worker (ray_train.worker_resources)
    ask for, from ray.cluster_resources(); the GPU branch runs nowhere here, so it is checked as a function."""
    from tokenmill.flows.cluster import task_gpus
    from tokenmill.training.ray_train import worker_resources

    assert task_gpus({"CPU": 16.0, "GPU": 4.0}) == 1 and task_gpus({"CPU": 2.0}) == 0 and task_gpus({"GPU": 0.5}) == 0
    assert worker_resources({"CPU": 16.0, "GPU": 4.0}, 4, None) == {"GPU": 1, "CPU": 1}
    assert worker_resources({"CPU": 16.0}, 2, None) == {"CPU": 1}
    assert worker_resources({"CPU": 1.0}, 2, None) == {"CPU": 0.5}  # a 1-core machine's Ray: share it, never wait
    assert worker_resources({"CPU": 2.0}, 3, None) == {"CPU": 0.66}  # rounded down, so all three fit
    assert worker_resources({"CPU": 2.0, "GPU": 8.0}, 2, {"GPU": 2, "CPU": 8}) == {"GPU": 2, "CPU": 8}  # the config's
