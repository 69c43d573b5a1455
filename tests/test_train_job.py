import json
import shutil

import pytest

from tokenmill.training.config import TrainConfig
from tokenmill.training.launch import JobFailed, command, run_job
from tokenmill.training.train import ds_config


def test_ds_config_is_generated_from_the_train_config():
    cfg = TrainConfig(zero_stage=3, precision="bf16", micro_batch=4, grad_accum=2, max_steps=100, warmup_steps=10)
    ds = ds_config(cfg, world_size=2)
    assert ds["train_batch_size"] == 16 and ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]
    assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["torch_adam"]
    assert ds["scheduler"]["params"]["total_num_steps"] == 100
    assert "offload_optimizer" not in ds["zero_optimization"] and not ds["fp16"]["enabled"]
    offload = ds_config(TrainConfig(zero_stage=2, precision="fp16", offload_optimizer=True), world_size=8)
    assert offload["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert not offload["optimizer"]["params"]["torch_adam"]  # ZeRO-Offload steps with DeepSpeed's CPU Adam
    assert offload["fp16"] == {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    with pytest.raises(ValueError, match="offload_optimizer needs train.zero_stage >= 1"):
        TrainConfig(zero_stage=0, offload_optimizer=True)


def test_launch_command_is_an_argv_not_a_shell_string(tmp_path):
    argv = command(TrainConfig(nproc=3), tmp_path / "job with spaces; rm -rf x.json")
    assert argv[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--nproc_per_node=3" in argv
    assert argv[-1] == str(tmp_path / "job with spaces; rm -rf x.json")
    assert "deepspeed.launcher.runner" in command(TrainConfig(hostfile="hosts"), tmp_path / "j.json")


def test_a_failing_job_reports_its_cause(tmp_path):
    lines = []
    with pytest.raises(JobFailed, match="manifest.json not found") as err:
        run_job(TrainConfig(nproc=1), str(tmp_path / "no-tokens"), str(tmp_path / "train"), on_line=lines.append)
    assert "full log:" in str(err.value) and (tmp_path / "train" / "train.log").exists()
    assert lines[0].startswith("launching:")


def metrics(train_dir):
    return [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_every_zero_stage_reduces_the_loss_with_two_processes(stage, trained_run):
    train = trained_run(stage) / "train"
    losses = [m["loss"] for m in metrics(train)]
    assert len(losses) == 12 and losses[-1] < losses[0] - 0.3
    summary = json.loads((train / "summary.json").read_text())
    assert summary["zero_stage"] == stage and summary["world_size"] == 2
    assert json.loads((train / "ds_config.json").read_text())["zero_optimization"]["stage"] == stage
    assert json.loads((train / "job.json").read_text())["train"]["activation_checkpointing"] == (stage == 1)
    assert list((train / "tensorboard").glob("events.out.tfevents.*"))


def test_a_diverging_run_stops_with_the_step_and_a_hint(train_tokens, tiny_train_config, tmp_path):
    cfg = tiny_train_config(0, nproc=1, lr=1e30, warmup_steps=1)
    with pytest.raises(JobFailed, match=r"loss is (nan|inf) at step \d+: lower train.lr"):
        run_job(cfg, str(train_tokens), str(tmp_path / "train"), on_line=lambda _: None)


def test_resuming_with_a_different_model_is_refused(trained_run, tiny_train_config, tmp_path):
    shutil.copytree(trained_run(0) / "train" / "checkpoints", tmp_path / "train" / "checkpoints")
    cfg = tiny_train_config(0, nproc=1, model=dict(n_layer=2, n_head=4, d_model=32))
    with pytest.raises(JobFailed, match=r"different model \(checkpoint vs now: \{'d_model': \(64, 32\)\}\)"):
        run_job(cfg, str(trained_run(0) / "tokens"), str(tmp_path / "train"), on_line=lambda _: None)
