"""The training job: `python -m tokenmill.training.train --job JOB.json`, one process per data-parallel rank.

Launched by the train flow through torchrun (one node), the DeepSpeed launcher (hostfile) or Ray Train
(`ray_train.py`: workers of a Ray cluster call `main`), so the
same code runs on one CPU process, several GPUs or several nodes. JOB.json holds the TrainConfig
plus the token shard and output directories; everything it writes lives in the output directory:
checkpoints/ (DeepSpeed, resumed automatically), metrics.jsonl, tensorboard/, ds_config.json,
model.safetensors, summary.json. It reports to the launcher through `launch.emit` (see launch.py).

The directories (and JOB.json) may be fsspec URLs (s3://...), for workers with no shared filesystem:
each rank memory-maps the shards from a verified local cache (data.local_tokens), DeepSpeed saves into a
scratch directory that each rank uploads (checkpoint.save_checkpoint), and rank 0 writes the other
outputs into a local copy of the output directory, uploaded at each checkpoint (before `latest` moves,
so a resume finds the metrics lines it keeps) and at the end (storage.LocalDir). Scratch and caches live
under the system temp dir (TMPDIR).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import torch

from tokenmill.pipeline import storage
from tokenmill.pipeline.contracts import load_manifest

from .checkpoint import latest_tag, local_checkpoints, resume, save_checkpoint, save_weights
from .config import TrainConfig
from .data import RankBatches, load_split, local_tokens
from .launch import emit, run_job_main
from .metrics import mfu, peak_bf16_flops, truncate_metrics
from .model import Transformer


def ds_config(cfg: TrainConfig, world_size: int) -> dict:
    """The DeepSpeed JSON generated from our config (saved beside the checkpoints)."""
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer:
        # ZeRO-Offload: optimizer state and step on the CPU (DeepSpeed's CPU Adam, built on first use).
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.grad_clip,
        "optimizer": {
            "type": "AdamW",
            # torch_adam: PyTorch's AdamW instead of DeepSpeed's compiled one (an ~85 s build on CPU).
            "params": {"lr": cfg.lr, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": cfg.weight_decay,
                       "torch_adam": not cfg.offload_optimizer},
        },
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": cfg.max_steps,
                "warmup_num_steps": cfg.warmup_steps,
                "warmup_type": "linear",
                "cos_min_ratio": cfg.min_lr_ratio,
            },
        },
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        # fp16: dynamic loss scaling (loss_scale 0), starting at 2^16.
        "fp16": {"enabled": cfg.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only; norms' gains are not decayed."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _setup_accelerator() -> str:
    if torch.cuda.is_available():
        return "nccl"
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed.ops

    # DeepSpeed's shared-memory all-reduce compiles a C++ op on first use (~55 s here) and only
    # speeds up small inference all-reduces; gloo does the training collectives.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return "gloo"


def init_distributed() -> tuple[int, int]:
    """Join the job's process group (gloo on CPU, NCCL on this rank's GPU); (rank, world size). Under
    Ray Train the group exists already (its TorchConfig made it); DeepSpeed then uses that one."""
    backend = _setup_accelerator()
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def consolidated_state(engine, zero_stage: int, rank: int) -> dict | None:
    """Full model weights on rank 0 (None elsewhere); under ZeRO-3 every rank must take part."""
    if zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
        return state if rank == 0 else None
    return engine.module.state_dict() if rank == 0 else None


TENSORBOARD_SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu")


def tensorboard_writer(log_dir: Path, resumed_step: int):
    """Events for `tensorboard --logdir <run>/train/tensorboard`. On a resume, purge_step makes
    TensorBoard drop what the killed run logged after the checkpoint, as metrics.jsonl is truncated."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir), purge_step=resumed_step + 1 if resumed_step else None)


def train_step(engine, batches: RankBatches, grad_accum: int, device) -> torch.Tensor:
    """One optimizer step over grad_accum micro-batches; returns this rank's mean loss."""
    loss_sum = torch.zeros((), device=device)
    for _ in range(grad_accum):
        batch = torch.from_numpy(batches.next().astype("int64")).to(device)
        loss = engine(batch[:, :-1], batch[:, 1:])
        engine.backward(loss)
        engine.step()
        loss_sum += loss.detach().float()
    return loss_sum / grad_accum


def main(job_path: str) -> None:
    job = json.loads(storage.read_bytes(job_path))
    cfg = TrainConfig(**job["train"])
    rank, world = init_distributed()
    import deepspeed  # after init_distributed chose the accelerator

    tokens_dir = local_tokens(job["tokens_dir"])  # itself when local; else a cache whose files were verified
    manifest = load_manifest(tokens_dir, verify=rank == 0 and storage.is_local(job["tokens_dir"]))
    model_cfg = cfg.resolve_model(manifest["vocab_size"], manifest["seq_len"])
    torch.manual_seed(cfg.seed)
    model = Transformer(model_cfg)
    model.checkpoint_activations = cfg.activation_checkpointing
    config = ds_config(cfg, world)
    engine, _, _, scheduler = deepspeed.initialize(model=model, model_parameters=param_groups(model, cfg.weight_decay), config=config)

    batches = RankBatches(load_split(tokens_dir, "train", manifest), cfg.micro_batch, rank, world, cfg.seed,
                          cfg.data_block_rows)
    ckpt_dir = storage.join(job["out_dir"], "checkpoints")
    with ExitStack() as cleanup:  # the scratch copies go however the job ends
        ckpt_local = local_checkpoints(ckpt_dir, rank)
        if not storage.is_local(ckpt_dir):
            cleanup.callback(shutil.rmtree, ckpt_local, ignore_errors=True)
        # Rank 0's outputs: the output directory itself, or a local copy of it that is uploaded.
        work = cleanup.enter_context(storage.LocalDir(job["out_dir"], fetch=["metrics.jsonl"])) if rank == 0 else None
        _train(cfg, engine, scheduler, batches, config, model_cfg, manifest, ckpt_dir, ckpt_local, work, rank, world)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, engine, scheduler, batches: RankBatches, config: dict, model_cfg, manifest: dict,
           ckpt_dir: str, ckpt_local: str, work: storage.LocalDir | None, rank: int, world: int) -> None:
    step = resume(engine, ckpt_dir, ckpt_local, model_cfg, batches, rank)
    out_dir, device = Path(work.path) if work else None, engine.device  # rank 0's
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "ds_config.json").write_text(json.dumps(config, indent=2))
        # Lines past the checkpoint were written by the run that was killed; they are recomputed now.
        truncate_metrics(out_dir / "metrics.jsonl", step)
        if step:
            emit("resumed", checkpoint=storage.join(ckpt_dir, latest_tag(ckpt_dir)), step=step)
        emit("model", params=model_cfg.num_params(), processes=world, device=device.type, zero_stage=cfg.zero_stage,
             precision=cfg.precision, global_batch=config["train_batch_size"], seq_len=manifest["seq_len"])

    tokens_per_step = config["train_batch_size"] * manifest["seq_len"]
    peak_flops = peak_bf16_flops() if device.type == "cuda" else None
    metrics = open(out_dir / "metrics.jsonl", "a") if rank == 0 else None
    board = tensorboard_writer(out_dir / "tensorboard", step) if rank == 0 else None
    started, first_step, last = time.perf_counter(), step, None
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        try:
            loss_avg = train_step(engine, batches, cfg.grad_accum, device)
        except torch.OutOfMemoryError as e:
            raise torch.OutOfMemoryError(
                f"out of GPU memory at step {step + 1} with preset {cfg.preset} {model_cfg.num_params():,} params, "
                f"micro_batch {cfg.micro_batch} x seq_len {model_cfg.seq_len}, ZeRO-{cfg.zero_stage}, {cfg.precision}, "
                f"activation_checkpointing {cfg.activation_checkpointing}: lower train.micro_batch (raise grad_accum to keep "
                "the global batch), turn on train.activation_checkpointing, or use a higher zero_stage / offload_optimizer"
            ) from e
        step += 1
        torch.distributed.all_reduce(loss_avg)
        loss_value = loss_avg.item() / world
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"loss is {loss_value} at step {step}: lower train.lr (now {cfg.lr}), raise warmup_steps, "
                "or use fp32/bf16 instead of fp16")
        seconds = time.perf_counter() - t0
        last = {
            "step": step,
            "loss": loss_value,
            "lr": scheduler.get_last_lr()[0] if scheduler else cfg.lr,
            "grad_norm": float(engine.get_global_grad_norm() or 0.0),
            "tokens": step * tokens_per_step,
            "tokens_per_s": tokens_per_step / seconds,
            "seconds": seconds,
        }
        if peak_flops:
            last["mfu"] = mfu(model_cfg.flops_per_token(), last["tokens_per_s"], peak_flops)
        if metrics:
            metrics.write(json.dumps(last) + "\n")
            metrics.flush()
            for key in TENSORBOARD_SCALARS:
                if key in last:
                    board.add_scalar(f"train/{key}", last[key], step)
            if step % cfg.log_every == 0 or step == cfg.max_steps or step == first_step + 1:
                elapsed = time.perf_counter() - started
                eta = elapsed / (step - first_step) * (cfg.max_steps - step)
                emit("step", max_steps=cfg.max_steps, **last, eta_s=eta)
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            if metrics:  # this step's lines are in the run directory before `latest` moves past them
                board.flush()
                work.sync()
            save_checkpoint(engine, ckpt_dir, ckpt_local, step, batches, config, model_cfg, cfg.keep_checkpoints,
                            rank, world)

    state = consolidated_state(engine, cfg.zero_stage, rank)
    if rank == 0:
        metrics.close()
        board.close()
        save_weights(state, model_cfg, out_dir)
        summary = {"steps": step, "final_loss": last["loss"] if last else None, "tokens": step * tokens_per_step,
                   "seconds": round(time.perf_counter() - started, 2), "world_size": world, "zero_stage": cfg.zero_stage,
                   "params": model_cfg.num_params()}
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        work.close()  # uploaded (object storage) before the launcher hears `done`
        emit("done", result=summary)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, help="job JSON written by the train flow")
    run_job_main(main, parser.parse_args().job)
