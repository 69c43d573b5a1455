"""Exact resume: a 2-process job whose launcher is SIGKILLed mid-way (its ranks follow it) and restarted
continues the loss curve of an uninterrupted run (CPU, fp32, gloo), for ZeRO-2 and ZeRO-3."""
import json
import subprocess
import sys
import time

import psutil
import pytest

from tokenmill.training.config import TrainConfig
from tokenmill.training.launch import run_job


def metrics(train_dir) -> list[dict]:
    path = train_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def tensorboard_losses(train_dir) -> dict[int, float]:
    """train/loss per step as TensorBoard reads it (purged steps of a killed run are dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(train_dir / "tensorboard"))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("train/loss")}


def kill_mid_way(cfg: TrainConfig, tokens, train_dir, after_step: int) -> None:
    """Start the job from a launcher process (as the CLI does), SIGKILL the launcher once the job reports
    `after_step`: torchrun outlives it, its ranks see it gone (launch.exit_with_launcher) and exit, and
    torchrun follows; nothing it started may be left. The launcher's output pipe stays open here until
    then, so a broken pipe is not what stops them. Events are read as they are written (no polling):
    the rest of this tiny job takes a few hundred milliseconds, far longer than the kill."""
    launcher = subprocess.Popen(
        [sys.executable, "-c", ("import sys; from tokenmill.training.config import TrainConfig; "
                                "from tokenmill.training.launch import run_job; "
                                "run_job(TrainConfig.model_validate_json(sys.argv[1]), sys.argv[2], sys.argv[3])"),
         cfg.model_dump_json(), str(tokens), str(train_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    started, ranks = [], []
    try:
        for line in launcher.stdout:
            if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= after_step:
                started = psutil.Process(launcher.pid).children(recursive=True)  # torchrun and its ranks
                ranks = [p for p in started if "torch.distributed.run" not in p.cmdline()]
                break
        else:
            pytest.fail(f"job exited with {launcher.wait()} before step {after_step}")
    finally:
        launcher.kill()
        launcher.wait()
    assert len(ranks) == cfg.nproc
    deadline = time.monotonic() + 60
    while (alive := [p for p in started if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in alive:  # not left to the next tests
        p.kill()
    launcher.stdout.close()
    assert not alive, [p.cmdline() for p in alive]


def running(process: psutil.Process) -> bool:
    """Alive and not a zombie (an orphan's zombie stays until an init that reaps it does so)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("stage", [2, 3])
def test_sigkilled_run_resumes_with_the_uninterrupted_loss_curve(stage, train_tokens, trained_run, tiny_train_config, tmp_path):
    cfg, train_dir = tiny_train_config(stage), tmp_path / "train"
    reference = metrics(trained_run(stage) / "train")
    steps = list(range(1, cfg.max_steps + 1))
    assert [m["step"] for m in reference] == steps

    kill_mid_way(cfg, train_tokens, train_dir, after_step=cfg.save_every + 2)
    assert not (train_dir / "summary.json").exists()
    assert (train_dir / "checkpoints" / "latest").read_text().startswith("step")
    lines = []
    summary = run_job(cfg, str(train_tokens), str(train_dir), on_line=lines.append)
    assert any(line.startswith("resumed from") for line in lines) and summary["steps"] == cfg.max_steps

    resumed = metrics(train_dir)
    assert [m["step"] for m in resumed] == steps  # no duplicate lines from the killed run
    for ref, got in zip(reference, resumed):
        assert abs(ref["loss"] - got["loss"]) <= 1e-6, (ref, got)
        assert abs(ref["lr"] - got["lr"]) <= 1e-12 and abs(ref["grad_norm"] - got["grad_norm"]) <= 1e-5
    # TensorBoard shows the same curve: one point per step, the killed run's extra steps purged.
    board = tensorboard_losses(train_dir)
    assert sorted(board) == steps and all(abs(board[m["step"]] - m["loss"]) < 1e-5 for m in resumed)
    ckpts = train_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step*")) == ["step0000008", "step0000012"]  # keep_checkpoints=2
    assert (ckpts / "latest").read_text() == "step0000012"
    assert json.loads((ckpts / "step0000012" / "ds_config.json").read_text())["zero_optimization"]["stage"] == stage


def test_a_finished_train_stage_rerun_with_another_lr_is_refused(trained_run, tiny_train_config, tmp_path):
    """The train stage records its settings: a rerun of the run id with another train.lr is refused
    instead of answered with the model trained under the old one; a change of how the job runs is not."""
    import shutil

    from tokenmill.flows.config import RunConfig
    from tokenmill.flows.server import prefect_api
    from tokenmill.flows.train import train
    from tokenmill.pipeline.stages import ConfigChanged

    src, run = trained_run(0), tmp_path / "r"
    run.mkdir()
    (run / "tokens").symlink_to((src / "tokens").resolve())
    shutil.copytree(src / "train", run / "train")  # checkpoints up to the last step: the job resumes there, trains nothing
    config = RunConfig(output_dir=str(tmp_path), run_id="r", train=tiny_train_config(0))
    with prefect_api():
        assert train(config)["steps"] == config.train.max_steps
        other_lr = config.model_copy(update={"train": tiny_train_config(0, lr=1e-3)})
        with pytest.raises(ConfigChanged, match=r"stage 'train' was started with other settings \(train\.lr: 0\.003 -> 0\.001\)"):
            train(other_lr)
        more_threads = config.model_copy(update={"train": tiny_train_config(0, threads_per_proc=2)})
        assert train(more_threads)["skipped"]
