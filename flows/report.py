"""The run report and summary, built from the files every stage leaves in the run directory.

One list of sections (tables, paragraphs, images, preformatted text) is rendered twice: report.md
(images as PNG files beside it) and report.html (self-contained: inline CSS, PNGs as data URIs, no
external requests). Text taken from data (samples, config values, labels) is escaped in both.
"""
from __future__ import annotations

import base64
import html
import importlib.metadata
import json
import platform
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tokenmill.pipeline import funnel, storage
from tokenmill.training.metrics import loss_curve_png

DOC_STAGES = ("read", "quality", "dedup", "decontam", "quality_model")
PACKAGES = ("tokenmill", "prefect", "ray", "deepspeed", "torch", "pyarrow", "tokenizers", "datasketch", "transformers", "lm-eval")
ASSETS = "report_files"  # PNGs of report.md, beside it


def artifact_key(*parts: str) -> str:
    """The parts, joined by dashes, as a Prefect artifact key: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())


def load_stats(run_dir: str) -> dict[str, dict]:
    stats = {}
    for name in (*DOC_STAGES, "tokens", "train", "eval"):
        url = storage.join(run_dir, name, "_stats.json")
        if storage.exists(url):
            stats[name] = storage.read_json(url)
    return stats


def checkpoint_evals(run_dir: str) -> dict[int, dict]:
    """Evaluations of kept intermediate checkpoints (`tokenmill evaluate --checkpoint STEP`), by step."""
    out = {}
    for url in storage.list_files(storage.join(run_dir, "eval"), "step-*/_stats.json"):
        stats = storage.read_json(url)
        out[int(stats["step"])] = stats
    return dict(sorted(out.items()))


def finetune_metrics(run_dir: str) -> dict[str, dict]:
    """runs/<id>/finetune/<task>/metrics.json of the fine-tune flow, by task."""
    return {url.rsplit("/", 2)[-2]: storage.read_json(url) for url in sorted(storage.list_files(storage.join(run_dir, "finetune"), "*/metrics.json"))}


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
        if "decontam" in stats:
            d = stats["decontam"]
            sets = ", ".join(f"{k} ({v:,})" for k, v in d.get("eval_texts", {}).get("per_set", {}).items())
            rows.append(("docs containing evaluation text, removed", f"{d['docs_rejected']:,} (checked against: {sets})"))
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
        lm = e.get("lm_eval", {})
        for task, metrics in lm.get("trained", {}).items():
            metric = "acc_norm" if "acc_norm" in metrics else "acc"
            if metric in metrics:
                untrained = _with_stderr(lm.get("untrained", {}).get(task, {}), metric, 3)
                rows.append((f"{task} {metric}, lm-eval (untrained)", f"{_with_stderr(metrics, metric, 3)} ({untrained})"))
        if lm.get("skipped"):
            rows.append(("lm-eval", lm["skipped"]))
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ⏎ ").strip()


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---- report content: sections of blocks, rendered to markdown and HTML ----

@dataclass
class Table:
    header: list[str]
    rows: list[list]


@dataclass
class Image:
    name: str  # file name of the PNG beside report.md
    png: bytes
    alt: str


@dataclass
class Pre:
    text: str


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)  # str (a paragraph), Table, Image, Pre, or ("h3", title)


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}g}"


def _bar_chart_png(labels: list[str], values: list[int], title: str, xlabel: str, ylabel: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    bars = ax.bar(labels, values, color="tab:blue")
    ax.bar_label(bars, fontsize=8)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if values and max(values) > 50 * max(min(values), 1):
        ax.set_yscale("log")
    else:
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 0.2 clusters
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> bytes:
    import io as bytes_io

    import matplotlib.pyplot as plt

    buf = bytes_io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: same input, same bytes
    plt.close(fig)
    return buf.getvalue()


def package_versions() -> list[list[str]]:
    rows = [["python", platform.python_version()]]
    for name in PACKAGES:
        try:
            rows.append([name, importlib.metadata.version(name)])
        except importlib.metadata.PackageNotFoundError:
            rows.append([name, "not installed"])
    return rows


def git_commit(path: Path | None = None) -> str:
    """The commit of the tokenmill checkout that made the report ('not a git checkout' otherwise)."""
    path = path or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "not a git checkout"
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def _eval_rows(e: dict) -> list[list[str]]:
    return [[f"{split} ({model})", f"{e[f'{p}{split}_loss']:.4f}", f"{e[f'{p}{split}_perplexity']:.2f}",
             f"{e[f'{p}{split}_bits_per_byte']:.3f}"]
            for split in ("val", "heldout") for model, p in (("trained", ""), ("untrained", "untrained_"))]


def _with_stderr(metrics: dict, metric: str, digits: int = 4) -> str:
    """A metric with its standard error (lm-eval's bootstrap or analytic one) when there is one."""
    value, stderr = metrics.get(metric), metrics.get(f"{metric}_stderr")
    text = f"{value:.{digits}f}" if isinstance(value, float) else _fmt(value)
    return text + (f" ± {stderr:.{digits}f}" if isinstance(stderr, float) else "")


def _lm_eval_blocks(lm: dict | None) -> list:
    if not lm:
        return []
    if lm.get("skipped"):
        return [("h3", "lm-evaluation-harness"), lm["skipped"]]
    rows = []
    for task, metrics in lm["trained"].items():
        for metric in metrics:
            if metric.endswith("_stderr") or metric == "samples":
                continue
            rows.append([task, metric, _with_stderr(metrics, metric), _with_stderr(lm.get("untrained", {}).get(task, {}), metric),
                         _fmt(metrics.get("samples"))])
    local = "offline" if lm.get("offline", True) else "data from the HF cache or the Hub"
    return [("h3", "lm-evaluation-harness"),
            (f"lm-eval {lm.get('version', '?')} on the exported Hugging Face model, 0-shot ({local}), limit "
            f"{lm.get('limit') or 'none'} documents per task. acc: the choice with the highest summed log-probability "
            "is right; acc_norm: the same per character of the choice; ± is the standard error. Bundled tasks "
            "(training/data/lm_eval): tokenmill_cloze (a sentence's true last 5 words among 4, chance 0.25), "
            "tokenmill_wikitext (rolling loglikelihood of WikiText-2 articles); the early-signal preset is "
            "described in training/eval_sets.py. Full output: eval/lm_eval.json."),
            Table(["task", "metric", "trained", "untrained", "docs"], rows)]


FINETUNE_SCORES = ("accuracy", "macro_precision", "macro_recall", "macro_f1")


def _mean_std(score: dict) -> str:
    return f"{score['mean']:.3f} ± {score['std']:.3f}"


def _finetune_blocks(task: str, m: dict) -> list:
    labels, models, kind = m["labels"], m["models"], m["classifier"]
    blocks: list = [f"{_fmt(m['docs'])} labeled documents, labels: {', '.join(map(str, labels))}. Stratified {m['folds']}-fold "
                    f"cross-validation (seed {m['seed']}): each model is trained on the other folds and scored on each fold "
                    "it never saw; mean ± standard deviation over the folds. The quality_model stage uses the "
                    f"{kind} classifier (trained on every document).",
                    Table(["model", "accuracy", "macro precision", "macro recall", "macro F1"],
                          [[name, *(_mean_std(mm[k]) for k in FINETUNE_SCORES)] for name, mm in models.items()])]
    best = "pretrained" if kind == "transformer" else kind
    confusion = models.get(best, {}).get("confusion")
    if confusion:
        blocks += [("h3", f"{task}: confusion ({best}, summed over the folds; rows true, columns predicted)"),
                   Table(["true \\ predicted", *map(str, labels)], [[str(label), *row] for label, row in zip(labels, confusion)])]
    return blocks


def report_sections(run_dir: str) -> list[Section]:
    """Every section the run has material for, in pipeline order."""
    stats = load_stats(run_dir)
    sections = [Section("Summary", [Table(["", "value"], [list(r) for r in summary_rows(stats)])])]

    funnel_rows = funnel.load_funnel(run_dir) if funnel.doc_stages(run_dir) else []
    if funnel_rows:
        sections.append(Section("Data funnel", [
            "Documents in, rejected per reason and kept, per stage (funnel.md). Every document is either kept or "
            "rejected with a reason (rejected/<stage>/part-*.parquet; `tokenmill inspect RUN --reason R` shows examples).",
            Table(funnel.COLUMNS, [[funnel.fmt(r[c]) for c in funnel.COLUMNS] for r in funnel_rows])]))

    if "dedup" in stats:
        m = stats["dedup"]
        lsh = (f"MinHash LSH: {m['bands']} bands x {m['rows']} rows over {m['partitions']} partitions, "
               f"{m['candidate_pairs']:,} candidate pairs, {m['pairs']:,} verified. ") if "bands" in m else ""
        sizes = sorted(m.get("cluster_sizes", {}).items(), key=lambda kv: int(kv[0]))
        blocks: list = [f"{lsh}{m.get('exact_duplicates', 0):,} exact and {m.get('near_duplicates', 0):,} near duplicates "
                        f"removed from {m.get('clusters', 0):,} multi-doc clusters."]
        if sizes:
            blocks.append(Image("dedup_clusters.png", _bar_chart_png([str(k) for k, _ in sizes], [int(v) for _, v in sizes],
                                                                     "duplicate clusters by size", "documents in the cluster", "clusters"),
                                "histogram of duplicate cluster sizes"))
            blocks.append(Table(["cluster size", "clusters"], [[k, v] for k, v in sizes]))
        sections.append(Section("Duplicates", blocks))

    if "tokens" in stats:
        t = stats["tokens"]
        sections.append(Section("Tokens", [
            f"Byte-level BPE, vocab {t['tokenizer']['vocab_size']:,}.",
            Table(["split", "shards", "sequences", "tokens"], [[s, t[s]["shards"], f"{t[s]['rows']:,}", f"{t[s]['tokens']:,}"] for s in ("train", "val")])]))

    metrics_url = storage.join(run_dir, "train", "metrics.jsonl")
    metrics = ([json.loads(line) for line in storage.read_bytes(metrics_url).decode().splitlines() if line.strip()]
               if storage.exists(metrics_url) else [])
    if "train" in stats or metrics:
        blocks = []
        if "train" in stats:
            t = stats["train"]
            blocks.append(Table(["steps", "tokens", "params", "ZeRO stage", "processes", "final loss", "seconds"],
                                [[t["steps"], f"{t['tokens']:,}", f"{t['params']:,}", t.get("zero_stage", "-"), t.get("world_size", "-"),
                                  f"{t['final_loss']:.4f}", t["seconds"]]]))
        if metrics:
            blocks.append(Image("training_curves.png", loss_curve_png(metrics), "training loss and learning rate per step"))
        sections.append(Section("Training", blocks))

    if "eval" in stats:
        e = stats["eval"]
        blocks = [Table(["set (model)", "loss", "perplexity", "bits/byte"], _eval_rows(e)),
                  f"val: {e['val_tokens']:,} tokens of this run's validation shards; heldout: {e['heldout_tokens']:,} "
                  "tokens of WikiText-2 text shipped with tokenmill. Bits per byte do not depend on the tokenizer.",
                  *_lm_eval_blocks(e.get("lm_eval"))]
        sections.append(Section("Evaluation", blocks))
    checkpoints = checkpoint_evals(run_dir)
    if checkpoints:
        rows = [[step, f"{c['val_loss']:.4f}", f"{c['val_perplexity']:.2f}", f"{c['heldout_bits_per_byte']:.3f}",
                 _fmt(c.get("lm_eval", {}).get("trained", {}).get("tokenmill_cloze", {}).get("acc"), 3)]
                for step, c in checkpoints.items()]
        sections.append(Section("Checkpoint evaluations", [
            "Kept intermediate checkpoints evaluated with `tokenmill evaluate --checkpoint STEP` (eval/step-<N>/).",
            Table(["step", "val loss", "val perplexity", "held-out bits/byte", "cloze acc"], rows)]))
    if "eval" in stats and stats["eval"].get("samples"):
        sections.append(Section("Samples", [
            "Greedy and sampled (temperature, top-k) continuations of fixed prompts by the trained model.",
            Table(["prompt", "greedy", "sampled"], [[s["prompt"], s["greedy"], s["sampled"]] for s in stats["eval"]["samples"]])]))

    tasks = finetune_metrics(run_dir)
    if tasks:
        blocks = []
        for task, m in tasks.items():
            blocks += [("h3", task), *_finetune_blocks(task, m)]
        sections.append(Section("Fine-tune", blocks))

    config_url = storage.join(run_dir, "config.yaml")
    sections.append(Section("Config", [Pre(storage.read_bytes(config_url).decode()) if storage.exists(config_url)
                                       else "No config.yaml in the run directory (the train flow saves the run's config there)."]))
    sections.append(Section("Environment", [Table(["package", "version"], [*package_versions(), ["git commit", git_commit()]])]))
    return sections


def _md_block(block, images: dict[str, bytes]) -> str:
    if isinstance(block, str):
        return block
    if isinstance(block, tuple):
        return f"### {block[1]}"
    if isinstance(block, Table):
        return markdown_table(block.header, [[_cell(str(c)) for c in row] for row in block.rows])
    if isinstance(block, Image):
        images[block.name] = block.png
        return f"![{block.alt}]({ASSETS}/{block.name})"
    if isinstance(block, Pre):
        return "```yaml\n" + block.text.replace("```", "` ` `").rstrip() + "\n```"
    raise TypeError(block)


def render_markdown(run_dir: str, sections: list[Section]) -> tuple[str, dict[str, bytes]]:
    """report.md and the PNGs it links to (by file name, under report_files/)."""
    images: dict[str, bytes] = {}
    out = [f"# tokenmill run `{run_dir.rstrip('/').rsplit('/', 1)[-1]}`", "", f"Run directory: `{run_dir}`", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for block in s.blocks:
            out += [_md_block(block, images), ""]
    return "\n".join(out), images


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2430;background:#f5f6f8}
main{max-width:1100px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:20px;margin:32px 0 10px;padding-bottom:4px;border-bottom:2px solid #dde3ea}
h3{font-size:16px;margin:20px 0 8px}nav{font-size:13px;margin:8px 0 16px}nav a{margin-right:12px;color:#2563eb;text-decoration:none}
.meta{color:#5b6574;font-size:13px}table{border-collapse:collapse;margin:8px 0;font-size:13px;max-width:100%}
th,td{border:1px solid #dde3ea;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f0f3f7}
td{max-width:420px;overflow-wrap:anywhere;white-space:pre-wrap}tr:nth-child(even) td{background:#fafbfc}
img{max-width:100%;border:1px solid #e5e8ec;margin:8px 0}pre{background:#f6f8fa;border:1px solid #e5e8ec;padding:10px;
font-size:12px;overflow:auto;max-height:480px}
"""


def _html_text(text: str) -> str:
    """Escaped, with markdown's `code` spans as <code> (our own prose only; data goes into tables)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _html_block(block) -> str:
    if isinstance(block, str):
        return f"<p>{_html_text(block)}</p>"
    if isinstance(block, tuple):
        return f"<h3>{html.escape(block[1])}</h3>"
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in block.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, Image):
        data = base64.b64encode(block.png).decode()
        return f'<img alt="{html.escape(block.alt)}" src="data:image/png;base64,{data}">'
    if isinstance(block, Pre):
        return f"<pre>{html.escape(block.text)}</pre>"
    raise TypeError(block)


def render_html(run_dir: str, sections: list[Section]) -> str:
    name = run_dir.rstrip("/").rsplit("/", 1)[-1]
    anchors = [f"s{i}" for i in range(len(sections))]
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             # no network: everything the page shows is inline
             "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
             f"<title>tokenmill run {html.escape(name)}</title><style>{CSS}</style></head><body><main>",
             f"<h1>tokenmill run <code>{html.escape(name)}</code></h1>",
             f'<div class="meta">Run directory: <code>{html.escape(run_dir)}</code></div>',
             "<nav>" + "".join(f'<a href="#{a}">{html.escape(s.title)}</a>' for a, s in zip(anchors, sections)) + "</nav>"]
    for anchor, s in zip(anchors, sections):
        parts.append(f'<section id="{anchor}"><h2>{html.escape(s.title)}</h2>')
        parts += [_html_block(b) for b in s.blocks]
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts)


def write_run_config(run_dir: str, config: dict) -> None:
    """<run>/config.yaml: the configuration the run was trained with."""
    import yaml

    storage.write_if_changed(storage.join(run_dir, "config.yaml"), yaml.safe_dump(config, sort_keys=False).encode())


def write_reports(run_dir: str) -> tuple[str, str]:
    """Write <run>/report.md (+ report_files/*.png) and the self-contained <run>/report.html from what
    the run directory holds now; call it again after a later flow (fine-tune, a checkpoint eval)."""
    sections = report_sections(run_dir)
    markdown, images = render_markdown(run_dir, sections)
    for name, png in images.items():
        storage.write_if_changed(storage.join(run_dir, ASSETS, name), png)
    md_url, html_url = storage.join(run_dir, "report.md"), storage.join(run_dir, "report.html")
    storage.write_if_changed(md_url, markdown.encode())
    storage.write_if_changed(html_url, render_html(run_dir, sections).encode())
    return md_url, html_url


def metric_rows(run_dir: str) -> list[dict]:
    """The run's evaluation metrics as table rows (the Prefect table artifact)."""
    stats = load_stats(run_dir)
    rows: list[dict] = []
    e = stats.get("eval")
    if e:
        for split in ("val", "heldout"):
            for metric in ("loss", "perplexity", "bits_per_byte"):
                rows.append({"model": "final", "set": split, "metric": metric,
                             "trained": round(e[f"{split}_{metric}"], 4), "untrained": round(e[f"untrained_{split}_{metric}"], 4)})
        lm = e.get("lm_eval", {})
        for task, metrics in lm.get("trained", {}).items():
            for metric, value in metrics.items():
                if not metric.endswith("_stderr") and metric != "samples":
                    rows.append({"model": "final", "set": task, "metric": metric, "trained": round(value, 4),
                                 "untrained": round(lm.get("untrained", {}).get(task, {}).get(metric, float("nan")), 4)})
    for step, c in checkpoint_evals(run_dir).items():
        for split in ("val", "heldout"):
            rows.append({"model": f"step {step}", "set": split, "metric": "perplexity",
                         "trained": round(c[f"{split}_perplexity"], 4), "untrained": round(c[f"untrained_{split}_perplexity"], 4)})
    return rows


COMPARED = (("train", "steps"), ("train", "final_loss"), ("eval", "val_perplexity"), ("eval", "val_bits_per_byte"),
            ("eval", "heldout_perplexity"), ("eval", "heldout_bits_per_byte"), ("eval", "cloze_acc"))


def _lm_eval_columns(all_stats: list[dict[str, dict]]) -> list[tuple[str, str]]:
    """(task, metric) of every accuracy some compared run has, tokenmill_cloze's acc aside (cloze_acc)."""
    columns: list[tuple[str, str]] = []
    for stats in all_stats:
        for task, metrics in stats.get("eval", {}).get("lm_eval", {}).get("trained", {}).items():
            for metric in ("acc", "acc_norm"):
                if metric in metrics and (task, metric) not in columns and (task, metric) != ("tokenmill_cloze", "acc"):
                    columns.append((task, metric))
    return columns


def _compare_cells(name: str, stats: dict[str, dict], lm_columns: list[tuple[str, str]] = ()) -> list[str]:
    cells = [name]
    for stage, key in COMPARED:
        if key == "cloze_acc":
            value = stats.get("eval", {}).get("lm_eval", {}).get("trained", {}).get("tokenmill_cloze", {}).get("acc")
        else:
            value = stats.get(stage, {}).get(key)
        cells.append("-" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:.4g}")
    trained = stats.get("eval", {}).get("lm_eval", {}).get("trained", {})
    cells += [_with_stderr(trained[task], metric, 3) if metric in trained.get(task, {}) else "-" for task, metric in lm_columns]
    return cells


def compare_rows(run_dirs: list[str]) -> tuple[list[str], list[list[str]]]:
    """A header and one row per run (and per evaluated checkpoint, `run@step<N>`) of the metrics runs can be compared on."""
    runs = [(run_dir.rstrip("/").rsplit("/", 1)[-1], load_stats(run_dir), checkpoint_evals(run_dir)) for run_dir in run_dirs]
    lm_columns = _lm_eval_columns([s for _, s, _ in runs] + [{"eval": c} for _, _, cs in runs for c in cs.values()])
    header = ["run", *(key for _, key in COMPARED), *(f"{task} {metric}" for task, metric in lm_columns)]
    finetuned = [finetune_metrics(run_dir) for run_dir in run_dirs]
    ft_columns = list(dict.fromkeys((task, model) for tasks in finetuned for task, m in tasks.items() for model in m["models"]))
    header += [f"{task} {model} macro F1 (CV)" for task, model in ft_columns]
    rows = []
    for (name, stats, checkpoints), tasks in zip(runs, finetuned):
        for step, c in checkpoints.items():
            rows.append(_compare_cells(f"{name}@step{step}", {"train": {"steps": step}, "eval": c}, lm_columns) + ["-"] * len(ft_columns))
        rows.append(_compare_cells(name, stats, lm_columns)
                    + [_mean_std(tasks[t]["models"][model]["macro_f1"]) if model in tasks.get(t, {}).get("models", {}) else "-"
                       for t, model in ft_columns])
    return header, rows
