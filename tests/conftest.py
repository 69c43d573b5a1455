"""Test isolation: Prefect, Ray and DeepSpeed write under $HOME by default, so every test session
gets its own HOME/PREFECT_HOME (set before anything imports prefect) and removes it afterwards."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = tempfile.mkdtemp(prefix="tokenmill-tests-home-")
os.environ["HOME"] = _SESSION_HOME
os.environ["PREFECT_HOME"] = os.path.join(_SESSION_HOME, ".prefect")
os.environ["TORCH_EXTENSIONS_DIR"] = os.path.join(_SESSION_HOME, "torch_extensions")
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.pop("PREFECT_API_URL", None)

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "pipeline" / "data" / "corpus"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


def write_jsonl(path: Path, records: list) -> Path:
    """Write records (dicts, or raw str/bytes lines) as a JSONL file."""
    with open(path, "wb") as f:
        for r in records:
            line = r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()
            f.write(line + b"\n")
    return path


@pytest.fixture
def real_docs() -> list[dict]:
    """Real web documents from the bundled corpus (RedPajama C4 sample)."""
    with open(CORPUS / "datajuicer_redpajama_c4_10docs.jsonl") as f:
        return [json.loads(line) for line in f]


def curated_files(run_dir: Path) -> dict[str, str]:
    """sha256 of every data file curate wrote (parts, intermediate dedup files, shards, tokenizer,
    manifest) by path relative to the run; stats files hold timings and are left out."""
    out = {}
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir).as_posix()
        if p.is_file() and not rel.startswith(("train/", "eval/", "export/")) and (
                p.suffix in (".parquet", ".arrow") or p.name in ("tokenizer.json", "manifest.json")):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def make_tokens(out: Path, docs: list[dict], seq_len: int = 32, vocab_size: int = 500) -> Path:
    """Real token shards + manifest + tokenizer (what the curate flow writes) from real documents."""
    from pipeline import io
    from pipeline.config import TokenizerConfig, TokensConfig
    from pipeline.documents import docs_table
    from pipeline.tokenize import tokenize_part, train_tokenizer, write_manifest

    part = str(out.parent / "minhash" / "part-00000.parquet")
    rows = [{"id": f"doc{i}", "text": d["text"], "source": "s", "url": None, "meta": None} for i, d in enumerate(docs)]
    io.write_parquet(part, docs_table(rows))
    train_tokenizer([part], f"{out}/tokenizer.json", TokenizerConfig(vocab_size=vocab_size))
    cfg = TokensConfig(seq_len=seq_len, val_fraction=0.2)
    shards = tokenize_part(part, f"{out}/tokenizer.json", str(out), cfg)
    write_manifest(str(out), f"{out}/tokenizer.json", shards, cfg, source_docs=len(rows))
    return out


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
    from training.config import TrainConfig

    def make(stage: int, **kw) -> TrainConfig:
        return TrainConfig(**{"model": dict(n_layer=2, n_head=4, d_model=64), "zero_stage": stage, "nproc": 2,
                              "micro_batch": 4, "max_steps": 12, "warmup_steps": 2, "save_every": 4,
                              "log_every": 1, "threads_per_proc": 1, "keep_checkpoints": 2,
                              "activation_checkpointing": stage == 1, **kw})
    return make


@pytest.fixture(scope="session")
def trained_run(train_tokens, tiny_train_config):
    """trained_run(stage) -> a run directory (tokens/, train/) trained with tiny_train_config(stage);
    each stage is trained once per session and shared by the tests that need it."""
    from training.launch import run_job

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
