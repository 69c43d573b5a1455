"""Helpers the tests share (plain functions; the fixtures are in conftest.py). pytest puts tests/
on sys.path, so a test imports them as `from helpers import ...`."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "pipeline" / "data" / "corpus"


def write_jsonl(path: Path, records: list) -> Path:
    """Write records (dicts, or raw str/bytes lines) as a JSONL file."""
    with open(path, "wb") as f:
        for r in records:
            line = r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()
            f.write(line + b"\n")
    return path


def curated_files(run_dir: Path) -> dict[str, str]:
    """sha256 of every data file curate wrote (parts, intermediate dedup files, shards, tokenizer,
    manifest) by path relative to the run; stats files hold timings and are left out."""
    out = {}
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir).as_posix()
        if p.is_file() and not rel.startswith(("train/", "eval/", "export/")) and (
                p.suffix in (".parquet", ".arrow") or p.name in ("tokenizer.json", "manifest.json")):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def make_tokens(out: Path, docs: list[dict], seq_len: int = 32, vocab_size: int = 500) -> Path:
    """Real token shards + manifest + tokenizer (what the curate flow writes) from real documents."""
    from tokenmill.pipeline import storage
    from tokenmill.pipeline.config import TokenizerConfig, TokensConfig
    from tokenmill.pipeline.contracts import docs_table
    from tokenmill.pipeline.tokenize import tokenize_part, train_tokenizer, write_manifest

    part = str(out.parent / "minhash" / "part-00000.parquet")
    rows = [{"id": f"doc{i}", "text": d["text"], "source": "s", "url": None, "meta": None} for i, d in enumerate(docs)]
    storage.write_parquet(part, docs_table(rows))
    train_tokenizer([part], f"{out}/tokenizer.json", TokenizerConfig(vocab_size=vocab_size))
    cfg = TokensConfig(seq_len=seq_len, val_fraction=0.2)
    shards = tokenize_part(part, f"{out}/tokenizer.json", str(out), cfg)
    write_manifest(str(out), f"{out}/tokenizer.json", shards, cfg, source_docs=len(rows))
    return out


def planted_pages() -> list[dict]:
    """Real Common Crawl pages (the bundled corpus's CC sample, ids planted-<kind>-<n>), each with an evaluation
    passage of a default run inserted mid-page as a crawled copy would carry it: a tokenmill_cloze item
    upper-cased, another quoted and re-wrapped, held-out WikiText re-punctuated, another lower-cased."""
    from tokenmill.training.eval_sets import HELDOUT, bundled_texts

    cloze = list(bundled_texts("tokenmill_cloze"))
    heldout = HELDOUT.read_text(encoding="utf-8").split()
    passages = {"cloze": cloze[123].upper(),
                "cloze-quoted": "\u201c" + cloze[301].replace(" ", "\n", 3) + "\u201d",
                "heldout": " ".join(heldout[2000:2060]).replace(" @-@ ", "-").replace(" , ", ", "),
                "heldout-lower": " ".join(heldout[5000:5030]).lower()}
    pages = []
    with open(CORPUS / "datajuicer_redpajama_cc_2023_06_10docs.jsonl") as f:
        for n, line in enumerate(f):
            kind, passage = list(passages.items())[n % len(passages)]
            paragraphs = json.loads(line)["text"].split("\n")
            paragraphs.insert(len(paragraphs) // 2, passage)
            pages.append({"id": f"planted-{kind}-{n}", "text": "\n".join(paragraphs)})
    return pages


def warc_bytes(records: list[tuple[str, bytes]]) -> bytes:
    """WARC response records (uri, HTTP message), uncompressed."""
    out = b""
    for i, (uri, http) in enumerate(records):
        out += (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: {uri}\r\n"
                f"WARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-{i:012d}>\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
                f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http)}\r\n\r\n").encode()
        out += http + b"\r\n\r\n"
    return out


def http_response(status: str, headers: str, body: bytes) -> bytes:
    return f"HTTP/1.1 {status}\r\n{headers}Content-Length: {len(body)}\r\n\r\n".encode() + body
