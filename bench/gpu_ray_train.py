"""The training job on a GPU through both launchers: torchrun and Ray Train (TorchTrainer workers asking for a
GPU each, NCCL), on the same tokens and settings. Prints, per launcher, the median step time and tokens/s, the
start-up (launch to the first step), the largest loss difference between the two curves, then a Ray Train run
whose rank-0 worker is SIGKILLed after a checkpoint (Ray restarts the group from it: the curve must equal the
uninterrupted one), and the evaluation as a Ray task asking for a GPU. Runs on CPU too (gloo), as a check.

    python bench/gpu_ray_train.py --tokens RUN/tokens [--preset 25m] [--steps 60] [--precision bf16]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path


def metrics(train_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]


def timed_job(cfg, tokens: str, out: Path, ray_name: str | None = None, on_line=None) -> dict:
    from tokenmill.training.launch import run_job

    lines: list[str] = []
    started = time.monotonic()
    first: list[float] = []

    def line(text: str) -> None:
        lines.append(text)
        if text.startswith("step ") and not first:
            first.append(time.monotonic() - started)
        if on_line:
            on_line(text)

    summary = run_job(cfg, tokens, str(out), on_line=line, ray_name=ray_name)
    rows = metrics(out)
    steady = rows[len(rows) // 4:]  # past warm-up and the first (compiling) steps
    return {"summary": summary, "wall_s": time.monotonic() - started, "first_step_s": first[0] if first else None,
            "step_s": statistics.median(r["seconds"] for r in steady),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady), "losses": [r["loss"] for r in rows],
            "resumed": [text for text in lines if text.startswith("resumed from")]}


def max_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b), (len(a), len(b))
    return max(abs(x - y) for x, y in zip(a, b))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", required=True, help="a run's tokens/ directory")
    p.add_argument("--preset", default="25m")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--out", default=None, help="where the runs go (default: a temp dir)")
    args = p.parse_args()

    import ray
    import torch

    from tokenmill.training.config import EvalConfig, TrainConfig
    from tokenmill.training.evaluate import evaluate
    from tokenmill.training.ray_train import train_workers

    gpu = torch.cuda.is_available()
    save_every = max(2, args.steps // 3)
    cfg = TrainConfig(preset=args.preset, nproc=1, zero_stage=2, precision=args.precision if gpu else "fp32",
                      micro_batch=args.micro_batch, max_steps=args.steps, warmup_steps=max(1, args.steps // 10),
                      save_every=save_every, keep_checkpoints=2, log_every=1, max_failures=1)
    root = Path(args.out or tempfile.mkdtemp(prefix="gpu-ray-train-"))
    results: dict = {"gpu": torch.cuda.get_device_name(0) if gpu else None, "preset": args.preset, "steps": args.steps,
                     "precision": cfg.precision}

    results["torchrun"] = timed_job(cfg, args.tokens, root / "torchrun")  # no ray_name: torchrun
    ray.init("local", include_dashboard=False, logging_level="error", log_to_driver=False,
             num_gpus=torch.cuda.device_count() if gpu else None)
    results["ray_resources"] = ray.cluster_resources()
    results["ray"] = timed_job(cfg, args.tokens, root / "ray", ray_name="gpu-bench-train")
    results["curve_max_diff_ray_vs_torchrun"] = max_diff(results["torchrun"]["losses"], results["ray"]["losses"])

    killed: dict = {}
    name = "gpu-bench-kill"

    def kill_after_checkpoint(text: str) -> None:
        if text.startswith(f"step {save_every + 2}/") and not killed:
            victim = next(w for w in train_workers(name) if w["world_rank"] == 0)
            os.kill(victim["pid"], signal.SIGKILL)
            killed.update(victim)

    results["ray_killed"] = timed_job(cfg, args.tokens, root / "killed", ray_name=name, on_line=kill_after_checkpoint)
    results["ray_killed"]["killed_pid"] = killed.get("pid")
    results["curve_max_diff_killed_vs_ray"] = max_diff(results["ray"]["losses"], results["ray_killed"]["losses"])

    def eval_on_worker(train_dir: str, tokens: str) -> dict:
        import torch

        out = evaluate(train_dir, tokens, EvalConfig(lm_eval=False, threads=None), seed=0)
        return {"cuda_in_task": torch.cuda.is_available(), "metrics": {k: v for k, v in out.items() if k != "samples"}}

    started = time.monotonic()
    # As flows/cluster.on_ray runs the evaluate flow's model work (that module needs Prefect, not installed on a bare GPU box).
    task = ray.remote(eval_on_worker).options(name="gpu-bench-eval", num_cpus=1, num_gpus=1 if gpu else 0, max_retries=0)
    results["eval"] = ray.get(task.remote(str(root / "ray"), args.tokens))
    results["eval"]["wall_s"] = time.monotonic() - started
    ray.shutdown()

    for launcher in ("torchrun", "ray", "ray_killed"):
        results[launcher].pop("losses")
    print(json.dumps(results, indent=1, default=str))
    tr, rt = results["torchrun"], results["ray"]
    print(f"\n{results['gpu'] or 'CPU'}: preset {args.preset}, {cfg.precision}, ZeRO-2, 1 worker, {args.steps} steps")
    print(f"{'launcher':<10} {'step ms':>8} {'tok/s':>10} {'first step s':>12} {'x torchrun':>10}")
    for label, row in (("torchrun", tr), ("Ray Train", rt)):
        print(f"{label:<10} {row['step_s'] * 1e3:>8.1f} {row['tokens_per_s']:>10,.0f} {row['first_step_s']:>12.1f} "
              f"{row['step_s'] / tr['step_s']:>10.2f}")
    print(f"loss curves, Ray Train vs torchrun: max |diff| {results['curve_max_diff_ray_vs_torchrun']:.2e}")
    print(f"SIGKILLed rank 0 (pid {killed.get('pid')}), {results['ray_killed']['resumed']}: "
          f"max |diff| vs uninterrupted {results['curve_max_diff_killed_vs_ray']:.2e}")
    print(f"eval as a Ray task: cuda in task {results['eval']['cuda_in_task']}, {results['eval']['wall_s']:.1f} s")


if __name__ == "__main__":
    main()
