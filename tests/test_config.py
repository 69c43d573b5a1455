import pytest
from pydantic import ValidationError

from tokenmill.flows.config import load_config


def test_yaml_then_overrides_then_fields(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  max_steps: 10\n  zero_stage: 1\ncurate:\n  dedup:\n    threshold: 0.7\n")
    cfg = load_config(str(path), ["train.max_steps=20", "curate.inputs=[a.jsonl, b.jsonl]"], run_id="r1", output_dir=str(tmp_path))
    assert cfg.train.max_steps == 20 and cfg.train.zero_stage == 1
    assert cfg.curate.dedup.threshold == 0.7 and cfg.curate.inputs == ["a.jsonl", "b.jsonl"]
    assert cfg.run_dir == f"{tmp_path}/r1"


def test_unknown_keys_and_bad_values_fail_clearly():
    with pytest.raises(ValidationError, match="max_stepz"):
        load_config(None, ["train.max_stepz=5"])
    with pytest.raises(ValidationError, match="zero_stage"):
        load_config(None, ["train.zero_stage=4"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        load_config(None, ["train.max_steps"])


def test_default_run_id_is_generated():
    cfg = load_config().with_run_id()
    assert cfg.run_id and cfg.run_dir.endswith(cfg.run_id)


def test_finetune_and_quality_model_sections():
    cfg = load_config(None, ["finetune.task=topics", "finetune.labels=[news, sport]", "curate.quality_model.threshold=0.3"])
    assert cfg.finetune.labels == ["news", "sport"] and not cfg.finetune.in_run
    assert cfg.curate.quality_model.threshold == 0.3 and cfg.curate.quality_model.classifier is None  # off by default
    with pytest.raises(ValidationError, match="task"):
        load_config(None, ["finetune.task=../elsewhere"])  # the task names a directory under the run
    steps = cfg.finetune.train_config(max_steps=40)
    assert (steps.max_steps, steps.warmup_steps, steps.nproc, steps.zero_stage) == (40, 4, 2, 2)
