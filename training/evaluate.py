"""Evaluation of a trained model: loss, perplexity and bits-per-byte on the run's validation shards
and on held-out raw text shipped with tokenmill, next to the same architecture untrained; samples."""
from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from tokenmill.pipeline import storage
from tokenmill.pipeline.contracts import EOS, load_manifest, load_tokenizer

from .checkpoint import checkpoint_tag, load_model, model_from_state
from .config import EvalConfig
from .data import load_split, local_tokens
from .eval_sets import HELDOUT
from .model import Transformer


@contextmanager
def torch_threads(n: int | None):
    """torch's intra-op thread count set to `n` (None: unchanged) for the block, then restored."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def mean_loss(model: Transformer, rows: np.ndarray, batch_size: int) -> float:
    """Token-weighted mean next-token cross-entropy (nats) over `rows`."""
    total, count, device = 0.0, 0, next(model.parameters()).device
    for i in range(0, len(rows), batch_size):
        batch = torch.from_numpy(rows[i : i + batch_size].astype("int64")).to(device)
        n = batch[:, 1:].numel()
        total += model(batch[:, :-1], batch[:, 1:]).item() * n
        count += n
    return total / count


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token stands for. Byte-level BPE spells every byte as one character, so a
    token's length is its byte count; special tokens stand for no text."""
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    lengths = np.zeros(tokenizer.get_vocab_size(), dtype=np.int64)
    for token, idx in tokenizer.get_vocab().items():
        lengths[idx] = 0 if token in special else len(token)
    return lengths


def text_rows(tokenizer: Tokenizer, text: str, seq_len: int, max_rows: int) -> np.ndarray:
    ids = np.array(tokenizer.encode(text).ids, dtype=np.int64)
    rows = min(max_rows, len(ids) // (seq_len + 1))
    return ids[: rows * (seq_len + 1)].reshape(rows, seq_len + 1)


def metrics(model: Transformer, rows: np.ndarray, byte_lengths: np.ndarray, batch_size: int) -> dict:
    """Loss (nats/token), perplexity, and bits per UTF-8 byte of the predicted text, which does not
    depend on the tokenizer, so runs with different vocabularies compare."""
    loss = mean_loss(model, rows, batch_size)
    tokens = rows[:, 1:].size
    return {"loss": loss, "perplexity": math.exp(loss), "bits_per_byte": loss * tokens / math.log(2) / byte_lengths[rows[:, 1:]].sum()}


def samples(model: Transformer, tokenizer: Tokenizer, cfg: EvalConfig, seed: int) -> list[dict]:
    eos = tokenizer.token_to_id(EOS)
    out = []
    for prompt in cfg.prompts:
        ids = torch.tensor([tokenizer.encode(prompt).ids], device=next(model.parameters()).device)
        row = {"prompt": prompt}
        for name, temperature, top_k in (("greedy", 0.0, None), ("sampled", cfg.temperature, cfg.top_k)):
            torch.manual_seed(seed)
            gen = model.generate(ids, cfg.max_new_tokens, temperature=temperature, top_k=top_k, eos_id=eos)
            row[name] = tokenizer.decode([t for t in gen[0, ids.shape[1] :].tolist() if t != eos])
        out.append(row)
    return out


def device() -> str:
    """Where evaluation runs: the GPU when torch sees one (a Ray task given num_gpus=1 on a GPU worker),
    else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_trained(train_dir: Path, step: int | None = None) -> Transformer:
    """The final weights (train/model.safetensors), or those of the kept checkpoint of `step`, on device()."""
    if step is None:
        return load_model(train_dir, device())
    from .export import consolidate

    ckpt_dir = train_dir / "checkpoints"
    tag = checkpoint_tag(ckpt_dir, step)
    state, model_cfg = consolidate(ckpt_dir, tag)
    return model_from_state(state, model_cfg, str(ckpt_dir / tag)).to(device())


def model_files(train_dir: str, step: int | None) -> list[str]:
    """What load_trained reads under the train directory: the final weights, or the kept checkpoint of `step`."""
    if step is None:
        return ["model.safetensors", "model_config.json"]
    return [f"checkpoints/{checkpoint_tag(storage.join(train_dir, 'checkpoints'), step)}"]


def evaluate(train_dir: str | Path, tokens_dir: str | Path, cfg: EvalConfig, seed: int = 0, step: int | None = None) -> dict:
    """Metrics of the final model, or of the kept checkpoint of `step`, next to the untrained one. Either
    directory may be object storage: the model's files are read from a local copy (storage.LocalDir), the
    validation shards from the verified token cache (data.local_tokens)."""
    train_dir, tokens_dir = str(train_dir), str(tokens_dir)
    fetch = () if storage.is_local(train_dir) else model_files(train_dir, step)
    with torch_threads(cfg.threads), storage.LocalDir(train_dir, fetch=fetch) as train:
        tokens = local_tokens(tokens_dir, splits=("val",))
        return _evaluate(Path(train.path), tokens, cfg, seed, step, verify=storage.is_local(tokens_dir))


def _evaluate(train_dir: Path, tokens_dir: Path, cfg: EvalConfig, seed: int, step: int | None,
              verify: bool = True) -> dict:
    manifest = load_manifest(tokens_dir, verify=verify)  # the token cache verified what it downloaded
    tokenizer = load_tokenizer(str(tokens_dir / manifest["tokenizer"]))
    byte_lengths = token_byte_lengths(tokenizer)
    sets = {
        "val": load_split(tokens_dir, "val", manifest)[: cfg.max_val_rows],
        "heldout": text_rows(tokenizer, HELDOUT.read_text(encoding="utf-8"), manifest["seq_len"], cfg.max_val_rows),
    }
    trained = load_trained(train_dir, step)
    torch.manual_seed(seed)
    untrained = Transformer(trained.cfg).to(device()).eval()  # same architecture, random init: the baseline
    result: dict = {"step": step, "val_rows": int(len(sets["val"])), "val_tokens": int(sets["val"][:, 1:].size),
                    "heldout_tokens": int(sets["heldout"][:, 1:].size)}
    for name, rows in sets.items():
        for prefix, model in (("", trained), ("untrained_", untrained)):
            for key, value in metrics(model, rows, byte_lengths, cfg.batch_size).items():
                result[f"{prefix}{name}_{key}"] = value
    result["samples"] = samples(trained, tokenizer, cfg, seed)
    return result
