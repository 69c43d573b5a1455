"""`tokenmill curate s3://... --output-dir s3://...` against a local S3-compatible server (moto, on
127.0.0.1, started and stopped by the test): inputs read and every stage output written through fsspec."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import CORPUS

from tokenmill.flows.server import free_port

pytestmark = pytest.mark.slow
s3fs = pytest.importorskip("s3fs")


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


def test_curate_reads_and_writes_s3(s3_server, monkeypatch):
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    fs = s3fs.S3FileSystem(endpoint_url=s3_server["AWS_ENDPOINT_URL"])
    fs.mkdir("tokenmill-test")
    for name in ("datajuicer_redpajama_c4_10docs.jsonl", "dolma_ccnet_cc_en_head_0091_10docs.jsonl.gz",
                 "dolma_ccnet_cc_en_head_0174_10docs.jsonl.gz"):
        fs.put(str(CORPUS / name), f"tokenmill-test/raw/{name}")

    out = subprocess.run(
        [sys.executable, "-m", "tokenmill.flows.cli", "curate", "s3://tokenmill-test/raw/*.jsonl*", "--output-dir", "s3://tokenmill-test/runs",
         "--run-id", "s3run", "--set", "curate.tokenizer.vocab_size=400", "--set", "curate.tokens.seq_len=32",
         "--set", "curate.tokens.val_fraction=0.2", "--set", "ray.num_cpus=1", "--set", "ray.dashboard=false"],
        capture_output=True, text=True, timeout=600, env={**os.environ, **s3_server})
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]

    read = json.loads(fs.cat("tokenmill-test/runs/s3run/read/_stats.json"))
    assert read["docs_in"] == 30
    manifest = json.loads(fs.cat("tokenmill-test/runs/s3run/tokens/manifest.json"))
    assert manifest["totals"]["train"]["rows"] > 0
    assert fs.exists("tokenmill-test/runs/s3run/tokens/_SUCCESS") and fs.exists("tokenmill-test/runs/s3run/tokens/tokenizer.json")
    for shard in manifest["shards"]:
        assert fs.exists(f"tokenmill-test/runs/s3run/tokens/{shard['file']}")
    assert not [p for p in fs.find("tokenmill-test/runs") if "/.tmp-" in p]  # atomic writes left no temp objects
