"""`tokenmill`: run the whole DAG or one stage of it.

Prefect is imported only after the Prefect API for the run is settled (a local server is started
unless PREFECT_API_URL is set), so this process and every Ray worker talk to the same API.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .config import RunConfig, load_config

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Raw web text -> curated tokens -> trained, evaluated model.")
# Piped output (CI, logs) gets a fixed width so the summary table is not cut at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 120)

ConfigOpt = typer.Option(None, "--config", "-c", help="run config YAML")
RunIdOpt = typer.Option(None, "--run-id", help="run id (default: a timestamp); rerunning an id skips finished stages")
OutOpt = typer.Option(None, "--output-dir", help="where runs/<run_id>/ goes (default: ./runs)")
RayOpt = typer.Option(None, "--ray-address", help="existing Ray cluster address (default: start Ray locally)")
KeepOpt = typer.Option(False, "--keep-server", help="keep the local Prefect server up after the run, to browse it")
StrictOpt = typer.Option(False, "--strict", help="fail on an unreadable or truncated input file (default: warn, go on)")
SetOpt = typer.Option(None, "--set", help="override a config value, e.g. --set train.max_steps=50 (repeatable)")


def _config(config, run_id, output_dir, ray_address, keep_server, overrides, **extra) -> RunConfig:
    try:
        cfg = load_config(config, overrides, run_id=run_id, output_dir=output_dir, **{"ray.address": ray_address}, **extra)
    except (ValueError, OSError) as e:
        console.print(f"[red]invalid configuration:[/red] {e}")
        raise typer.Exit(2)
    if keep_server:
        cfg = cfg.model_copy(update={"prefect": cfg.prefect.model_copy(update={"keep_server": True})})
    return cfg.with_run_id()


def _run_dir(run: str, output_dir: str | None) -> str:
    """RUN's directory: RUN itself when it is a URL or a local directory, else the run id RUN under
    --output-dir (default ./runs)."""
    if "://" in run:
        return run.rstrip("/")
    if Path(run).is_dir():
        return str(Path(run).resolve())
    try:
        return load_config(output_dir=output_dir, run_id=run).run_dir
    except ValueError as e:
        console.print(f"[red]{escape(run)}: no such run directory, and not a valid run id:[/red] {escape(str(e))}")
        raise typer.Exit(2)


def _exit_on_sigterm(signum, frame):
    # Prefect marks the flow run crashed on SIGTERM, then hands the signal back to the handler it
    # found: exiting through an exception (not the default instant death) lets the `with` blocks
    # stop the training job and the local Prefect server instead of orphaning them.
    raise SystemExit(128 + signum)


def _execute(cfg: RunConfig, flow_name: str, **flow_args) -> dict:
    from tokenmill.pipeline.stages import ConfigChanged

    from .server import prefect_api

    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    with prefect_api(cfg.prefect.host, cfg.prefect.keep_server, cfg.prefect.startup_timeout_s) as api:
        console.print(f"Prefect API: {api.url}" + ("" if api.pid is None else f" (local server, pid {api.pid})"))
        from . import curate, end_to_end, evaluate, finetune, train
        from .runtime import RunLocked, run_lock

        flows = {
            "run": end_to_end.end_to_end,
            "curate": curate.curate_on_ray,
            "dedup": curate.dedup_on_ray,
            "train": train.train,
            "evaluate": evaluate.evaluate,
            "finetune": finetune.finetune,
        }
        try:
            with run_lock(cfg.run_dir):  # the whole run: a second `--run-id` of it is refused, not interleaved
                result = flows[flow_name](cfg, **flow_args)
        except Exception as e:  # the flow log above has the traceback; end with the cause, not a wall
            console.print(f"[red]{flow_name} {cfg.run_id} failed:[/red] {type(e).__name__}: {escape(str(e))}")
            if not isinstance(e, (ConfigChanged, RunLocked)):
                console.print(f"Rerun with --run-id {cfg.run_id} to resume: finished stages and parts are skipped.")
            raise typer.Exit(1)
        finally:
            if api.pid is not None and cfg.prefect.keep_server:
                console.print(f"Prefect server left running: UI at {api.url.removesuffix('/api')}  "
                              f"(stop it with: kill -- -{api.pid})")
    _print_summary(cfg)
    return result


def _print_summary(cfg: RunConfig) -> None:
    from tokenmill.pipeline import storage

    from .report import load_stats, summary_rows

    table = Table(title=f"tokenmill run {cfg.run_id}", show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    for label, value in summary_rows(load_stats(cfg.run_dir)):
        table.add_row(escape(label), escape(value))  # e.g. 'pip install lm-eval[hf]' is not markup
    console.print(table)
    _print_funnel(cfg.run_dir)
    _print_finetune(cfg.run_dir)
    console.print(f"Outputs: {cfg.run_dir}")
    for name, what in (("dedup", "deduplicated"), (f"finetune/{cfg.finetune.task}/metrics.json", "fine-tune metrics"), ("tokens/manifest.json", "token shards"), ("train/model.safetensors", "model weights"),
                       ("train/metrics.jsonl", "training metrics"), ("report.md", "report"), ("report.html", "report (HTML)")):
        if storage.exists(storage.join(cfg.run_dir, name)):
            console.print(f"  {what:15s} {cfg.run_dir}/{name}")


def _print_finetune(run_dir: str) -> None:
    from tokenmill.pipeline import storage

    for url in sorted(storage.list_files(storage.join(run_dir, "finetune"), "*/metrics.json")):
        m = storage.read_json(url)
        table = Table(title=f"fine-tune {m['task']}: {m['folds']}-fold cross-validation of {m['docs']} docs, mean ± std "
                      f"(quality_model uses {m['classifier']})")
        for col in ("model", "accuracy", "macro P", "macro R", "macro F1"):
            table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
        for name, r in m["models"].items():
            table.add_row(name, *(f"{r[k]['mean']:.3f} ± {r[k]['std']:.3f}" for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1")))
        console.print(table)


def _print_funnel(run_dir: str) -> None:
    from tokenmill.pipeline import funnel, storage

    if not storage.exists(storage.join(run_dir, "funnel.md")):
        return
    table = Table(title="data funnel (funnel.md)")
    for i, col in enumerate(funnel.COLUMNS):
        table.add_column(col, justify="left" if i < 2 else "right", no_wrap=True)
    for row in funnel.load_funnel(run_dir):
        style = "bold" if row["reason"] in ("in", "kept") else None
        table.add_row(*(funnel.fmt(row[c]) for c in funnel.COLUMNS), style=style)
    console.print(table)


@app.command()
def run(config: Optional[str] = ConfigOpt, run_id: Optional[str] = RunIdOpt, output_dir: Optional[str] = OutOpt,
        ray_address: Optional[str] = RayOpt, keep_server: bool = KeepOpt, strict: bool = StrictOpt,
        set_: Optional[List[str]] = SetOpt):
    """Run the whole DAG (curate -> train -> evaluate) on the bundled corpus or the configured inputs."""
    _execute(_config(config, run_id, output_dir, ray_address, keep_server, set_,
                     **{"curate.reader.strict": strict or None}), "run")


@app.command("curate")
def curate_cmd(inputs: Optional[List[str]] = typer.Argument(None, help="input files, directories or globs (default: bundled corpus)"),
               config: Optional[str] = ConfigOpt, run_id: Optional[str] = RunIdOpt, output_dir: Optional[str] = OutOpt,
               ray_address: Optional[str] = RayOpt, keep_server: bool = KeepOpt, strict: bool = StrictOpt,
               set_: Optional[List[str]] = SetOpt):
    """Curate only: read, filter, dedup, tokenize and shard."""
    _execute(_config(config, run_id, output_dir, ray_address, keep_server, set_,
                     **{"curate.inputs": inputs or None, "curate.reader.strict": strict or None}), "curate")


@app.command("dedup")
def dedup_cmd(inputs: List[str] = typer.Argument(..., help="input files, directories or globs (JSONL, plain or compressed)"),
              out: Path = typer.Option(..., "--out", help="output directory: kept docs in OUT/dedup, duplicates in OUT/rejected/dedup"),
              threshold: Optional[float] = typer.Option(None, help="Jaccard similarity that makes a near duplicate (default 0.7)"),
              num_perm: Optional[int] = typer.Option(None, "--num-perm", help="MinHash permutations (default 128)"),
              ngram: Optional[int] = typer.Option(None, help="words per shingle (default 5)"),
              exact: Optional[bool] = typer.Option(None, "--exact/--no-exact", help="drop exact copies first (default: on)"),
              id_key: Optional[str] = typer.Option(None, "--id-key", help="input field holding the document id (default: id)"),
              config: Optional[str] = ConfigOpt, ray_address: Optional[str] = RayOpt, keep_server: bool = KeepOpt,
              set_: Optional[List[str]] = SetOpt):
    """Exact + MinHash LSH near-duplicate removal only (no quality filter, no tokens), on Ray."""
    out = out.resolve()
    fields = {"curate.inputs": inputs, "curate.dedup.threshold": threshold, "curate.dedup.num_perm": num_perm,
              "curate.dedup.ngram": ngram, "curate.dedup.exact": exact, "curate.reader.id_key": id_key}
    _execute(_config(config, out.name, str(out.parent), ray_address, keep_server, set_, **fields), "dedup")


@app.command("train")
def train_cmd(run_id: str = typer.Option(..., "--run-id", help="the run whose token shards to train on"),
              config: Optional[str] = ConfigOpt, output_dir: Optional[str] = OutOpt, keep_server: bool = KeepOpt,
              set_: Optional[List[str]] = SetOpt):
    """Train only, on the token shards of an existing run."""
    _execute(_config(config, run_id, output_dir, None, keep_server, set_), "train")


CheckpointOpt = typer.Option(None, "--checkpoint", help="step of a kept intermediate checkpoint (default: the final weights)")


def _check_checkpoint(run_dir: str, step: int | None) -> None:
    """Fail before starting anything when STEP is not a kept checkpoint, listing the kept ones."""
    if step is None:
        return
    from tokenmill.pipeline import storage
    from tokenmill.training.checkpoint import checkpoint_tag

    try:
        checkpoint_tag(storage.join(run_dir, "train", "checkpoints"), step)  # run_dir may be s3://
    except ValueError as e:
        console.print(f"[red]--checkpoint {step}:[/red] {e}")
        raise typer.Exit(2)


@app.command("evaluate")
def evaluate_cmd(run_id: str = typer.Option(..., "--run-id", help="the run whose model to evaluate"),
                 checkpoint: Optional[int] = CheckpointOpt,
                 config: Optional[str] = ConfigOpt, output_dir: Optional[str] = OutOpt, keep_server: bool = KeepOpt,
                 set_: Optional[List[str]] = SetOpt):
    """Evaluate only: metrics, lm-eval tasks and report of an existing run's model (or of a kept checkpoint,
    into eval/step-<N>/)."""
    cfg = _config(config, run_id, output_dir, None, keep_server, set_)
    _check_checkpoint(cfg.run_dir, checkpoint)
    _execute(cfg, "evaluate", checkpoint=checkpoint)


@app.command("finetune")
def finetune_cmd(run: str = typer.Argument(..., help="run id (under --output-dir) or a run directory with a trained model"),
                 task: Optional[str] = typer.Option(None, "--task", help="dclm-quality (bundled), or a name for finetune.data_file"),
                 config: Optional[str] = ConfigOpt, output_dir: Optional[str] = OutOpt, keep_server: bool = KeepOpt,
                 set_: Optional[List[str]] = SetOpt):
    """Fine-tune the run's pretrained model as a classifier (DeepSpeed), next to random init and the majority class."""
    output_dir, _, run_id = _run_dir(run, output_dir).rpartition("/")
    _execute(_config(config, run_id, output_dir, None, keep_server, set_, **{"finetune.task": task}), "finetune")


@app.command()
def compare(run_ids: List[str] = typer.Argument(..., help="run ids (under --output-dir) or run directories"),
            output_dir: Optional[str] = OutOpt,
            out: Optional[Path] = typer.Option(None, "--out", help="also write the table as markdown here")):
    """Metrics of several runs side by side: steps, final loss, val/held-out perplexity and bits per byte, and
    each lm-eval task's acc / acc_norm ± standard error."""
    from .report import compare_rows, markdown_table

    header, rows = compare_rows([_run_dir(r, output_dir) for r in run_ids])
    table = Table(*header)
    for row in rows:
        table.add_row(*row)
    # piped output: wide enough for every metric's full name (a 120-column console folds them)
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    if out:
        out.write_text(markdown_table(header, rows) + "\n")


REPO = Path(__file__).resolve().parent.parent


def _prefect(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect", *args], text=True, capture_output=True, **kwargs)


@app.command()
def deploy(pool: str = typer.Option("tokenmill", help="process work pool the deployments use (created if missing)"),
           prefect_file: Path = typer.Option(REPO / "infra" / "prefect" / "prefect.yaml", help="deployment definitions")):
    """Create the Prefect deployments (curate, dedup, train, evaluate, finetune, end-to-end) on PREFECT_API_URL's server."""
    if not os.environ.get("PREFECT_API_URL"):
        console.print("[red]PREFECT_API_URL is not set:[/red] deployments live on a running Prefect server "
                      "(`prefect server start`, then export PREFECT_API_URL=http://127.0.0.1:4200/api)")
        raise typer.Exit(2)
    if _prefect("work-pool", "inspect", pool).returncode != 0:
        created = _prefect("work-pool", "create", pool, "--type", "process")
        if created.returncode != 0:
            console.print(created.stdout + created.stderr)
            raise typer.Exit(1)
    env = {**os.environ, "TOKENMILL_WORKDIR": os.environ.get("TOKENMILL_WORKDIR", str(REPO))}
    done = _prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file), cwd=REPO, env=env)
    console.print(done.stdout + done.stderr)
    if done.returncode != 0:
        raise typer.Exit(1)
    console.print(f"Start a worker to run them: prefect worker start --pool {pool}")


@app.command()
def trigger(deployment: str = typer.Argument(..., help="FLOW/DEPLOYMENT, e.g. end-to-end/bundled"),
            wait: bool = typer.Option(False, "--wait", help="wait for the flow run to finish; exit 1 unless it completed"),
            timeout: Optional[float] = typer.Option(None, help="seconds to wait at most (with --wait)"),
            set_: Optional[List[str]] = SetOpt):
    """Start a run of a deployment (what CI calls), optionally waiting for its final state."""
    from prefect.deployments import run_deployment

    try:
        params = load_config(None, set_).model_dump(exclude_unset=True)
    except ValueError as e:
        console.print(f"[red]invalid configuration:[/red] {e}")
        raise typer.Exit(2)
    flow_run = run_deployment(deployment, parameters={"config": params}, timeout=(timeout if wait else 0))
    state = flow_run.state
    console.print(f"flow run {flow_run.name} ({flow_run.id}): {state.name if state else 'unknown'}")
    if wait and not (state and state.is_completed()):
        raise typer.Exit(1)


@app.command("export")
def export_cmd(run: str = typer.Argument(..., help="run id (under --output-dir) or path of a run directory"),
               out: str = typer.Option(..., "--out", help="directory to write the Hugging Face model to"),
               checkpoint: Optional[int] = CheckpointOpt, output_dir: Optional[str] = OutOpt):
    """Export a run's latest checkpoint, or a kept one (--checkpoint STEP), of any ZeRO stage, consolidated
    to fp32, as a Hugging Face Llama model."""
    from tokenmill.training.export import export_run

    try:
        path = export_run(_run_dir(run, output_dir), out, checkpoint)
    except (FileNotFoundError, ValueError) as e:
        console.print(f"[red]export failed:[/red] {e}")
        raise typer.Exit(1)
    console.print(f"Hugging Face model written to {path} (load it with LlamaForCausalLM.from_pretrained)")


@app.command("inspect")
def inspect_cmd(run: str = typer.Argument(..., help="run id (under --output-dir) or a run directory"),
                reason: str = typer.Option(..., "--reason", help="rejection reason (e.g. gopher.mean_word_length) or a prefix (gopher)"),
                limit: int = typer.Option(3, "--limit", min=1, help="how many documents to show"),
                chars: int = typer.Option(600, "--chars", min=0, help="characters of each document's text to show"),
                output_dir: Optional[str] = OutOpt):
    """Show a few documents a run rejected for a reason (no Prefect or Ray needed)."""
    from tokenmill.pipeline import funnel

    run_dir = _run_dir(run, output_dir)
    if not funnel.doc_stages(run_dir):
        console.print(f"[red]no run with stage stats at {run_dir}[/red]")
        raise typer.Exit(2)
    examples = funnel.rejected_examples(run_dir, reason, limit)
    if not examples:
        known = ", ".join(f"{r} ({n})" for r, n in sorted(funnel.reasons_of(run_dir).items()))
        console.print(f"[yellow]no document rejected for {escape(repr(reason))}.[/yellow] Reasons in this run: {escape(known)}")
        raise typer.Exit(1)
    for doc in examples:  # every string here comes from the data: shown as plain text, never markup
        text = doc["text"] or ""
        body = _plain(text[:chars])
        if len(text) > chars:
            body.append(f"\n... {len(text) - chars:,} more chars", style="dim")
        title = Text.assemble(_plain(doc["reason"]), (f"  stage {doc['stage']}  id ", "dim"), _plain(doc["id"], "dim"))
        subtitle = Text.assemble(_plain(doc["url"] or doc["source"]), f"  ({len(text):,} chars)")
        console.print(Panel(body, title=title, subtitle=subtitle, title_align="left"))


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _plain(value, style: str = "") -> Text:
    """`value` as text that reaches the terminal as written: no rich markup, and control characters
    (ESC sequences that retitle or recolour the terminal, BEL...) shown as \\xNN instead of sent."""
    return Text(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value)), style=style)


if __name__ == "__main__":
    app()
