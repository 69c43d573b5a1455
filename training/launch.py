"""How the training job is started: torchrun on one node, the DeepSpeed launcher with a hostfile."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from .config import TrainConfig


def write_job(cfg: TrainConfig, tokens_dir: str, out_dir: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "job.json"
    path.write_text(json.dumps({"train": cfg.model_dump(), "tokens_dir": str(tokens_dir), "out_dir": str(out)}, indent=2))
    return path


def command(cfg: TrainConfig, job_path: Path) -> list[str]:
    """argv (never a shell string) that starts every rank of the job."""
    if cfg.hostfile:
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", cfg.hostfile,
                "--module", "training.train", "--job", str(job_path)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg.nproc}",
            "-m", "training.train", "--job", str(job_path)]


def environment(cfg: TrainConfig) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
        threads = cfg.threads_per_proc or max(1, (os.cpu_count() or 1) // cfg.nproc)
        env["OMP_NUM_THREADS"] = str(threads)
    # The job's code is this checkout's; make it importable however tokenmill was installed.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env
