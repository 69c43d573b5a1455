"""Stage bookkeeping: per-part outputs, per-part stats, and the stage's _stats.json.

Layout (ARCHITECTURE.md):
    <run>/<stage>/part-NNNNN.parquet            kept documents
    <run>/rejected/<stage>/part-NNNNN.parquet   dropped documents with `reason` (and `duplicate_of`)
    <run>/<stage>/_parts/part-NNNNN.json        stats of one part, written last: a part with it is done
    <run>/<stage>/_stats.json, _SUCCESS         totals, written when every part is done
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from . import io
from .documents import DOC_SCHEMA, rejected_table


MAX_ERRORS = 1000  # input errors (path, offset, error) listed in a stage's _stats.json


def part_name(shard: int) -> str:
    return f"part-{shard:05d}"


def part_stats_url(run_dir: str, stage: str, shard: int) -> str:
    return io.join(run_dir, stage, "_parts", part_name(shard) + ".json")


def finished_part(run_dir: str, stage: str, shard: int) -> dict | None:
    """Stats of a part finished by an earlier (possibly interrupted) run, else None."""
    url = part_stats_url(run_dir, stage, shard)
    return io.read_json(url) if io.exists(url) else None


def _nbytes(texts: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.sum(pc.binary_length(texts)).as_py() or 0)


def _nchars(texts: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.sum(pc.utf8_length(texts)).as_py() or 0)


def write_part(
    run_dir: str,
    stage: str,
    shard: int,
    docs: pa.Table,
    reasons: list[str | None],
    duplicate_of: list[str | None] | None = None,
    started: float | None = None,
    counters: dict[str, int] | None = None,
) -> dict:
    """Split `docs` into kept (reason None) and rejected rows, write both, return the part's stats.

    `counters` are the steps' own counts (lines removed, redactions, languages), summed per stage."""
    keep = pa.array([r is None for r in reasons], pa.bool_())
    kept = docs.filter(keep).select(DOC_SCHEMA.names)
    drop_idx = [i for i, r in enumerate(reasons) if r is not None]
    rejected = rejected_table(
        docs.take(pa.array(drop_idx, pa.int64())),
        [reasons[i] for i in drop_idx],
        [duplicate_of[i] for i in drop_idx] if duplicate_of else None,
    )
    name = part_name(shard) + ".parquet"
    io.write_parquet(io.join(run_dir, stage, name), kept)
    if rejected.num_rows:
        io.write_parquet(io.join(run_dir, "rejected", stage, name), rejected)
    stats = {
        "part": shard,
        "docs_in": docs.num_rows,
        "docs_kept": kept.num_rows,
        "docs_rejected": rejected.num_rows,
        "bytes_in": _nbytes(docs["text"]),
        "bytes_kept": _nbytes(kept["text"]),
        "chars_in": _nchars(docs["text"]),
        "chars_kept": _nchars(kept["text"]),
        "rejected": dict(sorted(Counter(r for r in reasons if r is not None).items())),
        "rejected_bytes": _by_reason(rejected, pc.binary_length),
        "rejected_chars": _by_reason(rejected, pc.utf8_length),
        "counters": dict(sorted((counters or {}).items())),
        "seconds": round(time.perf_counter() - started, 3) if started else None,
    }
    io.write_json(part_stats_url(run_dir, stage, shard), stats)
    return stats


def _by_reason(rejected: pa.Table, length) -> dict[str, int]:
    if not rejected.num_rows:
        return {}
    sizes = pa.table({"reason": rejected["reason"], "n": length(rejected["text"])})
    grouped = sizes.group_by("reason").aggregate([("n", "sum")]).to_pylist()
    return dict(sorted((g["reason"], int(g["n_sum"] or 0)) for g in grouped))


def finish_stage(run_dir: str, stage: str, parts: Iterable[dict], **extra) -> dict:
    """Sum part stats into <stage>/_stats.json, check the stage's books balance, mark it done."""
    parts = sorted(parts, key=lambda p: p["part"])
    rejected, rejected_bytes, rejected_chars, counters = Counter(), Counter(), Counter(), Counter()
    for p in parts:
        rejected.update(p["rejected"])
        rejected_bytes.update(p.get("rejected_bytes", {}))
        rejected_chars.update(p.get("rejected_chars", {}))
        counters.update(p.get("counters", {}))
    totals = {
        "stage": stage,
        "parts": len(parts),
        "docs_in": sum(p["docs_in"] for p in parts),
        "docs_kept": sum(p["docs_kept"] for p in parts),
        "docs_rejected": sum(p["docs_rejected"] for p in parts),
        "bytes_in": sum(p["bytes_in"] for p in parts),
        "bytes_kept": sum(p["bytes_kept"] for p in parts),
        "chars_in": sum(p.get("chars_in", 0) for p in parts),
        "chars_kept": sum(p.get("chars_kept", 0) for p in parts),
        "rejected": dict(sorted(rejected.items())),
        "rejected_bytes": dict(sorted(rejected_bytes.items())),
        "rejected_chars": dict(sorted(rejected_chars.items())),
        "counters": dict(sorted(counters.items())),
        "errors": [e for p in parts for e in p.get("errors", [])][:MAX_ERRORS],
        "task_seconds": round(sum(p["seconds"] or 0 for p in parts), 3),
        **extra,
    }
    if totals["docs_in"] != totals["docs_kept"] + sum(rejected.values()):
        raise RuntimeError(f"stage {stage}: {totals['docs_in']} docs in != kept + rejected ({totals})")
    io.write_json(io.join(run_dir, stage, "_stats.json"), totals)
    io.mark_done(io.join(run_dir, stage))
    return totals


def stage_parts(run_dir: str, stage: str) -> list[str]:
    return io.list_files(io.join(run_dir, stage))


def shard_of(part_url: str) -> int:
    return int(part_url.rsplit("part-", 1)[1].split(".")[0])
