"""Shard-level resume bookkeeping: a part counts as done only through its commit marker and its
outputs, and a run id cannot be resumed under other settings."""
from __future__ import annotations

import pytest
from helpers import write_jsonl
from tokenmill.pipeline import storage
from tokenmill.pipeline.config import ReaderConfig
from tokenmill.pipeline.readers import read_file
from tokenmill.pipeline.stages import (
    ConfigChanged,
    check_stage_config,
    finished_part,
    part_step,
)


def test_a_part_is_done_only_with_its_stats_file_and_outputs(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "one"}, "{bad", {"text": "two"}])
    run = str(tmp_path / "run")
    step = part_step("read", read_file, [dict(url=str(path), shard=0, run_dir=run, cfg=ReaderConfig())], run, "read",
                     lambda call: call["shard"])
    assert finished_part(run, "read", 0) is None and step.done(step.calls[0]) is None
    [stats] = step.run_serially()  # the task commits the part's stats as its marker
    assert finished_part(run, "read", 0) == stats  # the marker holds what the task returned, errors and source too
    (tmp_path / "run" / "rejected" / "read" / "part-00000.parquet").unlink()
    assert finished_part(run, "read", 0) is None  # an output has gone missing: redo the part


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
