"""Train a byte-level BPE tokenizer on the kept text, then tokenize, pack and shard.

Each document's tokens are followed by <|endoftext|>; a part's token stream is cut into rows of
seq_len + 1 ids (inputs and next-token targets of one sequence). Documents go to train or val by a
hash of their id, so the split does not move when the corpus is re-curated.
"""
from __future__ import annotations

import hashlib
import time

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from . import storage
from .config import TokenizerConfig, TokensConfig
from .contracts import EOS, TOKENIZER, load_tokenizer, save_manifest, token_dtype, write_token_shard
from .stages import Step, marker_url, shard_of, unit_name


def train_tokenizer(part_urls: list[str], out_url: str, cfg: TokenizerConfig) -> dict:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def texts():
        for url in part_urls:
            yield from storage.read_parquet(url, columns=["text"])["text"].to_pylist()

    tokenizer.train_from_iterator(texts(), trainer=trainer)
    storage.write_bytes(out_url, tokenizer.to_str().encode())
    return {"vocab_size": tokenizer.get_vocab_size(), "sha256": storage.sha256_file(out_url)}


def is_val(doc_id: str, val_fraction: float) -> bool:
    h = int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")
    return h / 2**64 < val_fraction


def tokenize_part(part_url: str, tokenizer_url: str, out_dir: str, cfg: TokensConfig) -> list[dict]:
    """Tokenize one part of kept documents into train-NNNNN.arrow and val-NNNNN.arrow."""
    started = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer_url)
    eos = tokenizer.token_to_id(EOS)
    dtype = token_dtype(tokenizer.get_vocab_size())
    docs = storage.read_parquet(part_url, columns=["id", "text"])
    streams: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    doc_counts = {"train": 0, "val": 0}
    encodings = tokenizer.encode_batch(docs["text"].to_pylist(), add_special_tokens=False)
    for doc_id, enc in zip(docs["id"].to_pylist(), encodings):
        split = "val" if is_val(doc_id, cfg.val_fraction) else "train"
        streams[split].append(np.array(enc.ids + [eos], dtype=dtype))
        doc_counts[split] += 1
    shards = []
    n = shard_of(part_url)
    for split, chunks in streams.items():
        ids = np.concatenate(chunks) if chunks else np.zeros(0, dtype)
        if len(ids) < cfg.seq_len + 1:
            continue
        name = f"{split}-{n:05d}.arrow"
        info = write_token_shard(storage.join(out_dir, name), ids, cfg.seq_len)
        shards.append({"file": name, "split": split, "docs": doc_counts[split], **info})
    for s in shards:
        s["seconds"] = round(time.perf_counter() - started, 3)
    return shards


def write_manifest(out_dir: str, tokenizer_url: str, shards: list[dict], cfg: TokensConfig, source_docs: int) -> dict:
    tokenizer = load_tokenizer(tokenizer_url)
    shards = sorted(shards, key=lambda s: s["file"])
    manifest = {
        "tokenizer": TOKENIZER,
        "tokenizer_sha256": storage.sha256_file(tokenizer_url),
        "vocab_size": tokenizer.get_vocab_size(),
        "eos_id": tokenizer.token_to_id(EOS),
        "seq_len": cfg.seq_len,
        "dtype": token_dtype(tokenizer.get_vocab_size()).name,
        "source_docs": source_docs,
        "shards": [{k: s[k] for k in ("file", "split", "rows", "tokens", "docs", "dropped_tail_tokens", "sha256")} for s in shards],
        "totals": {
            split: {
                "shards": sum(s["split"] == split for s in shards),
                "rows": sum(s["rows"] for s in shards if s["split"] == split),
                "tokens": sum(s["tokens"] for s in shards if s["split"] == split),
            }
            for split in ("train", "val")
        },
    }
    for split in ("train", "val"):
        if manifest["totals"][split]["rows"] == 0:
            raise ValueError(f"no {split} sequences: too little text for seq_len={cfg.seq_len} "
                             f"(val_fraction={cfg.val_fraction}); lower seq_len or add input")
    save_manifest(out_dir, manifest)
    return manifest


def steps(part_urls: list[str], out_dir: str, tokenizer: TokenizerConfig, tokens: TokensConfig) -> tuple[Step, Step]:
    """The tokens stage's two steps: train the tokenizer (once, on every part), then tokenize each part."""
    tokenizer_url = storage.join(out_dir, TOKENIZER)
    train = Step("train-tokenizer", train_tokenizer, [dict(part_urls=part_urls, out_url=tokenizer_url, cfg=tokenizer)],
                 marker=lambda call: marker_url(out_dir, "train-tokenizer"), outputs=lambda call, result: [tokenizer_url])
    shard = Step("tokenize", tokenize_part,
                 [dict(part_url=u, tokenizer_url=tokenizer_url, out_dir=out_dir, cfg=tokens) for u in part_urls],
                 marker=lambda call: marker_url(out_dir, unit_name(call["part_url"])),
                 outputs=lambda call, shards: [storage.join(out_dir, s["file"]) for s in shards])
    return train, shard
