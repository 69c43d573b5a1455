"""The package's shape (docs/architecture.md): one `tokenmill` namespace, layers that import only what
they may, and entry points that do not pay for torch."""
from __future__ import annotations

import ast
import subprocess
import sys

from helpers import REPO

HEAVY = ("torch", "deepspeed", "transformers", "lm_eval")


def imports(*folders: str) -> list[tuple[str, str]]:
    """(file, imported module) for every absolute import under `folders`; `from a import b` gives a.b."""
    found = []
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [f"{node.module}.{a.name}" for a in node.names]
                else:
                    continue
                found += [(str(path.relative_to(REPO)), name) for name in names]
    return found


def test_every_import_of_the_project_goes_through_the_namespace():
    top = {"flows", "pipeline", "training"}
    assert [(f, m) for f, m in imports("flows", "pipeline", "training", "tests", "bench") if m.split(".")[0] in top] == []


def test_pipeline_imports_neither_prefect_nor_torch_nor_the_other_layers():
    banned = ("prefect", "prefect_ray", *HEAVY, "tokenmill.flows", "tokenmill.training")
    assert [(f, m) for f, m in imports("pipeline") if m.startswith(banned)] == []


def test_training_reads_the_data_side_through_its_contracts_only():
    allowed = ("tokenmill.pipeline.contracts.", "tokenmill.pipeline.storage")
    # the model-based quality filter is a curate stage: it writes parts like the others
    curate_stage = ("tokenmill.pipeline.config.", "tokenmill.pipeline.stages.")
    wrong = [(f, m) for f, m in imports("training") if m.startswith(("tokenmill.pipeline", "tokenmill.flows", "prefect"))
             and not m.startswith(allowed) and not (f == "training/quality_model.py" and m.startswith(curate_stage))]
    assert wrong == []


def test_the_cli_and_every_flow_import_without_torch():
    code = ("import sys, tokenmill.flows.cli, tokenmill.flows.curate, tokenmill.flows.end_to_end; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
