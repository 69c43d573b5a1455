"""A split's token rows (pipeline/contracts.py has the shard format) and their order across ranks and epochs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tokenmill.pipeline.contracts import ManifestError, load_manifest, read_token_shard


def load_split(tokens_dir: str | Path, split: str, manifest: dict | None = None) -> np.ndarray:
    """All rows of a split as one (rows, seq_len + 1) array: each shard is read through a memory map,
    then the split's shards are concatenated into memory (a copy when there is more than one)."""
    tokens_dir = Path(tokens_dir)
    manifest = manifest or load_manifest(tokens_dir)
    arrays = [read_token_shard(tokens_dir / s["file"], manifest["seq_len"]) for s in manifest["shards"] if s["split"] == split]
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
