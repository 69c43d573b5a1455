"""Test isolation: Prefect, Ray and DeepSpeed write under $HOME by default, so every test session
gets its own HOME/PREFECT_HOME (set before anything imports prefect) and removes it afterwards."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import CORPUS, make_tokens

_SESSION_HOME = tempfile.mkdtemp(prefix="tokenmill-tests-home-")
os.environ["HOME"] = _SESSION_HOME
os.environ["PREFECT_HOME"] = os.path.join(_SESSION_HOME, ".prefect")
os.environ["TORCH_EXTENSIONS_DIR"] = os.path.join(_SESSION_HOME, "torch_extensions")
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.pop("PREFECT_API_URL", None)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture
def real_docs() -> list[dict]:
    """Real web documents from the bundled corpus (RedPajama C4 sample)."""
    with open(CORPUS / "datajuicer_redpajama_c4_10docs.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def train_tokens(tmp_path_factory) -> Path:
    """Token shards of the bundled corpus's C4 sample, seq_len 32, vocab 500: enough rows for a
    2-process job of ~20 steps of micro-batch 4."""
    with open(CORPUS / "datajuicer_redpajama_c4_10docs.jsonl") as f:
        docs = [json.loads(line) for line in f]
    return make_tokens(tmp_path_factory.mktemp("run") / "tokens", docs)


@pytest.fixture(scope="session")
def tiny_train_config():
    """A 2-process job of a ~140k-parameter model: 12 steps of 2 x 4 sequences of 32 tokens
    (ZeRO-1 with activation checkpointing, so one stage exercises it through DeepSpeed)."""
    from tokenmill.training.config import TrainConfig

    def make(stage: int, **kw) -> TrainConfig:
        return TrainConfig(**{"model": dict(n_layer=2, n_head=4, d_model=64), "zero_stage": stage, "nproc": 2,
                              "micro_batch": 4, "max_steps": 12, "warmup_steps": 2, "save_every": 4,
                              "log_every": 1, "threads_per_proc": 1, "keep_checkpoints": 2,
                              "data_block_rows": 16,  # the loader's window (2 blocks) is a fifth of the 154 train rows
                              "activation_checkpointing": stage == 1, **kw})
    return make


@pytest.fixture(scope="session")
def trained_run(train_tokens, tiny_train_config):
    """trained_run(stage) -> a run directory (tokens/, train/) trained with tiny_train_config(stage);
    each stage is trained once per session and shared by the tests that need it."""
    from tokenmill.training.launch import run_job

    runs = {}

    def get(stage: int) -> Path:
        if stage not in runs:
            run = train_tokens.parent.parent / f"run-zero{stage}"
            run.mkdir()
            (run / "tokens").symlink_to(train_tokens)
            run_job(tiny_train_config(stage), str(run / "tokens"), str(run / "train"), on_line=lambda _: None)
            runs[stage] = run
        return runs[stage]
    return get
