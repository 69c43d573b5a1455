"""Export a run's model as a Hugging Face Llama directory (config.json, model.safetensors, tokenizer).

The weights come from the latest DeepSpeed checkpoint of any ZeRO stage, consolidated to fp32 with
DeepSpeed's zero_to_fp32 (the fp32 master weights, also for bf16/fp16 runs). Our model is Llama's
architecture (same RMSNorm, half-split rotary embeddings, SwiGLU, GQA), so export is a renaming.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from tokenmill.pipeline.contracts import EOS, MANIFEST
from tokenmill.pipeline.storage import TEMPORARY

from .checkpoint import TIED, checkpoint_tag, latest_tag, save_fp32, weights_only_loads
from .config import ModelConfig


def consolidate(ckpt_dir: str | Path, tag: str | None = None) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """fp32 weights of a checkpoint (default: `latest`) as one state dict, with its model config."""
    ckpt_dir = Path(ckpt_dir)
    tag = tag or latest_tag(ckpt_dir)
    if tag is None:
        raise FileNotFoundError(f"{ckpt_dir}: no checkpoint (no 'latest' file); train the run first")
    cfg = ModelConfig.model_validate_json((ckpt_dir / tag / "model_config.json").read_text())
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    with weights_only_loads():
        if list((ckpt_dir / tag).glob("*zero_pp_rank_*_optim_states.pt")):  # ZeRO 1-3, or bf16 master weights
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
        else:  # ZeRO-0 fp32: the module's own weights are the master weights
            state = torch.load(ckpt_dir / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)["module"]
    return {k: v.float() for k, v in state.items()}, cfg


def hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our parameter names -> LlamaForCausalLM's (the tied head left out)."""
    rename = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight", TIED: TIED}
    block_parts = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm", "attn": "self_attn", "mlp": "mlp"}
    out = {}
    for name, tensor in state.items():
        if cfg.tie_embeddings and name == TIED:
            continue
        if name.startswith("blocks."):
            _, i, part, rest = name.split(".", 3)
            hf = f"model.layers.{i}.{block_parts[part]}.{rest}"
        else:
            hf = rename[name]
        out[hf] = tensor
    return out


def hf_config(cfg: ModelConfig, eos_id: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": 0.02,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
    }


def export_hf(ckpt_dir: str | Path, tokenizer_path: str | Path, out_dir: str | Path, tag: str | None = None) -> Path:
    """Write the Hugging Face directory of a checkpoint (default: `latest`); return its path."""
    state, cfg = consolidate(ckpt_dir, tag)
    return write_hf(state, cfg, tokenizer_path, out_dir)


def write_hf(state: dict[str, torch.Tensor], cfg: ModelConfig, tokenizer_path: str | Path, out_dir: str | Path) -> Path:
    """Our weights + tokenizer as a Hugging Face Llama directory."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    if tokenizer.get_vocab_size() != cfg.vocab_size:
        raise ValueError(f"{tokenizer_path} has {tokenizer.get_vocab_size()} tokens, the model {cfg.vocab_size}")
    eos_id = tokenizer.token_to_id(EOS)
    if eos_id is None:
        raise ValueError(f"{tokenizer_path} has no {EOS} token")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_fp32(hf_state_dict(state, cfg), out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(hf_config(cfg, eos_id), indent=2))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": eos_id, "eos_token_id": eos_id}, indent=2))
    shutil.copyfile(tokenizer_path, out / "tokenizer.json")
    special = {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.seq_len,
         "clean_up_tokenization_spaces": False, **special}, indent=2))
    return out


def run_tokenizer(run_dir: str | Path) -> Path:
    manifest = Path(run_dir) / "tokens" / MANIFEST
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest} not found: {run_dir} is not a curated run directory")
    return Path(run_dir) / "tokens" / json.loads(manifest.read_text())["tokenizer"]


# What an export was made from, written into it: a later export or evaluation reuses the directory
# only when it was made from the same checkpoint files and tokenizer, never another model's.
EXPORT_SOURCE = "tokenmill_export.json"
EXPORT_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "special_tokens_map.json", "tokenizer_config.json", EXPORT_SOURCE}  # what write_hf and export_run write


def _source(ckpt_dir: Path, tag: str, tokenizer: Path) -> dict:
    """The checkpoint and tokenizer files an export is made from, by path, size and mtime: a retrained
    checkpoint of the same tag, or another run's, differs."""
    files = [tokenizer, *sorted(p for p in (ckpt_dir / tag).rglob("*") if p.is_file())]
    stamp = json.dumps([(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    return {"checkpoint": str((ckpt_dir / tag).resolve()), "tag": tag, "tokenizer": str(tokenizer.resolve()),
            "files_sha256": hashlib.sha256(stamp.encode()).hexdigest()}


def _made_from(out: Path) -> dict | None:
    try:
        return json.loads((out / EXPORT_SOURCE).read_text())
    except (OSError, ValueError):
        return None


def export_run(run_dir: str | Path, out_dir: str | Path, step: int | None = None) -> Path:
    """`tokenmill export`: the run's latest checkpoint (or the kept one of `step`) and its tokenizer
    as a Hugging Face directory. Kept as it is when it was made from the same files already.

    Written beside `out_dir` and renamed into place, so an interrupted export leaves no half directory
    and a reader never sees one; an existing `out_dir` is replaced only if it holds nothing but an
    export's files (EXPORT_FILES), never another directory."""
    run_dir, out = Path(run_dir), Path(out_dir)
    tokenizer = run_tokenizer(run_dir)
    ckpt_dir = run_dir / "train" / "checkpoints"
    tag = latest_tag(ckpt_dir) if step is None else checkpoint_tag(ckpt_dir, step)
    if tag is None:
        raise FileNotFoundError(f"{ckpt_dir}: no checkpoint (no 'latest' file); train the run first")
    source = _source(ckpt_dir, tag, tokenizer)
    if _made_from(out) == source:
        return out
    if out.exists() and (not out.is_dir() or not {p.name for p in out.iterdir()} <= EXPORT_FILES):
        raise ValueError(f"{out} exists and is not a tokenmill export: choose a new or empty directory for --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{TEMPORARY}{out.name}-", dir=out.parent))
    try:
        export_hf(ckpt_dir, tokenizer, partial, tag)
        (partial / EXPORT_SOURCE).write_text(json.dumps(source, indent=2))
        os.chmod(partial, 0o755)  # mkdtemp's 0700, as a plain mkdir would make it
        if out.exists():
            old = out.with_name(f"{TEMPORARY}{out.name}-replaced-{os.getpid()}")
            out.rename(old)
            partial.rename(out)
            shutil.rmtree(old)
        else:
            partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out
