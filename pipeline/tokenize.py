"""The tokenizer (trained on a bounded sample of the kept text, or one the user names), then
tokenize, pack and shard each part, streaming.

Sample: a document is in the tokenizer's sample when a keyed hash of its id falls under
`sample_bytes / bytes kept`, so the sample is the same whatever the sharding and is drawn across every
part; the sampled texts are read in part order up to `sample_bytes`. Each document's tokens are
followed by <|endoftext|>; a part's token stream is cut into rows of seq_len + 1 ids (inputs and
next-token targets of one sequence), written a batch of documents at a time. Documents go to train
or val by a hash of their id, so the split does not move when the corpus is re-curated.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import time

import numpy as np
import pyarrow as pa
from pyarrow import ipc
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from . import storage
from .config import TokenizerConfig, TokensConfig
from .contracts import EOS, TOKENIZER, load_tokenizer, save_manifest, token_dtype, token_rows
from .stages import Step, marker_url, shard_of, unit_name

SAMPLE_DIR = "_sample"  # tokens/_sample/part-N.parquet: the tokenizer's sample of part N


def _unit_interval(doc_ids: list[str], key: bytes) -> np.ndarray:
    """A keyed hash of each id mapped to [0, 1): stable across runs, shardings and machines."""
    return np.array([int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8, key=key).digest(), "little") / 2**64
                     for i in doc_ids])


def sample_part(part_url: str, out_url: str, fraction: float, batch_rows: int = 1024) -> dict:
    """The documents of one part that fall in the tokenizer's sample (their text), to `out_url`."""
    writer = storage.ParquetAppender(out_url, pa.schema([("text", pa.string())]))
    docs = nbytes = 0
    try:
        for batch in storage.parquet_batches(part_url, batch_rows, ["id", "text"]):
            keep = _unit_interval(batch["id"].to_pylist(), b"tokenizer-sample") < fraction
            if keep.any():
                texts = batch["text"].filter(pa.array(keep))
                writer.write(pa.table({"text": texts}))
                docs, nbytes = docs + len(texts), nbytes + int(pa.compute.sum(pa.compute.binary_length(texts)).as_py() or 0)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return {"docs": docs, "bytes": nbytes}


def train_tokenizer(sample_urls: list[str], out_url: str, cfg: TokenizerConfig) -> dict:
    """A byte-level BPE tokenizer trained on the sampled texts, in part order, up to cfg.sample_bytes."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    used = {"docs": 0, "bytes": 0}

    def texts():
        for url in sample_urls:
            for batch in storage.parquet_batches(url, 1024, ["text"]):
                for text in batch["text"].to_pylist():
                    size = len(text.encode())
                    if used["bytes"] + size > cfg.sample_bytes:
                        return
                    used["docs"], used["bytes"] = used["docs"] + 1, used["bytes"] + size
                    yield text

    tokenizer.train_from_iterator(texts(), trainer=trainer)
    storage.write_bytes(out_url, tokenizer.to_str().encode())
    return {"vocab_size": tokenizer.get_vocab_size(), "sha256": storage.sha256_file(out_url),
            "source": {"trained": {"sample_bytes": cfg.sample_bytes, "docs": used["docs"], "bytes": used["bytes"]}}}


def use_tokenizer(path: str, out_url: str) -> dict:
    """The byte-level BPE tokenizer.json the user named (e.g. an earlier run's), checked and copied in."""
    data = storage.read_bytes(path)
    try:
        spec = json.loads(data)
        tokenizer = Tokenizer.from_str(data.decode())
    except Exception as e:  # tokenizers raises its own exception type
        raise ValueError(f"tokenizer.file {path}: not a tokenizers JSON file ({e})") from e
    if spec.get("model", {}).get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise ValueError(f"tokenizer.file {path}: not a byte-level BPE tokenizer (model "
                         f"{spec.get('model', {}).get('type')}, pre_tokenizer {json.dumps(spec.get('pre_tokenizer'))[:80]})")
    if tokenizer.token_to_id(EOS) is None:
        raise ValueError(f"tokenizer.file {path}: has no {EOS} token, which ends every document")
    storage.write_bytes(out_url, data)
    return {"vocab_size": tokenizer.get_vocab_size(), "sha256": storage.sha256_file(out_url),
            "source": {"file": path, "sha256": hashlib.sha256(data).hexdigest()}}


def is_val(doc_id: str, val_fraction: float) -> bool:
    h = int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")
    return h / 2**64 < val_fraction


class _SplitWriter:
    """One split's token shard, packed and written a batch of documents at a time; holds less than a row."""

    def __init__(self, writer: ipc.RecordBatchFileWriter, seq_len: int, dtype: np.dtype):
        self.writer, self.seq_len, self.carry = writer, seq_len, np.zeros(0, dtype)
        self.rows = self.docs = 0

    def add(self, docs: list[np.ndarray]) -> None:
        stream = np.concatenate([self.carry, *docs])
        table = token_rows(stream, self.seq_len)
        if table.num_rows:
            self.writer.write_table(table)
        self.rows, self.docs = self.rows + table.num_rows, self.docs + len(docs)
        self.carry = stream[table.num_rows * (self.seq_len + 1):]


def tokenize_part(part_url: str, tokenizer_url: str, out_dir: str, cfg: TokensConfig, batch_rows: int = 1024) -> list[dict]:
    """Tokenize one part of kept documents into train-NNNNN.arrow and val-NNNNN.arrow, `batch_rows`
    documents at a time: memory is a batch's tokens, not the part's."""
    started = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer_url)
    eos = tokenizer.token_to_id(EOS)
    dtype = token_dtype(tokenizer.get_vocab_size())
    schema = token_rows(np.zeros(0, dtype), cfg.seq_len).schema
    n = shard_of(part_url)
    names = {split: f"{split}-{n:05d}.arrow" for split in ("train", "val")}
    splits: dict[str, _SplitWriter] = {}

    batches = storage.parquet_batches(part_url, batch_rows, ["id", "text"])
    first = next(batches, None)  # a part that cannot be read fails here, not as a write error

    def write_all(train_file, val_file) -> None:
        for split, f in (("train", train_file), ("val", val_file)):
            splits[split] = _SplitWriter(ipc.new_file(f, schema), cfg.seq_len, dtype)
        for batch in itertools.chain([first] if first is not None else [], batches):
            encodings = tokenizer.encode_batch(batch["text"].to_pylist(), add_special_tokens=False)
            docs: dict[str, list[np.ndarray]] = {"train": [], "val": []}
            for doc_id, enc in zip(batch["id"].to_pylist(), encodings):
                docs["val" if is_val(doc_id, cfg.val_fraction) else "train"].append(np.array(enc.ids + [eos], dtype=dtype))
            for split, arrays in docs.items():
                splits[split].add(arrays)
        for w in splits.values():
            w.writer.close()

    train_url, val_url = (storage.join(out_dir, names[s]) for s in ("train", "val"))
    storage.atomic_write(train_url, lambda train_file: storage.atomic_write(val_url, lambda val_file: write_all(train_file, val_file)))
    shards = []
    for split, w in splits.items():
        url = storage.join(out_dir, names[split])
        if not w.rows:  # too few tokens for one row: no shard
            storage.fs_path(url)[0].rm(storage.fs_path(url)[1])
            continue
        shards.append({"file": names[split], "split": split, "docs": w.docs, "rows": w.rows,
                       "tokens": w.rows * (cfg.seq_len + 1), "dropped_tail_tokens": len(w.carry),
                       "sha256": storage.sha256_file(url), "seconds": round(time.perf_counter() - started, 3)})
    return shards


def write_manifest(out_dir: str, tokenizer_url: str, shards: list[dict], cfg: TokensConfig, source_docs: int,
                   tokenizer_source: dict | None = None) -> dict:
    tokenizer = load_tokenizer(tokenizer_url)
    shards = sorted(shards, key=lambda s: s["file"])
    manifest = {
        "tokenizer": TOKENIZER,
        "tokenizer_sha256": storage.sha256_file(tokenizer_url),
        "tokenizer_source": tokenizer_source,  # {"trained": {sample_bytes, docs, bytes}} or {"file": path, "sha256"}
        "vocab_size": tokenizer.get_vocab_size(),
        "eos_id": tokenizer.token_to_id(EOS),
        "seq_len": cfg.seq_len,
        "dtype": token_dtype(tokenizer.get_vocab_size()).name,
        "source_docs": source_docs,
        "shards": [{k: s[k] for k in ("file", "split", "rows", "tokens", "docs", "dropped_tail_tokens", "sha256")} for s in shards],
        "totals": {
            split: {
                "shards": sum(s["split"] == split for s in shards),
                "rows": sum(s["rows"] for s in shards if s["split"] == split),
                "tokens": sum(s["tokens"] for s in shards if s["split"] == split),
            }
            for split in ("train", "val")
        },
    }
    for split in ("train", "val"):
        if manifest["totals"][split]["rows"] == 0:
            raise ValueError(f"no {split} sequences: too little text for seq_len={cfg.seq_len} "
                             f"(val_fraction={cfg.val_fraction}); lower seq_len or add input")
    save_manifest(out_dir, manifest)
    return manifest


def steps(part_urls: list[str], out_dir: str, tokenizer: TokenizerConfig, tokens: TokensConfig,
          bytes_kept: int) -> list[Step]:
    """The tokens stage's steps: the tokenizer (copy the named one; or sample every part, then train
    once on the sample), then tokenize each part. The tokenizer step's result is the last but one."""
    tokenizer_url = storage.join(out_dir, TOKENIZER)
    once = {"marker": lambda call: marker_url(out_dir, "tokenizer"), "outputs": lambda call, result: [tokenizer_url]}
    if tokenizer.file:
        make = [Step("tokenizer", use_tokenizer, [{"path": tokenizer.file, "out_url": tokenizer_url}], **once)]
    else:
        sample_dir = storage.join(out_dir, SAMPLE_DIR)
        samples = [storage.join(sample_dir, unit_name(u) + ".parquet") for u in part_urls]
        fraction = min(1.0, tokenizer.sample_bytes / max(bytes_kept, 1))
        make = [Step("sample-tokenizer", sample_part,
                     [{"part_url": u, "out_url": s, "fraction": fraction} for u, s in zip(part_urls, samples)],
                     marker=lambda call: marker_url(sample_dir, unit_name(call["out_url"])),
                     outputs=lambda call, result: [call["out_url"]]),
                Step("train-tokenizer", train_tokenizer, [{"sample_urls": samples, "out_url": tokenizer_url, "cfg": tokenizer}],
                     **once)]
    shard = Step("tokenize", tokenize_part,
                 [{"part_url": u, "tokenizer_url": tokenizer_url, "out_dir": out_dir, "cfg": tokens} for u in part_urls],
                 marker=lambda call: marker_url(out_dir, unit_name(call["part_url"])),
                 outputs=lambda call, shards: [storage.join(out_dir, s["file"]) for s in shards])
    return [*make, shard]
