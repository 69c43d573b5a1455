"""Shard-level resume bookkeeping: a part counts as done only through its commit marker and its
outputs, and a run id cannot be resumed under other settings."""
from __future__ import annotations

import pytest
from helpers import write_jsonl

from tokenmill.pipeline import storage
from tokenmill.pipeline.config import ReaderConfig
from tokenmill.pipeline.readers import read_file
from tokenmill.pipeline.stages import ConfigChanged, Step, check_stage_config, marker_url, part_step


def test_a_part_is_done_only_with_its_stats_file_and_outputs(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "one"}, "{bad", {"text": "two"}])
    run = str(tmp_path / "run")
    step = part_step("read", read_file, [dict(url=str(path), shard=0, run_dir=run, cfg=ReaderConfig())], run, "read",
                     lambda call: call["shard"])
    [call] = step.calls
    assert step.done(call) is None
    [stats] = step.run_serially()  # the task commits the part's stats as its marker
    assert step.done(call) == stats  # the marker holds what the task returned, errors and source too
    (tmp_path / "run" / "rejected" / "read" / "part-00000.parquet").unlink()
    assert step.done(call) is None  # an output has gone missing: redo the part


def test_a_step_commits_each_call_and_a_rerun_redoes_only_what_is_missing(tmp_path):
    ran = []

    def work(name: str, out_dir: str) -> dict:
        ran.append(name)
        storage.write_bytes(f"{out_dir}/{name}.txt", name.encode())
        return {"file": f"{name}.txt"}

    out = str(tmp_path)
    step = Step("work", work, [dict(name=n, out_dir=out) for n in ("a", "b", "c")],
                marker=lambda call: marker_url(out, call["name"]), outputs=lambda call, result: [f"{out}/{result['file']}"])
    first = step.run_serially()
    assert storage.read_json(f"{out}/_parts/b.json") == {"file": "b.txt"}  # written by the unit itself
    (tmp_path / "b.txt").unlink()  # an output lost
    (tmp_path / "_parts" / "c.json").unlink()  # a call killed before its commit
    assert step.run_serially() == first and ran == ["a", "b", "c", "b", "c"]


def test_other_settings_for_a_started_stage_are_refused_naming_the_difference(tmp_path):
    run = str(tmp_path / "run")
    settings = {"quality": {"gopher": {"min_words": 50, "stop_words": ["the", "be"]}}, "source": "read"}
    check_stage_config(run, "quality", settings)
    check_stage_config(run, "quality", settings)  # the same settings: resume
    assert storage.read_json(f"{run}/quality/_config.json") == settings
    changed = {"quality": {"gopher": {"min_words": 10, "stop_words": ["the", "be"]}}, "source": "read"}
    with pytest.raises(ConfigChanged, match=r"stage 'quality' was started with other settings "
                                            r"\(quality\.gopher\.min_words: 50 -> 10\)\. Use a new run id"):
        check_stage_config(run, "quality", changed)


def test_the_temporaries_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    import pyarrow as pa

    kept = storage.ParquetAppender(str(tmp_path / "quality" / "part-00000.parquet"), pa.schema([("x", pa.int64())]))
    kept.write(pa.table({"x": [1]}))
    kept.commit()
    killed = storage.ParquetAppender(str(tmp_path / "quality" / "part-00001.parquet"), pa.schema([("x", pa.int64())]))
    killed.write(pa.table({"x": [2]}))  # the process dies here: no commit, no abort
    storage.write_json(str(tmp_path / "quality" / "_parts" / "part-00000.json"), {})
    assert [p.name.startswith(".tmp-") for p in (tmp_path / "quality").iterdir() if p.is_file()].count(True) == 1
    assert storage.remove_temporaries(str(tmp_path / "quality")) == 1
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "quality/_parts/part-00000.json", "quality/part-00000.parquet"]
