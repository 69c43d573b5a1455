"""How the training job is started: torchrun on one node, the DeepSpeed launcher with a hostfile."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Callable

import torch

from .config import TrainConfig


def write_job(cfg: TrainConfig, tokens_dir: str, out_dir: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "job.json"
    path.write_text(json.dumps({"train": cfg.model_dump(), "tokens_dir": str(tokens_dir), "out_dir": str(out)}, indent=2))
    return path


def command(cfg: TrainConfig, job_path: Path, module: str = "tokenmill.training.train") -> list[str]:
    """argv (never a shell string) that starts every rank of the job (`python -m MODULE --job JOB.json`)."""
    if cfg.hostfile:
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", cfg.hostfile,
                "--module", module, "--job", str(job_path)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg.nproc}",
            "-m", module, "--job", str(job_path)]


def environment(cfg: TrainConfig) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
        threads = cfg.threads_per_proc or max(1, (os.cpu_count() or 1) // cfg.nproc)
        env["OMP_NUM_THREADS"] = str(threads)
    return env


class JobFailed(RuntimeError):
    pass


def run_job(cfg: TrainConfig, tokens_dir: str, out_dir: str, on_line: Callable[[str], None] = print) -> dict:
    """Run the training job to the end, appending its output to out_dir/train.log and passing each
    line to `on_line`; return its summary, or raise JobFailed with the last lines of its output."""
    job = write_job(cfg, tokens_dir, out_dir)
    return run_module("tokenmill.training.train", cfg, job, out_dir, "train.log", on_line)


def run_module(module: str, cfg: TrainConfig, job: Path, out_dir: str, log_name: str,
               on_line: Callable[[str], None] = print) -> dict:
    """Launch `python -m MODULE --job JOB` on cfg.nproc processes (or cfg.hostfile's nodes), the way
    the training job is; the module writes out_dir/summary.json when it succeeds."""
    argv = command(cfg, job, module)
    on_line("launching: " + " ".join(argv))
    tail: deque[str] = deque(maxlen=40)
    log_path = Path(out_dir) / log_name
    with open(log_path, "a") as log, subprocess.Popen(
        argv, env=environment(cfg), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, text=True, bufsize=1,
    ) as proc:
        try:
            for line in proc.stdout:
                log.write(line)
                tail.append(line.rstrip())
                # Progress and results go on; library chatter stays in the log.
                if line.startswith(("step ", "model:", "resumed", "done:")):
                    on_line(line.rstrip())
        except BaseException:  # stopped (SIGTERM, Ctrl-C, task cancelled): stop every rank too
            proc.terminate()  # torchrun / the DeepSpeed launcher pass it on to the ranks
            raise
    if proc.returncode != 0:
        errors = [line for line in tail if "Error" in line or "error:" in line]
        cause = errors[-1] if errors else tail[-1] if tail else "no output"
        raise JobFailed(f"{module} job failed (exit code {proc.returncode}): {cause}\n"
                        f"last lines:\n" + "\n".join(tail) + f"\nfull log: {log_path}")
    return json.loads((Path(out_dir) / "summary.json").read_text())
