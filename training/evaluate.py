"""Evaluation of a trained model on the validation shards: loss, perplexity, samples."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from pipeline.tokenize import EOS, load_tokenizer

from .checkpoint import load_model
from .config import EvalConfig
from .data import load_manifest, load_split
from .model import Transformer


@torch.no_grad()
def mean_loss(model: Transformer, rows: np.ndarray, batch_size: int) -> float:
    """Token-weighted mean next-token cross-entropy (nats) over `rows`."""
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        batch = torch.from_numpy(rows[i : i + batch_size].astype("int64"))
        n = batch[:, 1:].numel()
        total += model(batch[:, :-1], batch[:, 1:]).item() * n
        count += n
    return total / count


def samples(model: Transformer, tokens_dir: Path, prompts: list[str], max_new_tokens: int) -> list[dict]:
    tokenizer = load_tokenizer(str(tokens_dir / "tokenizer.json"))
    eos = tokenizer.token_to_id(EOS)
    out = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer.encode(prompt).ids])
        gen = model.generate(ids, max_new_tokens, temperature=0.0, eos_id=eos)[0, ids.shape[1] :].tolist()
        out.append({"prompt": prompt, "completion": tokenizer.decode([t for t in gen if t != eos])})
    return out


def evaluate(train_dir: str | Path, tokens_dir: str | Path, cfg: EvalConfig, seed: int = 0) -> dict:
    train_dir, tokens_dir = Path(train_dir), Path(tokens_dir)
    manifest = load_manifest(tokens_dir)
    val = load_split(tokens_dir, "val", manifest)[: cfg.max_val_rows]
    trained = load_model(train_dir)
    torch.manual_seed(seed)
    untrained = Transformer(trained.cfg).eval()  # same architecture, random init: the baseline
    loss = mean_loss(trained, val, cfg.batch_size)
    base = mean_loss(untrained, val, cfg.batch_size)
    return {
        "val_rows": int(len(val)),
        "val_tokens": int(val[:, 1:].size),
        "val_loss": loss,
        "val_perplexity": math.exp(loss),
        "untrained_val_loss": base,
        "untrained_val_perplexity": math.exp(base),
        "samples": samples(trained, tokens_dir, cfg.prompts, cfg.max_new_tokens),
    }
