"""Peak memory of the read stage on one big shard, and the cost of splitting a compressed file.

    python bench/reader_memory.py [--mb 200] [--split-mb 64] [--skip-memory] [--skip-split] [--skip-hostile]

1. Peak RSS of `read_file` on one JSONL shard of --mb MB (the bundled corpus's documents repeated
   with unique ids), in a fresh process each: streamed in batches of `reader.batch_bytes` (default,
   8 MB) vs the whole shard collected into one table (batch_bytes larger than the shard: what the
   reader did before batching). The process's RSS after imports is printed too.
2. Splitting a .jsonl.gz: wall time of reading all its records as one shard vs as n shards read one
   after the other in this process (each shard decompresses from the start and skips to its range,
   so the total is the work n parallel tasks would do), or each shard seeks with a gzip index
   (indexed_gzip) built by the planner, the planner's measuring pass, and gzip
   decompression alone; CPU seconds of this process (wall time on a shared machine is mostly waiting).
3. Peak RSS of `read_file` on a hostile .jsonl.zst shard (default reader settings), in a fresh
   process: a 1 GiB line that compresses to a few hundred KB, three lines just under
   `max_record_bytes` whose text is over `max_doc_chars`, 200,000 records without text, then good
   records; against the bound the reader is built for, imports + 2 x batch_bytes + 3 x max_record_bytes
   (the raw line, its decoded text and its parsed value), and against the good records alone.
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tokenmill.pipeline.config import BUNDLED_CORPUS, ReaderConfig
from tokenmill.pipeline.readers import plan_shards, read_records, uncompressed_size

CHILD = """
import json, resource, sys
from tokenmill.pipeline.config import ReaderConfig
from tokenmill.pipeline.readers import read_file
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
stats = read_file({path!r}, 0, {run!r}, ReaderConfig(batch_bytes={batch}))
print(json.dumps({{"docs": stats["docs_in"], "base_kb": base, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def corpus_docs() -> list[dict]:
    docs = []
    for path in sorted(Path(BUNDLED_CORPUS).glob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            docs += [json.loads(line) for line in f if line.strip()]
    return docs


def write_big(path: Path, mb: int) -> int:
    docs, size, k = corpus_docs(), 0, 0
    with open(path, "w") as f:
        while size < mb << 20:
            for d in docs:
                line = json.dumps({"id": f"{d.get('id', '')}-{k}", "text": d["text"]}) + "\n"
                f.write(line)
                size += len(line)
            k += 1
    return size


def peak_rss(path: Path, run: Path, batch: int) -> dict:
    code = CHILD.format(path=str(path), run=str(run), batch=batch)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    shutil.rmtree(run, ignore_errors=True)
    return json.loads(out.strip().splitlines()[-1])


def read_all(shards: list[dict]) -> tuple[int, float]:
    """Records and CPU seconds of this process (the machine is shared: wall time is mostly waiting)."""
    started = time.process_time()
    n = sum(1 for s in shards for _ in read_records(s["url"], ReaderConfig(), s["start"], s["end"], s.get("index")))
    return n, time.process_time() - started


def quality_seconds_per_mb(url: Path) -> float:
    """CPU seconds per MB of text of the default quality chain, on the first 4 MB of records."""
    from tokenmill.pipeline.config import QualityConfig
    from tokenmill.pipeline.filters import Doc, build_chain, filter_docs

    steps = build_chain(QualityConfig())
    docs, size = [], 0
    for r in read_records(str(url), ReaderConfig()):
        docs.append(Doc(r.doc["id"], r.doc["text"], r.doc["url"]))
        size += len(r.doc["text"].encode())
        if size >= 4 << 20:
            break
    started = time.process_time()
    filter_docs(steps, docs)
    return (time.process_time() - started) / (size / 2**20)


def write_hostile(path: Path, good: Path) -> int:
    """The hostile shard of part 3, written compressed as it goes (nothing big is held here)."""
    from backports import zstd  # the reader's own zstd (compression.zstd from Python 3.14)

    cfg, records = ReaderConfig(), 0
    with zstd.open(path, "wb") as f:
        f.write(b'{"text": "')
        for _ in range(1024):
            f.write(b"a" * (1 << 20))
        f.write(b'"}\n')
        for _ in range(3):
            f.write(json.dumps({"text": "b" * (cfg.max_record_bytes - 100)}).encode() + b"\n")
        for i in range(200_000):
            f.write(json.dumps({"body": f"record {i} keeps its text under another key"}).encode() + b"\n")
        records = 1 + 3 + 200_000
        with open(good, "rb") as src:
            for line in src:
                f.write(line)
                records += 1
    return records


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--split-mb", type=int, default=64, help="uncompressed size of the .jsonl.gz of part 2")
    ap.add_argument("--skip-split", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-hostile", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="reader-bench-"))
    try:
        path = tmp / "big.jsonl"
        size = write_big(path, args.mb if not args.skip_memory else args.split_mb)
        if not args.skip_memory:
            print(f"1. one JSONL shard of {size / 2**20:.0f} MB, peak RSS of read_file in a fresh process")
            streamed = peak_rss(path, tmp / "run", ReaderConfig().batch_bytes)
            whole = peak_rss(path, tmp / "run", size * 2)
            print(f"   batches of {ReaderConfig().batch_bytes >> 20} MB: {streamed['peak_kb'] / 1024:7.0f} MB "
                  f"(after imports {streamed['base_kb'] / 1024:.0f} MB, {streamed['docs']} docs)")
            print(f"   whole shard at once: {whole['peak_kb'] / 1024:7.0f} MB (after imports {whole['base_kb'] / 1024:.0f} MB)")
            print(f"   peak RSS streamed / whole shard: {streamed['peak_kb'] / whole['peak_kb']:.3f}; above imports: "
                  f"{(streamed['peak_kb'] - streamed['base_kb']) / (whole['peak_kb'] - whole['base_kb']):.3f}")
        if not args.skip_hostile:
            cfg = ReaderConfig()
            good = tmp / "good.jsonl"
            write_big(good, 16)
            hostile = tmp / "hostile.jsonl.zst"
            records = write_hostile(hostile, good)
            print(f"3. a hostile shard: {records} records, {hostile.stat().st_size / 2**20:.1f} MB of .zst "
                  f"(~{(1 << 30) / 2**20 + 3 * cfg.max_record_bytes / 2**20 + 16 + 10:.0f} MB uncompressed)")
            bad = peak_rss(hostile, tmp / "run", cfg.batch_bytes)
            ok = peak_rss(good, tmp / "run", cfg.batch_bytes)
            bound = bad["base_kb"] * 1024 + 2 * cfg.batch_bytes + 3 * cfg.max_record_bytes
            print(f"   peak RSS {bad['peak_kb'] / 1024:.0f} MB ({bad['docs']} docs; after imports "
                  f"{bad['base_kb'] / 1024:.0f} MB); good records alone {ok['peak_kb'] / 1024:.0f} MB; bound (imports + 2 x batch_bytes + 3 x "
                  f"max_record_bytes) {bound / 2**20:.0f} MB; peak / bound: {bad['peak_kb'] * 1024 / bound:.2f}")
        if args.skip_split:
            return
        gz = tmp / "big.jsonl.gz"
        with open(path, "rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
            dst.write(src.read(args.split_mb << 20))
        started = time.process_time()
        with gzip.open(gz, "rb") as f:
            while f.read1(1 << 20):
                pass
        decompress = time.process_time() - started
        started = time.process_time()
        usize = uncompressed_size(str(gz))[0]
        measure = time.process_time() - started
        print(f"2. .jsonl.gz of {usize / 2**20:.0f} MB uncompressed ({gz.stat().st_size / 2**20:.0f} MB compressed)")
        print(f"   gzip decompression alone {decompress:.2f} CPU s ({usize / 2**20 / decompress:.0f} MB/s); "
              f"planner's measuring pass {measure:.2f} s")
        n1, t1 = read_all(plan_shards([str(gz)], usize + 1))
        print(f"   one shard: {n1} records in {t1:.2f} CPU s ({usize / 2**20 / t1:.0f} MB/s)")
        quality = quality_seconds_per_mb(gz) * usize / 2**20
        print(f"   the quality stage's chain on the same text: ~{quality:.1f} CPU s (from its first 4 MB)")
        for n in (4, 8, 16):
            for index_dir in (None, tmp / f"index-{n}"):
                started = time.process_time()
                shards = plan_shards([str(gz)], -(-usize // n), index_dir=index_dir and str(index_dir))
                plan = time.process_time() - started
                count, t = read_all(shards)
                assert count == n1, (count, n1)
                how = "seek index" if index_dir else "skipping  "
                print(f"   {len(shards):2d} shards, {how}: {t:.2f} CPU s in all (planning {plan:.2f} s); total work / one shard: "
                      f"{t / t1:.2f}; extra work / (read + quality): {(t - t1) / (t1 + quality):.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
