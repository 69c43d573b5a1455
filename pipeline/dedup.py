"""Exact and MinHash-LSH near-duplicate removal, as steps mapped over parts and partitions.

Exact:   hashes (per part) -> duplicates (global group-by on hash) -> drop (per part)
MinHash: signatures (per part, band rows partitioned by band hash) -> buckets (per partition:
         candidate pairs) -> clusters (union-find over all pairs) -> drop (per part)
The kept representative of every group is its lowest id, whatever order tasks ran in.
"""
from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasketch import MinHash
from datasketch.lsh import _optimal_param

from . import io
from .config import DedupConfig
from .stages import part_name, shard_of, write_part

DUPLICATES_SCHEMA = pa.schema([("id", pa.string()), ("duplicate_of", pa.string())])
_PUNCT = re.compile(r"[^\w\s]")


def normalize(text: str) -> str:
    """NFKC, lowercase, punctuation removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_PUNCT.sub(" ", text).split())


def _digest(data: bytes, size: int) -> bytes:
    return hashlib.blake2b(data, digest_size=size).digest()


# ---- exact ---------------------------------------------------------------------------------------


def exact_hashes(part_url: str, out_dir: str) -> str:
    docs = io.read_parquet(part_url, columns=["id", "text"])
    hashes = [_digest(normalize(t).encode(), 16) for t in docs["text"].to_pylist()]
    out = io.join(out_dir, part_name(shard_of(part_url)) + ".parquet")
    io.write_parquet(out, pa.table({"id": docs["id"], "hash": pa.array(hashes, pa.binary(16))}))
    return out


def _lowest_per_group(table: pa.Table, key: str) -> pa.Table:
    """(id, duplicate_of) for every row whose `key` group has a lower id."""
    reps = table.group_by(key).aggregate([("id", "min")]).rename_columns([key, "duplicate_of"])
    joined = table.join(reps, key)
    dups = joined.filter(pc.not_equal(joined["id"], joined["duplicate_of"]))
    return dups.select(["id", "duplicate_of"]).sort_by("id").cast(DUPLICATES_SCHEMA)


def exact_duplicates(hash_urls: list[str], out_url: str) -> dict:
    # Only (id, 16-byte hash) per document is held here, never the text.
    table = pa.concat_tables([io.read_parquet(u) for u in hash_urls])
    if table.num_rows != pc.count_distinct(table["id"]).as_py():
        ids = Counter(table["id"].to_pylist())
        repeated = [i for i, c in ids.items() if c > 1][:5]
        raise ValueError(f"document ids are not unique across the inputs, e.g. {repeated}; "
                         "fix reader.id_key or set it to null to derive ids from file and line")
    dups = _lowest_per_group(table, "hash")
    io.write_parquet(out_url, dups)
    return {"duplicates": dups.num_rows}


def drop_duplicates(part_url: str, duplicates_url: str, run_dir: str, stage: str, reason: str) -> dict:
    started = time.perf_counter()
    docs = io.read_parquet(part_url)
    dup_of = dict(zip(*io.read_parquet(duplicates_url).to_pydict().values()))
    targets = [dup_of.get(i) for i in docs["id"].to_pylist()]
    reasons = [reason if t is not None else None for t in targets]
    return write_part(run_dir, stage, shard_of(part_url), docs, reasons, targets, started=started)


# ---- MinHash LSH ----------------------------------------------------------------------------------


def lsh_params(cfg: DedupConfig) -> tuple[int, int]:
    """(bands, rows) minimising false positives + negatives at the threshold (datasketch's routine)."""
    return _optimal_param(cfg.threshold, cfg.num_perm, 0.5, 0.5)


def shingles(text: str, n: int) -> set[bytes]:
    words = normalize(text).split()
    if len(words) <= n:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}


def signature(text: str, cfg: DedupConfig) -> np.ndarray:
    m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
    m.update_batch(list(shingles(text, cfg.ngram)))
    return m.hashvalues


def minhash_signatures(part_url: str, out_dir: str, cfg: DedupConfig) -> list[str]:
    """Band rows (band, band_hash, id) of one part, written into cfg.partitions partition dirs."""
    bands, rows = lsh_params(cfg)
    docs = io.read_parquet(part_url, columns=["id", "text"])
    ids, band_col, hash_col = [], [], []
    for doc_id, text in zip(docs["id"].to_pylist(), docs["text"].to_pylist()):
        sig = signature(text, cfg)
        for b in range(bands):
            ids.append(doc_id)
            band_col.append(b)
            hash_col.append(int.from_bytes(_digest(sig[b * rows : (b + 1) * rows].tobytes(), 8), "little"))
    table = pa.table({"band": pa.array(band_col, pa.int32()), "band_hash": pa.array(hash_col, pa.uint64()), "id": pa.array(ids, pa.string())})
    partition = pc.bit_wise_and(table["band_hash"], pa.scalar(0xFFFF, pa.uint64())).to_numpy() % cfg.partitions
    name = part_name(shard_of(part_url)) + ".parquet"
    written = []
    for p in range(cfg.partitions):
        url = io.join(out_dir, f"partition-{p:05d}", name)
        io.write_parquet(url, table.filter(pa.array(partition == p)))
        written.append(url)
    return written


def minhash_buckets(partition_dir: str, out_url: str) -> dict:
    """Candidate pairs of one partition: every doc sharing a band bucket is linked to its lowest id."""
    table = pa.concat_tables([io.read_parquet(u) for u in io.list_files(partition_dir)])
    groups = table.group_by(["band", "band_hash"]).aggregate([("id", "list")])
    pairs = set()
    for members in groups["id_list"].to_pylist():
        if len(members) > 1:
            lowest = min(members)
            pairs.update((lowest, m) for m in members if m != lowest)
    a, b = zip(*sorted(pairs)) if pairs else ((), ())
    io.write_parquet(out_url, pa.table({"a": pa.array(a, pa.string()), "b": pa.array(b, pa.string())}))
    return {"pairs": len(pairs)}


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.rank: dict[str, int] = {}

    def find(self, x: str) -> str:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while x != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        self.parent.setdefault(a, a)
        self.parent.setdefault(b, b)
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.rank.get(ra, 0) < self.rank.get(rb, 0):
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.rank[ra] = max(self.rank.get(ra, 0), self.rank.get(rb, 0) + 1)


def minhash_clusters(pair_urls: list[str], out_url: str) -> dict:
    """Union-find over all candidate pairs -> (id, duplicate_of = lowest id of its cluster)."""
    uf = UnionFind()
    for url in pair_urls:
        pairs = io.read_parquet(url)
        for a, b in zip(pairs["a"].to_pylist(), pairs["b"].to_pylist()):
            uf.union(a, b)
    clusters: dict[str, list[str]] = {}
    for doc in uf.parent:
        clusters.setdefault(uf.find(doc), []).append(doc)
    dup_rows = []
    for members in clusters.values():
        lowest = min(members)
        dup_rows += [(m, lowest) for m in members if m != lowest]
    dup_rows.sort()
    ids, reps = zip(*dup_rows) if dup_rows else ((), ())
    io.write_parquet(out_url, pa.table({"id": pa.array(ids, pa.string()), "duplicate_of": pa.array(reps, pa.string())}))
    sizes = Counter(len(m) for m in clusters.values())
    return {"clusters": len(clusters), "duplicates": len(dup_rows), "cluster_sizes": {str(k): v for k, v in sorted(sizes.items())}}
