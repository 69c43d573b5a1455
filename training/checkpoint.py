"""Consolidated weights: model.safetensors + model_config.json, loadable without pickle."""
from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tokenmill.pipeline import storage

from .config import ModelConfig
from .model import Transformer

TIED = "lm_head.weight"


def save_fp32(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """The tensors as fp32 safetensors, from own contiguous CPU copies: ZeRO keeps parameters as views
    into flat buffers, which safetensors refuses to save."""
    save_file({k: v.detach().float().cpu().clone().contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})


def save_weights(state: dict[str, torch.Tensor], cfg: ModelConfig, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    save_fp32({k: v for k, v in state.items() if not (cfg.tie_embeddings and k == TIED)}, out_dir / "model.safetensors")
    (out_dir / "model_config.json").write_text(cfg.model_dump_json(indent=2))


def model_from_state(state: dict[str, torch.Tensor], cfg: ModelConfig, where: str) -> Transformer:
    model = Transformer(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - ({TIED} if cfg.tie_embeddings else set()):
        raise ValueError(f"{where} does not match its model config: missing {missing}, unexpected {unexpected}")
    return model.eval()


def load_model(weights_dir: str | Path, device: str = "cpu") -> Transformer:
    weights_dir = Path(weights_dir)
    cfg = ModelConfig.model_validate_json((weights_dir / "model_config.json").read_text())
    return model_from_state(load_file(str(weights_dir / "model.safetensors")), cfg, f"{weights_dir}/model.safetensors").to(device)


# DeepSpeed checkpoints: checkpoints/<tag>/ with DeepSpeed's files plus ds_config.json and
# model_config.json, and a `latest` file naming the newest complete one. The checkpoint directory is a
# path or an fsspec URL (s3://...): everything here but DeepSpeed's own save and load goes through
# pipeline.storage, which reads a local path directly.

def latest_tag(ckpt_dir: str | Path) -> str | None:
    latest = storage.join(str(ckpt_dir), "latest")
    return storage.read_bytes(latest).decode().strip() if storage.exists(latest) else None


def checkpoint_dirs(ckpt_dir: str | Path) -> dict[int, str]:
    """The checkpoint directories (step<digits>, complete or not) by step, oldest first; anything else
    a user put there (step_best/, notes) is not one."""
    fs, path = storage.fs_path(str(ckpt_dir))
    fs.invalidate_cache(path)  # directories other processes (ranks, an earlier job) wrote
    if not fs.isdir(path):
        return {}
    found = {}
    for entry in fs.ls(path, detail=True):
        name = posixpath.basename(entry["name"].rstrip("/"))
        if entry["type"] == "directory" and name.startswith("step") and name[4:].isdigit():
            found[int(name[4:])] = storage.join(str(ckpt_dir), name)
    return dict(sorted(found.items()))


def kept_steps(ckpt_dir: str | Path) -> dict[int, str]:
    """Complete checkpoints (model_config.json is written last), tag by step."""
    return {step: posixpath.basename(d) for step, d in checkpoint_dirs(ckpt_dir).items()
            if storage.exists(storage.join(d, "model_config.json"))}


def prune_checkpoints(ckpt_dir: str | Path, keep: int) -> None:
    """Remove all but the `keep` newest checkpoints, by step number (not by name)."""
    for old in list(checkpoint_dirs(ckpt_dir).values())[:-keep]:
        storage.remove_tree(old)


def local_checkpoints(ckpt_dir: str, rank: int) -> str:
    """Where this rank's DeepSpeed saves and loads: the checkpoint directory itself when it is local (a
    shared filesystem on a cluster); for object storage a new scratch directory of this rank under the
    system temp dir, from which each save is uploaded and into which a resume downloads (then emptied)."""
    if storage.is_local(ckpt_dir):
        return ckpt_dir.removeprefix("file://")
    _remove_orphaned_scratch()
    return tempfile.mkdtemp(prefix=f"{SCRATCH}{os.getpid()}-rank{rank}-")


SCRATCH = "tokenmill-ckpt-"  # <temp dir>/tokenmill-ckpt-<pid>-rank<r>-*: a rank's scratch checkpoint directory


def _remove_orphaned_scratch(idle_s: float = 600) -> None:
    """Remove this user's scratch directories whose process is gone and in which nothing changed for
    `idle_s`: a rank killed (SIGKILL, OOM) while saving or resuming leaves up to a whole checkpoint there.
    (The idle time spares a live rank of another PID namespace sharing the temp dir, mid-save.)"""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        pid, path = name[len(SCRATCH):].split("-", 1)[0], os.path.join(root, name)
        try:
            if not (name.startswith(SCRATCH) and pid.isdigit()) or os.stat(path).st_uid != os.getuid():
                continue
            newest = max(os.stat(os.path.join(d, f)).st_mtime for d, _, fs in os.walk(path) for f in [".", *fs])
            if time.time() - newest < idle_s:
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:  # alive (PermissionError: another user's pid), or already removed
            pass


@contextmanager
def weights_only_loads():
    """DeepSpeed's checkpoint readers call torch.load(weights_only=False), which runs whatever code a
    pickle names; force weights_only=True and allow the few plain DeepSpeed classes its files hold."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]):
            yield
    finally:
        if before is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


def checkpoint_tag(ckpt_dir: str | Path, step: int) -> str:
    """The tag of the kept checkpoint of `step`; a ValueError listing the kept steps otherwise."""
    steps = kept_steps(ckpt_dir)
    if step not in steps:
        kept = ", ".join(map(str, steps)) or "none"
        raise ValueError(f"no checkpoint of step {step} in {ckpt_dir}; kept steps: {kept} "
                         "(train.save_every sets how often one is saved, train.keep_checkpoints how many are kept)")
    return steps[step]


def save_checkpoint(engine, ckpt_dir: str, local_dir: str, step: int, batches, ds_config: dict, model_cfg: ModelConfig,
                    keep: int, rank: int, world: int) -> None:
    """Save a checkpoint with every rank's data position and RNG state; `latest` moves to it only
    once it is complete (a run killed while saving resumes from the previous one); keep the newest `keep`.
    DeepSpeed writes into `local_dir` (local_checkpoints); when that is a scratch copy, each rank uploads
    the files it wrote to <ckpt_dir>/<tag>/ and `latest` moves only after every rank's upload."""
    ranks = [None] * world
    torch.distributed.all_gather_object(ranks, {"data": batches.state(), "rng": torch.get_rng_state(),
                                                "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None})
    tag = f"step{step:07d}"
    engine.save_checkpoint(local_dir, tag=tag, client_state={"step": step, "ranks": ranks}, save_latest=False)
    if not storage.is_local(ckpt_dir):  # save_checkpoint ended with a barrier: every rank's files are written
        written = os.path.join(local_dir, tag)
        if os.path.isdir(written):  # ZeRO-0 ranks other than 0 write nothing
            storage.upload(written, storage.join(ckpt_dir, tag))
            shutil.rmtree(written)
        torch.distributed.barrier()  # every rank's files are in the run directory before `latest` names them
    if rank == 0:
        where = storage.join(ckpt_dir, tag)
        storage.write_bytes(storage.join(where, "ds_config.json"), json.dumps(ds_config, indent=2).encode())
        storage.write_bytes(storage.join(where, "model_config.json"), model_cfg.model_dump_json(indent=2).encode())
        storage.write_bytes(storage.join(ckpt_dir, "latest"), tag.encode())  # atomic: temp file, then rename
        prune_checkpoints(ckpt_dir, keep)
    torch.distributed.barrier()


def resume(engine, ckpt_dir: str, local_dir: str, model_cfg: ModelConfig, batches, rank: int) -> int:
    """Load the latest checkpoint if there is one (model, optimizer, LR schedule, data position, RNG);
    return the step it was taken at (0 when starting fresh). From object storage, this rank first
    downloads the checkpoint's files into `local_dir` (DeepSpeed reads every rank's optimizer files)."""
    tag = latest_tag(ckpt_dir)
    if tag is None:
        return 0
    where = storage.join(ckpt_dir, tag)
    saved = ModelConfig.model_validate_json(storage.read_bytes(storage.join(where, "model_config.json")))
    if saved != model_cfg:
        diff = {k: (v, getattr(model_cfg, k)) for k, v in saved.model_dump().items() if getattr(model_cfg, k) != v}
        raise ValueError(f"{where} was trained with a different model (checkpoint vs now: {diff}); "
                         "the tokens or train.model changed since; use a new run id or delete the checkpoints")
    copied = not storage.is_local(ckpt_dir)
    if copied:
        storage.download(where, os.path.join(local_dir, tag))
    try:
        with weights_only_loads():  # a checkpoint is data: loading it must not run code
            _, client = engine.load_checkpoint(local_dir, tag=tag)
    finally:
        if copied:
            shutil.rmtree(os.path.join(local_dir, tag), ignore_errors=True)
    if client is None:
        raise RuntimeError(f"could not load checkpoint {where}")
    world = torch.distributed.get_world_size()
    if len(client["ranks"]) != world:
        raise ValueError(f"{where} was saved by {len(client['ranks'])} processes, this run has {world}; "
                         "an exact resume needs the same train.nproc")
    mine = client["ranks"][rank]
    batches.load_state(mine["data"])
    torch.set_rng_state(mine["rng"])
    if mine["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(mine["cuda_rng"])
    return client["step"]
