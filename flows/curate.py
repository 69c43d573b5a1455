"""The curate flow: read -> quality -> dedup (exact, then MinHash LSH) -> decontam -> [quality model] -> tokenizer ->
token shards.

Thin wiring only: every step is a pipeline function described as a stages.Step, mapped over its
units of work as Prefect tasks on Ray (runtime.run_step).
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from tokenmill.pipeline import decontam, dedup, filters, funnel, readers, storage, tokenize
from tokenmill.pipeline.contracts import TOKENIZER
from tokenmill.pipeline.stages import Step, finish_stage, marker_url, part_step, shard_of, stage_parts
from tokenmill.training import eval_sets, quality_model

from .cluster import ray_runtime
from .config import RunConfig
from .runtime import ray_task_runner, run_step, stage


def _runner(config: RunConfig):
    def run(step: Step) -> list:
        return run_step(step, config.ray.max_in_flight, config.prefect.task_retries, config.prefect.retry_delay_s,
                        config.ray.max_tasks)
    return run


def _shard_of_part(call: dict) -> int:
    return shard_of(call["part_url"])


def read_settings(config: RunConfig) -> dict:
    """What the read stage's output depends on: the input files and the reader settings (not strictness)."""
    return {"inputs": readers.expand_inputs(config.curate.inputs), "reader": config.curate.reader.model_dump(exclude={"strict"})}


def read_stage(config: RunConfig) -> dict:
    cfg, run_dir = config.curate, config.run_dir
    # Planning reads no data here: files that must be read to be split (any that could hold more than
    # shard_bytes, so parts stay bounded however few the files) are measured by a step of tasks.
    shards = readers.plan_shards(readers.list_inputs(cfg.inputs), cfg.reader.shard_bytes, storage.join(run_dir, "read", "_index"),
                                 run=_runner(config))
    calls = [dict(**s, shard=i, run_dir=run_dir, cfg=cfg.reader) for i, s in enumerate(shards)]
    stats = finish_stage(run_dir, "read", _runner(config)(part_step("read", readers.read_file, calls, run_dir, "read",
                                                                     lambda call: call["shard"])))
    for e in stats["errors"]:
        get_run_logger().warning("input %s: %s at offset %s: %s", e["path"], e["reason"], e["offset"], e["error"])
    return stats


def quality_stage(config: RunConfig) -> dict:
    run_dir = config.run_dir
    calls = [dict(part_url=p, run_dir=run_dir, cfg=config.curate.quality) for p in stage_parts(run_dir, "read")]
    return finish_stage(run_dir, "quality", _runner(config)(part_step("quality", filters.filter_part, calls, run_dir, "quality",
                                                                      _shard_of_part)))


def dedup_stage(config: RunConfig, source: str) -> dict:
    """Exact then MinHash LSH dedup of `source`'s parts into the `dedup` stage (the steps: dedup.plan)."""
    cfg, run_dir, run = config.curate.dedup, config.run_dir, _runner(config)
    docs = storage.read_json(storage.join(run_dir, source, "_stats.json"))["docs_kept"]
    partitions = dedup.num_partitions(cfg, docs)
    results = {step.name: run(step) for step in dedup.plan(stage_parts(run_dir, source), run_dir, cfg, partitions)}
    stats = finish_stage(run_dir, "dedup", results["dedup-drop"], **dedup.summary(cfg, partitions, results))
    dedup.remove_scratch(run_dir)
    return stats


def decontam_settings(config: RunConfig, source: str) -> dict:
    """What the decontam stage depends on: its section and the evaluation sets (tasks, include directories)."""
    return {"source": source, "decontam": config.curate.decontam.model_dump(),
            "tasks": eval_sets.expand(config.evaluate.lm_eval_tasks), "include": config.evaluate.lm_eval_include}


def decontam_stage(config: RunConfig, source: str) -> dict:
    """The evaluation sets' text (one task), their n-gram index (one task), then `source`'s parts checked
    against the index file, which each task loads: the corpus never meets the evaluation data in one place."""
    cfg, run_dir, run = config.curate.decontam, config.run_dir, _runner(config)
    out = storage.join(run_dir, decontam.STAGE)
    texts_url, index_url = storage.join(out, "_eval_texts.jsonl.gz"), storage.join(out, "_index.npz")
    settings = decontam_settings(config, source)
    texts = run(Step("decontam-eval-texts", eval_sets.write_eval_texts,
                     [{"out_url": texts_url, "tasks": settings["tasks"], "include": settings["include"], "heldout": cfg.heldout}],
                     marker=lambda call: marker_url(out, "eval_texts"), outputs=lambda call, result: [texts_url]))[0]
    for task, why in texts["missing"].items():
        get_run_logger().warning("decontam: %s not checked, its data is not on this machine (%s)", task, why)
    index = run(Step("decontam-index", decontam.build_index, [{"texts_url": texts_url, "index_url": index_url, "cfg": cfg}],
                     marker=lambda call: marker_url(out, "index"), outputs=lambda call, result: [index_url]))[0]
    calls = [{"part_url": p, "run_dir": run_dir, "index_url": index_url, "cfg": cfg} for p in stage_parts(run_dir, source)]
    step = part_step("decontam", decontam.decontam_part, calls, run_dir, decontam.STAGE, _shard_of_part)
    return finish_stage(run_dir, decontam.STAGE, run(step), eval_texts=texts, index=index)


def quality_model_stage(config: RunConfig, source: str) -> dict:
    run_dir, qm = config.run_dir, config.curate.quality_model
    label, _ = quality_model.score_label(qm)  # a wrong path or label fails here, before any task runs
    qm = qm.model_copy(update={"classifier": str(Path(qm.classifier).resolve()), "label": label})
    calls = [dict(part_url=p, run_dir=run_dir, cfg=qm) for p in stage_parts(run_dir, source)]
    step = part_step("quality-model", quality_model.score_part, calls, run_dir, quality_model.STAGE, _shard_of_part)
    return finish_stage(run_dir, quality_model.STAGE, _runner(config)(step), classifier=qm.classifier, label=label,
                        threshold=qm.threshold)


def tokens_stage(config: RunConfig, source: str) -> dict:
    cfg, run_dir, run = config.curate, config.run_dir, _runner(config)
    out = storage.join(run_dir, "tokens")
    source_stats = storage.read_json(storage.join(run_dir, source, "_stats.json"))
    docs = source_stats["docs_kept"]
    *make_tokenizer, shard = tokenize.steps(stage_parts(run_dir, source), out, cfg.tokenizer, cfg.tokens, source_stats["bytes_kept"])
    tok = [run(step) for step in make_tokenizer][-1][0]
    shards = [s for part in run(shard) for s in part]
    manifest = tokenize.write_manifest(out, storage.join(out, TOKENIZER), shards, cfg.tokens, docs, tok["source"])
    stats = {"stage": "tokens", "tokenizer": tok, **manifest["totals"], "source_docs": docs}
    storage.write_json(storage.join(out, "_stats.json"), stats)
    storage.mark_done(out)
    return stats


@flow(name="curate", log_prints=True)
def curate(config: RunConfig) -> dict:
    config = config.with_run_id()
    cfg, run_dir = config.curate, config.run_dir
    storage.makedirs(run_dir)
    stats = {"read": stage(run_dir, "read", lambda: read_stage(config), read_settings(config)),
             "quality": stage(run_dir, "quality", lambda: quality_stage(config), {"source": "read", "quality": cfg.quality.model_dump()})}
    last = "quality"
    if cfg.dedup.exact or cfg.dedup.minhash:
        stats["dedup"] = stage(run_dir, "dedup", lambda: dedup_stage(config, last), {"source": last, "dedup": cfg.dedup.model_dump()})
        last = "dedup"
    if cfg.decontam.enabled:
        stats[decontam.STAGE] = stage(run_dir, decontam.STAGE, lambda: decontam_stage(config, last),
                                      decontam_settings(config, last))
        last = decontam.STAGE
    if cfg.quality_model.classifier:
        stats[quality_model.STAGE] = stage(run_dir, quality_model.STAGE, lambda: quality_model_stage(config, last),
                                           {"source": last, "quality_model": cfg.quality_model.model_dump()})
        last = quality_model.STAGE
    stats["tokens"] = stage(run_dir, "tokens", lambda: tokens_stage(config, last),
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
    """curate with its tasks on Ray (local, or config.ray.address): the CLI's and the deployment's entry.
    The run's Ray (cluster.ray_runtime) prints the dashboard's address with how to sign in to it."""
    config = config.with_run_id()
    with ray_runtime(config.ray, config.run_id, "curate", keep=config.prefect.keep_server):
        return curate.with_options(task_runner=ray_task_runner(config.ray))(config)


@flow(name="dedup-on-ray", log_prints=True)
def dedup_on_ray(config: RunConfig) -> dict:
    """The dedup flow with its tasks on Ray: what `tokenmill dedup` runs."""
    config = config.with_run_id()
    with ray_runtime(config.ray, config.run_id, "dedup", keep=config.prefect.keep_server):
        return dedup_flow.with_options(task_runner=ray_task_runner(config.ray))(config)
