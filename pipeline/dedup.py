"""Exact and MinHash-LSH near-duplicate removal, as steps mapped over parts and hash partitions.

    exact_hashes   per part       hash of the normalised text -> (hash, id, part) rows in P partitions
    exact_groups   per partition  rows with an equal hash -> (id, duplicate_of = lowest id of the hash)
    signatures     per part       MinHash of every doc that is not an exact copy, b bands x r rows ->
                                  (band_hash, id, part[, signature]) rows in P partitions
    buckets        per partition  docs sharing a band bucket -> pairs, verified by estimated Jaccard
    clusters       once           union-find over exact and near pairs -> per-part duplicate lists
    drop           per part       kept docs and rejected ones with `reason` and `duplicate_of`

Memory of every per-part step is bounded by `batch_size` documents, of every per-partition step by the
partition's size (partitions are added as the corpus grows, see num_partitions); only `clusters`
holds something corpus-wide: the ids of duplicate documents. The kept representative of every
cluster is its lowest id, whatever order tasks ran in and however many partitions there are.

Normalisation, shingles and signatures are computed for a whole batch at once by the compiled
kernels of pipeline/minhash.py (one loop over the batch's characters each, no per-document Python).
Signatures equal datasketch's `MinHash(num_perm, seed)` (its default affine32 scheme) fed the same
32-bit shingle hashes, so estimates and LSH parameters mean the same as with datasketch.
"""
from __future__ import annotations

import functools
import hashlib
import math
import time
from collections import Counter, defaultdict
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasketch import MinHash
from datasketch.lsh import _optimal_param

from . import io
from . import minhash as kernels
from .config import DedupConfig
from .minhash import NO_SPACE_SHARE
from .stages import part_name, shard_of, write_part

EXACT = "dedup.exact"  # identical, after normalisation, to the kept document
NEAR = "dedup.near"  # estimated Jaccard similarity >= threshold with a document of its cluster

_U64 = np.uint64
_M64 = (_U64(0xFF51AFD7ED558CCD), _U64(0xC4CEB9FE1A85EC53))  # MurmurHash3 fmix64 constants
_BASE = _U64(0x9E3779B97F4A7C15)  # odd multiplier of the band hashes


def _fmix64(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> _U64(33))
    x = x * _M64[0]
    x = x ^ (x >> _U64(33))
    x = x * _M64[1]
    return x ^ (x >> _U64(33))


# ---- normalisation and shingles, over a whole batch (the loops are the compiled kernels of minhash.py) --


def normalize_batch(texts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(code points, offsets, no-space share) of a batch's normalised texts: NFKC-case-folded words
    joined by single spaces (uint32 code points, doc d is [offsets[d], offsets[d + 1])), and per doc
    the share of its characters in a script written without spaces."""
    texts = kernels.nfkc_where_not_nfc(texts)
    return kernels.normalize(*kernels.utf8_buffers(texts), *kernels.char_tables())


def normalize(text: str) -> str:
    """One text as the dedup steps see it: normalised words joined by single spaces."""
    return normalize_batch(pa.array([text]))[0].tobytes().decode("utf-32-le")


def no_space_script(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Per document: is it mostly (NO_SPACE_SHARE) written in a script without spaces between words?"""
    return normalize_batch(texts)[2] > NO_SPACE_SHARE


def shingle_hashes(texts: pa.Array | pa.ChunkedArray, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(32-bit shingle hashes, offsets): doc d's are hashes[offsets[d]:offsets[d + 1]], one at least.

    Word n-grams (cfg.ngram), or character n-grams (cfg.char_ngram) for text without spaces."""
    text, offsets, share = normalize_batch(texts)
    by_chars = share > NO_SPACE_SHARE
    tokens, token_offsets = kernels.token_hashes(text, offsets, by_chars)
    return kernels.ngram_hashes(tokens, token_offsets, np.where(by_chars, cfg.char_ngram, cfg.ngram))


def shingle_texts(text: str, n: int) -> set[str]:
    """Reference word n-grams of one text, as strings (for tests and benchmarks; the steps use hashes)."""
    words = normalize(text).split()
    return {" ".join(words[i : i + n]) for i in range(max(len(words) - n + 1, 1))}


# ---- MinHash signatures ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine permutations (a odd) for num_perm and seed: h -> a*h + b mod 2^32."""
    a, b = MinHash(num_perm=num_perm, seed=seed).permutations
    return np.ascontiguousarray(a, np.uint32), np.ascontiguousarray(b, np.uint32)


def minhash(hashes: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """(docs, num_perm) uint32 signatures of shingle hashes (doc d's are hashes[offsets[d]:offsets[d + 1]])."""
    return kernels.minhash(np.asarray(hashes, np.uint32), np.asarray(offsets, np.int64), *permutations(num_perm, seed))


def signatures(texts: pa.Array | pa.ChunkedArray, cfg: DedupConfig) -> np.ndarray:
    return minhash(*shingle_hashes(texts, cfg), cfg.num_perm, cfg.seed)


def lsh_params(cfg: DedupConfig) -> tuple[int, int]:
    """(bands, rows) minimising false positives + negatives at the threshold (datasketch's routine)."""
    return _optimal_param(cfg.threshold, cfg.num_perm, 0.5, 0.5)


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs, bands) 64-bit hashes of each band's `rows` signature values; the band index is mixed in."""
    x = sig[:, : bands * rows].reshape(len(sig), bands, rows).astype(_U64)
    acc = np.broadcast_to(np.arange(1, bands + 1, dtype=_U64), (len(sig), bands)).copy()
    for j in range(rows):
        acc = acc * _BASE + x[:, :, j]
    return _fmix64(acc)


def jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity: the share of equal signature values (rows of a vs b)."""
    return (sig_a == sig_b).mean(axis=-1)


# ---- partitioned files -------------------------------------------------------------------------------


def num_partitions(cfg: DedupConfig, docs: int) -> int:
    """At least cfg.partitions, and enough that none holds more than cfg.max_partition_rows band rows."""
    bands, _ = lsh_params(cfg)
    return max(cfg.partitions, math.ceil(docs * bands / cfg.max_partition_rows))


def partition_dir(work_dir: str, p: int) -> str:
    return io.join(work_dir, f"partition-{p:05d}")


def _batches(part_url: str, columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
    fs, path = io.fs_path(part_url)
    with fs.open(path, "rb") as f:
        yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns)


def _write_partitioned(table: pa.Table, key: np.ndarray, work_dir: str, partitions: int, name: str) -> None:
    """Rows of `table` into work_dir/partition-p/name, p = key mod partitions (uint64 key)."""
    p_of = (key % _U64(partitions)).astype(np.int64)
    order = np.argsort(p_of, kind="stable")
    bounds = np.searchsorted(p_of[order], np.arange(partitions + 1))
    for p in range(partitions):
        rows = order[bounds[p] : bounds[p + 1]]
        if len(rows):
            io.write_parquet(io.join(partition_dir(work_dir, p), name), table.take(pa.array(rows)))


def _read_all(urls: list[str], **kwargs) -> pa.Table | None:
    tables = [io.read_parquet(u, **kwargs) for u in urls]
    return pa.concat_tables(tables) if tables else None


def _part_rows(urls: list[str], part: int, columns: list[str]) -> pa.Table | None:
    """Rows of `part` from files that have a `part` column (one per partition)."""
    tables = []
    for url in urls:
        fs, path = io.fs_path(url)
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f, columns=columns, filters=[("part", "=", part)]))
    return pa.concat_tables(tables) if tables else None


# ---- exact -------------------------------------------------------------------------------------------


def exact_hashes(part_url: str, work_dir: str, partitions: int, batch_size: int = 4096) -> dict:
    """(hash, id, part) of every doc of a part, into hash partitions; 16-byte blake2b of the normalised text."""
    part = shard_of(part_url)
    docs = 0
    for n, batch in enumerate(_batches(part_url, ["id", "text"], batch_size)):
        text, offsets, _ = normalize_batch(batch["text"])
        digests = [hashlib.blake2b(text[s:e].tobytes(), digest_size=16).digest() for s, e in zip(offsets[:-1], offsets[1:])]
        table = pa.table({"hash": pa.array(digests, pa.binary(16)), "id": batch["id"],
                          "part": pa.array(np.full(len(digests), part, np.int32))})
        key = np.frombuffer(b"".join(digests), dtype=_U64)[::2].copy() if digests else np.zeros(0, _U64)
        _write_partitioned(table, key, work_dir, partitions, f"{part_name(part)}-{n:05d}.parquet")
        docs += len(digests)
    return {"part": part, "docs": docs}


def exact_groups(partition: str, out_url: str) -> dict:
    """Docs of one hash partition whose normalised text equals a lower id's: (id, part, duplicate_of, rep_part)."""
    table = _read_all(io.list_files(partition))
    if table is None or table.num_rows == 0:
        table = pa.table({"hash": pa.array([], pa.binary(16)), "id": pa.array([], pa.string()), "part": pa.array([], pa.int32())})
    table = table.sort_by([("hash", "ascending"), ("id", "ascending")])
    ids = table["id"].to_numpy(zero_copy_only=False)
    if len(ids) > 1:
        same = (table["hash"].to_numpy(zero_copy_only=False)[1:] == table["hash"].to_numpy(zero_copy_only=False)[:-1])
        repeated = same & (ids[1:] == ids[:-1])
        if repeated.any():
            raise ValueError(f"document ids are not unique across the inputs, e.g. {sorted(set(ids[1:][repeated]))[:5]}; "
                             "fix reader.id_key or set it to null to derive ids from file and line")
    hashes = table["hash"].to_numpy(zero_copy_only=False)
    first = np.r_[True, hashes[1:] != hashes[:-1]] if len(hashes) else np.zeros(0, bool)
    rep = np.maximum.accumulate(np.where(first, np.arange(len(ids)), 0)) if len(ids) else np.zeros(0, np.int64)
    dup = np.flatnonzero(~first)
    parts = table["part"].to_numpy()
    out = pa.table({"id": pa.array(ids[dup], pa.string()), "part": pa.array(parts[dup], pa.int32()),
                    "duplicate_of": pa.array(ids[rep[dup]], pa.string()), "rep_part": pa.array(parts[rep[dup]], pa.int32())})
    io.write_parquet(out_url, out)
    return {"docs": table.num_rows, "duplicates": out.num_rows}


# ---- MinHash LSH -------------------------------------------------------------------------------------


def signature_rows(part_url: str, work_dir: str, partitions: int, cfg: DedupConfig, exact_urls: list[str] = ()) -> dict:
    """Band rows (band_hash, id, part[, signature]) of a part's docs into hash partitions.

    Docs listed as exact duplicates are skipped: their representative stands for them."""
    part = shard_of(part_url)
    bands, rows = lsh_params(cfg)
    skip = _part_rows(list(exact_urls), part, ["id"])
    skip_ids = pa.array([], pa.string()) if skip is None else skip["id"].combine_chunks()
    docs = 0
    for n, batch in enumerate(_batches(part_url, ["id", "text"], cfg.batch_size)):
        batch = pa.Table.from_batches([batch])
        batch = batch.filter(pc.invert(pc.is_in(batch["id"], value_set=skip_ids)))
        if batch.num_rows == 0:
            continue
        sig = signatures(batch["text"], cfg)
        keys = band_hashes(sig, bands, rows).reshape(-1)  # doc-major: doc i's bands are rows i*b .. i*b+b-1
        doc_idx = pa.array(np.repeat(np.arange(batch.num_rows), bands))
        columns = {"band_hash": pa.array(keys, pa.uint64()), "id": batch["id"].take(doc_idx),
                   "part": pa.array(np.full(len(keys), part, np.int32))}
        if cfg.verify:
            width = cfg.num_perm * 4
            columns["signature"] = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(width), len(keys), [None, pa.py_buffer(np.repeat(sig, bands, axis=0).tobytes())])
        _write_partitioned(pa.table(columns), keys, work_dir, partitions, f"{part_name(part)}-{n:05d}.parquet")
        docs += batch.num_rows
    return {"part": part, "docs": docs, "band_rows": docs * bands}


def _signature_matrix(column: pa.ChunkedArray, num_perm: int) -> np.ndarray:
    arr = column.combine_chunks()
    width = num_perm * 4
    data = np.frombuffer(arr.buffers()[1], np.uint8)[arr.offset * width : (arr.offset + len(arr)) * width]
    return data.view(np.uint32).reshape(len(arr), num_perm)


def bucket_pairs(partition: str, out_url: str, cfg: DedupConfig) -> dict:
    """Pairs (a, b, part_a, part_b) of docs sharing a band bucket in one partition.

    Each bucket links its members to its lowest id; with cfg.verify, only members whose estimated
    Jaccard with it is >= threshold, and the members left over form a bucket of their own.
    Reads the keys first, then only the rows of buckets with two members or more."""
    files = io.list_files(partition)
    keys = _read_all(files, columns=["band_hash"])
    shared = pa.array([], pa.uint64())
    if keys is not None and keys.num_rows:
        values, counts = np.unique(keys["band_hash"].to_numpy(), return_counts=True)
        shared = pa.array(values[counts > 1], pa.uint64())
    del keys
    candidates = []
    for url in files:
        t = io.read_parquet(url)
        candidates.append(t.filter(pc.is_in(t["band_hash"], value_set=shared)))
    stats = {"band_rows_in_buckets": 0, "candidate_pairs": 0, "pairs": 0}
    pairs: set[tuple[str, str, int, int]] = set()
    if candidates and sum(c.num_rows for c in candidates):
        table = pa.concat_tables(candidates).sort_by([("band_hash", "ascending"), ("id", "ascending")])
        stats["band_rows_in_buckets"] = table.num_rows
        ids = table["id"].to_numpy(zero_copy_only=False)
        parts = table["part"].to_numpy()
        key = table["band_hash"].to_numpy()
        sig = _signature_matrix(table["signature"], cfg.num_perm) if cfg.verify else None
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        for s, e in zip(starts, np.r_[starts[1:], len(key)]):
            if np.any(ids[s + 1 : e] == ids[s : e - 1]):
                raise ValueError(f"document id {ids[s:e][np.r_[False, ids[s + 1:e] == ids[s:e - 1]]][0]!r} occurs in "
                                 "more than one input document; fix reader.id_key or set it to null")
            members = np.arange(s, e)
            while len(members) > 1:
                rep, rest = members[0], members[1:]
                stats["candidate_pairs"] += len(rest)
                ok = jaccard(sig[rest], sig[rep]) >= cfg.threshold if cfg.verify else np.ones(len(rest), bool)
                pairs.update((ids[rep], ids[m], int(parts[rep]), int(parts[m])) for m in rest[ok])
                members = rest[~ok]
    rows = sorted(pairs)
    stats["pairs"] = len(rows)
    cols = list(zip(*rows)) if rows else [(), (), (), ()]
    io.write_parquet(out_url, pa.table({"a": pa.array(cols[0], pa.string()), "b": pa.array(cols[1], pa.string()),
                                        "part_a": pa.array(cols[2], pa.int32()), "part_b": pa.array(cols[3], pa.int32())}))
    return stats


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


def clusters(pair_urls: list[str], exact_urls: list[str], out_dir: str) -> dict:
    """Union-find over near pairs and exact groups -> out_dir/part-NNNNN.parquet (id, duplicate_of, reason).

    duplicate_of is the lowest id of the doc's cluster (the kept one). The reason is dedup.exact
    when the doc's normalised text equals the kept doc's, else dedup.near."""
    uf, part_of, exact_rep = UnionFind(), {}, {}
    for url in exact_urls:
        for d, p, r, rp in zip(*io.read_parquet(url, columns=["id", "part", "duplicate_of", "rep_part"]).to_pydict().values()):
            uf.union(d, r)
            part_of[d], part_of[r], exact_rep[d] = p, rp, r
    for url in pair_urls:
        for a, b, pa_, pb in zip(*io.read_parquet(url, columns=["a", "b", "part_a", "part_b"]).to_pydict().values()):
            uf.union(a, b)
            part_of[a], part_of[b] = pa_, pb
    members: dict[str, list[str]] = defaultdict(list)
    for doc in uf.parent:
        members[uf.find(doc)].append(doc)
    by_part: dict[int, list[tuple[str, str, str]]] = defaultdict(list)
    reasons: Counter = Counter()
    for group in members.values():
        lowest = min(group)
        for doc in group:
            if doc != lowest:
                reason = EXACT if exact_rep.get(doc) == lowest else NEAR
                by_part[part_of[doc]].append((doc, lowest, reason))
                reasons[reason] += 1
    for part, rows in by_part.items():
        ids, reps, why = zip(*sorted(rows))
        io.write_parquet(io.join(out_dir, part_name(part) + ".parquet"),
                         pa.table({"id": pa.array(ids, pa.string()), "duplicate_of": pa.array(reps, pa.string()),
                                   "reason": pa.array(why, pa.string())}))
    sizes = Counter(len(g) for g in members.values())
    return {"clusters": len(members), "duplicates": sum(reasons.values()),
            "exact_duplicates": reasons[EXACT], "near_duplicates": reasons[NEAR],
            "cluster_sizes": {str(k): v for k, v in sorted(sizes.items())}}


def drop_duplicates(part_url: str, duplicates_dir: str, run_dir: str, stage: str = "dedup") -> dict:
    """Write a part's kept docs to <run>/<stage> and its duplicates, with reason and duplicate_of, to rejected/."""
    started = time.perf_counter()
    docs = io.read_parquet(part_url)
    url = io.join(duplicates_dir, part_name(shard_of(part_url)) + ".parquet")
    found = {}
    if io.exists(url):
        dups = io.read_parquet(url).to_pydict()
        found = {i: (r, why) for i, r, why in zip(dups["id"], dups["duplicate_of"], dups["reason"])}
    hits = [found.get(i, (None, None)) for i in docs["id"].to_pylist()]
    return write_part(run_dir, stage, shard_of(part_url), docs, [h[1] for h in hits], [h[0] for h in hits], started=started)


def run_local(part_urls: list[str], run_dir: str, cfg: DedupConfig, partitions: int | None = None) -> dict:
    """All steps in order in this process, as the flow wires them (for tests, benchmarks and small data):
    <run_dir>/dedup/part-*.parquet and <run_dir>/rejected/dedup/part-*.parquet. Returns clusters' summary."""
    partitions = partitions or cfg.partitions
    work = io.join(run_dir, "dedup", "_work")
    exact_urls: list[str] = []
    if cfg.exact:
        for url in part_urls:
            exact_hashes(url, io.join(work, "exact"), partitions, cfg.batch_size)
        exact_urls = [io.join(work, "exact-groups", f"partition-{p:05d}.parquet") for p in range(partitions)]
        for p, out in enumerate(exact_urls):
            exact_groups(partition_dir(io.join(work, "exact"), p), out)
    pair_urls: list[str] = []
    if cfg.minhash:
        for url in part_urls:
            signature_rows(url, io.join(work, "bands"), partitions, cfg, exact_urls)
        pair_urls = [io.join(work, "pairs", f"partition-{p:05d}.parquet") for p in range(partitions)]
        for p, out in enumerate(pair_urls):
            bucket_pairs(partition_dir(io.join(work, "bands"), p), out, cfg)
    summary = clusters(pair_urls, exact_urls, io.join(work, "duplicates"))
    for url in part_urls:
        drop_duplicates(url, io.join(work, "duplicates"), run_dir)
    return summary
