"""The classifiers of `tokenmill finetune`, and `Classifier`, which loads either from its directory.

Two kinds, saved side by side in the fine-tune output directory, a directory that scores raw text on
its own (the curate flow's model-based quality filter uses it); classifier.json names the labels, the
kind used by default (`kind`) and each kind's settings and files:
    ngram        hashed word and character n-grams into a linear model (training/ngram.py): ngram.safetensors
    transformer  the pretrained decoder below: model.safetensors + tokenizer.json

The transformer kind: the decoder's final hidden states, mean-pooled over the document's tokens, into a
linear head.

Mean pooling rather than the last token: a small causal LM's last position is shaped by predicting
the next token from local context, while the mean over every position is a steadier document
feature after a short fine-tune (and does not depend on where truncation cut the document).
Documents are right-padded; the attention is causal, so real tokens never see the padding and only
the pooling needs the mask.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn

from tokenmill.pipeline.contracts import CLASSIFIER_CONFIG, EOS

from . import ngram
from .config import ModelConfig, NgramConfig
from .model import Transformer

WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
KINDS = ("ngram", "transformer")  # training/ngram.py, and the SequenceClassifier below


class SequenceClassifier(nn.Module):
    def __init__(self, body: Transformer, num_labels: int):
        super().__init__()
        self.body = body
        # A classifier reads hidden states, not next-token logits; an untied LM head would be
        # parameters without gradients for the optimizer to carry.
        body.lm_head = nn.Identity()
        self.head = nn.Linear(body.cfg.d_model, num_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_labels) of right-padded token ids (B, T); mask is 1 on real tokens."""
        hidden = self.body.hidden_states(idx)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.head(pooled)


def encode(tokenizer: Tokenizer, texts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded token ids (N, max_len) and lengths (N,): the first max_len tokens of each text
    (an empty text is one end-of-text token, so every row has something to pool)."""
    eos = tokenizer.token_to_id(EOS)
    ids = np.full((len(texts), max_len), eos, dtype=np.int64)
    lengths = np.zeros(len(texts), dtype=np.int64)
    for i, enc in enumerate(tokenizer.encode_batch(texts)):
        row = enc.ids[:max_len] or [eos]
        ids[i, : len(row)] = row
        lengths[i] = len(row)
    return ids, lengths


@torch.no_grad()
def predict_proba(model: SequenceClassifier, ids: np.ndarray, lengths: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Class probabilities (N, num_labels); each batch is cut to its longest document."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(ids), batch_size):
        n = lengths[i : i + batch_size]
        batch = torch.from_numpy(ids[i : i + batch_size, : int(n.max())]).to(device)
        mask = torch.arange(batch.shape[1], device=device)[None, :] < torch.from_numpy(n).to(device)[:, None]
        out.append(torch.softmax(model(batch, mask).float(), -1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.head.out_features), dtype=np.float32)


class Classifier:
    """A saved classifier (the output directory of `tokenmill finetune`), ready to score raw text: the kind
    classifier.json names (its `kind`), or the other one saved beside it (`kind`: ngram or transformer)."""

    def __init__(self, directory: str | Path, kind: str | None = None, device: str = "cpu"):
        directory = Path(directory)
        if not (directory / CLASSIFIER_CONFIG).exists():
            raise FileNotFoundError(f"{directory}: no {CLASSIFIER_CONFIG}; expected the output directory of `tokenmill finetune` "
                                    "(runs/<id>/finetune/<task>)")
        self.meta = json.loads((directory / CLASSIFIER_CONFIG).read_text())
        self.labels: list[str] = self.meta["labels"]
        self.kind: str = kind or self.meta.get("kind")
        if self.kind not in KINDS or self.kind not in self.meta:
            raise ValueError(f"{directory}: no {self.kind!r} classifier here (it has {[k for k in KINDS if k in self.meta]}); "
                             "a directory from an older tokenmill needs `tokenmill finetune` again")
        spec = self.meta[self.kind]
        if self.kind == "ngram":
            self.ngram_config = NgramConfig(**{k: v for k, v in spec.items() if k != "weights"})
            self.params = ngram.load(directory)
            return
        self.max_len: int = spec["max_len"]
        self.tokenizer = Tokenizer.from_file(str(directory / spec["tokenizer"]))
        self.model = SequenceClassifier(Transformer(ModelConfig(**spec["model"])), len(self.labels))
        self.model.load_state_dict(load_file(str(directory / spec["weights"])))
        self.model.to(device).eval()

    def proba(self, texts: list[str], batch_size: int = 16) -> np.ndarray:
        """(N, labels) class probabilities; batch_size is the Transformer's (the n-gram kind scores a part at once)."""
        if self.kind == "ngram":
            return ngram.softmax(ngram.predict_logits(texts, self.params, self.ngram_config))
        ids, lengths = encode(self.tokenizer, texts, self.max_len)
        return predict_proba(self.model, ids, lengths, batch_size)
