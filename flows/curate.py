"""The curate flow: read -> quality -> exact dedup -> MinHash dedup -> tokenizer -> token shards.

Thin wiring only: each task is a pipeline function, mapped over parts and run on Ray.
"""
from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from pipeline import dedup, filters, funnel, io, readers, tokenize
from pipeline.stages import finish_stage, stage_parts

from .config import RunConfig
from .runtime import ray_task_runner, run_mapped, stage

read_file = task(readers.read_file, name="read", retries=1)
filter_part = task(filters.filter_part, name="quality", retries=1)
exact_hashes = task(dedup.exact_hashes, name="exact-hashes", retries=1)
exact_duplicates = task(dedup.exact_duplicates, name="exact-duplicates", retries=1)
drop_duplicates = task(dedup.drop_duplicates, name="drop-duplicates", retries=1)
minhash_signatures = task(dedup.minhash_signatures, name="minhash-signatures", retries=1)
minhash_buckets = task(dedup.minhash_buckets, name="minhash-buckets", retries=1)
minhash_clusters = task(dedup.minhash_clusters, name="minhash-clusters", retries=1)
train_tokenizer = task(tokenize.train_tokenizer, name="train-tokenizer", retries=1)
tokenize_part = task(tokenize.tokenize_part, name="tokenize", retries=1)


@flow(name="curate", log_prints=True)
def curate(config: RunConfig) -> dict:
    config = config.with_run_id()
    cfg, run_dir, width = config.curate, config.run_dir, config.ray.max_in_flight

    def mapped(fn, calls, what):
        return run_mapped(fn, calls, width, what, config.prefect.task_retries, config.prefect.retry_delay_s)

    def read():
        shards = readers.plan_shards(readers.expand_inputs(cfg.inputs), cfg.reader.shard_bytes)
        calls = [dict(**s, shard=i, run_dir=run_dir, cfg=cfg.reader) for i, s in enumerate(shards)]
        stats = finish_stage(run_dir, "read", mapped(read_file, calls, "read"))
        for e in stats["errors"]:
            get_run_logger().warning("input %s: %s at offset %s: %s", e["path"], e["reason"], e["offset"], e["error"])
        return stats

    def quality():
        calls = [dict(part_url=p, run_dir=run_dir, cfg=cfg.quality) for p in stage_parts(run_dir, "read")]
        return finish_stage(run_dir, "quality", mapped(filter_part, calls, "quality"))

    def drop(name: str, source: str, duplicates_url: str, summary: dict):
        calls = [dict(part_url=p, duplicates_url=duplicates_url, run_dir=run_dir, stage=name, reason=f"{name}.duplicate")
                 for p in stage_parts(run_dir, source)]
        return finish_stage(run_dir, name, mapped(drop_duplicates, calls, f"{name} drop"), **summary)

    def exact(source: str):
        work = io.join(run_dir, "exact")
        calls = [dict(part_url=p, out_dir=io.join(work, "_hashes")) for p in stage_parts(run_dir, source)]
        hashes = mapped(exact_hashes, calls, "exact hashes")
        duplicates_url = io.join(work, "_duplicates.parquet")
        summary = exact_duplicates.submit(hashes, duplicates_url).result()
        return drop("exact", source, duplicates_url, summary)

    def minhash(source: str):
        work = io.join(run_dir, "minhash")
        calls = [dict(part_url=p, out_dir=io.join(work, "_bands"), cfg=cfg.dedup) for p in stage_parts(run_dir, source)]
        mapped(minhash_signatures, calls, "minhash signatures")
        pair_urls = [io.join(work, "_pairs", f"partition-{p:05d}.parquet") for p in range(cfg.dedup.partitions)]
        calls = [dict(partition_dir=io.join(work, "_bands", f"partition-{p:05d}"), out_url=u) for p, u in enumerate(pair_urls)]
        pairs = sum(r["pairs"] for r in mapped(minhash_buckets, calls, "minhash buckets"))
        duplicates_url = io.join(work, "_duplicates.parquet")
        summary = minhash_clusters.submit(pair_urls, duplicates_url).result()
        bands, rows = dedup.lsh_params(cfg.dedup)
        return drop("minhash", source, duplicates_url, {**summary, "candidate_pairs": pairs, "bands": bands, "rows": rows})

    def tokens(source: str):
        out = io.join(run_dir, "tokens")
        parts = stage_parts(run_dir, source)
        tokenizer_url = io.join(out, "tokenizer.json")
        tok = train_tokenizer.submit(parts, tokenizer_url, cfg.tokenizer).result()
        calls = [dict(part_url=p, tokenizer_url=tokenizer_url, out_dir=out, cfg=cfg.tokens) for p in parts]
        shards = [s for part in mapped(tokenize_part, calls, "tokenize") for s in part]
        docs = io.read_json(io.join(run_dir, source, "_stats.json"))["docs_kept"]
        manifest = tokenize.write_manifest(out, tokenizer_url, shards, cfg.tokens, docs)
        stats = {"stage": "tokens", "tokenizer": tok, **manifest["totals"], "source_docs": docs}
        io.write_json(io.join(out, "_stats.json"), stats)
        io.mark_done(out)
        return stats

    io.makedirs(run_dir)
    stats = {"read": stage(run_dir, "read", read), "quality": stage(run_dir, "quality", quality)}
    last = "quality"
    if cfg.dedup.exact:
        stats["exact"] = stage(run_dir, "exact", lambda: exact(last))
        last = "exact"
    if cfg.dedup.minhash:
        stats["minhash"] = stage(run_dir, "minhash", lambda: minhash(last))
        last = "minhash"
    stats["tokens"] = stage(run_dir, "tokens", lambda: tokens(last))
    rows = funnel.load_funnel(run_dir)
    funnel.write_funnel(run_dir, rows)
    create_table_artifact(key="data-funnel", table=rows, description=f"Data funnel of run {config.run_id}: "
                          "docs, bytes and chars per stage and rejection reason")
    return stats


@flow(name="curate-on-ray", log_prints=True)
def curate_on_ray(config: RunConfig) -> dict:
    """curate with its tasks on Ray (local, or config.ray.address): the CLI's and the deployment's entry."""
    return curate.with_options(task_runner=ray_task_runner(config.ray))(config.with_run_id())
