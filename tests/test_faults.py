"""Faults that must not lose data: a flaky storage read is retried; a full disk fails with the path
named and no partial file left visible; a SIGTERM stops everything the run started."""
from __future__ import annotations

import os
import subprocess
import threading

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem
from helpers import CORPUS

from tokenmill.flows.config import load_config
from tokenmill.pipeline import storage
from tokenmill.pipeline.config import ReaderConfig
from tokenmill.pipeline.readers import read_file


class FlakyFileSystem(LocalFileSystem):
    """Local files behind a `flaky://` URL whose first read of each file raises, like a storage blip."""

    protocol = ("flaky",)
    failures: dict[str, int] = {}
    lock = threading.Lock()

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.removeprefix("flaky://"))

    def _open(self, path, mode="rb", **kwargs):
        if "r" in mode:
            with self.lock:
                first = path not in self.failures
                self.failures[path] = self.failures.get(path, 0) + 1
            if first:
                raise ConnectionResetError(f"injected storage error reading {path}")
        return super()._open(path, mode, **kwargs)


@pytest.mark.slow
def test_flaky_storage_read_is_retried_and_nothing_is_lost(tmp_path):
    from tokenmill.flows.curate import curate
    from tokenmill.flows.server import prefect_api

    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    inputs = [f"flaky://{CORPUS / name}" for name in ("datajuicer_redpajama_c4_10docs.jsonl", "dolma_ccnet_cc_en_head_0091_10docs.jsonl.gz")]
    config = load_config(None, ["curate.tokenizer.vocab_size=400", "curate.tokens.seq_len=32", "curate.tokens.val_fraction=0.2",
                                "prefect.retry_delay_s=0"], run_id="flaky", output_dir=str(tmp_path), **{"curate.inputs": inputs})
    with prefect_api():
        stats = curate(config)  # tasks run in threads here, so they see the registered filesystem
    assert stats["read"]["docs_in"] == 20 and stats["read"]["docs_rejected"] == 0
    assert {os.path.basename(p): n for p, n in FlakyFileSystem.failures.items()} == {
        "datajuicer_redpajama_c4_10docs.jsonl": 2, "dolma_ccnet_cc_en_head_0091_10docs.jsonl.gz": 2}
    assert storage.stage_done(str(tmp_path / "flaky" / "tokens"))


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("needs permission to mount a small tmpfs to fill a disk")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_names_the_file_and_leaves_no_partial_file(tiny_disk):
    run_dir = str(tiny_disk / "run")
    with pytest.raises(OSError, match=r"cannot write .*/run/read/part-00000\.parquet: No space left on device"):
        read_file(str(CORPUS / "dolma_cc_main_2019_30_697docs.jsonl.gz"), 0, run_dir, ReaderConfig())
    leftovers = [os.path.join(d, f) for d, _, files in os.walk(tiny_disk) for f in files]
    assert leftovers == []


@pytest.mark.slow
def test_ray_worker_killed_mid_task_is_retried_with_identical_output(tmp_path):
    """A Ray worker SIGKILLed while it runs a quality task: Ray reruns the task, the run completes and
    its data is byte-identical to an undisturbed run."""
    import contextlib
    import gzip
    import json
    import sys
    import time

    import psutil
    from helpers import curated_files

    from tokenmill.flows.server import start_server, stop_server

    # One big part (the crawl sample 3 times, ids made unique) so a quality task runs for seconds.
    src = [json.loads(line) for line in gzip.open(CORPUS / "dolma_cc_main_2019_30_697docs.jsonl.gz", "rt")]
    (tmp_path / "in").mkdir()
    with open(tmp_path / "in" / "big.jsonl", "w") as f:
        for k in range(3):
            for doc in src:
                f.write(json.dumps({**doc, "id": f"{doc['id']}-{k}"}) + "\n")
    api = start_server(home=str(tmp_path / "prefect"))
    env = {**os.environ, "PREFECT_API_URL": api.url}

    def curate(run_id):
        return subprocess.Popen(
            [sys.executable, "-m", "tokenmill.flows.cli", "curate", str(tmp_path / "in"), "--run-id", run_id, "--output-dir",
             str(tmp_path / "runs"), "--set", "curate.tokenizer.vocab_size=400", "--set", "curate.tokens.seq_len=32",
             "--set", "ray.num_cpus=2", "--set", "ray.dashboard=false"],
            env=env, stdout=open(tmp_path / f"{run_id}.log", "wb"), stderr=subprocess.STDOUT)

    def quality_worker_of(run: subprocess.Popen) -> psutil.Process | None:
        """A Ray worker of this run (a descendant of its CLI process) running a quality task."""
        for p in psutil.Process(run.pid).children(recursive=True):
            try:
                if (p.cmdline() or [""])[0].startswith("ray::quality"):
                    return p
            except psutil.Error:
                continue
        return None

    try:
        # Both runs at once (each waits on start-ups more than on the CPU); only the faulty run's worker is killed.
        clean, proc, killed = curate("clean"), curate("faulty"), None
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            if killed is None and (victim := quality_worker_of(proc)) is not None:
                with contextlib.suppress(psutil.NoSuchProcess):  # its task may have just ended: try the next one
                    victim.kill()
                    killed = victim.pid
            time.sleep(0.05)
        assert proc.wait(timeout=60) == 0, (tmp_path / "faulty.log").read_text()[-3000:]
        assert killed, "no quality task was caught running"
        assert clean.wait(timeout=600) == 0, (tmp_path / "clean.log").read_text()[-3000:]
    finally:
        stop_server(api)
    assert curated_files(tmp_path / "runs" / "faulty") == curated_files(tmp_path / "runs" / "clean")


def test_sigterm_stops_the_run_its_training_job_and_its_prefect_server(train_tokens, tmp_path):
    """CI cancelling a job sends SIGTERM: the run must end, and take its DeepSpeed ranks and its
    local Prefect server with it, rather than leave them running."""
    import re
    import signal
    import sys
    import time

    import psutil

    run = tmp_path / "runs" / "t"
    run.mkdir(parents=True)
    (run / "tokens").symlink_to(train_tokens)
    (tmp_path / "slow.yaml").write_text("train: {model: {n_layer: 2, n_head: 4, d_model: 64}, nproc: 1, micro_batch: 4, "
                                        "max_steps: 10000, threads_per_proc: 1, log_every: 1}\n")
    proc = subprocess.Popen([sys.executable, "-m", "tokenmill.flows.cli", "train", "--run-id", "t", "--output-dir", str(tmp_path / "runs"),
                             "--config", str(tmp_path / "slow.yaml")], cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    family: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while not any("step 2/" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            family.update(c.pid for c in psutil.Process(proc.pid).children(recursive=True))
            time.sleep(0.2)
        family.update(c.pid for c in psutil.Process(proc.pid).children(recursive=True))
        server = int(re.search(r"local server, pid (\d+)", "".join(lines)).group(1))
        assert server in family and len(family) >= 3  # the server, torchrun and its rank
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) != 0
        time.sleep(1)
        left = [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert not left, f"still running after SIGTERM: {[' '.join(psutil.Process(p).cmdline()) for p in left]}"
    finally:
        for pid in family | {proc.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
