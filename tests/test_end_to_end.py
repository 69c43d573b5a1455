"""`tokenmill run` as a user runs it: real local Prefect server, real local Ray, a real 2-process
DeepSpeed ZeRO-2 job on CPU (gloo), on the bundled real corpus; then the same run id again."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from helpers import curated_files

pytestmark = pytest.mark.slow

TINY = """
curate:
  tokenizer: {vocab_size: 1024}
  tokens: {seq_len: 64, val_fraction: 0.1}
train:
  model: {n_layer: 2, n_head: 4, d_model: 64}
  nproc: 2
  micro_batch: 8
  max_steps: 40
  warmup_steps: 5
  save_every: 20
  log_every: 10
evaluate: {max_val_rows: 64, max_new_tokens: 8, lm_eval_limit: 40}
ray: {num_cpus: 2, dashboard: false}
"""
STAGES = ("read", "quality", "dedup")


def _tokenmill(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "tokenmill.flows.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    (work / "tiny.yaml").write_text(TINY)
    args = ["run", "--config", "tiny.yaml", "--run-id", "t", "--output-dir", str(work / "runs")]
    first = _tokenmill(*args, cwd=work)
    run_dir = work / "runs" / "t"
    mtimes = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    second = _tokenmill(*args, cwd=work)
    return run_dir, first, second, mtimes


def test_local_prefect_server_is_started_on_loopback_and_stopped(run):
    _, first, _, _ = run
    m = re.search(r"Prefect API: http://127\.0\.0\.1:(\d+)/api \(local server, pid (\d+)\)", first)
    assert m, first[:2000]
    assert not _alive(int(m.group(2)))


def test_every_stage_reconciles_with_its_parts_on_disk(run):
    run_dir, _, _, _ = run
    previous_kept = None
    for name in STAGES:
        stats = json.loads((run_dir / name / "_stats.json").read_text())
        assert (run_dir / name / "_SUCCESS").exists()
        kept = sum(pq.read_metadata(p).num_rows for p in (run_dir / name).glob("part-*.parquet"))
        rejected: dict[str, int] = {}
        for p in (run_dir / "rejected" / name).glob("part-*.parquet"):
            for reason in pq.read_table(p)["reason"].to_pylist():
                rejected[reason] = rejected.get(reason, 0) + 1
        assert kept == stats["docs_kept"]
        assert rejected == stats["rejected"]
        assert stats["docs_in"] == kept + sum(rejected.values())
        if previous_kept is not None:
            assert stats["docs_in"] == previous_kept  # nothing lost between stages
        previous_kept = kept
    read = json.loads((run_dir / "read" / "_stats.json").read_text())
    assert read["docs_in"] == 758  # every record of the bundled corpus is accounted for
    quality = json.loads((run_dir / "quality" / "_stats.json").read_text())
    assert quality["rejected"].get("lang.not_kept", 0) > 0  # non-English pages of the crawl
    assert quality["counters"]["lang.en"] > 0 and quality["chars_in"] > quality["chars_kept"]


def test_token_shards_match_the_manifest(run):
    run_dir, _, _, _ = run
    manifest = json.loads((run_dir / "tokens" / "manifest.json").read_text())
    assert manifest["seq_len"] == 64 and manifest["vocab_size"] == 1024 and manifest["dtype"] == "uint16"
    dedup = json.loads((run_dir / "dedup" / "_stats.json").read_text())
    assert manifest["source_docs"] == dedup["docs_kept"] == sum(s["docs"] for s in manifest["shards"])
    for shard in manifest["shards"]:
        table = ipc.open_file(pa.memory_map(str(run_dir / "tokens" / shard["file"]))).read_all()
        assert table.num_rows == shard["rows"] and table.num_rows * 65 == shard["tokens"]
        flat = table["tokens"].combine_chunks().values.to_numpy()
        assert flat.max() < 1024


def test_training_reduced_the_loss_and_wrote_checkpoints(run):
    run_dir, first, _, _ = run
    metrics = [json.loads(line) for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 41))
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.5
    assert (run_dir / "train" / "checkpoints" / "latest").read_text().strip() == "step0000040"
    assert (run_dir / "train" / "checkpoints" / "step0000020").is_dir()
    summary = json.loads((run_dir / "train" / "_stats.json").read_text())
    assert summary["world_size"] == 2 and summary["zero_stage"] == 2 and summary["steps"] == 40
    assert (run_dir / "train" / "model.safetensors").exists()
    assert (run_dir / "train" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # published as an artifact too


def test_curate_training_and_evaluation_ran_on_the_runs_one_ray(run):
    """train.launcher auto inside `tokenmill run`: the training workers were Ray Train workers of the Ray the
    run started for curate, and the eval and lm-eval tasks ran as named tasks of that same Ray session and job
    (what the run recorded in train/ and eval/_stats.json while its Ray was up)."""
    run_dir, first, _, _ = run
    train = json.loads((run_dir / "train" / "_stats.json").read_text())["ray"]
    ev = json.loads((run_dir / "eval" / "_stats.json").read_text())["ray"]
    assert "launching: Ray Train 't-train', 2 workers" in first
    assert train["run"] == "t-train" and sorted(w["world_rank"] for w in train["workers"]) == [0, 1]
    assert len({w["pid"] for w in train["workers"]}) == 2 and all(w["actor_id"] for w in train["workers"])
    assert ev["eval"]["task"] == "t-eval" and ev["lm_eval"]["task"] == "t-lm-eval"
    assert train["session"] == ev["eval"]["session"] == ev["lm_eval"]["session"]
    assert train["job_id"] == ev["eval"]["job_id"] == ev["lm_eval"]["job_id"]
    assert {w["node_id"] for w in train["workers"]} == {ev["eval"]["node_id"]}  # the local Ray's one node
    # One Ray for the whole run: curate's prefect-ray runner joined it instead of starting its own.
    assert first.count("Ray dashboard:") == 1 and "Creating a local Ray instance" not in first


def test_evaluation_beats_the_untrained_model_and_report_is_written(run):
    run_dir, first, _, _ = run
    ev = json.loads((run_dir / "eval" / "_stats.json").read_text())
    assert ev["val_perplexity"] < ev["untrained_val_perplexity"]
    assert 0 < ev["heldout_bits_per_byte"] < ev["untrained_heldout_bits_per_byte"]
    assert {"greedy", "sampled"} <= set(ev["samples"][0])
    assert len(ev["samples"]) == 3
    report = (run_dir / "report.md").read_text()
    assert "## Data funnel" in report and "val perplexity" in report
    assert "docs read" in first and "final train loss" in first and "val perplexity" in first
    lm = ev["lm_eval"]  # a real offline lm-eval run on the run's export, next to the untrained model
    assert 0 <= lm["trained"]["tokenmill_cloze"]["acc"] <= 1 and lm["trained"]["tokenmill_cloze"]["samples"] == 40
    assert lm["trained"]["tokenmill_wikitext"]["bits_per_byte"] < lm["untrained"]["tokenmill_wikitext"]["bits_per_byte"]


def test_report_html_has_every_section_of_the_run_and_loads_nothing(run):
    run_dir, _, _, _ = run
    page = (run_dir / "report.html").read_text()
    assert re.findall(r"<h2>(.*?)</h2>", page) == ["Summary", "Data funnel", "Duplicates", "Tokens", "Training",
                                                   "Evaluation", "Samples", "Config", "Environment"]
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', page)) == 2  # cluster sizes, training curves
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "max_steps: 40" in page  # the config the run was trained with (runs/<id>/config.yaml)
    md = (run_dir / "report.md").read_text()
    assert "(report_files/dedup_clusters.png)" in md and (run_dir / "report_files" / "dedup_clusters.png").exists()


def test_rerun_with_the_same_run_id_does_no_work(run):
    run_dir, _, second, mtimes = run
    for name in (*STAGES, "tokens", "train", "eval"):
        assert f"stage {name}: done in an earlier run, skipped" in second
    assert "launching:" not in second
    after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    assert after == mtimes


def test_curate_killed_midway_then_rerun_gives_identical_output(run, tmp_path):
    """Fault: the flow process is SIGKILLed in the middle of the quality stage, after some of its parts
    finished; the rerun with the same run id skips the read stage and those parts (their files are
    not rewritten) and produces byte-identical data to the undisturbed run."""
    import signal
    import time

    import psutil

    reference, _, _, _ = run
    (tmp_path / "tiny.yaml").write_text(TINY)
    args = [sys.executable, "-m", "tokenmill.flows.cli", "curate", "--config", "tiny.yaml", "--run-id", "t", "--output-dir", str(tmp_path / "runs")]
    run_dir = tmp_path / "runs" / "t"
    quality_parts = run_dir / "quality" / "_parts"
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    family: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while not list(quality_parts.glob("part-*.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "curate ended before a quality part finished"
            family.update(c.pid for c in psutil.Process(proc.pid).children(recursive=True))
            time.sleep(0.05)
        family.update(c.pid for c in psutil.Process(proc.pid).children(recursive=True))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in family:  # its Prefect server and Ray run in their own sessions
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    assert not (run_dir / "quality" / "_SUCCESS").exists(), "the quality stage finished before the kill"
    done = sorted(p.stem for p in quality_parts.glob("part-*.json"))
    parts = len(list((run_dir / "read").glob("part-*.parquet")))
    assert 0 < len(done) < parts
    files = [f for name in done for f in (quality_parts / f"{name}.json", run_dir / "quality" / f"{name}.parquet",
                                          run_dir / "rejected" / "quality" / f"{name}.parquet") if f.exists()]
    before = {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}

    second = _tokenmill("curate", "--config", "tiny.yaml", "--run-id", "t", "--output-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert "stage read: done in an earlier run, skipped" in second
    assert f"quality: {len(done)} of {parts} parts done in an earlier run, reused" in second
    assert {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files} == before
    assert not list(run_dir.rglob(".tmp-*"))
    resumed, expected = curated_files(run_dir), curated_files(reference)
    assert resumed.keys() == expected.keys() and resumed == expected


def test_compare_tabulates_runs(run, tmp_path):
    run_dir, _, _, _ = run
    out = _tokenmill("compare", str(run_dir), "--out", str(tmp_path / "cmp.md"), cwd=tmp_path)
    ev = json.loads((run_dir / "eval" / "_stats.json").read_text())
    table = (tmp_path / "cmp.md").read_text()
    assert "heldout_bits_per_byte" in table and f"{ev['heldout_bits_per_byte']:.4g}" in table
    assert "val_perplexity" in out
