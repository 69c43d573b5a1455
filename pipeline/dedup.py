"""Exact and MinHash-LSH near-duplicate removal, as steps mapped over parts and hash partitions.

    id_rows        per part       (id, source, part) rows in P partitions by a hash of the id
    check_ids      per partition  fails, naming the records, if an id is used by two documents
    exact_hashes   per part       hash of the normalised text -> (hash, id, part) rows in P partitions
    exact_groups   per partition  rows with an equal hash -> (id, duplicate_of = lowest id of the hash)
    signatures     per part       MinHash of every doc that is not an exact copy, b bands x r rows ->
                                  (band_hash, id, part[, signature]) rows in P partitions
    buckets        per partition  docs sharing a band bucket -> pairs, verified by estimated Jaccard
    clusters       once           union-find over exact and near pairs (ids as dense integers)
                                  -> per-part duplicate lists
    drop           per part       kept docs and rejected ones with `reason` and `duplicate_of`

plan() lists them in order as Steps (pipeline/stages.py): the curate flow maps them on Ray,
run_local() runs them in one process; both resume the same way.

Memory of every per-part step is bounded by a batch of documents (`batch_size`; drop: `batch_rows`),
of every per-partition step by the partition's size (partitions are added as the corpus grows, see
num_partitions); only `clusters` holds something corpus-wide: the distinct ids of duplicate documents
(one Arrow string array) and two int64 per pair. The kept representative of every
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
from collections import Counter
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasketch import MinHash
from datasketch.lsh import _optimal_param
from numba import njit

from . import minhash as kernels
from . import storage
from .config import DedupConfig
from .minhash import NO_SPACE_SHARE
from .stages import PartWriter, Step, marker_url, part_name, part_step, shard_of, unit_name

EXACT = "dedup.exact"  # identical, after normalisation, to the kept document
NEAR = "dedup.near"  # estimated Jaccard similarity >= threshold with a document of its cluster

_U64 = np.uint64
_BASE = _U64(0x9E3779B97F4A7C15)  # odd multiplier of the band hashes


# ---- normalisation and shingles, over a whole batch (the loops are the compiled kernels of minhash.py) --


def normalize_batch(texts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(code points, offsets, no-space share) of a batch's normalised texts: NFKC-case-folded words
    joined by single spaces (uint32 code points, doc d is [offsets[d], offsets[d + 1])), and per doc
    the share of its characters in a script written without spaces."""
    return kernels.fold_batch(kernels.normalize, texts)


def normalize(text: str) -> str:
    """One text as the dedup steps see it: normalised words joined by single spaces."""
    return normalize_batch(pa.array([text]))[0].tobytes().decode("utf-32-le")


def no_space_script(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Per document: is it mostly (NO_SPACE_SHARE) written in a script without spaces between words?"""
    return normalize_batch(texts)[2] > NO_SPACE_SHARE


def shingle_hashes(texts: pa.Array | pa.ChunkedArray, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(32-bit shingle hashes, offsets): doc d's are hashes[offsets[d]:offsets[d + 1]], one at least.

    Word n-grams (cfg.ngram), or character n-grams (cfg.char_ngram) for text without spaces, of the
    texts as normalize_batch normalises them, in one pass over the bytes without the normalised text."""
    return kernels.fold_batch(kernels.shingle_hashes, texts, cfg.ngram, cfg.char_ngram)


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
    """(bands, rows) from datasketch's routine, weighting missed pairs 4x false candidates: verification
    drops false candidates afterwards, a missed pair is lost (12 x 10 for 0.8 and 128: recall 0.944 vs
    0.884 with equal weights on bench/dedup_quality.py, precision 1.000 both)."""
    return _optimal_param(cfg.threshold, cfg.num_perm, 0.2, 0.8)


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs, bands) 64-bit hashes of each band's `rows` signature values; the band index is mixed in."""
    x = sig[:, : bands * rows].reshape(len(sig), bands, rows).astype(_U64)
    acc = np.broadcast_to(np.arange(1, bands + 1, dtype=_U64), (len(sig), bands)).copy()
    for j in range(rows):
        acc = acc * _BASE + x[:, :, j]
    return kernels.fmix64(acc)


def jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity: the share of equal signature values (rows of a vs b)."""
    return (sig_a == sig_b).mean(axis=-1)


# ---- partitioned files -------------------------------------------------------------------------------


def num_partitions(cfg: DedupConfig, docs: int) -> int:
    """At least cfg.partitions, and enough that none holds more than cfg.max_partition_rows band rows."""
    bands, _ = lsh_params(cfg)
    return max(cfg.partitions, math.ceil(docs * bands / cfg.max_partition_rows))


def partition_dir(work_dir: str, p: int) -> str:
    return storage.join(work_dir, f"partition-{p:05d}")


def _write_partitioned(table: pa.Table, key: np.ndarray, work_dir: str, partitions: int, name: str) -> None:
    """Rows of `table` into work_dir/partition-p/name, p = key mod partitions (uint64 key)."""
    p_of = (key % _U64(partitions)).astype(np.int64)
    order = np.argsort(p_of, kind="stable")
    bounds = np.searchsorted(p_of[order], np.arange(partitions + 1))
    for p in range(partitions):
        rows = order[bounds[p] : bounds[p + 1]]
        if len(rows):
            storage.write_parquet(storage.join(partition_dir(work_dir, p), name), table.take(pa.array(rows)))


def _read_all(urls: list[str], **kwargs) -> pa.Table | None:
    tables = [storage.read_parquet(u, **kwargs) for u in urls]
    return pa.concat_tables(tables) if tables else None


def _part_rows(urls: list[str], part: int, columns: list[str]) -> pa.Table | None:
    """Rows of `part` from files that have a `part` column (one per partition)."""
    tables = []
    for url in urls:
        fs, path = storage.fs_path(url)
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f, columns=columns, filters=[("part", "=", part)]))
    return pa.concat_tables(tables) if tables else None


# ---- ids ---------------------------------------------------------------------------------------------


def id_rows(part_url: str, work_dir: str, partitions: int, batch_size: int = 65536) -> dict:
    """(id, source, part) of every doc of a part into partitions by a hash of the id, so that
    check_ids finds an id used twice without any step holding all ids."""
    part = shard_of(part_url)
    docs = 0
    for n, batch in enumerate(storage.parquet_batches(part_url, batch_size, ["id", "source"])):
        ids = batch["id"]
        table = pa.table({"id": ids, "source": batch["source"], "part": pa.array(np.full(len(ids), part, np.int32))})
        _write_partitioned(table, kernels.string_hashes(*kernels.utf8_buffers(ids)), work_dir, partitions,
                           f"{part_name(part)}-{n:05d}.parquet")
        docs += len(ids)
    return {"part": part, "docs": docs}


def check_ids(partition: str) -> dict:
    """Fail, naming the records, if two docs of one id partition share an id.

    Ids are the key of every later step and of `duplicate_of`: with two documents under one id, which
    one a pair, a cluster or a rejection means is undecidable. It is a configuration error (an id_key
    that is not unique in this corpus, or the same input given twice), so the stage stops before any
    work rather than rejecting documents at random."""
    table = _read_all(storage.list_files(partition))
    if table is None or table.num_rows == 0:
        return {"ids": 0}
    counts = table["id"].value_counts()
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        shown = []
        for doc_id in repeated.take(pc.sort_indices(repeated))[:3].to_pylist():
            rows = table.filter(pc.equal(table["id"], doc_id)).sort_by("part")
            shown.append(f"id {doc_id!r} in " + ", ".join(f"{s} (part {p})" for s, p in zip(rows["source"].to_pylist(), rows["part"].to_pylist())))
        raise ValueError(f"document ids are not unique across the inputs ({len(repeated)} repeated in id partition "
                         f"{partition}): {'; '.join(shown)}. Set curate.reader.id_key (--id-key) to a field that is "
                         "unique in the corpus, or to null to derive ids from file and offset")
    return {"ids": table.num_rows}


# ---- exact -------------------------------------------------------------------------------------------


def exact_hashes(part_url: str, work_dir: str, partitions: int, batch_size: int = 4096) -> dict:
    """(hash, id, part) of every doc of a part, into hash partitions; 16-byte blake2b of the normalised text."""
    part = shard_of(part_url)
    docs = 0
    for n, batch in enumerate(storage.parquet_batches(part_url, batch_size, ["id", "text"])):
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
    table = _read_all(storage.list_files(partition))
    if table is None or table.num_rows == 0:
        table = pa.table({"hash": pa.array([], pa.binary(16)), "id": pa.array([], pa.string()), "part": pa.array([], pa.int32())})
    table = table.sort_by([("hash", "ascending"), ("id", "ascending")])
    ids = table["id"].to_numpy(zero_copy_only=False)
    hashes = table["hash"].to_numpy(zero_copy_only=False)
    first = np.r_[True, hashes[1:] != hashes[:-1]] if len(hashes) else np.zeros(0, bool)
    rep = np.maximum.accumulate(np.where(first, np.arange(len(ids)), 0)) if len(ids) else np.zeros(0, np.int64)
    dup = np.flatnonzero(~first)
    parts = table["part"].to_numpy()
    out = pa.table({"id": pa.array(ids[dup], pa.string()), "part": pa.array(parts[dup], pa.int32()),
                    "duplicate_of": pa.array(ids[rep[dup]], pa.string()), "rep_part": pa.array(parts[rep[dup]], pa.int32())})
    storage.write_parquet(out_url, out)
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
    for n, batch in enumerate(storage.parquet_batches(part_url, cfg.batch_size, ["id", "text"])):
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
    files = storage.list_files(partition)
    keys = _read_all(files, columns=["band_hash"])
    shared = pa.array([], pa.uint64())
    if keys is not None and keys.num_rows:
        values, counts = np.unique(keys["band_hash"].to_numpy(), return_counts=True)
        shared = pa.array(values[counts > 1], pa.uint64())
    del keys
    candidates = []
    for url in files:
        t = storage.read_parquet(url)
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
    storage.write_parquet(out_url, pa.table({"a": pa.array(cols[0], pa.string()), "b": pa.array(cols[1], pa.string()),
                                        "part_a": pa.array(cols[2], pa.int32()), "part_b": pa.array(cols[3], pa.int32())}))
    return stats


@njit(cache=True, nogil=True)
def _cluster_roots(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Union-find over pairs of dense ids 0..n-1 -> each id's root, the lowest id of its cluster
    (a link always hangs the higher root under the lower one; paths are halved on the way)."""
    parent = np.arange(n)
    for i in range(len(a)):
        x, y = a[i], b[i]
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        while parent[y] != y:
            parent[y] = parent[parent[y]]
            y = parent[y]
        if x < y:
            parent[y] = x
        elif y < x:
            parent[x] = y
    for x in range(n):  # parents are lower ids, so one pass in id order resolves every root
        parent[x] = parent[parent[x]]
    return parent


def _pair_batches(pair_urls: list[str], exact_urls: list[str], rows: int = 1 << 16) -> Iterator[tuple[pa.Table, bool]]:
    """(a, b, part_a, part_b) batches of near pairs and exact groups (exact: b's text equals a's),
    read `rows` at a time so that only the pairs' integer form is held whole."""
    schema = pa.schema({"a": pa.large_string(), "b": pa.large_string(), "part_a": pa.int32(), "part_b": pa.int32()})
    for urls, columns, exact in ((exact_urls, ["duplicate_of", "id", "rep_part", "part"], True),
                                 (pair_urls, ["a", "b", "part_a", "part_b"], False)):
        for url in urls:
            for batch in storage.parquet_batches(url, rows, columns):
                yield pa.Table.from_batches([batch]).rename_columns(list(schema.names)).cast(schema), exact


def _distinct_sorted_ids(pair_urls: list[str], exact_urls: list[str]) -> pa.Array:
    """Every id of the pairs once, sorted (merged as batches come, so never all pairs' strings at once)."""
    ids, pending = pa.array([], pa.large_string()), []
    for t, _ in _pair_batches(pair_urls, exact_urls):
        pending.append(pc.unique(pa.chunked_array(t["a"].chunks + t["b"].chunks, pa.large_string())))
        if sum(map(len, pending)) > max(len(ids), 1 << 20):
            ids, pending = pc.unique(pa.chunked_array([ids, *pending])), []
    ids = pc.unique(pa.chunked_array([ids, *pending]))
    return ids.take(pc.sort_indices(ids))


class _DenseIds:
    """id string -> its rank among the sorted distinct ids, by a 64-bit hash looked up with
    searchsorted (pc.index_in would rebuild a hash table of all ids for every batch). Every looked-up
    id is one of `ids`, so distinct hashes make the lookup exact; on a collision it falls back to index_in."""

    def __init__(self, ids: pa.Array) -> None:
        self.ids = ids
        key = kernels.string_hashes(*kernels.utf8_buffers(ids))
        self.order = np.argsort(key, kind="stable")
        self.sorted_key = key[self.order]
        self.exact = len(key) < 2 or bool(np.all(self.sorted_key[1:] != self.sorted_key[:-1]))

    def __call__(self, column: pa.ChunkedArray) -> np.ndarray:
        if not self.exact:
            return pc.index_in(column, value_set=self.ids).to_numpy().astype(np.int64)
        key = kernels.string_hashes(*kernels.utf8_buffers(column.combine_chunks()))
        return self.order[np.searchsorted(self.sorted_key, key)]


def clusters(pair_urls: list[str], exact_urls: list[str], out_dir: str) -> dict:
    """Union-find over near pairs and exact groups -> out_dir/part-NNNNN.parquet (id, duplicate_of, reason).

    duplicate_of is the lowest id of the doc's cluster (the kept one). The reason is dedup.exact
    when the doc's normalised text equals the kept doc's, else dedup.near. Ids become dense integers
    in sorted order (one Arrow array of the distinct ids of all pairs), so the union-find holds two
    int64 per pair, not Python strings, and the lowest integer of a cluster is its lowest id."""
    ids = _distinct_sorted_ids(pair_urls, exact_urls)
    dense = _DenseIds(ids)
    a, b, exact_a, exact_b = [], [], [], []
    part_of = np.zeros(len(ids), np.int32)
    for t, exact in _pair_batches(pair_urls, exact_urls):
        ia, ib = dense(t["a"]), dense(t["b"])
        part_of[ia], part_of[ib] = t["part_a"].to_numpy(), t["part_b"].to_numpy()
        a.append(ia)
        b.append(ib)
        if exact:
            exact_a.append(ia)
            exact_b.append(ib)
    del dense
    a = np.concatenate(a) if a else np.zeros(0, np.int64)
    b = np.concatenate(b) if b else np.zeros(0, np.int64)
    root = _cluster_roots(a, b, len(ids))
    del a, b
    exact_rep = np.full(len(ids), -1, np.int64)  # the doc an exact copy was grouped with
    if exact_b:
        exact_rep[np.concatenate(exact_b)] = np.concatenate(exact_a)
    dups = np.flatnonzero(root != np.arange(len(ids)))  # ascending, so in id order
    is_exact = exact_rep[dups] == root[dups]
    by_part = np.argsort(part_of[dups], kind="stable")  # stable: ids stay in order within a part
    parts, starts = np.unique(part_of[dups][by_part], return_index=True)
    for part, rows in zip(parts.tolist(), np.split(by_part, starts[1:])):
        storage.write_parquet(storage.join(out_dir, part_name(part) + ".parquet"),
                         pa.table({"id": ids.take(pa.array(dups[rows])), "duplicate_of": ids.take(pa.array(root[dups[rows]])),
                                   "reason": pa.array(np.where(is_exact[rows], EXACT, NEAR), pa.string())}))
    roots = np.unique(root)
    sizes = Counter(np.bincount(root)[roots].tolist())
    return {"clusters": len(roots), "duplicates": len(dups), "exact_duplicates": int(is_exact.sum()),
            "near_duplicates": int(len(dups) - is_exact.sum()), "cluster_sizes": {str(k): v for k, v in sorted(sizes.items())}}


def drop_duplicates(part_url: str, duplicates_dir: str, run_dir: str, batch_rows: int = 1024) -> dict:
    """Write a part's kept docs to <run>/dedup and its duplicates, with reason and duplicate_of, to rejected/dedup,
    `batch_rows` documents at a time: memory is a batch plus the part's duplicate list, not the part."""
    started = time.perf_counter()
    url = storage.join(duplicates_dir, part_name(shard_of(part_url)) + ".parquet")
    found = {}
    if storage.exists(url):
        dups = storage.read_parquet(url).to_pydict()
        found = {i: (r, why) for i, r, why in zip(dups["id"], dups["duplicate_of"], dups["reason"])}
    writer = PartWriter(run_dir, "dedup", shard_of(part_url), started)
    try:
        for batch in storage.parquet_batches(part_url, batch_rows):
            hits = [found.get(i, (None, None)) for i in batch["id"].to_pylist()]
            writer.write(pa.Table.from_batches([batch]), [h[1] for h in hits], [h[0] for h in hits])
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def plan(part_urls: list[str], run_dir: str, cfg: DedupConfig, partitions: int) -> list[Step]:
    """The dedup stage's steps in order, reading `part_urls` and writing <run_dir>/dedup: the curate
    flow maps each on Ray, run_local runs them here. Scratch goes to <run_dir>/dedup/_work."""
    work = storage.join(run_dir, "dedup", "_work")
    ids, exact, bands, duplicates = (storage.join(work, d) for d in ("ids", "exact", "bands", "duplicates"))

    def per_part(name, fn, work_dir, **kwargs) -> Step:
        return Step(name, fn, [dict(part_url=u, work_dir=work_dir, partitions=partitions, **kwargs) for u in part_urls],
                    marker=lambda call: marker_url(work_dir, unit_name(call["part_url"])))

    def per_partition(name, fn, out_dir, calls, unit_key="out_url") -> Step:
        return Step(name, fn, calls, marker=lambda call: marker_url(out_dir, unit_name(call[unit_key])))

    def partition_files(directory: str) -> list[str]:
        return [storage.join(directory, f"partition-{p:05d}.parquet") for p in range(partitions)]

    steps = [per_part("id-rows", id_rows, ids),
             per_partition("check-ids", check_ids, storage.join(work, "ids-checked"),
                           [dict(partition=partition_dir(ids, p)) for p in range(partitions)], unit_key="partition")]
    exact_urls = partition_files(storage.join(work, "exact-groups")) if cfg.exact else []
    if cfg.exact:
        steps += [per_part("exact-hashes", exact_hashes, exact, batch_size=cfg.batch_size),
                  per_partition("exact-groups", exact_groups, storage.join(work, "exact-groups"),
                                [dict(partition=partition_dir(exact, p), out_url=u) for p, u in enumerate(exact_urls)])]
    pair_urls = partition_files(storage.join(work, "pairs")) if cfg.minhash else []
    if cfg.minhash:
        steps += [per_part("minhash-signatures", signature_rows, bands, cfg=cfg, exact_urls=exact_urls),
                  per_partition("minhash-buckets", bucket_pairs, storage.join(work, "pairs"),
                                [dict(partition=partition_dir(bands, p), out_url=u, cfg=cfg) for p, u in enumerate(pair_urls)])]
    steps += [Step("dedup-clusters", clusters, [dict(pair_urls=pair_urls, exact_urls=exact_urls, out_dir=duplicates)],
                   marker=lambda call: marker_url(duplicates, "clusters")),
              part_step("dedup-drop", drop_duplicates, [dict(part_url=u, duplicates_dir=duplicates, run_dir=run_dir) for u in part_urls],
                        run_dir, "dedup", lambda call: shard_of(call["part_url"]))]
    return steps


def summary(cfg: DedupConfig, partitions: int, results: dict[str, list]) -> dict:
    """The stage's own figures from its steps' results (by step name): partitions, LSH bands x rows,
    candidate and verified pairs, duplicates and the cluster-size histogram."""
    out: dict = {"partitions": partitions}
    if cfg.minhash:
        bands, rows = lsh_params(cfg)
        out.update(bands=bands, rows=rows, **{k: sum(r[k] for r in results["minhash-buckets"]) for k in ("candidate_pairs", "pairs")})
    return {**out, **results["dedup-clusters"][0]}


def remove_scratch(run_dir: str) -> None:
    """Drop what only the steps needed (the band rows are the bulk); pair and duplicate lists stay."""
    for scratch in ("ids", "ids-checked", "exact", "bands"):
        storage.remove_tree(storage.join(run_dir, "dedup", "_work", scratch))


def run_local(part_urls: list[str], run_dir: str, cfg: DedupConfig, partitions: int | None = None) -> dict:
    """Every step of plan() in this process (tests, benchmarks, small data): <run_dir>/dedup/part-*.parquet
    and <run_dir>/rejected/dedup/part-*.parquet. Returns the stage's summary."""
    partitions = partitions or cfg.partitions
    return summary(cfg, partitions, {step.name: step.run_serially() for step in plan(part_urls, run_dir, cfg, partitions)})
