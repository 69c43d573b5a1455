"""Readers: turn input files into document rows, one generator per file.

A record that cannot be used (bad JSON, invalid UTF-8, no text) is not dropped silently: it is
yielded as a rejected row with a reason code and the file/line it came from, so counts reconcile.
"""
from __future__ import annotations

import json
import posixpath
import time
from dataclasses import dataclass
from typing import Iterator

import fsspec

from .config import ReaderConfig
from .documents import docs_table
from .io import fs_path
from .stages import write_part

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".jsonl.bz2")


@dataclass
class Record:
    doc: dict
    reason: str | None = None  # None: a usable document; else why it was rejected


def expand_inputs(inputs: list[str]) -> list[str]:
    """Input files from paths, directories and globs, sorted so shard numbers are stable."""
    files: list[str] = []
    for item in inputs:
        fs, path = fs_path(item)
        if fs.isdir(path):
            matches = [p for p in fs.find(path) if p.endswith(JSONL_SUFFIXES)]
        else:
            matches = fs.glob(path) if any(c in path for c in "*?[") else [path]
        if not matches:
            raise FileNotFoundError(f"input {item!r} matches no file")
        files += [fs.unstrip_protocol(p) if "://" in item else p for p in matches]
    return sorted(dict.fromkeys(files))


def read_jsonl(url: str, cfg: ReaderConfig) -> Iterator[Record]:
    """Documents of one JSONL file (plain or compressed, by extension)."""
    name = posixpath.basename(url)
    with fsspec.open(url, "rb", compression="infer") as f:
        for lineno, raw in enumerate(f, start=1):
            fallback_id = f"{name}#{lineno}"
            base = {"id": fallback_id, "source": url, "url": None, "meta": None}
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield Record({**base, "text": raw.decode("utf-8", "replace"), "meta": json.dumps({"error": str(e)})}, "read.invalid_utf8")
                continue
            if not line.strip():
                continue  # blank lines are not records
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
            except ValueError as e:
                yield Record({**base, "text": line, "meta": json.dumps({"error": str(e)})}, "read.invalid_json")
                continue
            text = obj.pop(cfg.text_key, None)
            doc_id = obj.pop(cfg.id_key, None) if cfg.id_key else None
            url_value = obj.pop(cfg.url_key, None) if cfg.url_key else None
            doc = {
                "id": str(doc_id) if doc_id not in (None, "") else fallback_id,
                "text": text if isinstance(text, str) else "",
                "source": url,
                "url": str(url_value) if url_value is not None else None,
                "meta": json.dumps(obj, ensure_ascii=False, default=str) if obj else None,
            }
            if not isinstance(text, str):
                yield Record(doc, "read.missing_text")
            elif not text.strip():
                yield Record(doc, "read.empty_text")
            else:
                yield Record(doc)


def read_file(url: str, shard: int, run_dir: str, cfg: ReaderConfig) -> dict:
    """The read stage for one input file: its records become part `shard` of <run>/read."""
    started = time.perf_counter()
    records = list(read_jsonl(url, cfg))
    docs = docs_table([r.doc for r in records])
    return {**write_part(run_dir, "read", shard, docs, [r.reason for r in records], started=started), "source": url}
