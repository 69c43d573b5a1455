"""The run report and summary, built from the stats files every stage leaves in the run directory."""
from __future__ import annotations

from pipeline import io

DOC_STAGES = ("read", "quality", "dedup", "quality_model")


def load_stats(run_dir: str) -> dict[str, dict]:
    stats = {}
    for name in (*DOC_STAGES, "tokens", "train", "eval"):
        url = io.join(run_dir, name, "_stats.json")
        if io.exists(url):
            stats[name] = io.read_json(url)
    return stats


def summary_rows(stats: dict[str, dict]) -> list[tuple[str, str]]:
    """The headline numbers of a run, as (label, value) rows."""
    rows: list[tuple[str, str]] = []
    doc_stages = [s for s in DOC_STAGES if s in stats]
    if doc_stages:
        rows.append(("docs read", f"{stats[doc_stages[0]]['docs_in']:,}"))
        for name in doc_stages:
            s = stats[name]
            for reason, n in s["rejected"].items():
                rows.append((f"  rejected: {reason}", f"{n:,}"))
        if "dedup" in stats:
            rows.append(("duplicates removed (exact + near)", f"{stats['dedup']['docs_rejected']:,}"))
        rows.append(("docs kept", f"{stats[doc_stages[-1]]['docs_kept']:,}"))
    if "tokens" in stats:
        t = stats["tokens"]
        rows.append(("tokens written (train / val)", f"{t['train']['tokens']:,} / {t['val']['tokens']:,}"))
    if "train" in stats:
        t = stats["train"]
        rows.append((f"training (ZeRO-{t['zero_stage']}, {t['world_size']} procs)", f"{t['steps']} steps, {t['tokens']:,} tokens, {t['seconds']:.0f} s"))
        rows.append(("final train loss", f"{t['final_loss']:.3f}"))
    if "eval" in stats:
        e = stats["eval"]
        rows.append(("val perplexity (untrained)", f"{e['val_perplexity']:.1f} ({e['untrained_val_perplexity']:.1f})"))
        rows.append(("held-out bits/byte (untrained)", f"{e['heldout_bits_per_byte']:.3f} ({e['untrained_heldout_bits_per_byte']:.3f})"))
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ⏎ ").strip()


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_report(run_dir: str) -> str:
    stats = load_stats(run_dir)
    out = [f"# tokenmill run `{run_dir.rstrip('/').rsplit('/', 1)[-1]}`", "", f"Run directory: `{run_dir}`", "",
           "## Summary", "", markdown_table(["", "value"], [list(r) for r in summary_rows(stats)]), ""]
    funnel = [[name, f"{s['docs_in']:,}", f"{s['docs_kept']:,}", f"{s['docs_rejected']:,}", f"{s['bytes_kept']:,}"]
              for name, s in stats.items() if name in DOC_STAGES]
    if funnel:
        out += ["## Data funnel", "", markdown_table(["stage", "docs in", "kept", "rejected", "bytes kept"], funnel), ""]
        reasons = [[name, reason, f"{n:,}"] for name, s in stats.items() if name in DOC_STAGES for reason, n in s["rejected"].items()]
        if reasons:
            out += ["### Rejected, by reason", "", markdown_table(["stage", "reason", "docs"], reasons), ""]
    if "dedup" in stats:
        m = stats["dedup"]
        lsh = (f"MinHash LSH: {m['bands']} bands x {m['rows']} rows over {m['partitions']} partitions, "
               f"{m['candidate_pairs']:,} candidate pairs, {m['pairs']:,} verified. ") if "bands" in m else ""
        out += ["## Duplicates", "",
                f"{lsh}{m.get('exact_duplicates', 0):,} exact and {m.get('near_duplicates', 0):,} near duplicates "
                f"removed from {m.get('clusters', 0):,} multi-doc clusters.", "",
                markdown_table(["cluster size", "clusters"], [[k, v] for k, v in m.get("cluster_sizes", {}).items()]), ""]
    if "tokens" in stats:
        t = stats["tokens"]
        out += ["## Tokens", "", f"Byte-level BPE, vocab {t['tokenizer']['vocab_size']:,}.", "",
                markdown_table(["split", "shards", "sequences", "tokens"], [[s, t[s]["shards"], f"{t[s]['rows']:,}", f"{t[s]['tokens']:,}"] for s in ("train", "val")]), ""]
    if "train" in stats:
        t = stats["train"]
        out += ["## Training", "", markdown_table(["steps", "tokens", "params", "final loss", "seconds"],
                                          [[t["steps"], f"{t['tokens']:,}", f"{t['params']:,}", f"{t['final_loss']:.4f}", t["seconds"]]]), ""]
    if "eval" in stats:
        e = stats["eval"]
        rows = [[f"{split} ({model})", f"{e[f'{p}{split}_loss']:.4f}", f"{e[f'{p}{split}_perplexity']:.2f}",
                 f"{e[f'{p}{split}_bits_per_byte']:.3f}"]
                for split in ("val", "heldout") for model, p in (("trained", ""), ("untrained", "untrained_"))]
        out += ["## Evaluation", "", markdown_table(["set (model)", "loss", "perplexity", "bits/byte"], rows), "",
                f"val: {e['val_tokens']:,} tokens of this run's validation shards; heldout: {e['heldout_tokens']:,} "
                "tokens of WikiText-2 text shipped with tokenmill. Bits per byte do not depend on the tokenizer.", "",
                "### Samples", "",
                markdown_table(["prompt", "greedy", "sampled"], [[_cell(s["prompt"]), _cell(s["greedy"]), _cell(s["sampled"])]
                                                          for s in e["samples"]]), ""]
    return "\n".join(out)


COMPARED = (("train", "steps"), ("train", "final_loss"), ("eval", "val_perplexity"), ("eval", "val_bits_per_byte"),
            ("eval", "heldout_perplexity"), ("eval", "heldout_bits_per_byte"))


def compare_rows(run_dirs: list[str]) -> tuple[list[str], list[list[str]]]:
    """A header and one row per run of the metrics runs can be compared on."""
    header = ["run", *(key for _, key in COMPARED)]
    rows = []
    for run_dir in run_dirs:
        stats = load_stats(run_dir)
        cells = [run_dir.rstrip("/").rsplit("/", 1)[-1]]
        for stage, key in COMPARED:
            value = stats.get(stage, {}).get(key)
            cells.append("-" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:.4g}")
        rows.append(cells)
    return header, rows
