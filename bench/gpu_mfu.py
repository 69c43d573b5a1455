"""Tokens/s and MFU of the training engine on one GPU: presets 125m and 350m, bf16, ZeRO-2, seq 1024
and 2048, micro-batch doubled until it no longer fits. MFU = model FLOPs per token x tokens/s /
peak dense bf16 FLOP/s of the detected GPU (training/metrics.py). Goal: >= 45% on an H100.

    python bench/gpu_mfu.py                          # on a GPU machine
    python bench/gpu_mfu.py --cpu-check              # no GPU: the maths and one tiny CPU run of the loop

Synthetic token batches (the input pipeline is not what is measured). One process; the engine is the
one training/train.py builds (same DeepSpeed config generator, same model).
"""
from __future__ import annotations

import argparse
import gc
import os
import socket
import sys
import time

import torch

from tokenmill.training.config import PRESETS, ModelConfig, TrainConfig
from tokenmill.training.metrics import mfu, peak_bf16_flops
from tokenmill.training.model import Transformer
from tokenmill.training.train import ds_config, init_distributed, param_groups

VOCAB = 50304  # GPT-2's vocabulary padded to a multiple of 64


def init_single_process() -> None:
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    init_distributed()


def measure(preset: str, seq_len: int, micro_batch: int, precision: str, steps: int, warmup: int,
            compile_model: bool, vocab: int = VOCAB, model_overrides: dict | None = None) -> dict:
    """Tokens/s of `steps` optimizer steps after `warmup` ones (raises torch.OutOfMemoryError)."""
    import deepspeed

    cfg = TrainConfig(preset=preset, model=model_overrides or {}, zero_stage=2, precision=precision,
                      micro_batch=micro_batch, max_steps=10**6, warmup_steps=10)
    model_cfg = cfg.resolve_model(vocab, seq_len)
    model = Transformer(model_cfg)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=param_groups(model, cfg.weight_decay),
                                      config=ds_config(cfg, world_size=1))
    if compile_model:
        engine.compile()
    try:
        batch = torch.randint(0, vocab, (micro_batch, seq_len + 1), device=engine.device)
        for i in range(warmup + steps):
            if i == warmup:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            loss = engine(batch[:, :-1], batch[:, 1:])
            engine.backward(loss)
            engine.step()
        loss.item()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    finally:
        engine.destroy()
        del engine, model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    tokens_per_s = steps * micro_batch * seq_len / seconds
    return {"params": model_cfg.num_params(), "flops_per_token": model_cfg.flops_per_token(), "tokens_per_s": tokens_per_s}


def largest_fitting(preset: str, seq_len: int, args) -> tuple[int, dict] | None:
    """Double the micro-batch from 1 until out of memory; the last one that ran and its figures."""
    best, micro = None, 1
    while micro <= args.max_micro_batch:
        try:
            best = (micro, measure(preset, seq_len, micro, "bf16", args.steps, args.warmup, args.compile))
        except torch.OutOfMemoryError:
            gc.collect()
            torch.cuda.empty_cache()
            break
        micro *= 2
    return best


def cpu_check() -> None:
    """Without a GPU: the FLOPs/params maths of the presets, the peak table, and the measuring loop
    on a tiny model (fp32, CPU), so the GPU run fails on nothing but the GPU."""
    print(f"{'preset':>6} {'seq':>5} {'params':>14} {'GFLOP/token':>12}")
    for preset in ("125m", "350m"):
        for seq_len in (1024, 2048):
            cfg = ModelConfig(**PRESETS[preset], vocab_size=VOCAB, seq_len=seq_len)
            print(f"{preset:>6} {seq_len:>5} {cfg.num_params():>14,} {cfg.flops_per_token() / 1e9:>12.3f}")
    for name in ("NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA A100-SXM4-80GB"):
        print(f"peak bf16 {name}: {peak_bf16_flops(name) / 1e12:.0f} TFLOP/s")
    init_single_process()
    r = measure("tiny", 32, 2, "fp32", steps=2, warmup=1, compile_model=False, vocab=512,
                model_overrides=dict(n_layer=2, d_model=64))
    print(f"CPU loop check: {r['tokens_per_s']:,.0f} tokens/s on a {r['params']:,}-parameter model; "
          f"MFU at an H100's peak would be {mfu(r['flops_per_token'], r['tokens_per_s'], 989e12):.2e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["125m", "350m"])
    p.add_argument("--seq-lens", nargs="+", type=int, default=[1024, 2048])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--max-micro-batch", type=int, default=64)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (engine.compile())")
    p.add_argument("--cpu-check", action="store_true", help="no GPU: check the maths and the loop on CPU")
    args = p.parse_args()
    if args.cpu_check:
        return cpu_check()
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU: run on a GPU machine, or use --cpu-check")
    name, peak = torch.cuda.get_device_name(), peak_bf16_flops()
    if peak is None:
        sys.exit(f"unknown peak bf16 FLOP/s for {name!r}: add it to training/metrics.py PEAK_BF16_FLOPS")
    init_single_process()
    print(f"{name}: peak {peak / 1e12:.0f} bf16 TFLOP/s; bf16, ZeRO-2, 1 GPU, {args.steps} steps after {args.warmup}"
          + (", torch.compile" if args.compile else ""))
    print(f"{'preset':>6} {'seq':>5} {'micro':>5} {'params':>13} {'tokens/s':>10} {'MFU':>6}")
    for preset in args.presets:
        for seq_len in args.seq_lens:
            found = largest_fitting(preset, seq_len, args)
            if found is None:
                print(f"{preset:>6} {seq_len:>5}  micro-batch 1 does not fit")
                continue
            micro, r = found
            print(f"{preset:>6} {seq_len:>5} {micro:>5} {r['params']:>13,} {r['tokens_per_s']:>10,.0f} "
                  f"{mfu(r['flops_per_token'], r['tokens_per_s'], peak):>6.1%}", flush=True)


if __name__ == "__main__":
    main()
