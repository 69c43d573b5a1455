"""`tokenmill`: run the whole DAG or one stage of it.

Prefect is imported only after the Prefect API for the run is settled (a local server is started
unless PREFECT_API_URL is set), so this process and every Ray worker talk to the same API.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

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


def _execute(cfg: RunConfig, flow_name: str) -> dict:
    from .server import prefect_api

    with prefect_api(cfg.prefect.host, cfg.prefect.keep_server, cfg.prefect.startup_timeout_s) as api:
        console.print(f"Prefect API: {api.url}" + ("" if api.pid is None else f" (local server, pid {api.pid})"))
        from . import curate, end_to_end, evaluate, train
        from .runtime import ray_task_runner

        flows = {
            "run": end_to_end.end_to_end,
            "curate": curate.curate.with_options(task_runner=ray_task_runner(cfg.ray)),
            "train": train.train,
            "evaluate": evaluate.evaluate,
        }
        try:
            result = flows[flow_name](cfg)
        finally:
            if api.pid is not None and cfg.prefect.keep_server:
                console.print(f"Prefect server left running: UI at {api.url.removesuffix('/api')}  "
                              f"(stop it with: kill -- -{api.pid})")
    _print_summary(cfg)
    return result


def _print_summary(cfg: RunConfig) -> None:
    from .report import load_stats, summary_rows

    table = Table(title=f"tokenmill run {cfg.run_id}", show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    for label, value in summary_rows(load_stats(cfg.run_dir)):
        table.add_row(label, value)
    console.print(table)
    console.print(f"Outputs: {cfg.run_dir}")
    for name, what in (("tokens/manifest.json", "token shards"), ("train/model.safetensors", "model weights"),
                       ("train/metrics.jsonl", "training metrics"), ("report.md", "report")):
        console.print(f"  {what:15s} {cfg.run_dir}/{name}")


@app.command()
def run(config: Optional[str] = ConfigOpt, run_id: Optional[str] = RunIdOpt, output_dir: Optional[str] = OutOpt,
        ray_address: Optional[str] = RayOpt, keep_server: bool = KeepOpt, set_: Optional[List[str]] = SetOpt):
    """Run the whole DAG (curate -> train -> evaluate) on the bundled corpus or the configured inputs."""
    _execute(_config(config, run_id, output_dir, ray_address, keep_server, set_), "run")


@app.command("curate")
def curate_cmd(inputs: Optional[List[str]] = typer.Argument(None, help="input files, directories or globs (default: bundled corpus)"),
               config: Optional[str] = ConfigOpt, run_id: Optional[str] = RunIdOpt, output_dir: Optional[str] = OutOpt,
               ray_address: Optional[str] = RayOpt, keep_server: bool = KeepOpt, set_: Optional[List[str]] = SetOpt):
    """Curate only: read, filter, dedup, tokenize and shard."""
    _execute(_config(config, run_id, output_dir, ray_address, keep_server, set_, **{"curate.inputs": inputs or None}), "curate")


@app.command("train")
def train_cmd(run_id: str = typer.Option(..., "--run-id", help="the run whose token shards to train on"),
              config: Optional[str] = ConfigOpt, output_dir: Optional[str] = OutOpt, keep_server: bool = KeepOpt,
              set_: Optional[List[str]] = SetOpt):
    """Train only, on the token shards of an existing run."""
    _execute(_config(config, run_id, output_dir, None, keep_server, set_), "train")


@app.command("evaluate")
def evaluate_cmd(run_id: str = typer.Option(..., "--run-id", help="the run whose model to evaluate"),
                 config: Optional[str] = ConfigOpt, output_dir: Optional[str] = OutOpt, keep_server: bool = KeepOpt,
                 set_: Optional[List[str]] = SetOpt):
    """Evaluate only: metrics and report of an existing run's model."""
    _execute(_config(config, run_id, output_dir, None, keep_server, set_), "evaluate")


if __name__ == "__main__":
    app()
