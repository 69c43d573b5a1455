"""Stage bookkeeping: steps mapped over units of work, per-part outputs and stats, the stage's _stats.json.

Layout (docs/architecture.md):
    <run>/<stage>/part-NNNNN.parquet            kept documents
    <run>/rejected/<stage>/part-NNNNN.parquet   dropped documents with `reason` (and `duplicate_of`)
    <run>/<stage>/_parts/part-NNNNN.json        stats of one part: its commit marker
    <run>/<stage>/_config.json                  the settings the stage's parts were made with
    <run>/<stage>/_stats.json, _SUCCESS         totals, written when every part is done

One resume rule: a Step maps a function over calls (units of work: a part, a partition, or one
call for a whole stage). The task running a call writes the call's outputs (atomically), then its
result as JSON to the call's marker, `<output dir>/_parts/<unit>.json` (Step.unit). A rerun with
the same run id skips a finished stage (_SUCCESS) and, inside an unfinished one, every call whose
marker is there and whose outputs still are (Step.done), reusing the result the marker holds. A
rerun whose settings for a stage differ from the ones in its _config.json is refused rather than
mixing parts made with two configurations.
"""
from __future__ import annotations

import functools
import inspect
import itertools
import posixpath
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from . import storage
from .contracts import doc_schema, rejected_schema, rejected_table

MAX_ERRORS = 1000  # input errors (path, offset, error) listed in a stage's _stats.json


def part_name(shard: int) -> str:
    return f"part-{shard:05d}"


def unit_name(url: str) -> str:
    """The unit of work a file or directory stands for: part-00003 of .../part-00003.parquet."""
    return posixpath.basename(url.rstrip("/")).split(".")[0]


def marker_url(directory: str, unit: str) -> str:
    """Where a unit of work that writes into `directory` commits: <directory>/_parts/<unit>.json."""
    return storage.join(directory, "_parts", unit + ".json")


def part_stats_url(run_dir: str, stage: str, shard: int) -> str:
    return marker_url(storage.join(run_dir, stage), part_name(shard))


def part_files(run_dir: str, stage: str, shard: int, stats: dict) -> list[str]:
    """The parquet files a part of a document stage wrote (the rejected one only when it rejected some)."""
    name = part_name(shard) + ".parquet"
    return [storage.join(run_dir, stage, name)] + ([storage.join(run_dir, "rejected", stage, name)] if stats["docs_rejected"] else [])


def finished(marker: str, outputs: Callable[[Any], Iterable[str]] = lambda result: ()) -> Any:
    """What a unit of work finished by an earlier (possibly interrupted) run returned, else None.

    A marker whose `outputs(result)` have gone missing since does not count."""
    if not storage.exists(marker):
        return None
    result = storage.read_json(marker)
    return result if all(storage.exists(u) for u in outputs(result)) else None


@dataclass(frozen=True)
class Step:
    """`fn` mapped over `calls` (keyword arguments, one unit of work each). `marker(call)` is where a
    call commits its result; `outputs(call, result)` are the files it must have left for that to count."""

    name: str
    fn: Callable[..., Any]
    calls: list[dict]
    marker: Callable[[dict], str]
    outputs: Callable[[dict, Any], Iterable[str]] = lambda call, result: ()

    def done(self, call: dict) -> Any:
        """The result of `call` from an earlier run, or None when it has to run."""
        return finished(self.marker(call), lambda result: self.outputs(call, result))

    def unit(self) -> Callable[..., Any]:
        """What a task runs for one call: `fn`, then the call's commit marker, written last (after
        every output) and by the task itself, wherever it runs. Signature and name are fn's."""
        fn, marker, signature = self.fn, self.marker, inspect.signature(self.fn)

        @functools.wraps(fn)
        def unit(*args, **kwargs):
            result = fn(*args, **kwargs)
            storage.write_json(marker(signature.bind(*args, **kwargs).arguments), result)
            return result
        return unit

    def bundle(self) -> Callable[[list[dict]], list]:
        """What a task runs for a bundle of calls (runtime.run_step): each call in order, skipping the
        ones already done, so a retried bundle redoes only the calls that had not committed; their results."""
        unit, done = self.unit(), self.done

        def bundle(calls: list[dict]) -> list:
            return [r if (r := done(call)) is not None else unit(**call) for call in calls]
        bundle.__name__ = bundle.__qualname__ = self.name
        return bundle

    def run_serially(self) -> list:
        """Every call in this process, in order, under the same resume rule (tests, benchmarks, small data)."""
        return self.bundle()(self.calls)


def bundles(items: list, n: int) -> list[list]:
    """`items` cut into `n` (at most len(items)) consecutive runs whose lengths differ by one at most."""
    n = max(1, min(n, len(items)))
    size, extra = divmod(len(items), n)
    cuts = [i * size + min(i, extra) for i in range(n + 1)]
    return [items[a:b] for a, b in itertools.pairwise(cuts) if b > a]


def part_step(name: str, fn: Callable[..., Any], calls: list[dict], run_dir: str, stage: str,
              shard: Callable[[dict], int]) -> Step:
    """A step writing one part of a document stage per call (PartWriter): the part's stats are its marker."""
    return Step(name, fn, calls, marker=lambda call: part_stats_url(run_dir, stage, shard(call)),
                outputs=lambda call, stats: part_files(run_dir, stage, shard(call), stats))


class ConfigChanged(ValueError):
    """A rerun of a run id whose settings for a stage are not the ones its finished parts were made with."""


def _flat(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in _flat(value, f"{prefix}{key}.").items()} or {prefix[:-1]: {}}
    return {prefix[:-1]: obj}


def check_stage_config(run_dir: str, stage: str, settings: dict) -> None:
    """Record the settings a stage runs with in <stage>/_config.json, or, when an earlier run of this
    run id recorded them, refuse to go on if they differ: its finished parts (and later stages built on
    them) would otherwise be silently mixed with parts made under the new settings."""
    url = storage.join(run_dir, stage, "_config.json")
    settings = json_round_trip(settings)
    if not storage.exists(url):
        storage.write_json(url, settings)
        return
    before = storage.read_json(url)
    if before == settings:
        return
    old, new = _flat(before), _flat(settings)
    diffs = [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in sorted(old.keys() | new.keys())
             if old.get(k, "<unset>") != new.get(k, "<unset>")]
    raise ConfigChanged(
        f"run {run_dir}: stage {stage!r} was started with other settings ({'; '.join(diffs[:10])}). "
        f"Use a new run id, or delete {storage.join(run_dir, stage)} (and the stages after it) to redo it.")


def json_round_trip(obj):
    """`obj` as it reads back from JSON (tuples become lists, int keys strings), so comparisons are fair."""
    import json

    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _nbytes(texts: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.sum(pc.binary_length(texts)).as_py() or 0)


def _nchars(texts: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.sum(pc.utf8_length(texts)).as_py() or 0)


class PartWriter:
    """One part of a stage, written a batch of documents at a time so memory is bounded by the batch:
    kept rows to <stage>/part-N.parquet, rejected ones (with `reason`, `duplicate_of`) to
    rejected/<stage>/part-N.parquet, one row group per batch. `close()` puts both files in place
    and returns the part's stats (the step that runs it commits them as the part's marker)."""

    def __init__(self, run_dir: str, stage: str, shard: int, started: float | None = None, extra_fields: list[pa.Field] = ()):
        self.run_dir, self.stage, self.shard, self.extra_fields = run_dir, stage, shard, list(extra_fields)
        self.started = time.perf_counter() if started is None else started
        name = part_name(shard) + ".parquet"
        self.kept = storage.ParquetAppender(storage.join(run_dir, stage, name), doc_schema(extra_fields))
        self.rejected = storage.ParquetAppender(storage.join(run_dir, "rejected", stage, name), rejected_schema(extra_fields))
        self.has_rejected = False
        self.totals: Counter = Counter()
        self.reasons, self.rejected_bytes, self.rejected_chars = Counter(), Counter(), Counter()

    def write(self, docs: pa.Table, reasons: list[str | None], duplicate_of: list[str | None] | None = None) -> None:
        keep = pa.array([r is None for r in reasons], pa.bool_())
        kept = docs.filter(keep).select(self.kept.schema.names)
        drop_idx = [i for i, r in enumerate(reasons) if r is not None]
        rejected = rejected_table(
            docs.take(pa.array(drop_idx, pa.int64())),
            [reasons[i] for i in drop_idx],
            [duplicate_of[i] for i in drop_idx] if duplicate_of else None,
            self.extra_fields,
        )
        try:
            if kept.num_rows:
                self.kept.write(kept)
            if rejected.num_rows:
                self.rejected.write(rejected)
                self.has_rejected = True
        except BaseException:
            self.abort()
            raise
        self.totals.update(docs_in=docs.num_rows, docs_kept=kept.num_rows, docs_rejected=rejected.num_rows,
                           bytes_in=_nbytes(docs["text"]), bytes_kept=_nbytes(kept["text"]),
                           chars_in=_nchars(docs["text"]), chars_kept=_nchars(kept["text"]))
        self.reasons.update(r for r in reasons if r is not None)
        self.rejected_bytes.update(_by_reason(rejected, pc.binary_length))
        self.rejected_chars.update(_by_reason(rejected, pc.utf8_length))

    def close(self, counters: dict[str, int] | None = None, extra: dict | None = None) -> dict:
        """Commit the part; `counters` are the steps' own counts, `extra` is kept in the stats as it is."""
        try:
            self.kept.commit()
            if self.has_rejected:
                self.rejected.commit()
        except BaseException:
            self.abort()
            raise
        stats = {
            "part": self.shard,
            **{k: self.totals[k] for k in ("docs_in", "docs_kept", "docs_rejected", "bytes_in", "bytes_kept",
                                           "chars_in", "chars_kept")},
            "rejected": dict(sorted(self.reasons.items())),
            "rejected_bytes": dict(sorted(self.rejected_bytes.items())),
            "rejected_chars": dict(sorted(self.rejected_chars.items())),
            "counters": dict(sorted((counters or {}).items())),
            "seconds": round(time.perf_counter() - self.started, 3),
            **(extra or {}),
        }
        return stats

    def abort(self) -> None:
        self.kept.abort()
        self.rejected.abort()


def write_part(
    run_dir: str,
    stage: str,
    shard: int,
    docs: pa.Table,
    reasons: list[str | None],
    duplicate_of: list[str | None] | None = None,
    started: float | None = None,
    counters: dict[str, int] | None = None,
    extra: dict | None = None,
    extra_fields: list[pa.Field] = (),
) -> dict:
    """A part written from one table (PartWriter with one batch); returns the part's stats.

    `counters` are the steps' own counts (lines removed, redactions, languages), summed per stage;
    `extra` is kept in the part's stats as it is (e.g. the read stage's input errors);
    `extra_fields` are columns of `docs` kept after the document contract's (e.g. `quality_score`)."""
    writer = PartWriter(run_dir, stage, shard, started, extra_fields)
    writer.write(docs, reasons, duplicate_of)
    return writer.close(counters, extra)


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
    storage.write_json(storage.join(run_dir, stage, "_stats.json"), totals)
    storage.mark_done(storage.join(run_dir, stage))
    return totals


def stage_parts(run_dir: str, stage: str) -> list[str]:
    return storage.list_files(storage.join(run_dir, stage))


def shard_of(part_url: str) -> int:
    return int(part_url.rsplit("part-", 1)[1].split(".")[0])
