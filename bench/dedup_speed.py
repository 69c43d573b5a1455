"""Speed and memory of tokenmill's dedup, as ratios against baselines measured in the same run.

    python bench/dedup_speed.py [--skip-signatures] [--skip-e2e] [--skip-datatrove] [--skip-rss] [--replicas 4]
                                [--e2e-replicas 40] [--e2e-files 16]

1. Signatures/s on the bundled corpus (real Common Crawl pages), best of 20 runs each, tokenmill and
   rensa called in turn (3 runs for the slow datasketch ones), wall and CPU time (CPU is the steadier measure on a shared machine):
   tokenmill from raw text (normalise + shingle + hash, whole batch) vs datasketch
   `MinHash(128).update_batch` per document given the SAME shingles precomputed (its shingling is not
   timed), and vs rensa (Rust; `pip install -e '.[bench]'`) on the same shingles, per document and bulk.
   Also the hashing stage alone: tokenmill's `minhash` from shingle hashes vs the same baselines.
2. End-to-end `tokenmill dedup` (Prefect + Ray) on the corpus replicated 40x with perturbations
   (29,240 docs, 112 MB, 16 files): wall time of the dedup stage with ray.num_cpus=1 vs 2 (parallel
   efficiency), alternated, best of two each.
3. datatrove 0.10.1's MinHash pipeline (Signature/Buckets/Cluster/Filter, LocalPipelineExecutor) on the
   same replicated corpus: docs/s against tokenmill's steps in one process, and the Jaccard of the
   two removed-doc sets.
4. Peak RSS of the whole dedup (all steps, one process) on the corpus and on the corpus x10
   (replicas with perturbations), partitions sized by config (max_partition_rows).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent

from datasketch import MinHash
from dedup_quality import load_corpus  # sibling script: bench/ is on sys.path

from tokenmill.pipeline import dedup, storage
from tokenmill.pipeline.config import DedupConfig
from tokenmill.pipeline.contracts import docs_table

CFG = DedupConfig()


def corpus() -> list[str]:
    return [t for t in load_corpus() if t.strip()]


def perturb(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for _ in range(max(1, len(words) // 50)):
        words[rng.randrange(len(words))] = rng.choice(["the", "a", "news", "2019", "home"])
    return " ".join(words)


_PUNCT = re.compile(r"[^\w\s]")


def python_shingles(text: str, n: int = 5) -> list[bytes]:
    """What a plain-Python datasketch pipeline does per document: NFKC, lowercase, punctuation out,
    split, join word n-grams, encode (word n-grams only: no CJK handling)."""
    words = _PUNCT.sub(" ", unicodedata.normalize("NFKC", text).lower()).split()
    return list({" ".join(words[i : i + n]).encode() for i in range(max(len(words) - n + 1, 1))})


def best(fn, repeat=5) -> tuple[float, float]:
    """(wall, CPU) seconds of fn, each the best of `repeat` runs. On a shared machine the CPU time
    (all threads of this process) is the steadier measure: wall time includes waiting for a core."""
    walls, cpus = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def best_interleaved(fns: dict, repeat: int = 20) -> dict:
    """{name: (wall, CPU)} as best(), with the functions called in turn in every round, so that a slow
    spell of the machine hits all of them alike."""
    times = {name: [float("inf"), float("inf")] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            times[name] = [min(times[name][0], time.perf_counter() - t), min(times[name][1], time.process_time() - c)]
    return {name: tuple(v) for name, v in times.items()}


def shingle_strings(texts: list[str]) -> list[list[str]]:
    """The shingles tokenmill hashes, as strings (word 5-grams; character 5-grams for CJK/Thai docs)."""
    cjk = dedup.no_space_script(pa.array(texts))
    out = []
    for text, c in zip(texts, cjk):
        if c:
            chars = dedup.normalize(text).replace(" ", "")
            out.append(sorted({chars[i : i + CFG.char_ngram] for i in range(max(len(chars) - CFG.char_ngram + 1, 1))}))
        else:
            out.append(sorted(dedup.shingle_texts(text, CFG.ngram)))
    return out


def signatures_bench() -> None:
    texts = corpus()
    arr = pa.array(texts)
    sh = shingle_strings(texts)
    sh_bytes = [[s.encode() for s in doc] for doc in sh]
    h, offsets = dedup.shingle_hashes(arr, CFG)
    per_doc = [h[offsets[i] : offsets[i + 1]] for i in range(len(texts))]
    print(f"corpus: {len(texts)} docs, {sum(map(len, texts)) / 1e6:.1f} M chars, {len(h):,} shingles, num_perm {CFG.num_perm}")
    t = time.perf_counter()
    dedup.signatures(arr, CFG)  # compiled kernels loaded (or compiled) and Unicode tables built: not timed below
    print(f"first call (numba kernels from cache or compiled, Unicode tables): {time.perf_counter() - t:.2f} s")

    def datasketch_per_doc():
        for doc in sh_bytes:
            m = MinHash(num_perm=CFG.num_perm, seed=CFG.seed)
            m.update_batch(doc)

    def datasketch_from_hashes():
        for doc in per_doc:
            m = MinHash(num_perm=CFG.num_perm, seed=CFG.seed, hashfunc=int)
            m.update_batch(doc.tolist())

    def datasketch_from_text():
        for text in texts:
            m = MinHash(num_perm=CFG.num_perm, seed=CFG.seed)
            m.update_batch(python_shingles(text, CFG.ngram))

    ours_name = "tokenmill, raw text -> signatures (normalise, shingle, hash)"
    base_name = "datasketch update_batch per doc, same shingles precomputed (baseline)"
    fast = {ours_name: lambda: dedup.signatures(arr, CFG),
            "tokenmill, shingle hashes -> signatures": lambda: dedup.minhash(h, offsets, CFG.num_perm, CFG.seed)}
    try:
        from rensa import RMinHash

        def rensa_per_doc():
            for doc in sh:
                m = RMinHash(num_perm=CFG.num_perm, seed=CFG.seed)
                m.update(doc)
                m.digest()

        hashes, hash_offsets = h.astype(np.uint64), offsets.astype(np.uint64)
        fast["rensa RMinHash per doc, same shingles precomputed"] = rensa_per_doc
        fast["rensa digest_matrix_from_token_sets (bulk), same shingles"] = lambda: RMinHash.digest_matrix_from_token_sets(
            sh, CFG.num_perm, CFG.seed)
        fast["rensa digest_matrix_from_flat_token_hashes (bulk), same shingle hashes"] = (
            lambda: RMinHash.digest_matrix_from_flat_token_hashes(hashes, hash_offsets, CFG.num_perm, CFG.seed))
    except ImportError:
        print("rensa not installed (pip install -e '.[bench]'): skipped")
    rows = list(best_interleaved(fast).items())
    rows.append(("datasketch, raw text -> signatures (Python normalise + n-grams, update_batch per doc)", best(datasketch_from_text, 3)))
    rows.append((base_name, best(datasketch_per_doc, 3)))
    rows.append(("datasketch update_batch per doc, same 32-bit shingle hashes (hashfunc=int)", best(datasketch_from_hashes, 3)))
    times = dict(rows)
    ours = times[ours_name]
    print("\n| implementation | wall s | CPU s | docs/s (CPU) | CPU time vs tokenmill from raw text |\n|---|---|---|---|---|")
    for name, (wall, cpu) in rows:
        print(f"| {name} | {wall:.3f} | {cpu:.3f} | {len(texts) / cpu:,.0f} | {cpu / ours[1]:.2f}x |")

    def ratio(name, against):
        slow, fast = times[name], times[against]
        return f"{slow[1] / fast[1]:.2f}x CPU, {slow[0] / fast[0]:.2f}x wall"

    print(f"\ntokenmill from raw text vs datasketch given the same shingles (goal >= 10x): {ratio(base_name, ours_name)}")
    print(f"tokenmill from raw text vs datasketch from raw text: "
          f"{ratio('datasketch, raw text -> signatures (Python normalise + n-grams, update_batch per doc)', ours_name)}")
    print(f"from the same 32-bit shingle hashes, tokenmill vs datasketch: "
          f"{ratio('datasketch update_batch per doc, same 32-bit shingle hashes (hashfunc=int)', 'tokenmill, shingle hashes -> signatures')}")
    if "rensa RMinHash per doc, same shingles precomputed" in times:
        print(f"tokenmill from raw text vs rensa per doc given the same shingles (goal >= 1x): "
              f"{ratio('rensa RMinHash per doc, same shingles precomputed', ours_name)}")
        print(f"tokenmill from raw text vs rensa bulk given the same shingles: "
              f"{ratio('rensa digest_matrix_from_token_sets (bulk), same shingles', ours_name)}")


# ---- end to end on Ray --------------------------------------------------------------------------------


def write_replicas(directory: Path, texts: list[str], replicas: int, files: int = 16) -> int:
    """The corpus and replicas - 1 perturbed copies of it, dealt round-robin into `files` JSONL files."""
    rng = random.Random(0)
    directory.mkdir(parents=True, exist_ok=True)
    outs = [open(directory / f"in-{f:03d}.jsonl", "w") for f in range(files)]
    n = 0
    for r in range(replicas):
        docs = texts if r == 0 else [perturb(t, rng) for t in texts]
        for i, doc in enumerate(docs):
            outs[n % files].write(json.dumps({"id": f"r{r:03d}-{i:05d}", "text": doc}) + "\n")
            n += 1
    for out in outs:
        out.close()
    return n


def e2e_bench(replicas: int, files: int) -> None:
    from tokenmill.flows.server import start_server, stop_server

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = write_replicas(tmp / "in", corpus(), replicas, files)
        mb = sum(f.stat().st_size for f in (tmp / "in").iterdir()) / 1e6
        print(f"{n:,} docs ({replicas} perturbed copies of the corpus), {mb:.0f} MB in {files} files (parts of {mb / files:.0f} MB)")
        api = start_server(home=str(tmp / "prefect-home"))
        walls = {1: float("inf"), 2: float("inf")}
        try:
            for attempt, cpus in enumerate((1, 2, 1, 2)):  # alternated, best of two each: the machine is shared
                out = tmp / f"out-{attempt}"
                cmd = [sys.executable, "-m", "tokenmill.flows.cli", "dedup", str(tmp / "in"), "--out", str(out),
                       "--set", f"ray.num_cpus={cpus}", "--set", "ray.dashboard=false", "--set", f"ray.max_in_flight={2 * cpus}"]
                proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PREFECT_API_URL": api.url}, capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
                wall = (out / "dedup" / "_SUCCESS").stat().st_mtime - (out / "read" / "_SUCCESS").stat().st_mtime
                walls[cpus] = min(walls[cpus], wall)
                stats = json.loads((out / "dedup" / "_stats.json").read_text())
                print(f"ray.num_cpus={cpus}: dedup stage {wall:.1f} s for {n:,} docs = {n / wall:,.0f} docs/s "
                      f"({stats['docs_rejected']:,} removed, {stats['partitions']} partitions)")
            t = time.perf_counter()
            dedup.run_local(storage.list_files(str(tmp / "out-0" / "read")), str(tmp / "local"), CFG)
            local = time.perf_counter() - t
        finally:
            stop_server(api)
        print(f"speed-up 2 cores vs 1: {walls[1] / walls[2]:.2f}x (parallel efficiency {walls[1] / walls[2] / 2:.0%})")
        print(f"the same steps in this process, no Prefect or Ray (run_local): {local:.1f} s = {n / local:,.0f} docs/s; "
              f"Prefect + Ray cost {walls[1] - local:.1f} s on 1 core (orchestration runs in the flow process, on the "
              "same 2 cores as the workers)")


# ---- datatrove's MinHash pipeline ------------------------------------------------------------------------


def datatrove_bench(replicas: int) -> None:
    """datatrove 0.10.1's four MinHash steps (LocalPipelineExecutor, 1 worker) vs tokenmill's steps
    (run_local, this process) on the same JSONL corpus, the same 5-grams, bands x rows and seed."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from loguru import logger  # datatrove logs every task's stats: keep the bench's output readable

    logger.remove()
    bands, rows = dedup.lsh_params(CFG)
    with tempfile.TemporaryDirectory() as tmp:
        n = write_replicas(Path(tmp) / "in", corpus(), replicas)
        files = sorted(str(p) for p in (Path(tmp) / "in").glob("*.jsonl"))
        config = MinhashConfig(n_grams=CFG.ngram, num_buckets=bands, hashes_per_bucket=rows, seed=CFG.seed)

        def run(pipeline, tasks, name):
            LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=f"{tmp}/logs/{name}").run()

        t = time.perf_counter()
        run([JsonlReader(f"{tmp}/in"), MinhashDedupSignature(f"{tmp}/dt/sigs", config=config)], len(files), "sigs")
        run([MinhashDedupBuckets(f"{tmp}/dt/sigs", f"{tmp}/dt/buckets", config=config)], bands, "buckets")
        run([MinhashDedupCluster(f"{tmp}/dt/buckets", f"{tmp}/dt/remove", config=config)], 1, "cluster")
        run([JsonlReader(f"{tmp}/in"), MinhashDedupFilter(f"{tmp}/dt/remove", exclusion_writer=JsonlWriter(f"{tmp}/dt/removed")),
             JsonlWriter(f"{tmp}/dt/kept")], len(files), "filter")
        theirs_s = time.perf_counter() - t
        theirs = {json.loads(line)["id"] for f in Path(f"{tmp}/dt/removed").glob("*") for line in gzip.open(f, "rt")}

        for i, f in enumerate(files):
            rows_ = [json.loads(line) for line in open(f)]
            storage.write_parquet(f"{tmp}/tm/read/part-{i:05d}.parquet", docs_table(
                [{"id": r["id"], "text": r["text"], "source": f, "url": None, "meta": None} for r in rows_]))
        urls = storage.list_files(f"{tmp}/tm/read")
        t = time.perf_counter()
        dedup.run_local(urls, f"{tmp}/tm", CFG)
        ours_s = time.perf_counter() - t
        ours = {r for f in storage.list_files(f"{tmp}/tm/rejected/dedup") for r in storage.read_parquet(f, columns=["id"])["id"].to_pylist()}
    print(f"{n:,} docs ({replicas} perturbed copies of the corpus), {bands} x {rows} buckets, 5-grams, 1 core")
    print(f"datatrove MinhashDedupSignature/Buckets/Cluster/Filter (LocalPipelineExecutor, 1 worker): {theirs_s:.1f} s "
          f"= {n / theirs_s:,.0f} docs/s, {len(theirs):,} removed")
    print(f"tokenmill dedup steps (exact + MinHash, run_local in this process): {ours_s:.1f} s = {n / ours_s:,.0f} docs/s, "
          f"{len(ours):,} removed")
    print(f"docs/s tokenmill vs datatrove: {theirs_s / ours_s:.1f}x (datatrove's time includes its per-task startup)")
    print(f"Jaccard of the removed-doc sets: {len(ours & theirs) / max(len(ours | theirs), 1):.3f} "
          f"({len(ours - theirs)} only tokenmill, {len(theirs - ours)} only datatrove). The perturbed copies are ~0.83 "
          "similar (true Jaccard of 5-grams), where the LSH bands find a pair only part of the time, so two independent "
          "hash functions agree on about half of them.")


# ---- peak memory ----------------------------------------------------------------------------------------


def rss_child(directory: str, max_partition_rows: int) -> None:
    """Run every dedup step over the parquet parts in `directory`; print the peak RSS in MiB."""
    urls = storage.list_files(f"{directory}/in")
    docs = sum(storage.read_parquet(u, columns=["id"]).num_rows for u in urls)
    cfg = DedupConfig(max_partition_rows=max_partition_rows)
    partitions = dedup.num_partitions(cfg, docs)
    t = time.perf_counter()
    summary = dedup.run_local(urls, directory, cfg, partitions)
    seconds = time.perf_counter() - t
    print(json.dumps({"docs": docs, "partitions": partitions, "seconds": seconds, "duplicates": summary["duplicates"],
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def rss_bench(max_partition_rows: int = 20_000) -> None:
    texts = corpus()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for factor in (1, 10):
            rng = random.Random(factor)
            work = f"{tmp}/x{factor}"
            for r in range(factor):
                docs = texts if r == 0 else [perturb(t, rng) for t in texts]
                for p in range(4):
                    rows = [{"id": f"r{r:02d}-{i:05d}", "text": docs[i], "source": "bench", "url": None, "meta": None}
                            for i in range(p, len(docs), 4)]
                    storage.write_parquet(f"{work}/in/part-{r * 4 + p:05d}.parquet", docs_table(rows))
            proc = subprocess.run([sys.executable, __file__, "--rss-child", work, str(max_partition_rows)],
                                  capture_output=True, text=True, check=True)
            results[factor] = json.loads(proc.stdout.strip().splitlines()[-1])
            r = results[factor]
            print(f"corpus x{factor}: {r['docs']:,} docs, {r['partitions']} partitions, {r['duplicates']:,} duplicates removed, "
                  f"{r['seconds']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB")
    print(f"peak RSS ratio x10 / x1: {results[10]['peak_rss_mib'] / results[1]['peak_rss_mib']:.2f} "
          f"(max_partition_rows={max_partition_rows:,})")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--rss-child":
        return rss_child(sys.argv[2], int(sys.argv[3]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-signatures", action="store_true")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--skip-datatrove", action="store_true")
    ap.add_argument("--replicas", type=int, default=4, help="corpus copies (perturbed) for the datatrove run")
    ap.add_argument("--e2e-replicas", type=int, default=40, help="corpus copies (perturbed) for the 1-vs-2-core run")
    ap.add_argument("--e2e-files", type=int, default=16, help="files (= parts) the 1-vs-2-core run's corpus is dealt into")
    args = ap.parse_args()
    print("## signatures/s\n")
    if not args.skip_signatures:
        signatures_bench()
    if not args.skip_e2e:
        print("\n## end to end, 1 vs 2 cores\n")
        e2e_bench(args.e2e_replicas, args.e2e_files)
    if not args.skip_datatrove:
        print("\n## vs datatrove's MinHash pipeline, same corpus\n")
        datatrove_bench(args.replicas)
    if not args.skip_rss:
        print("\n## peak memory, corpus vs corpus x10\n")
        rss_bench()


if __name__ == "__main__":
    main()
