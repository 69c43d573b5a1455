"""Token shards from the manifest, memory-mapped, in a deterministic order split across ranks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
from tokenizers import Tokenizer
from tokenmill.pipeline.storage import sha256_file


class ManifestError(ValueError):
    pass


def load_manifest(tokens_dir: str | Path, verify: bool = True) -> dict:
    tokens_dir = Path(tokens_dir)
    path = tokens_dir / "manifest.json"
    if not path.exists():
        raise ManifestError(f"{path} not found: run the curate flow first")
    manifest = json.loads(path.read_text())
    if verify:
        tok = tokens_dir / manifest["tokenizer"]
        if sha256_file(str(tok)) != manifest["tokenizer_sha256"]:
            raise ManifestError(f"{tok}: sha256 differs from the manifest; the tokenizer changed after tokenization")
        vocab = Tokenizer.from_file(str(tok)).get_vocab_size()
        if vocab != manifest["vocab_size"]:
            raise ManifestError(f"{path}: vocab_size {manifest['vocab_size']} but {tok} has {vocab} tokens")
        for shard in manifest["shards"]:
            if sha256_file(str(tokens_dir / shard["file"])) != shard["sha256"]:
                raise ManifestError(f"{tokens_dir / shard['file']}: sha256 differs from the manifest (corrupt or rewritten shard)")
    return manifest


def load_split(tokens_dir: str | Path, split: str, manifest: dict | None = None) -> np.ndarray:
    """All rows of a split as one (rows, seq_len + 1) array; shards are memory-mapped, not read."""
    tokens_dir = Path(tokens_dir)
    manifest = manifest or load_manifest(tokens_dir)
    arrays = []
    for shard in manifest["shards"]:
        if shard["split"] != split:
            continue
        table = ipc.open_file(pa.memory_map(str(tokens_dir / shard["file"]))).read_all()
        col = table["tokens"].combine_chunks()
        arrays.append(col.values.to_numpy(zero_copy_only=False).reshape(len(col), manifest["seq_len"] + 1))
    if not arrays:
        raise ManifestError(f"{tokens_dir}: no {split} shards in the manifest")
    return np.concatenate(arrays) if len(arrays) > 1 else arrays[0]


class RankBatches:
    """Micro-batches for one data-parallel rank: epoch e visits rows in permutation(seed, e), rank r
    takes every world-th row, so ranks never overlap. (epoch, index) is the resumable position."""

    def __init__(self, rows: np.ndarray, micro_batch: int, rank: int, world: int, seed: int):
        self.rows, self.micro_batch, self.rank, self.world, self.seed = rows, micro_batch, rank, world, seed
        self.per_epoch = (len(rows) // world) // micro_batch
        if self.per_epoch == 0:
            raise ValueError(f"{len(rows)} rows cannot fill one micro-batch of {micro_batch} on each of {world} ranks")
        self.epoch, self.index = 0, 0
        self._order = None

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict) -> None:
        self.epoch, self.index, self._order = state["epoch"], state["index"], None

    def next(self) -> np.ndarray:
        if self.index >= self.per_epoch:
            self.epoch, self.index, self._order = self.epoch + 1, 0, None
        if self._order is None:
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.rows))
            self._order = perm[self.rank :: self.world]
        take = self._order[self.index * self.micro_batch : (self.index + 1) * self.micro_batch]
        self.index += 1
        return self.rows[take]
