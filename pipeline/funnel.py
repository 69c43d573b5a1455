"""The data funnel of a run: per stage and per reason, docs / bytes / chars in and out, from the
stages' _stats.json; and example rejected documents per reason, from rejected/<stage>/."""
from __future__ import annotations

import pyarrow.compute as pc

from . import storage

COLUMNS = ["stage", "reason", "docs", "bytes", "chars", "% of stage docs"]


def doc_stages(run_dir: str) -> list[str]:
    """Stages with document books, in pipeline order: read first, then each time the stage whose
    _config.json names the last one as its `source` (by name where none or several do)."""
    sources = {}
    for url in storage.list_files(run_dir, "*/_stats.json"):
        if "docs_in" in storage.read_json(url):
            name = url.rsplit("/", 2)[-2]
            sources[name] = _source(run_dir, name)
    ordered: list[str] = []
    remaining = sorted(sources, key=lambda n: (n != "read", n))
    while remaining:
        after_last = [n for n in remaining if ordered and sources[n] == ordered[-1]]
        ordered.append((after_last or remaining)[0])
        remaining.remove(ordered[-1])
    return ordered


def _source(run_dir: str, stage: str) -> str | None:
    """The stage whose kept documents `stage` took in, as its _config.json records it (read has none)."""
    url = storage.join(run_dir, stage, "_config.json")
    return storage.read_json(url).get("source") if storage.exists(url) else None


def funnel_rows(stats: dict[str, dict]) -> list[dict]:
    """One row for what each stage took in, one per rejection reason, one for what it kept."""
    rows: list[dict] = []
    for name, s in stats.items():
        n_in = s["docs_in"] or 1
        rows.append({"stage": name, "reason": "in", "docs": s["docs_in"], "bytes": s["bytes_in"],
                     "chars": s.get("chars_in"), "% of stage docs": 100.0})
        for reason, n in sorted(s["rejected"].items(), key=lambda kv: -kv[1]):
            rows.append({"stage": name, "reason": reason, "docs": n, "bytes": s.get("rejected_bytes", {}).get(reason),
                         "chars": s.get("rejected_chars", {}).get(reason), "% of stage docs": round(100 * n / n_in, 1)})
        rows.append({"stage": name, "reason": "kept", "docs": s["docs_kept"], "bytes": s["bytes_kept"],
                     "chars": s.get("chars_kept"), "% of stage docs": round(100 * s["docs_kept"] / n_in, 1)})
    return rows


def load_funnel(run_dir: str) -> list[dict]:
    return funnel_rows({name: storage.read_json(storage.join(run_dir, name, "_stats.json")) for name in doc_stages(run_dir)})


def fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:,.1f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)


def funnel_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---|" + "---:|" * (len(COLUMNS) - 2)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_funnel(run_dir: str, rows: list[dict]) -> str:
    """<run>/funnel.md; left as it is when unchanged, so a rerun that skips every stage writes nothing."""
    url = storage.join(run_dir, "funnel.md")
    storage.write_if_changed(url, ("# Data funnel\n\n" + funnel_markdown(rows)).encode())
    return url


def rejected_examples(run_dir: str, reason: str, limit: int = 3) -> list[dict]:
    """Up to `limit` rejected documents whose reason is `reason` or starts with `reason.`,
    looking at every stage's rejected parts in order."""
    found: list[dict] = []
    for stage in doc_stages(run_dir):
        for url in storage.list_files(storage.join(run_dir, "rejected", stage)):
            table = storage.read_parquet(url)
            reasons = table["reason"]
            mask = pc.or_(pc.equal(reasons, reason), pc.starts_with(reasons, reason + "."))
            for row in table.filter(pc.fill_null(mask, False)).slice(0, limit - len(found)).to_pylist():
                found.append({"stage": stage, **row})
            if len(found) >= limit:
                return found
    return found


def reasons_of(run_dir: str) -> dict[str, int]:
    """Every rejection reason of the run with its count, to suggest when a reason is not found."""
    out: dict[str, int] = {}
    for stage in doc_stages(run_dir):
        out.update(storage.read_json(storage.join(run_dir, stage, "_stats.json"))["rejected"])
    return out

