"""The curate flow: read -> quality -> dedup (exact, then MinHash LSH) -> [quality model] -> tokenizer -> token shards.

Thin wiring only: each task is a pipeline function, mapped over parts and run on Ray.
"""
from __future__ import annotations

import posixpath
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from tokenmill.pipeline import dedup, filters, funnel, readers, storage, tokenize
from tokenmill.pipeline.stages import (
    finish_stage,
    finished,
    finished_part,
    shard_of,
    stage_parts,
)
from tokenmill.training import quality_model

from .config import RunConfig
from .runtime import ray_task_runner, run_mapped, stage

read_file = task(readers.read_file, name="read", retries=1)
filter_part = task(filters.filter_part, name="quality", retries=1)
id_rows = task(dedup.id_rows, name="id-rows", retries=1)
check_ids = task(dedup.check_ids, name="check-ids", retries=1)
exact_hashes = task(dedup.exact_hashes, name="exact-hashes", retries=1)
exact_groups = task(dedup.exact_groups, name="exact-groups", retries=1)
signature_rows = task(dedup.signature_rows, name="minhash-signatures", retries=1)
bucket_pairs = task(dedup.bucket_pairs, name="minhash-buckets", retries=1)
clusters = task(dedup.clusters, name="dedup-clusters", retries=1)
drop_duplicates = task(dedup.drop_duplicates, name="dedup-drop", retries=1)
train_tokenizer = task(tokenize.train_tokenizer, name="train-tokenizer", retries=1)
tokenize_part = task(tokenize.tokenize_part, name="tokenize", retries=1)
score_quality = task(quality_model.score_part, name="quality-model", retries=1)


def _mapper(config: RunConfig):
    def mapped(fn, calls, what, stage: str | None = None, marker=None, outputs=lambda result: ()):
        """Map `fn` over `calls`, skipping calls finished by an earlier run of this run id: parts of
        `stage` (write_part's stats file is their marker), or calls whose `marker(call)` JSON exists
        (written here from the call's result, after the task wrote its outputs) and, when given,
        whose `outputs(result)` files all exist."""
        done = commit = None
        if stage is not None:
            def done(call):
                return finished_part(config.run_dir, stage, call["shard"] if "shard" in call else shard_of(call["part_url"]))
        elif marker is not None:
            def done(call):
                return finished(marker(call), outputs)

            def commit(call, result):
                storage.write_json(marker(call), result)
        return run_mapped(fn, calls, config.ray.max_in_flight, what, config.prefect.task_retries,
                          config.prefect.retry_delay_s, done=done, commit=commit)
    return mapped


def _marker(directory: str, key: str = "part_url"):
    """marker(call) -> <directory>/_parts/<name of the call's part or partition>.json"""
    def marker(call):
        return storage.join(directory, "_parts", posixpath.basename(call[key]).split(".")[0] + ".json")
    return marker


def read_settings(config: RunConfig) -> dict:
    """What the read stage's output depends on: the input files and the reader settings (not strictness)."""
    return {"inputs": readers.expand_inputs(config.curate.inputs), "reader": config.curate.reader.model_dump(exclude={"strict"})}


def read_stage(config: RunConfig) -> dict:
    cfg, run_dir = config.curate, config.run_dir
    shards = readers.plan_shards(readers.expand_inputs(cfg.inputs), cfg.reader.shard_bytes, storage.join(run_dir, "read", "_index"))
    calls = [dict(**s, shard=i, run_dir=run_dir, cfg=cfg.reader) for i, s in enumerate(shards)]
    stats = finish_stage(run_dir, "read", _mapper(config)(read_file, calls, "read", stage="read"))
    for e in stats["errors"]:
        get_run_logger().warning("input %s: %s at offset %s: %s", e["path"], e["reason"], e["offset"], e["error"])
    return stats


def dedup_stage(config: RunConfig, source: str) -> dict:
    """Exact then MinHash LSH dedup of `source`'s parts into the `dedup` stage (pipeline/dedup.py has the steps)."""
    cfg, run_dir, mapped = config.curate.dedup, config.run_dir, _mapper(config)
    work = storage.join(run_dir, "dedup", "_work")
    parts = stage_parts(run_dir, source)
    partitions = dedup.num_partitions(cfg, storage.read_json(storage.join(run_dir, source, "_stats.json"))["docs_kept"])
    summary: dict = {"partitions": partitions}
    calls = [dict(part_url=p, work_dir=storage.join(work, "ids"), partitions=partitions) for p in parts]
    mapped(id_rows, calls, "id rows", marker=_marker(storage.join(work, "ids")))
    calls = [dict(partition=dedup.partition_dir(storage.join(work, "ids"), p)) for p in range(partitions)]
    mapped(check_ids, calls, "id check", marker=_marker(storage.join(work, "ids-checked"), "partition"))
    exact_urls: list[str] = []
    if cfg.exact:
        calls = [dict(part_url=p, work_dir=storage.join(work, "exact"), partitions=partitions, batch_size=cfg.batch_size) for p in parts]
        mapped(exact_hashes, calls, "exact hashes", marker=_marker(storage.join(work, "exact")))
        exact_urls = [storage.join(work, "exact-groups", f"partition-{p:05d}.parquet") for p in range(partitions)]
        calls = [dict(partition=dedup.partition_dir(storage.join(work, "exact"), p), out_url=u) for p, u in enumerate(exact_urls)]
        mapped(exact_groups, calls, "exact groups", marker=_marker(storage.join(work, "exact-groups"), "out_url"))
    pair_urls: list[str] = []
    if cfg.minhash:
        calls = [dict(part_url=p, work_dir=storage.join(work, "bands"), partitions=partitions, cfg=cfg, exact_urls=exact_urls) for p in parts]
        mapped(signature_rows, calls, "minhash signatures", marker=_marker(storage.join(work, "bands")))
        pair_urls = [storage.join(work, "pairs", f"partition-{p:05d}.parquet") for p in range(partitions)]
        calls = [dict(partition=dedup.partition_dir(storage.join(work, "bands"), p), out_url=u, cfg=cfg) for p, u in enumerate(pair_urls)]
        found = mapped(bucket_pairs, calls, "minhash buckets", marker=_marker(storage.join(work, "pairs"), "out_url"))
        bands, rows = dedup.lsh_params(cfg)
        summary.update(bands=bands, rows=rows, **{k: sum(f[k] for f in found) for k in ("candidate_pairs", "pairs")})
    duplicates_dir = storage.join(work, "duplicates")
    call = dict(pair_urls=pair_urls, exact_urls=exact_urls, out_dir=duplicates_dir)
    summary.update(mapped(clusters, [call], "dedup clusters", marker=_marker(duplicates_dir, "out_dir"))[0])
    calls = [dict(part_url=p, duplicates_dir=duplicates_dir, run_dir=run_dir) for p in parts]
    stats = finish_stage(run_dir, "dedup", mapped(drop_duplicates, calls, "dedup drop", stage="dedup"), **summary)
    for scratch in ("ids", "ids-checked", "exact", "bands"):  # the band rows are the bulk; pairs and duplicate lists stay
        storage.remove_tree(storage.join(work, scratch))
    return stats


@flow(name="curate", log_prints=True)
def curate(config: RunConfig) -> dict:
    config = config.with_run_id()
    cfg, run_dir, mapped = config.curate, config.run_dir, _mapper(config)

    def quality():
        calls = [dict(part_url=p, run_dir=run_dir, cfg=cfg.quality) for p in stage_parts(run_dir, "read")]
        return finish_stage(run_dir, "quality", mapped(filter_part, calls, "quality", stage="quality"))

    def quality_model_stage(source: str):
        qm = cfg.quality_model
        label, _ = quality_model.score_label(qm)  # a wrong path or label fails here, before any task runs
        qm = qm.model_copy(update={"classifier": str(Path(qm.classifier).resolve()), "label": label})
        calls = [dict(part_url=p, run_dir=run_dir, cfg=qm) for p in stage_parts(run_dir, source)]
        return finish_stage(run_dir, quality_model.STAGE, mapped(score_quality, calls, "quality model", stage=quality_model.STAGE),
                            classifier=qm.classifier, label=label, threshold=qm.threshold)

    def tokens(source: str):
        out = storage.join(run_dir, "tokens")
        parts = stage_parts(run_dir, source)
        tokenizer_url = storage.join(out, "tokenizer.json")
        call = dict(part_urls=parts, out_url=tokenizer_url, cfg=cfg.tokenizer)
        tok = mapped(train_tokenizer, [call], "train tokenizer", marker=lambda _: storage.join(out, "_parts", "train-tokenizer.json"),
                     outputs=lambda _: [tokenizer_url])[0]
        calls = [dict(part_url=p, tokenizer_url=tokenizer_url, out_dir=out, cfg=cfg.tokens) for p in parts]
        shards = [s for part in mapped(tokenize_part, calls, "tokenize", marker=_marker(out),
                                       outputs=lambda result: [storage.join(out, s["file"]) for s in result]) for s in part]
        docs = storage.read_json(storage.join(run_dir, source, "_stats.json"))["docs_kept"]
        manifest = tokenize.write_manifest(out, tokenizer_url, shards, cfg.tokens, docs)
        stats = {"stage": "tokens", "tokenizer": tok, **manifest["totals"], "source_docs": docs}
        storage.write_json(storage.join(out, "_stats.json"), stats)
        storage.mark_done(out)
        return stats

    storage.makedirs(run_dir)
    stats = {"read": stage(run_dir, "read", lambda: read_stage(config), read_settings(config)),
             "quality": stage(run_dir, "quality", quality, {"quality": cfg.quality.model_dump()})}
    last = "quality"
    if cfg.dedup.exact or cfg.dedup.minhash:
        stats["dedup"] = stage(run_dir, "dedup", lambda: dedup_stage(config, last), {"source": last, "dedup": cfg.dedup.model_dump()})
        last = "dedup"
    if cfg.quality_model.classifier:
        stats[quality_model.STAGE] = stage(run_dir, quality_model.STAGE, lambda: quality_model_stage(last),
                                           {"source": last, "quality_model": cfg.quality_model.model_dump()})
        last = quality_model.STAGE
    stats["tokens"] = stage(run_dir, "tokens", lambda: tokens(last),
                            {"source": last, "tokenizer": cfg.tokenizer.model_dump(), "tokens": cfg.tokens.model_dump()})
    rows = funnel.load_funnel(run_dir)
    funnel.write_funnel(run_dir, rows)
    create_table_artifact(key="data-funnel", table=rows, description=f"Data funnel of run {config.run_id}: "
                          "docs, bytes and chars per stage and rejection reason")
    return stats


@flow(name="dedup", log_prints=True)
def dedup_flow(config: RunConfig) -> dict:
    """read -> dedup only (`tokenmill dedup`): kept docs in <run>/dedup, duplicates in <run>/rejected/dedup."""
    config = config.with_run_id()
    storage.makedirs(config.run_dir)
    stats = {"read": stage(config.run_dir, "read", lambda: read_stage(config), read_settings(config))}
    stats["dedup"] = stage(config.run_dir, "dedup", lambda: dedup_stage(config, "read"),
                           {"source": "read", "dedup": config.curate.dedup.model_dump()})
    return stats


@flow(name="curate-on-ray", log_prints=True)
def curate_on_ray(config: RunConfig) -> dict:
    """curate with its tasks on Ray (local, or config.ray.address): the CLI's and the deployment's entry."""
    return curate.with_options(task_runner=ray_task_runner(config.ray))(config.with_run_id())


@flow(name="dedup-on-ray", log_prints=True)
def dedup_on_ray(config: RunConfig) -> dict:
    """The dedup flow with its tasks on Ray: what `tokenmill dedup` runs."""
    return dedup_flow.with_options(task_runner=ray_task_runner(config.ray))(config.with_run_id())
