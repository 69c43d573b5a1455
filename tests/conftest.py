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
        if p.is_file() and not rel.startswith(("train/", "eval/")) and (
                p.suffix in (".parquet", ".arrow") or p.name in ("tokenizer.json", "manifest.json")):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
