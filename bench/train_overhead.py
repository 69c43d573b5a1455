"""Step time of the DeepSpeed job's engine (ZeRO-0/1/2/3) against a plain PyTorch AdamW loop (DDP with 2
processes) on the same model and batch, on CPU with 1 and 2 processes; printed as ratios to plain
PyTorch measured in the same run. Goal: ZeRO-2 <= 1.15x plain. With `--launchers torchrun ray`, the
same measurement also runs as a Ray Train job (TorchTrainer workers on a local Ray, as `train.launcher:
ray` runs training) and the table adds Ray Train's step time as a ratio to torchrun's, and each
launcher's start-up (launch to the first timed step).

    python bench/train_overhead.py                    # tiny preset, seq 128, micro-batch 8
    python bench/train_overhead.py --steps 20 --nproc 2
    python bench/train_overhead.py --nproc 2 --launchers torchrun ray --variants plain zero2 --repeat 2

Each process count is one job that times every variant in turn, interleaved over --rounds rounds
(the median step of each round; the best round counts), so drift hits all alike.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ["plain", "zero0", "zero1", "zero2", "zero3"]


def worker(args) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch

    from tokenmill.training.config import TrainConfig
    from tokenmill.training.model import Transformer
    from tokenmill.training.train import ds_config, init_distributed, param_groups

    rank, world = init_distributed()
    import deepspeed

    cfg = TrainConfig(preset=args.preset, micro_batch=args.micro_batch, max_steps=10**6, warmup_steps=10)
    model_cfg = cfg.resolve_model(args.vocab, args.seq_len)
    gen = torch.Generator().manual_seed(rank)
    batches = [torch.randint(0, args.vocab, (args.micro_batch, args.seq_len + 1), generator=gen) for _ in range(4)]

    def make(variant):
        torch.manual_seed(cfg.seed)
        model = Transformer(model_cfg)
        if variant == "plain":
            ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
            opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)

            def step(batch):
                loss = ddp(batch[:, :-1], batch[:, 1:])
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss
            return step
        stage_cfg = cfg.model_copy(update={"zero_stage": int(variant[-1])})
        engine, *_ = deepspeed.initialize(model=model, model_parameters=param_groups(model, cfg.weight_decay),
                                          config=ds_config(stage_cfg, world))

        def step(batch):
            loss = engine(batch[:, :-1], batch[:, 1:])
            engine.backward(loss)
            engine.step()
            return loss
        return step

    steps = {v: make(v) for v in args.variants}
    first_step_at = time.time() - args.launched_at
    best = {v: float("inf") for v in args.variants}
    for _ in range(args.rounds):
        for v in args.variants:
            times = []
            for i in range(args.warmup + args.steps):
                torch.distributed.barrier()
                t0 = time.perf_counter()
                steps[v](batches[i % len(batches)]).item()
                times.append(time.perf_counter() - t0)
            best[v] = min(best[v], statistics.median(times[args.warmup:]))
    if rank == 0:
        Path(args.out).write_text(json.dumps({"params": model_cfg.num_params(), "step_s": best, "first_step_at": first_step_at}))
    torch.distributed.destroy_process_group()


def ray_worker(config: dict) -> None:
    """One Ray Train worker: the same timing loop, with torchrun's thread count."""
    import torch

    torch.set_num_threads(config["threads"])
    worker(argparse.Namespace(**config["args"]))


def run_torchrun(args, n: int, out: Path) -> dict:
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
            __file__, "--worker", "--out", str(out), "--preset", args.preset, "--vocab", str(args.vocab),
            "--seq-len", str(args.seq_len), "--micro-batch", str(args.micro_batch), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--rounds", str(args.rounds), "--variants", *args.variants,
            "--launched-at", str(time.time())]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // n)))
    proc = subprocess.run(argv, check=False, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{n}-process torchrun job failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def run_ray_train(args, n: int, out: Path) -> dict:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cores = os.cpu_count() or 1
    if not ray.is_initialized():
        ray.init("local", num_cpus=max(cores, n), include_dashboard=False, logging_level="error", log_to_driver=False)
    wargs = {k: v for k, v in vars(args).items() if k not in ("launchers", "nproc")}
    wargs.update(out=str(out), launched_at=time.time())
    trainer = TorchTrainer(ray_worker, train_loop_config={"args": wargs, "threads": max(1, cores // n)},
                           torch_config=TorchConfig(backend="gloo"),
                           scaling_config=ScalingConfig(num_workers=n, resources_per_worker={"CPU": max(cores, n) / n}),
                           run_config=RunConfig(name=f"bench-train-overhead-{n}", storage_path=str(out.parent / "ray")))
    trainer.fit()
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--launchers", nargs="+", default=["torchrun"], choices=["torchrun", "ray"])
    p.add_argument("--repeat", type=int, default=1, help="jobs per launcher, alternating (load drifts alike)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--launched-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    cores = os.cpu_count() or 1
    run = {"torchrun": run_torchrun, "ray": run_ray_train}
    rows = {}  # (launcher, processes) -> the best of --repeat jobs, which alternate between launchers
    for _ in range(args.repeat):
        for n in args.nproc:
            for launcher in args.launchers:
                with tempfile.TemporaryDirectory() as tmp:
                    got = run[launcher](args, n, Path(tmp) / "result.json")
                best = rows.setdefault((launcher, n), got)
                best["step_s"] = {v: min(best["step_s"][v], got["step_s"][v]) for v in got["step_s"]}
                best["first_step_at"] = min(best["first_step_at"], got["first_step_at"])

    params = next(iter(rows.values()))["params"]
    print(f"model {args.preset} ({params:,} params), seq {args.seq_len}, micro-batch {args.micro_batch} per process, "
          f"fp32, CPU ({cores} cores), median of {args.steps} steps, best of {args.rounds} rounds")
    print(f"{'launcher':<9} {'processes':>9}  {'variant':<10} {'step ms':>9} {'x plain':>8} {'x torchrun':>10} {'start s':>8}")
    for (launcher, n), row in rows.items():
        plain = row["step_s"].get("plain")
        for v in args.variants:
            label = ("DDP" if n > 1 else "plain") + " AdamW" if v == "plain" else f"ZeRO-{v[-1]}"
            base = rows.get(("torchrun", n))
            vs_plain = f"{row['step_s'][v] / plain:>8.2f}" if plain else f"{'':>8}"
            vs_torchrun = f"{row['step_s'][v] / base['step_s'][v]:>10.2f}" if base else f"{'':>10}"
            print(f"{launcher:<9} {n:>9}  {label:<10} {row['step_s'][v] * 1e3:>7.1f} {vs_plain} {vs_torchrun} "
                  f"{row['first_step_at']:>8.1f}")


if __name__ == "__main__":
    main()
