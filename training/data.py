"""A split's token rows (pipeline/contracts.py has the shard format) and their order across ranks and epochs.

Nothing is held whole: the shards are memory-mapped (TokenRows), and an epoch's order is a block
permutation (RankBatches): the rows are cut into blocks of `block_rows` consecutive rows, the blocks
are visited in a permutation of (seed, epoch), and the rows of a block in a permutation of (seed,
epoch, block). The order costs one int per block, the reads of a step stay within a block or two
(the window), so a rank's memory does not grow with the corpus.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from pathlib import Path

import numpy as np

from tokenmill.pipeline import storage
from tokenmill.pipeline.contracts import MANIFEST, ManifestError, load_manifest, map_token_shard


def local_tokens(tokens_dir: str | Path, splits: tuple[str, ...] | None = None) -> Path:
    """A local tokens directory to memory-map: `tokens_dir` itself when it is local; from object storage
    a cache under the system temp dir (tokenmill-tokens-<uid>/<sha256 of the manifest>/) holding the manifest,
    the tokenizer and the shards of `splits` (default: all), each downloaded beside its place, checked
    against the manifest's sha256 and only then renamed into it, so a file in the cache is a verified one
    (ranks of one machine, a restarted job and the evaluation share it; concurrent downloads of a file
    both land the same bytes)."""
    tokens_dir = str(tokens_dir)
    if storage.is_local(tokens_dir):
        return Path(tokens_dir.removeprefix("file://"))
    url = storage.join(tokens_dir, MANIFEST)
    if not storage.exists(url):
        raise ManifestError(f"{url} not found: run the curate flow first")
    raw = storage.read_bytes(url)
    manifest = json.loads(raw)
    # This user's own directory (0700): a file in it is trusted as verified, so no one else may write there.
    root = Path(tempfile.gettempdir(), f"tokenmill-tokens-{os.getuid()}")
    root.mkdir(mode=0o700, exist_ok=True)
    if root.stat().st_uid != os.getuid() or root.stat().st_mode & 0o077:
        raise PermissionError(f"{root} is not this user's private directory: remove it, or set TMPDIR elsewhere")
    cache = root / hashlib.sha256(raw).hexdigest()[:32]
    cache.mkdir(exist_ok=True)
    wanted = [(manifest["tokenizer"], manifest["tokenizer_sha256"])] + [
        (s["file"], s["sha256"]) for s in manifest["shards"] if splits is None or s["split"] in splits]
    for name, sha256 in wanted:
        target = cache / name
        if target.exists():
            continue
        tmp = target.with_name(f"{storage.TEMPORARY}{uuid.uuid4().hex}-{target.name}")
        try:
            storage.download(storage.join(tokens_dir, name), str(tmp))
            if storage.sha256_file(str(tmp)) != sha256:
                raise ManifestError(f"{storage.join(tokens_dir, name)}: sha256 differs from the manifest "
                                    "(corrupt or rewritten file)")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    if not (cache / MANIFEST).exists():
        storage.write_bytes(str(cache / MANIFEST), raw)
    return cache


class TokenRows:
    """The rows of a split's shards, memory-mapped, indexed 0..len-1 in manifest order; rows[idx]
    copies only the rows asked for into memory."""

    def __init__(self, tokens_dir: str | Path, split: str, manifest: dict | None = None):
        tokens_dir = Path(tokens_dir)
        manifest = manifest or load_manifest(tokens_dir)
        self.seq_len = manifest["seq_len"]
        self._batches = [b for s in manifest["shards"] if s["split"] == split
                         for b in map_token_shard(tokens_dir / s["file"], self.seq_len)]
        if not self._batches:
            raise ManifestError(f"{tokens_dir}: no {split} shards in the manifest")
        self._starts = np.cumsum([0] + [len(b) for b in self._batches])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, idx) -> np.ndarray:
        """Rows `idx` (an int, a slice or an array of row numbers) as a new (n, seq_len + 1) array."""
        idx = np.arange(*idx.indices(len(self))) if isinstance(idx, slice) else np.asarray(idx)
        flat = np.atleast_1d(idx)
        which = np.searchsorted(self._starts, flat, side="right") - 1
        out = np.empty((len(flat), self.seq_len + 1), self._batches[0].dtype)
        for b in np.unique(which):
            sel = which == b
            out[sel] = self._batches[b][flat[sel] - self._starts[b]]
        return out if idx.ndim else out[0]


def load_split(tokens_dir: str | Path, split: str, manifest: dict | None = None) -> TokenRows:
    """A split's rows, memory-mapped (index or slice it to read rows into memory)."""
    return TokenRows(tokens_dir, split, manifest)


class RankBatches:
    """Micro-batches for one data-parallel rank: epoch e visits rows in the block permutation of
    (seed, e), rank r takes every world-th row of it, so ranks never overlap. (epoch, index) is the
    resumable position. `rows`: anything indexable by an array of row numbers (TokenRows, an array)."""

    def __init__(self, rows, micro_batch: int, rank: int, world: int, seed: int, block_rows: int = 4096):
        self.rows, self.micro_batch, self.rank, self.world, self.seed = rows, micro_batch, rank, world, seed
        self.n, self.block_rows = len(rows), max(1, block_rows)
        self.per_epoch = (self.n // world) // micro_batch
        if self.per_epoch == 0:
            raise ValueError(f"{self.n} rows cannot fill one micro-batch of {micro_batch} on each of {world} ranks")
        self.epoch, self.index = 0, 0
        self._order = None  # this epoch's block order and where each block starts in it
        self._within: dict[int, np.ndarray] = {}  # row permutations of the blocks in the window

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict) -> None:
        self.epoch, self.index, self._order = state["epoch"], state["index"], None

    def _block_size(self, block: int) -> int:
        return min(self.block_rows, self.n - block * self.block_rows)

    def positions(self, positions: np.ndarray) -> np.ndarray:
        """Row numbers at these positions of this epoch's order."""
        if self._order is None:
            blocks = -(-self.n // self.block_rows)
            order = np.random.default_rng([self.seed, self.epoch]).permutation(blocks)
            sizes = np.minimum(self.block_rows, self.n - order * self.block_rows)
            self._order, self._within = (order, np.concatenate([[0], np.cumsum(sizes)])), {}
        order, starts = self._order
        k = np.searchsorted(starts, positions, side="right") - 1
        rows = np.empty(len(positions), np.int64)
        for j in np.unique(k):
            block = int(order[j])
            if block not in self._within:
                if len(self._within) >= 2:  # the window: the blocks a step reads from
                    self._within.pop(next(iter(self._within)))
                perm = np.random.default_rng([self.seed, self.epoch, block]).permutation(self._block_size(block))
                self._within[block] = perm
            sel = k == j
            rows[sel] = block * self.block_rows + self._within[block][positions[sel] - starts[j]]
        return rows

    def next(self) -> np.ndarray:
        if self.index >= self.per_epoch:
            self.epoch, self.index, self._order = self.epoch + 1, 0, None
        first = self.index * self.micro_batch
        positions = (np.arange(first, first + self.micro_batch) * self.world) + self.rank
        self.index += 1
        return self.rows[self.positions(positions)]
