"""Training and evaluation configuration (the `train`, `evaluate` and `finetune` sections of a run config)
and the model's shape. Plain pydantic: importing it does not import torch."""
from __future__ import annotations

import math
from functools import partial
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from tokenmill.pipeline.storage import check_name


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vocab_size: int = 4096
    seq_len: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # < n_head: grouped-query attention
    d_model: int = 256
    ffn_mult: float = 8 / 3  # SwiGLU hidden = ffn_mult * d_model, rounded up to a multiple of 64
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    @model_validator(mode="after")
    def _check(self):
        kv = self.kv_heads
        if self.d_model % self.n_head or self.n_head % kv:
            raise ValueError(f"d_model={self.d_model} must divide by n_head={self.n_head}, and n_head by n_kv_head={kv}")
        return self

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def ffn_hidden(self) -> int:
        return 64 * math.ceil(self.ffn_mult * self.d_model / 64)

    def num_params(self, embeddings: bool = True) -> int:
        d, L = self.d_model, self.n_layer
        attn = d * d * 2 + 2 * d * self.kv_heads * self.head_dim
        block = attn + 3 * d * self.ffn_hidden + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return L * block + d + (emb if embeddings else 0)

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6 * non-embedding params + attention (PaLM appendix B)."""
        return 6 * self.num_params(embeddings=False) + 6 * self.vocab_size * self.d_model + 12 * self.n_layer * self.d_model * self.seq_len


PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=4, n_head=4, d_model=256),
    "25m": dict(n_layer=8, n_head=8, d_model=512),
    "125m": dict(n_layer=12, n_head=12, d_model=768),
    "350m": dict(n_layer=24, n_head=16, d_model=1024),
    "1b": dict(n_layer=24, n_head=16, n_kv_head=8, d_model=2048),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainConfig(_Section):
    preset: str = "tiny"
    model: dict = Field(default_factory=dict, description="overrides of the preset's ModelConfig fields")
    zero_stage: Literal[0, 1, 2, 3] = 2
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    nproc: int = Field(2, ge=1, description="data-parallel processes on this node")
    hostfile: str | None = Field(None, description="DeepSpeed hostfile for multi-node runs")
    launcher: Literal["auto", "ray", "torchrun"] = Field(
        "auto", description="ray: Ray Train workers on the run's Ray (a local one when there is none); torchrun: "
        "processes on this machine (or the hostfile's nodes); auto: ray when the run has a Ray (`tokenmill run` "
        "always has one; ray.address names a cluster), torchrun for `tokenmill train` / `finetune` without ray.address")
    resources_per_worker: dict[str, float] | None = Field(
        None, description="Ray Train: resources each worker asks for (default: 1 CPU, plus 1 GPU when the cluster has GPUs)")
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray Train: how the workers are placed on the nodes (Ray's placement group strategy; "
        "STRICT_SPREAD: one worker per node)")
    max_failures: int = Field(2, ge=0, description="Ray Train: restarts of the workers after one dies, each from the latest checkpoint")
    micro_batch: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_steps: int = Field(300, ge=1)
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    activation_checkpointing: bool = Field(False, description="recompute each block's activations in backward (less memory)")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: optimizer state on the CPU (GPU runs, zero_stage >= 1)")
    seed: int = 1234
    save_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept on disk")
    log_every: int = Field(10, ge=1)
    threads_per_proc: int | None = Field(None, description="CPU threads per process (default: cores / nproc)")
    data_block_rows: int = Field(4096, ge=1, description="rows per block of the loader's block permutation: a step "
                                 "reads within a block or two of the memory-mapped shards, whatever their size")

    @model_validator(mode="after")
    def _check_offload(self):
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("train.offload_optimizer needs train.zero_stage >= 1 (ZeRO partitions what it offloads)")
        return self

    def resolve_model(self, vocab_size: int, seq_len: int) -> ModelConfig:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown model preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        return ModelConfig(**{**PRESETS[self.preset], **self.model, "vocab_size": vocab_size, "seq_len": seq_len})


class EvalConfig(_Section):
    max_val_rows: int = Field(256, ge=1)
    batch_size: int = 16
    prompts: list[str] = Field(default_factory=lambda: ["The city council", "In this article we", "Our company"])
    max_new_tokens: int = 40
    temperature: float = Field(0.8, gt=0, description="for the sampled generations (the others are greedy)")
    top_k: int | None = 40
    threads: int | None = Field(1, ge=1, description="torch CPU threads while evaluating (1: no thread thrash on a "
                                "busy machine, where 2 threads ran a small model 20x slower than 1); null: torch's default")
    lm_eval: bool = Field(True, description="downstream tasks through lm-evaluation-harness")
    lm_eval_tasks: list[str] = Field(default_factory=lambda: ["tokenmill_cloze", "tokenmill_wikitext"],
                                     description="bundled tasks (training/data/lm_eval, offline), lm-eval's own task "
                                     "and group names (data from the HF cache or the Hub), names in lm_eval_include, "
                                     "presets: early-signal (training/eval_sets.py)")
    lm_eval_include: list[str] = Field(default_factory=list, description="directories of lm-eval task YAMLs: your own "
                                       "tasks, or local copies of standard ones (same name: they win)")
    lm_eval_limit: int | None = Field(None, ge=1, description="documents per task (default: all)")
    lm_eval_batch_size: int = Field(16, ge=1)

    @field_validator("lm_eval_tasks")
    @classmethod
    def _task_names(cls, names: list[str]) -> list[str]:
        return [check_name(name, "evaluate.lm_eval_tasks name") for name in names]  # names become file names


class NgramConfig(_Section):
    """The n-gram classifier (training/ngram.py): hashed word and character n-grams, TF-IDF, logistic regression."""

    # Defaults: the fastest setting measured (bench/quality_model.py) whose cross-validated macro-F1 on the
    # DCLM pages stays above the TF-IDF + logistic-regression baseline's.
    buckets: int = Field(1 << 18, ge=1 << 10, description="hash rows (a power of two)")
    word_ngrams: int = Field(2, ge=1, le=4, description="word n-grams up to this n")
    char_min: int = Field(2, ge=1, le=8, description="character n-grams (inside '<word>') from this n...")
    char_max: int = Field(3, ge=1, le=8, description="... to this n")
    max_chars: int = Field(1_500, ge=100, le=60_000, description="characters read per document (the rest is cut): "
                           "the features' cost; 1,500 scored the DCLM pages as well as 3,000 or 20,000 did")
    c: float = Field(10.0, gt=0, description="inverse L2 strength, as scikit-learn's LogisticRegression(C)")
    max_iter: int = Field(200, ge=1, description="L-BFGS iterations")

    @model_validator(mode="after")
    def _check(self):
        if self.buckets & (self.buckets - 1):
            raise ValueError(f"finetune.ngram.buckets must be a power of two, got {self.buckets}")
        if self.char_min > self.char_max:
            raise ValueError(f"finetune.ngram.char_min {self.char_min} is above char_max {self.char_max}")
        return self


class FinetuneConfig(_Section):
    """`tokenmill finetune`: a sequence classifier on the run's pretrained model, next to the same
    architecture from random init and a majority-class baseline."""

    # The task name is a directory name under runs/<id>/finetune/ and part of artifact keys.
    task: Annotated[str, AfterValidator(partial(check_name, what="finetune.task"))] = Field(
        "dclm-quality", description="a bundled task (dclm-quality), or any name with data_file set")
    data_file: str | None = Field(None, description="JSONL of {text_key, label_key} records; default: the task's bundled file")
    text_key: str = "text"
    label_key: str = "label"
    labels: list[str] | None = Field(None, description="label names; an integer label i means labels[i] (default: the task's)")
    model: Literal["ngram", "transformer"] = Field("ngram", description="the classifier curate's quality_model uses "
                                                   "(both are trained and saved; classifier.json names this one)")
    folds: int = Field(5, ge=2, description="stratified k-fold cross-validation of every kind, for metrics.json")
    ngram: NgramConfig = NgramConfig()
    seed: int = 1234
    epochs: int = Field(4, ge=1)
    max_len: int | None = Field(None, ge=8, description="tokens read per document (the rest is cut); default: the model's seq_len")
    micro_batch: int = Field(8, ge=1)
    lr: float = 3e-4
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    zero_stage: Literal[0, 1, 2, 3] = 2
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    nproc: int = Field(2, ge=1, description="data-parallel processes on this node")
    hostfile: str | None = Field(None, description="DeepSpeed hostfile for multi-node runs")
    threads_per_proc: int | None = Field(None, description="CPU threads per process (default: cores / nproc)")
    in_run: bool = Field(False, description="`tokenmill run` fine-tunes after evaluate")

    def train_config(self, max_steps: int) -> TrainConfig:
        """The DeepSpeed job settings, in the training job's terms (same launcher, same ds_config)."""
        return TrainConfig(zero_stage=self.zero_stage, precision=self.precision, nproc=self.nproc, hostfile=self.hostfile,
                           micro_batch=self.micro_batch, max_steps=max_steps, lr=self.lr, min_lr_ratio=0.0,
                           warmup_steps=max(1, int(self.warmup_ratio * max_steps)), weight_decay=self.weight_decay,
                           grad_clip=self.grad_clip, seed=self.seed, threads_per_proc=self.threads_per_proc)
