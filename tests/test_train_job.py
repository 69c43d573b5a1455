import pytest

from training.config import TrainConfig
from training.launch import JobFailed, command, run_job
from training.train import ds_config


def test_ds_config_is_generated_from_the_train_config():
    cfg = TrainConfig(zero_stage=3, precision="bf16", micro_batch=4, grad_accum=2, max_steps=100, warmup_steps=10)
    ds = ds_config(cfg, world_size=2)
    assert ds["train_batch_size"] == 16 and ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]
    assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["torch_adam"]
    assert ds["scheduler"]["params"]["total_num_steps"] == 100


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
