"""The evaluate flow on a kept checkpoint and on the final weights of a tiny trained run (real Prefect,
real DeepSpeed checkpoints, a real offline lm-eval call on the local tasks), lm-eval's standard tasks by
name and the early-signal preset (their data built locally in each dataset's own format, read through
copies of lm-eval's own task YAMLs), a task whose data cannot be reached, and the report it writes:
report.html self-contained and escaped, every section present, checked in headless Chromium when there is one."""
from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from helpers import write_jsonl
from typer.testing import CliRunner

from tokenmill.flows.cli import app
from tokenmill.flows.config import RunConfig
from tokenmill.flows.report import artifact_key, compare_rows, write_reports
from tokenmill.training.config import EvalConfig

pytest.importorskip("lm_eval", reason="lm-eval is in the dev extra; pip install -e '.[dev]'")

XSS = "<script>alert('x')</script><img src=x onerror=alert(1)> The city"

_WORDS = ["river", "stone", "light", "paper", "garden", "window", "music", "winter", "bread", "horse", "candle", "forest"]


def _record(dataset: str, i: int) -> dict:
    """Document i of a tiny dataset in the format of the Hub dataset the standard task reads."""
    w = [_WORDS[(i + k) % len(_WORDS)] for k in range(6)]
    ends = [f"the {a} near the {b}" for a, b in itertools.pairwise(w[:5])]
    abc = {"text": ends, "label": ["A", "B", "C", "D"]}
    return {
        "hellaswag": {"activity_label": w[0], "ctx_a": f"A {w[1]} lies by the {w[2]}.", "ctx_b": "then it",
                      "endings": ends, "label": str(i % 4)},
        "winogrande": {"sentence": f"The {w[0]} is bigger than the {w[1]} because _ is old.", "option1": w[0],
                       "option2": w[1], "answer": str(1 + i % 2)},
        "piqa": {"goal": f"How to carry a {w[0]}?", "sol1": ends[0], "sol2": ends[1], "label": i % 2},
        "siqa": {"context": f"Sam found a {w[0]}.", "question": "What will Sam do?", "answerA": ends[0],
                 "answerB": ends[1], "answerC": ends[2], "label": str(1 + i % 3)},
        "openbookqa": {"question_stem": f"Where is the {w[0]}?", "choices": abc, "answerKey": "ABCD"[i % 4]},
        "arc": {"question": f"Which is near the {w[0]}?", "choices": abc, "answerKey": "ABCD"[i % 4]},
        "commonsense_qa": {"question": f"Where is a {w[0]} kept?", "answerKey": "ABCDE"[i % 5],
                           "choices": {"text": ends + [w[5]], "label": list("ABCDE")}},
        "mmlu": {"question": f"What is a {w[0]}?", "subject": "anatomy", "choices": ends, "answer": i % 4},
    }[dataset]


# standard task -> (dataset format, the lm-eval task to copy); the mmlu_continuation group is copied with one subject
_STANDARD = {"hellaswag": "hellaswag", "winogrande": "winogrande", "piqa": "piqa", "social_iqa": "siqa",
             "openbookqa": "openbookqa", "arc_easy": "arc", "arc_challenge": "arc", "commonsense_qa": "commonsense_qa",
             "mmlu_anatomy_continuation": "mmlu"}


def local_standard_tasks(out: Path, docs: int = 6) -> Path:
    """lm-eval task YAMLs that `include` lm-eval's own YAML of each early-signal task (same name, same prompt,
    metrics and processing) with the dataset read from local JSONL in the Hub dataset's format: what a user
    on a cluster without network points evaluate.lm_eval_include at."""
    from lm_eval.tasks import TaskManager

    index = TaskManager().task_index
    out.mkdir(parents=True)
    for task, dataset in _STANDARD.items():
        data = write_jsonl(out / f"{task}.jsonl", [_record(dataset, i) for i in range(docs)])
        split_files = {split: str(data) for split in ("train", "validation", "test", "dev")}
        (out / f"{task}.yaml").write_text(yaml.safe_dump({
            "include": str(index[task].yaml_path), "task": task, "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": split_files}}))
    (out / "mmlu_continuation.yaml").write_text(yaml.safe_dump({
        "group": "mmlu_continuation", "task": ["mmlu_anatomy_continuation"],
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}], "metadata": {"version": 2}}))
    return out


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory):
    """A copy of the ZeRO-2 tiny run (checkpoints at steps 8 and 12), evaluated at step 8 and at the end."""
    from tokenmill.flows.evaluate import evaluate
    from tokenmill.flows.server import prefect_api

    src = trained_run(2)
    run_dir = tmp_path_factory.mktemp("evaluated") / "r"
    run_dir.mkdir()
    (run_dir / "tokens").symlink_to(Path(src / "tokens").resolve())
    shutil.copytree(src / "train", run_dir / "train")
    config = RunConfig(output_dir=str(run_dir.parent), run_id="r", evaluate=EvalConfig(
        max_val_rows=16, max_new_tokens=6, prompts=[XSS, "In this article"], lm_eval_limit=24, lm_eval_batch_size=8))
    # the early-signal preset on a copy of the run, its tasks' data local (lm_eval_include)
    standard_dir = run_dir.parent / "s"
    standard_dir.mkdir()
    (standard_dir / "tokens").symlink_to(Path(src / "tokens").resolve())
    shutil.copytree(src / "train", standard_dir / "train")
    include = local_standard_tasks(run_dir.parent / "standard_tasks")
    standard = config.model_copy(update={"run_id": "s", "evaluate": config.evaluate.model_copy(update={
        "lm_eval_tasks": ["early-signal"], "lm_eval_include": [str(include)], "lm_eval_limit": 4})})
    with prefect_api():
        at_step = evaluate(config, checkpoint=8)
        final = evaluate(config)
        local_wrote_home_cache = (Path(os.environ["HOME"]) / ".cache" / "huggingface").exists()
        early = evaluate(standard)
    return run_dir, at_step, final, standard_dir, early, local_wrote_home_cache


def test_a_kept_checkpoint_is_evaluated_apart_from_the_final_weights(evaluated):
    run_dir, at_step, final, _, _, _ = evaluated
    step = json.loads((run_dir / "eval" / "step-8" / "_stats.json").read_text())
    assert step["step"] == 8 and at_step["step"] == 8 and final["step"] is None
    assert json.loads((run_dir / "eval" / "_stats.json").read_text())["step"] is None  # not overwritten by the step eval
    # step 8 of 12 is a different model: same data, different loss; both better than untrained
    assert step["val_loss"] != final["val_loss"]
    assert step["val_perplexity"] < step["untrained_val_perplexity"] and final["val_perplexity"] < final["untrained_val_perplexity"]
    assert (run_dir / "eval" / "step-8" / "export" / "model.safetensors").exists()
    header, rows = compare_rows([str(run_dir)])
    assert [r[0] for r in rows] == ["r@step8", "r"] and "cloze_acc" in header


def test_lm_eval_runs_offline_on_the_local_tasks(evaluated):
    run_dir, at_step, final, _, _, local_wrote_home_cache = evaluated
    for result in (at_step["lm_eval"], final["lm_eval"]):
        for model in ("trained", "untrained"):
            cloze, wikitext = result[model]["tokenmill_cloze"], result[model]["tokenmill_wikitext"]
            assert 0 <= cloze["acc"] <= 1 and cloze["samples"] == 24
            assert math.isfinite(wikitext["word_perplexity"]) and wikitext["bits_per_byte"] > 0
        # rolling loglikelihood of WikiText articles: the trained model predicts text better than random init
        assert result["trained"]["tokenmill_wikitext"]["bits_per_byte"] < result["untrained"]["tokenmill_wikitext"]["bits_per_byte"]
    raw = json.loads((run_dir / "eval" / "lm_eval.json").read_text())
    assert set(raw["trained"]["results"]) == {"tokenmill_cloze", "tokenmill_wikitext"}
    assert (run_dir / "export" / "config.json").exists()  # lm-eval scored the run's export
    assert final["lm_eval"]["offline"] and raw["trained"]["offline"]  # bundled tasks only: no Hub access
    assert "HF_HUB_OFFLINE" not in os.environ  # ... for that call only
    assert not local_wrote_home_cache  # the bundled tasks' datasets cache stays in the run
    assert not (run_dir / "eval" / "lm_eval_work").exists()


def test_early_signal_preset_runs_lm_evals_own_tasks_by_name(evaluated):
    """The preset expands to the FineWeb suite; each standard task runs under its own name with lm-eval's own
    prompt and metrics; accuracy comes with its standard error, acc and acc_norm both where lm-eval defines them."""
    from tokenmill.training.eval_sets import PRESETS

    _, _, _, standard_dir, early, _ = evaluated
    lm = early["lm_eval"]
    assert lm["tasks"] == PRESETS["early-signal"] and not lm["offline"]
    for model in ("trained", "untrained"):
        assert list(lm[model]) == PRESETS["early-signal"]
        for task, metrics in lm[model].items():
            assert 0 <= metrics["acc"] <= 1 and metrics["acc_stderr"] >= 0, (task, metrics)
            assert metrics["samples"] == 4, (task, metrics)  # the limit per task (mmlu: its one local subject)
    for task in ("hellaswag", "piqa", "arc_easy", "arc_challenge", "openbookqa"):
        assert {"acc_norm", "acc_norm_stderr"} <= set(lm["trained"][task])
    stats = json.loads((standard_dir / "eval" / "_stats.json").read_text())
    assert stats["lm_eval"]["trained"]["hellaswag"]["acc_stderr"] == lm["trained"]["hellaswag"]["acc_stderr"]
    page = (standard_dir / "report.html").read_text()
    assert "hellaswag" in page and "acc_norm" in page and "±" in page and "mmlu_continuation" in page
    header, rows = compare_rows([str(standard_dir)])
    assert "hellaswag acc_norm" in header and "winogrande acc" in header
    cell = rows[-1][header.index("hellaswag acc_norm")]
    assert re.fullmatch(r"[01]\.\d{3} ± 0\.\d{3}", cell), cell


def test_a_task_whose_data_cannot_be_reached_fails_in_one_line(evaluated, tmp_path, monkeypatch):
    import lm_eval.tasks

    from tokenmill.training.harness import TaskDataError, run_tasks

    run_dir, _, _, _, _, _ = evaluated
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # no network in tests: the cache is all there is
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # lm-eval's own arc_easy, unchanged, from an include directory (spares indexing all of lm-eval's tasks)
    (tmp_path / "tasks").mkdir()
    arc_easy = Path(lm_eval.tasks.__file__).parent / "arc" / "arc_easy.yaml"
    (tmp_path / "tasks" / "arc_easy.yaml").write_text(yaml.safe_dump({"include": str(arc_easy), "task": "arc_easy"}))
    with pytest.raises(TaskDataError) as e:
        run_tasks(run_dir / "export", ["arc_easy"], [str(tmp_path / "tasks")], tmp_path / "work", 2, 2, 0)
    message = str(e.value)
    assert "\n" not in message and message.startswith("lm-eval task 'arc_easy': its data (allenai/ai2_arc/ARC-Easy)")
    assert "offline" in message and "Pre-fetch" in message and "lm_eval_include" in message


def test_missing_checkpoint_step_is_a_clear_error(evaluated):
    run_dir, _, _, _, _, _ = evaluated
    for args in (["evaluate", "--run-id", "r", "--output-dir", str(run_dir.parent), "--checkpoint", "5"],
                 ["export", str(run_dir), "--out", str(run_dir / "hf5"), "--checkpoint", "5"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code in (1, 2), result.output
        output = " ".join(result.output.split())  # rich wraps long lines
        assert "no checkpoint of step 5" in output and "kept steps: 8, 12" in output
    assert not (run_dir / "eval" / "step-5").exists()


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [(tag, k, v or "") for k, v in attrs if k in ("src", "href", "srcset", "action", "data")]


def _finetune_metrics(run_dir: Path) -> None:
    """A fine-tune result in the fine-tune flow's contract (labels from data: escaped like everything else)."""
    def model(acc):
        score = {"mean": acc, "std": 0.05}
        return {"accuracy": score, "macro_precision": score, "macro_recall": score, "macro_f1": score,
                "folds": [dict.fromkeys(("accuracy", "macro_precision", "macro_recall", "macro_f1"), acc)] * 5,
                "confusion": [[35, 15], [15, 35]]}
    out = run_dir / "finetune" / "quality"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({
        "task": "quality", "labels": ["<b>good</b>", "bad"], "docs": 100, "classifier": "ngram", "folds": 5, "seed": 1,
        "fold_docs": [20] * 5, "models": {"ngram": model(0.8), "pretrained": model(0.7), "random_init": model(0.55),
                                          "majority": model(0.5)}}))


def test_report_html_is_self_contained_escaped_and_has_every_section(evaluated):
    run_dir, _, _, _, _, _ = evaluated
    _finetune_metrics(run_dir)
    write_reports(str(run_dir))  # what the fine-tune flow calls at its end
    page = (run_dir / "report.html").read_text()
    links = _Links()
    links.feed(page)
    for tag, attr, value in links.refs:
        assert value.startswith("#") or (tag == "img" and attr == "src" and value.startswith("data:image/png;base64,")), (tag, attr, value[:80])
    assert links.tags.count("img") == 1  # the training curves (this run has no dedup stage)
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "<b>good</b>" not in page and "&lt;b&gt;good&lt;/b&gt;" in page
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings == ["Summary", "Training", "Evaluation", "Checkpoint evaluations", "Samples", "Fine-tune", "Config", "Environment"]
    assert "lm-evaluation-harness" in page and "tokenmill_cloze" in page and "git commit" in page
    md = (run_dir / "report.md").read_text()
    assert re.findall(r"^## (.*)$", md, flags=re.M) == headings
    assert "| macro F1 |" in md and "![training loss and learning rate per step](report_files/training_curves.png)" in md
    assert (run_dir / "report_files" / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    shutil.rmtree(run_dir / "finetune")
    write_reports(str(run_dir))


def test_report_renders_in_headless_chromium(evaluated, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium) to render report.html")
    run_dir, _, _, _, _, _ = evaluated
    from bench.report_screenshot import screenshot

    shot = screenshot(run_dir / "report.html", tmp_path / "report.png", chromium=chromium)
    assert shot["png_bytes"] > 20_000 and shot["images"] == shot["images_decoded"] >= 1
    assert {"Summary", "Evaluation", "Samples", "Environment"} <= set(shot["headings"])


def test_artifact_keys_are_ones_prefect_accepts():
    from prefect.client.schemas.actions import ArtifactCreate

    key = artifact_key("finetune", "Run_1.2 final", "dclm-quality")
    assert key == "finetune-run-1-2-final-dclm-quality"
    ArtifactCreate(key=key, type="table", data=[])  # Prefect's own check: lowercase letters, digits, dashes
