"""`tokenmill run` with inputs and --output-dir on s3:// against a local S3-compatible server (moto, on
127.0.0.1, started and stopped by the test): inputs read and every stage output written through fsspec,
the training job's checkpoints included (no shared filesystem needed), then a job resumed from them."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import CORPUS

from tokenmill.flows.server import free_port
from tokenmill.pipeline.contracts import MANIFEST

pytestmark = pytest.mark.slow
s3fs = pytest.importorskip("s3fs")


RUN = """
curate:
  inputs: ["s3://tokenmill-test/raw/*.jsonl*"]
  tokenizer: {vocab_size: 400}
  tokens: {seq_len: 32, val_fraction: 0.2}
train:
  launcher: torchrun  # Ray Train: ~50 s more start-up here, and no more of the S3 path than ray_train.ray_storage
  model: {n_layer: 2, n_head: 4, d_model: 32}
  micro_batch: 4
  max_steps: 4
  warmup_steps: 1
  save_every: 2
  keep_checkpoints: 1
  log_every: 1
evaluate: {max_val_rows: 8, max_new_tokens: 4, lm_eval_tasks: [tokenmill_cloze], lm_eval_limit: 4}
ray: {num_cpus: 2, dashboard: false}
"""


@pytest.fixture
def s3_server(tmp_path):
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=open(tmp_path / "moto.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "moto.log").read_text()
            time.sleep(0.3)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint}
    yield env
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def test_a_run_on_s3_curates_trains_evaluates_and_resumes(s3_server, monkeypatch, tmp_path):
    """`tokenmill run` with inputs and --output-dir on S3: every stage reads and writes through fsspec, the
    training job's checkpoints go to S3 (pruned to keep_checkpoints), and a later job resumes from them."""
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    fs = s3fs.S3FileSystem(endpoint_url=s3_server["AWS_ENDPOINT_URL"])
    fs.mkdir("tokenmill-test")
    for name in ("datajuicer_redpajama_c4_10docs.jsonl", "dolma_ccnet_cc_en_head_0091_10docs.jsonl.gz",
                 "dolma_ccnet_cc_en_head_0174_10docs.jsonl.gz"):
        fs.put(str(CORPUS / name), f"tokenmill-test/raw/{name}")

    (tmp_path / "s3.yaml").write_text(RUN)
    out = subprocess.run(
        [sys.executable, "-m", "tokenmill.flows.cli", "run", "--config", str(tmp_path / "s3.yaml"),
         "--output-dir", "s3://tokenmill-test/runs", "--run-id", "s3run"],
        capture_output=True, text=True, timeout=900, env={**os.environ, **s3_server})
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]

    run = "tokenmill-test/runs/s3run"
    read = json.loads(fs.cat(f"{run}/read/_stats.json"))
    assert read["docs_in"] == 30
    manifest = json.loads(fs.cat(f"{run}/tokens/manifest.json"))
    assert manifest["totals"]["train"]["rows"] > 0
    assert fs.exists(f"{run}/tokens/_SUCCESS") and fs.exists(f"{run}/tokens/tokenizer.json")
    for shard in manifest["shards"]:
        assert fs.exists(f"{run}/tokens/{shard['file']}")

    # Training: checkpoints uploaded by both ranks, `latest` on the newest, the older one pruned (keep 1).
    ckpts = f"{run}/train/checkpoints"
    assert fs.cat(f"{ckpts}/latest") == b"step0000004"
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(ckpts)] == ["latest", "step0000004"]
    tag = {p.rsplit("/", 1)[-1] for p in fs.ls(f"{ckpts}/step0000004")}
    assert {"model_config.json", "ds_config.json", "mp_rank_00_model_states.pt",  # ZeRO-2: each rank's optimizer part
            "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= tag
    metrics = [json.loads(line) for line in fs.cat(f"{run}/train/metrics.jsonl").decode().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    for name in ("model.safetensors", "model_config.json", "summary.json", "train.log", "loss.png", "_stats.json",
                 "_SUCCESS"):
        assert fs.exists(f"{run}/train/{name}"), name
    assert fs.find(f"{run}/train/tensorboard")
    # Evaluation read the model from S3 and wrote its metrics, the export lm-eval scored and the report there.
    stats = json.loads(fs.cat(f"{run}/eval/_stats.json"))
    assert stats["val_rows"] > 0 and stats["val_loss"] > 0 and "tokenmill_cloze" in stats["lm_eval"]["trained"]
    assert json.loads(fs.cat(f"{run}/eval/lm_eval.json"))["model"] == f"s3://{run}/export"
    for name in ("export/model.safetensors", "export/config.json", "report.md", "report.html"):
        assert fs.exists(f"{run}/{name}"), name
    assert not [p for p in fs.find("tokenmill-test/runs") if "/.tmp-" in p]  # atomic writes left no temp objects

    # A job of two more steps resumes from the checkpoint in S3 (every rank downloads it) and appends to its metrics.
    from tokenmill.training.config import TrainConfig
    from tokenmill.training.launch import run_job

    cfg = TrainConfig(**json.loads(fs.cat(f"{run}/train/job.json"))["train"]).model_copy(update={"max_steps": 6})
    lines: list[str] = []
    summary = run_job(cfg, f"s3://{run}/tokens", f"s3://{run}/train", on_line=lines.append)
    assert summary["steps"] == 6 and f"resumed from s3://{ckpts}/step0000004 at step 4" in lines
    fs.invalidate_cache()
    steps = [json.loads(line)["step"] for line in fs.cat(f"{run}/train/metrics.jsonl").decode().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert fs.cat(f"{ckpts}/latest") == b"step0000006"
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(ckpts)] == ["latest", "step0000006"]
    assert not [p for p in fs.find("tokenmill-test/runs") if "/.tmp-" in p]
    # The ranks memory-mapped the shards from the verified cache (kept for restarts and the evaluation): remove it.
    cache = Path(tempfile.gettempdir(), f"tokenmill-tokens-{os.getuid()}",
                 hashlib.sha256(fs.cat(f"{run}/tokens/manifest.json")).hexdigest()[:32])
    assert {p.name for p in cache.iterdir()} == {MANIFEST, "tokenizer.json", *(s["file"] for s in manifest["shards"])}
    shutil.rmtree(cache)
