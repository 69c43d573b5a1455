"""RunConfig: the one configuration of a tokenmill run, composed of each package's section.

Loaded from YAML (`--config run.yaml`), then overridden from the CLI with dotted keys
(`--set train.max_steps=50 --set curate.dedup.threshold=0.7`).
"""
from __future__ import annotations

import datetime as dt
import re
from functools import partial
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from tokenmill.pipeline import storage
from tokenmill.pipeline.config import CurateConfig
from tokenmill.training.config import EvalConfig, FinetuneConfig, TrainConfig


class RayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(None, description="existing cluster (ray://host:10001 or host:6379); local Ray when unset")
    num_cpus: int | None = Field(None, description="CPUs of the local Ray instance (default: all)")
    dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    max_in_flight: int = Field(8, ge=1, description="tasks submitted at once per stage")
    tasks_per_step: int = Field(0, ge=0, description="Prefect task runs per step at most, each a bundle of consecutive "
                                "units of work (bounds orchestration cost whatever the number of parts); 0: 4 x max_in_flight")

    @property
    def max_tasks(self) -> int:
        return self.tasks_per_step or 4 * self.max_in_flight


class PrefectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep_server: bool = Field(False, description="leave the local Prefect server up after the run, to browse it")
    host: str = "127.0.0.1"
    startup_timeout_s: int = 120
    task_retries: int = Field(2, ge=0, description="retries of a task that fails (storage or worker errors)")
    retry_delay_s: float = Field(2.0, ge=0)


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output_dir: str = "runs"
    run_id: Annotated[str, AfterValidator(partial(storage.check_name, what="run id"))] | None = None
    curate: CurateConfig = CurateConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvalConfig = EvalConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    ray: RayConfig = RayConfig()
    prefect: PrefectConfig = PrefectConfig()

    @model_validator(mode="after")
    def _multi_node_paths(self) -> "RunConfig":
        # With a hostfile the run directory goes into the command DeepSpeed's pdsh runner sends to every
        # node, quoting only arguments with spaces: a '$(...)' or ';' in it would run there.
        out = self.output_dir if "://" in self.output_dir else str(Path(self.output_dir).resolve())
        if (self.train.hostfile or self.finetune.hostfile) and not re.fullmatch(r"[\w./:@+=,-]+", out):
            raise ValueError(f"output_dir {out!r}: with a hostfile it is sent to every node in a shell command; "
                             "use letters, digits and _ . / : @ + = , - only")
        return self

    def with_run_id(self) -> "RunConfig":
        if self.run_id:
            return self
        # microseconds: two runs started in the same second get two ids (the run lock refuses the rest)
        return self.model_copy(update={"run_id": dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")})

    @property
    def run_dir(self) -> str:
        if not self.run_id:
            raise ValueError("run_id is not set")
        out = self.output_dir if "://" in self.output_dir else str(Path(self.output_dir).resolve())
        return f"{out.rstrip('/')}/{self.run_id}"


def _set_dotted(data: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {key}: {p!r} is not a section")
    node[leaf] = value


def load_config(path: str | None = None, overrides: list[str] | None = None, **fields) -> RunConfig:
    """YAML file (optional) < `KEY=VALUE` overrides (values parsed as YAML) < explicit fields."""
    data: dict = {}
    if path:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. train.max_steps=50")
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
    for key, value in fields.items():
        if value is not None:
            _set_dotted(data, key, value)
    return RunConfig.model_validate(data)
