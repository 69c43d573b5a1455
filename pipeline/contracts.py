"""The data contracts: what one part of tokenmill writes and another reads, defined once.

    documents     parquet parts of every stage from read to tokenize: DOC_SCHEMA (+ columns a stage
                  adds, e.g. quality_score); rejected rows add `reason` and `duplicate_of`
    token shards  <run>/tokens/{train,val}-NNNNN.arrow, Arrow IPC: one row per packed sequence, column
                  `tokens` = seq_len + 1 ids (uint16, uint32 above 65,536 tokens); every document's
                  tokens end with EOS
    manifest      <run>/tokens/manifest.json: the tokenizer file and its sha256, vocab size, EOS id,
                  seq_len, dtype, and per shard its split, rows, tokens, docs and sha256
    classifier    a `tokenmill finetune` output directory (CLASSIFIER_CONFIG + model.safetensors +
                  tokenizer.json) that the curate flow's quality model scores with
    eval texts    gzipped JSONL of {"set", "text"}: the text of the evaluation sets a run is scored on,
                  written by training/eval_sets.py, indexed by the curate flow's decontam stage

The curate side (pipeline/) writes them, the training side (training/) reads them; neither spells a
file name, column or dtype of the other.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from . import storage

DOC_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("meta", pa.string()),  # the record's remaining fields, as JSON
        ("lang", pa.string()),  # set by the quality stage's language identification
        ("lang_score", pa.float32()),
    ]
)

# Rejected rows are documents plus why they were dropped; duplicate_of names the kept representative.
REJECTED_SCHEMA = DOC_SCHEMA.append(pa.field("reason", pa.string())).append(pa.field("duplicate_of", pa.string()))


def doc_schema(extra_fields=()) -> pa.Schema:
    """DOC_SCHEMA plus the columns a stage adds (e.g. the quality model's `quality_score`)."""
    return pa.schema([*DOC_SCHEMA, *extra_fields])


def rejected_schema(extra_fields=()) -> pa.Schema:
    return pa.schema([*DOC_SCHEMA, *extra_fields, *(REJECTED_SCHEMA.field(i) for i in range(len(DOC_SCHEMA), len(REJECTED_SCHEMA)))])


def docs_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=DOC_SCHEMA)


def rejected_table(docs: pa.Table, reasons: list[str], duplicate_of: list[str | None] | None = None,
                   extra_fields=()) -> pa.Table:
    if duplicate_of is None:
        duplicate_of = [None] * len(reasons)
    docs = docs.select(DOC_SCHEMA.names + [f.name for f in extra_fields])
    return docs.append_column("reason", pa.array(reasons, pa.string())).append_column(
        "duplicate_of", pa.array(duplicate_of, pa.string())
    )


# ---- token shards and their manifest ---------------------------------------------------------------

EOS = "<|endoftext|>"  # the tokenizer's only special token: ends every document, pads nothing
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"  # in the tokens directory, as the manifest names it
TOKENS = "tokens"  # the shards' one column
CLASSIFIER_CONFIG = "classifier.json"


class ManifestError(ValueError):
    pass


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def token_rows(ids: np.ndarray, seq_len: int) -> pa.Table:
    """The whole rows of seq_len + 1 ids a token stream fills, as record batches of a token shard (the
    tail that fills no row is left out). pipeline/tokenize.py writes a shard a batch of these at a time."""
    rows = len(ids) // (seq_len + 1)
    return pa.table({TOKENS: pa.FixedSizeListArray.from_arrays(pa.array(ids[: rows * (seq_len + 1)]), seq_len + 1)})


def map_token_shard(path: str | Path, seq_len: int) -> list[np.ndarray]:
    """A local shard's record batches as (rows, seq_len + 1) arrays over a memory map of the file:
    nothing is read until rows are indexed, and only the pages they are on."""
    reader = ipc.open_file(pa.memory_map(str(path)))
    batches = (reader.get_batch(i).column(0) for i in range(reader.num_record_batches))
    return [b.flatten().to_numpy(zero_copy_only=True).reshape(len(b), seq_len + 1) for b in batches if len(b)]


def read_token_shard(path: str | Path, seq_len: int) -> np.ndarray:
    """A local shard's rows as one (rows, seq_len + 1) array in memory."""
    batches = map_token_shard(path, seq_len)
    return np.concatenate(batches) if batches else np.zeros((0, seq_len + 1), np.uint16)


def load_tokenizer(url: str):
    """The tokenizer.json a tokens directory holds (local or object storage)."""
    from tokenizers import Tokenizer

    fs, path = storage.fs_path(url)
    with fs.open(path, "rb") as f:
        return Tokenizer.from_str(f.read().decode())


def save_manifest(out_dir: str, manifest: dict) -> None:
    storage.write_json(storage.join(out_dir, MANIFEST), manifest)


def load_manifest(tokens_dir: str | Path, verify: bool = True) -> dict:
    """The manifest of a local tokens directory; with `verify`, the tokenizer and every shard are
    checked against their sha256 (and the tokenizer against the vocab size) first."""
    from tokenizers import Tokenizer

    tokens_dir = Path(tokens_dir)
    path = tokens_dir / MANIFEST
    if not path.exists():
        raise ManifestError(f"{path} not found: run the curate flow first")
    manifest = json.loads(path.read_text())
    if verify:
        tok = tokens_dir / manifest["tokenizer"]
        if storage.sha256_file(str(tok)) != manifest["tokenizer_sha256"]:
            raise ManifestError(f"{tok}: sha256 differs from the manifest; the tokenizer changed after tokenization")
        vocab = Tokenizer.from_file(str(tok)).get_vocab_size()
        if vocab != manifest["vocab_size"]:
            raise ManifestError(f"{path}: vocab_size {manifest['vocab_size']} but {tok} has {vocab} tokens")
        for shard in manifest["shards"]:
            if storage.sha256_file(str(tokens_dir / shard["file"])) != shard["sha256"]:
                raise ManifestError(f"{tokens_dir / shard['file']}: sha256 differs from the manifest (corrupt or rewritten shard)")
    return manifest


# ---- evaluation texts (decontamination) ------------------------------------------------------------

def write_eval_texts(url: str, records) -> int:
    """(set, text) pairs to gzipped JSONL, atomically; how many were written."""
    count = 0

    def write(f):
        nonlocal count
        with gzip.open(f, "wt", encoding="utf-8") as out:
            for name, text in records:
                out.write(json.dumps({"set": name, "text": text}, ensure_ascii=False) + "\n")
                count += 1

    storage.atomic_write(url, write)
    return count


def read_eval_texts(url: str):
    """The (set, text) pairs write_eval_texts wrote."""
    fs, path = storage.fs_path(url)
    with fs.open(path, "rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            yield record["set"], record["text"]
