"""`tokenmill dedup` as a user runs it, on a real Prefect server and real local Ray: its output
contract, and the distributed path with 4 partitions giving exactly the result of 1 partition in one process."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from helpers import CORPUS, write_jsonl

from tokenmill.flows.server import start_server, stop_server
from tokenmill.pipeline import dedup
from tokenmill.pipeline.config import DedupConfig

pytestmark = pytest.mark.slow

ZH = ("联合国大会今天通过了一项关于可持续发展的决议，呼吁各国加强合作，共同应对气候变化带来的挑战。"
      "决议强调，发达国家应当向发展中国家提供资金和技术支持，帮助其实现减排目标。"
      "与会代表一致认为，国际社会必须采取紧急行动，保护地球生态环境，造福子孙后代。")


def _edit(text: str, seed: int) -> str:
    words = text.split()
    rng = random.Random(seed)
    for _ in range(3):
        words[rng.randrange(len(words))] = "lorem"
    return "Home | News | Contact\n" + " ".join(words) + "\nCopyright 2019. All rights reserved."


def _inputs(tmp_path):
    c4 = [json.loads(line)["text"] for line in (CORPUS / "datajuicer_redpajama_c4_10docs.jsonl").read_text().splitlines()]
    cc = [json.loads(line)["text"] for line in (CORPUS / "datajuicer_redpajama_cc_2023_06_10docs.jsonl").read_text().splitlines()]
    # Records carry their own id under "doc_id"; the line order is not the id order.
    first = [{"doc_id": f"c4-{i:02d}", "text": t} for i, t in enumerate(c4)] + [{"doc_id": "zh-1", "text": ZH}]
    second = [{"doc_id": f"cc-{i:02d}", "text": t} for i, t in enumerate(cc)] + [
        {"doc_id": "a-near-c4-05", "text": _edit(c4[5], 1)},  # lower id than its original: it is kept (long page: ~0.95 similar)
        {"doc_id": "z-copy-cc-03", "text": cc[3].upper()},  # the same text after normalisation
        {"doc_id": "zh-2", "text": ZH.replace("今天", "昨天") + "来源：新华网"},
    ]
    third = [{"doc_id": "cc-05-near", "text": _edit(cc[5], 5)}, {"doc_id": "cc-05-copy", "text": cc[5]}]
    return [str(write_jsonl(tmp_path / name, recs)) for name, recs in (("a.jsonl", first), ("b.jsonl", second), ("c.jsonl", third))]


EXPECTED = [
    {"id": "c4-05", "reason": "dedup.near", "duplicate_of": "a-near-c4-05"},
    {"id": "cc-05-copy", "reason": "dedup.exact", "duplicate_of": "cc-05"},
    {"id": "cc-05-near", "reason": "dedup.near", "duplicate_of": "cc-05"},
    {"id": "z-copy-cc-03", "reason": "dedup.exact", "duplicate_of": "cc-03"},
    {"id": "zh-2", "reason": "dedup.near", "duplicate_of": "zh-1"},
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dedup-cli")
    inputs = _inputs(tmp)
    api = start_server(home=str(tmp / "prefect-home"))
    try:
        out = tmp / "out"
        args = [*inputs, "--out", str(out), "--threshold", "0.8", "--num-perm", "128", "--ngram", "5", "--exact",
                "--id-key", "doc_id", "--set", "curate.dedup.partitions=4", "--set", "ray.num_cpus=2",
                "--set", "ray.dashboard=false"]
        proc = subprocess.run([sys.executable, "-m", "tokenmill.flows.cli", "dedup", *args], check=False, cwd=tmp,
                              env={**os.environ, "PREFECT_API_URL": api.url}, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    finally:
        stop_server(api)
    return out, proc.stdout


def _rows(directory, columns):
    return sorted((r for p in sorted(directory.glob("part-*.parquet")) for r in pq.read_table(p, columns=columns).to_pylist()),
                  key=lambda r: r["id"])


def test_dedup_cli_writes_kept_and_rejected_docs_with_their_own_ids(run):
    out, stdout = run
    kept = [r["id"] for r in _rows(out / "dedup", ["id"])]
    rejected = _rows(out / "rejected" / "dedup", ["id", "reason", "duplicate_of"])
    assert rejected == EXPECTED
    assert len(kept) == 11 + 13 + 2 - len(EXPECTED) and "a-near-c4-05" in kept and "zh-1" in kept
    assert {r["duplicate_of"] for r in rejected} <= set(kept)  # every duplicate points at a kept doc
    stats = json.loads((out / "dedup" / "_stats.json").read_text())
    assert stats["docs_in"] == 26 and stats["rejected"] == {"dedup.exact": 2, "dedup.near": 3}
    assert stats["partitions"] == 4 and (stats["bands"], stats["rows"]) == (12, 10)
    assert stats["cluster_sizes"] == {"2": 3, "3": 1}
    assert (out / "dedup" / "_SUCCESS").exists() and not (out / "dedup" / "_work" / "bands").exists()
    assert "duplicates removed (exact + near)" in stdout


def test_four_partitions_on_ray_give_the_same_result_as_one_in_one_process(run, tmp_path):
    """The CLI's 4 hash partitions, as Ray tasks, against every step of the same plan with 1 partition
    run here in order (dedup.run_local) on the CLI run's own read parts."""
    out = run[0]
    cfg = DedupConfig(threshold=0.8, num_perm=128, ngram=5, exact=True, partitions=1)
    summary = dedup.run_local(sorted(str(p) for p in (out / "read").glob("part-*.parquet")), str(tmp_path), cfg)
    assert summary["partitions"] == 1
    for what in (("dedup", ["id"]), ("rejected/dedup", ["id", "reason", "duplicate_of"])):
        assert _rows(out / what[0], what[1]) == _rows(tmp_path / what[0], what[1])
