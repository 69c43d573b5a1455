"""Step time of the DeepSpeed job's engine (ZeRO-0/1/2/3) against a plain PyTorch AdamW loop (DDP with 2
processes) on the same model and batch, on CPU with 1 and 2 processes; printed as ratios to plain
PyTorch measured in the same run. Goal: ZeRO-2 <= 1.15x plain.

    python bench/train_overhead.py                    # tiny preset, seq 128, micro-batch 8
    python bench/train_overhead.py --steps 20 --nproc 2

Each process count is one torchrun job that times every variant in turn, interleaved over
--rounds rounds (the median step of each round; the best round counts), so drift hits all alike.
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

    steps = {v: make(v) for v in VARIANTS}
    best = {v: float("inf") for v in VARIANTS}
    for _ in range(args.rounds):
        for v in VARIANTS:
            times = []
            for i in range(args.warmup + args.steps):
                torch.distributed.barrier()
                t0 = time.perf_counter()
                steps[v](batches[i % len(batches)]).item()
                times.append(time.perf_counter() - t0)
            best[v] = min(best[v], statistics.median(times[args.warmup:]))
    if rank == 0:
        Path(args.out).write_text(json.dumps({"params": model_cfg.num_params(), "step_s": best}))
    torch.distributed.destroy_process_group()


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
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    cores = os.cpu_count() or 1
    rows = {}
    for n in args.nproc:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                    __file__, "--worker", "--out", str(out), "--preset", args.preset, "--vocab", str(args.vocab),
                    "--seq-len", str(args.seq_len), "--micro-batch", str(args.micro_batch), "--steps", str(args.steps),
                    "--warmup", str(args.warmup), "--rounds", str(args.rounds)]
            env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS=str(max(1, cores // n)))
            proc = subprocess.run(argv, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{n}-process run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            rows[n] = json.loads(out.read_text())

    params = next(iter(rows.values()))["params"]
    print(f"model {args.preset} ({params:,} params), seq {args.seq_len}, micro-batch {args.micro_batch} per process, "
          f"fp32, CPU ({cores} cores), median of {args.steps} steps, best of {args.rounds} rounds")
    print(f"{'processes':>9}  {'variant':<8} {'step ms':>9} {'x plain':>8}")
    for n, row in rows.items():
        plain = row["step_s"]["plain"]
        for v in VARIANTS:
            label = ("DDP" if n > 1 else "plain") + " AdamW" if v == "plain" else f"ZeRO-{v[-1]}"
            print(f"{n:>9}  {label:<10} {row['step_s'][v] * 1e3:>7.1f} {row['step_s'][v] / plain:>8.2f}")


if __name__ == "__main__":
    main()
