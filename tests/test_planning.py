"""Planning is metadata: input listing and shard planning open no file unless a file has to be read to
be split (a compressed file that could hold more than shard_bytes, however many files there are), and
that reading is a step of its own (tasks, not the driver)."""
from __future__ import annotations

import gzip
import json
import random

from fsspec.implementations.local import LocalFileSystem
from helpers import write_jsonl

from tokenmill.pipeline import storage
from tokenmill.pipeline.readers import list_inputs, plan_shards
from tokenmill.pipeline.stages import Step, bundles, marker_url

TEXT = "The committee met on Tuesday to discuss the budget for the coming year. " * 20


def test_ten_thousand_inputs_are_planned_without_opening_one(tmp_path, monkeypatch):
    for i in range(10_000):
        (tmp_path / f"f{i:05d}.jsonl.gz").write_bytes(b"x" * 64)  # not even valid gzip: planning must not look
    opened = []
    monkeypatch.setattr(LocalFileSystem, "_open", lambda self, path, *a, **k: opened.append(path))
    files = list_inputs([str(tmp_path)])
    # 64 compressed bytes cannot plausibly hold 1 KB (MIN_EXPANSION): no file needs measuring
    shards = plan_shards(files, shard_bytes=1024, index_dir=str(tmp_path / "_index"))
    assert len(shards) == 10_000 and not opened and all(s["end"] is None for s in shards)
    assert [s["url"] for s in shards] == sorted(files) and set(files.values()) == {64}


def test_compressed_files_that_could_exceed_shard_bytes_are_measured_by_a_step_and_split(tmp_path):
    words, rng = TEXT.split(), random.Random(0)  # shuffled words: gzip cannot shrink it past MIN_EXPANSION
    lines = b"".join(json.dumps({"text": " ".join(rng.sample(words, len(words)))}).encode() + b"\n" for _ in range(300))
    (tmp_path / "big.jsonl.gz").write_bytes(gzip.compress(lines))
    write_jsonl(tmp_path / "plain.jsonl", [{"text": f"{TEXT} {i}"} for i in range(40)])
    (tmp_path / "small.jsonl.gz").write_bytes(gzip.compress(lines[:1000]))  # < 50,000 / MIN_EXPANSION: one shard
    files, index_dir, ran = list_inputs([str(tmp_path)]), str(tmp_path / "_index"), []

    def run(step: Step) -> list:
        ran.append((step.name, [c["url"].rsplit("/", 1)[1] for c in step.calls]))
        return step.run_serially()

    shards = plan_shards(files, 50_000, index_dir, run=run)
    assert ran == [("plan", ["big.jsonl.gz"])]  # only the file that must be read to be split; plain.jsonl by its size
    small = str(tmp_path / "small.jsonl.gz")
    assert [s for s in shards if s["url"] == small] == [{"url": small, "start": 0, "end": None}]
    big = [s for s in shards if s["url"].endswith("big.jsonl.gz")]
    assert len(big) == -(-len(lines) // 50_000) and all("index" in s for s in big) and big[-1]["end"] is None
    assert len([s for s in shards if s["url"].endswith("plain.jsonl")]) == -(-files[str(tmp_path / "plain.jsonl")] // 50_000)
    # a second planning: the same shards, the plan step's markers skip the measuring
    assert plan_shards(files, 50_000, index_dir, run=run) == shards and ran[1][1] == ["big.jsonl.gz"]
    # many files: the part is still capped at shard_bytes, the big file measured and split as when alone
    for i in range(8):
        write_jsonl(tmp_path / f"more-{i}.jsonl", [{"text": f"{TEXT} {i}"}])
    many = plan_shards(list_inputs([str(tmp_path / "*.jsonl*")]), 50_000, index_dir, run=run)
    assert [s for s in many if "big" in s["url"]] == big and len(ran) == 3


def test_a_bundle_runs_each_call_once_and_commits_each(tmp_path):
    assert bundles(list(range(10)), 4) == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]] and bundles([1], 5) == [[1]]
    ran, out = [], str(tmp_path)

    def work(name: str) -> dict:
        ran.append(name)
        if name == "c" and ran.count("c") == 1:
            raise OSError("worker lost")
        return {"name": name}

    step = Step("work", work, [{"name": n} for n in "abcd"], marker=lambda call: marker_url(out, call["name"]))
    run_bundle = step.bundle()
    try:
        run_bundle(step.calls)
    except OSError:
        pass
    assert run_bundle(step.calls) == [{"name": n} for n in "abcd"]  # the retried bundle redoes only c and d
    assert ran == ["a", "b", "c", "c", "d"] and storage.read_json(marker_url(out, "d")) == {"name": "d"}
