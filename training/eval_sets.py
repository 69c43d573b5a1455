"""The evaluation sets a run is scored on: lm-eval task names (bundled local tasks, lm-eval's own tasks and
groups, presets), the lm-eval TaskManager that finds them, and their text for the curate flow's
decontamination (contracts.write_eval_texts). Importing this module imports neither torch nor lm-eval.

Presets (`evaluate.lm_eval_tasks: [early-signal]`):

early-signal  the small-model suite FineWeb (Penedo et al. 2024) compared data recipes on, 0-shot. Each
              is a multiple-choice loglikelihood task; `acc` scores the choice's summed log-probability,
              `acc_norm` the per-character one (fairer to long choices).
  hellaswag          commonsense sentence completion of activity descriptions; above chance (25%) from
                     ~100M params and a few billion tokens: one of the earliest, steadiest signals
  winogrande         pronoun resolution needing world knowledge (2 choices); stays near chance (50%)
                     for models below ~1B, so it mostly separates larger runs
  piqa               physical commonsense: which of two solutions achieves a goal; early signal
                     (~60%+ at ~100M params vs 50% chance)
  social_iqa         SIQA, reasoning about people's motivations and reactions (3 choices); slow, small gains
  openbookqa         elementary science questions (4 choices); noisy, a few points above chance at small scale
  arc_easy           grade-school science questions, easy set (4 choices); early, clear signal
  arc_challenge      the questions retrieval and co-occurrence methods fail (4 choices); near chance below ~1B
  commonsense_qa     commonsense questions (5 choices); lm-eval scores it as lettered multiple choice
                     (A-E), which small models answer at chance; FineWeb used a cloze form
  mmlu_continuation  MMLU's 57 subjects as cloze (the answer text continues the question, as FineWeb's
                     MMLU cloze); lettered MMLU (`mmlu`) stays at chance (25%) below several billion params
Use `evaluate.lm_eval_limit` (documents per task) to bound the time: the full suite is ~50k documents.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import yaml

from tokenmill.pipeline.contracts import write_eval_texts as write_texts

TASKS_DIR = Path(__file__).parent / "data" / "lm_eval"
HELDOUT = Path(__file__).parent / "data" / "heldout" / "wikitext2_valid_head.txt"
HELDOUT_SET = "heldout"

PRESETS: dict[str, list[str]] = {
    "early-signal": ["hellaswag", "winogrande", "piqa", "social_iqa", "openbookqa", "arc_easy", "arc_challenge",
                     "commonsense_qa", "mmlu_continuation"],
}

_HF_OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_EVALUATE_OFFLINE")


def local_tasks() -> list[str]:
    """The bundled tasks (training/data/lm_eval/*.yaml): local JSONL data, no downloads."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def expand(names: list[str]) -> list[str]:
    """Task names with presets expanded, in order, each once."""
    out: list[str] = []
    for name in names:
        for task in PRESETS.get(name, [name]):
            if task not in out:
                out.append(task)
    return out


def write_local_tasks(out_dir: Path, cache_dir: Path) -> Path:
    """The bundled task YAMLs with their data files made absolute and the datasets cache pointed at
    `cache_dir` (nothing written under $HOME), as an lm-eval include directory."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for src in TASKS_DIR.glob("*.yaml"):
        task = yaml.safe_load(src.read_text())
        kwargs = task.setdefault("dataset_kwargs", {})
        kwargs["data_files"] = {split: str(TASKS_DIR / f) for split, f in kwargs["data_files"].items()}
        kwargs["cache_dir"] = str(cache_dir)
        (out_dir / src.name).write_text(yaml.safe_dump(task, sort_keys=False))
    return out_dir


def task_manager(tasks: list[str], include: list[str], work_dir: Path):
    """lm-eval's TaskManager over the bundled tasks, then `include` (task YAML directories: the user's own
    tasks, or local copies of standard ones, which win over lm-eval's of the same name), with lm-eval's
    own tasks first only when a task is not found in those (indexing them all takes seconds)."""
    from lm_eval.tasks import TaskManager

    paths = [str(write_local_tasks(work_dir / "tasks", work_dir / "datasets")), *map(str, include)]
    manager = TaskManager(include_path=paths, include_defaults=False)
    missing = [t for t in tasks if t not in manager.all_tasks]
    if missing:
        manager = TaskManager(include_path=paths, include_defaults=True)
        unknown = [t for t in missing if t not in manager.all_tasks]
        if unknown:
            raise ValueError(f"evaluate.lm_eval_tasks: unknown task or group {unknown}: not a preset "
                             f"({sorted(PRESETS)}), a bundled task ({local_tasks()}), a task in "
                             f"evaluate.lm_eval_include {include}, nor one of lm-eval's (`lm-eval ls tasks`)")
    return manager


@contextmanager
def hf_offline(offline: bool):
    """With `offline`, no Hub access from datasets/transformers for the block (the bundled tasks and a
    local model need none); otherwise the user's settings (HF_HOME, HF_HUB_OFFLINE...) as they are."""
    if not offline:
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    saved_env = {k: os.environ.get(k) for k in _HF_OFFLINE}
    saved = (datasets.config.HF_DATASETS_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    os.environ.update(dict.fromkeys(_HF_OFFLINE, "1"))
    # the libraries read the variables at import; set their constants too in case one was imported before
    datasets.config.HF_DATASETS_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_DATASETS_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def doc_texts(task):
    """The text of each evaluation document of an lm-eval task as it would appear in a web page: the
    prompt followed by the correct answer (the context a loglikelihood task scores, for the others)."""
    for doc in task.eval_docs:
        text, target = task.doc_to_text(doc), task.doc_to_target(doc)
        choices = task.doc_to_choice(doc) if task.OUTPUT_TYPE == "multiple_choice" else None
        if isinstance(text, int) and choices:  # winogrande: the choices are contexts, the target the rest
            text = choices[text]
        elif choices and isinstance(target, int) and 0 <= target < len(choices):
            target = choices[target]
        elif choices and isinstance(target, list):
            target = choices[target[0]] if target and isinstance(target[0], int) else " ".join(map(str, target))
        yield " ".join(str(x) for x in (text, target) if x not in (None, ""))


def bundled_texts(name: str):
    """doc_texts for a bundled task, read from its JSONL with its YAML's templates (jinja2, as lm-eval renders
    them) without importing lm-eval: the default run's decontamination costs milliseconds."""
    import ast
    import json

    import jinja2

    task = yaml.safe_load((TASKS_DIR / f"{name}.yaml").read_text())
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    text, target = env.from_string(task.get("doc_to_text", "")), env.from_string(task.get("doc_to_target", ""))
    choice = env.from_string(task["doc_to_choice"]) if task.get("output_type") == "multiple_choice" else None
    for data_file in task["dataset_kwargs"]["data_files"].values():
        with open(TASKS_DIR / data_file, encoding="utf-8") as f:
            for line in f:
                doc = json.loads(line)
                gold = target.render(doc)
                if choice is not None:
                    gold = ast.literal_eval(choice.render(doc))[int(gold)]
                yield task.get("target_delimiter", " ").join(x for x in (text.render(doc), gold) if x)


def write_eval_texts(out_url: str, tasks: list[str], include: list[str], heldout: bool) -> dict:
    """The text of the run's evaluation sets (the configured lm-eval tasks' documents and, with `heldout`,
    evaluate's held-out text) into `out_url` for decontamination. Offline: a standard task whose data is not
    on this machine (HF cache, an include directory) is listed as missing rather than fetched."""
    import tempfile

    tasks = expand(tasks)
    sets: dict[str, int] = {}
    missing: dict[str, str] = {}

    def records():
        if heldout:
            sets[HELDOUT_SET] = 1
            yield HELDOUT_SET, HELDOUT.read_text(encoding="utf-8")
        bundled = [t for t in tasks if t in local_tasks() and not include]  # an include may redefine a name
        for name in bundled:
            for text in bundled_texts(name):
                sets[name] = sets.get(name, 0) + 1
                yield name, text
        standard = [t for t in tasks if t not in bundled]
        if not standard:
            return
        with hf_offline(True), tempfile.TemporaryDirectory(prefix="tokenmill-eval-texts-") as work_dir:
            manager = task_manager(standard, include, Path(work_dir))
            for name in standard:
                try:
                    built = manager.load([name])["tasks"]
                except Exception as e:  # noqa: BLE001 - any loader error means: data not here
                    missing[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                    continue
                for leaf in built.values():
                    for text in doc_texts(leaf):
                        sets[name] = sets.get(name, 0) + 1
                        yield name, text

    count = write_texts(out_url, records())
    return {"texts": count, "per_set": sets, "missing": missing}
