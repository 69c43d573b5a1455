"""`tokenmill curate` on a messy corpus (real WARC + WET files, broken JSONL, truncated gzip, a binary
file, an empty file, and every hostile record of issue 15 between good ones: lone surrogates,
5,000-deep nesting, a line over max_record_bytes, a 64 MB line in a few KB of .zst, a gzip bomb in a
WARC body, documents that were quadratic to split) as a user runs it: real Prefect server, real local
Ray. Every stage's books balance per reason against the parts on disk, every good record is read,
and what comes out of the WARC pages is clean text."""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import CORPUS, REPO, http_response, planted_pages, warc_bytes, write_jsonl

from tokenmill.flows.server import start_server, stop_server

pytestmark = pytest.mark.slow
WARC_DIR = Path(__file__).parent / "data" / "warc"
MAX_RECORD_BYTES = 1 << 20  # --set curate.reader.max_record_bytes for the run


def good_docs() -> list[dict]:
    with gzip.open(CORPUS / "dolma_common_crawl_documents_10docs.jsonl.gz", "rt") as f:
        return [{"id": f"good-{i}", "text": json.loads(line)["text"]} for i, line in enumerate(f)]


def hostile_inputs(inputs: Path) -> None:
    """Every hostile record between good ones: hostile.jsonl, bomb.jsonl.zst, hostile.warc."""
    good = good_docs()
    hostile = [
        '{"id": "surrogate", "text": "caf\\ud800 broken emoji"}',
        '{"id": "\\udfff", "text": "fine text, bad id"}',
        '{"id": "deep", "text": ' + "[" * 5000 + "]" * 5000 + "}",
        json.dumps({"id": "long-line", "text": "x" * (MAX_RECORD_BYTES + 10)}),
        json.dumps({"id": "run-of-section-signs", "text": "§" * 100_000}),
        json.dumps({"id": "run-of-dotted-words", "text": "a.b" * 30_000 + " me@example.com"}),
        json.dumps({"id": "run-of-marks", "text": "Yes. " + "..." * 30_000}),
        json.dumps({"id": "blank", "text": " \u200f\n\u3000 "}),
        json.dumps({"id": "no-text", "body": "under another key"}),
    ]
    lines = [line for pair in zip(good, hostile) for line in pair] + good[len(hostile):]
    write_jsonl(inputs / "hostile.jsonl", lines)
    bomb = json.dumps({"id": "bomb", "text": "a" * (64 << 20)}) + "\n" + json.dumps(good[0] | {"id": "after-bomb"})
    zstd = pytest.importorskip("compression.zstd" if sys.version_info >= (3, 14) else "backports.zstd")
    (inputs / "bomb.jsonl.zst").write_bytes(zstd.compress(bomb.encode() + b"\n"))
    html = "Content-Type: text/html; charset=utf-8\r\n"
    page = f"<html><body><article><p>{good[1]['text']}</p></article></body></html>".encode()
    (inputs / "hostile.warc").write_bytes(warc_bytes([
        ("http://hostile.example/bomb", http_response("200 OK", html + "Content-Encoding: gzip\r\n",
                                                      gzip.compress(b"<p>" + b"z" * (64 << 20)))),
        ("http://hostile.example/404", http_response("404 Not Found", html, b"x" * (2 * MAX_RECORD_BYTES))),
        ("http://hostile.example/ok", http_response("200 OK", html, page)),
    ]))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("messy")
    inputs = work / "in"
    inputs.mkdir()
    for f in WARC_DIR.glob("*.gz"):
        shutil.copy(f, inputs / f.name)
    shutil.copy(CORPUS / "datajuicer_redpajama_c4_10docs.jsonl", inputs / "c4.jsonl")
    write_jsonl(inputs / "planted.jsonl", planted_pages())  # evaluation text in web pages: for decontam
    write_jsonl(inputs / "broken.jsonl", ['{"text": "cut in the mid', b"\xff\xfe bad bytes", {"id": 3}, {"text": ""}])
    (inputs / "empty.jsonl").write_bytes(b"")
    (inputs / "image.txt").write_bytes(bytes(range(256)) * 8)
    whole = gzip.compress((CORPUS / "datajuicer_redpajama_cc_2023_06_10docs.jsonl").read_bytes())
    (inputs / "truncated.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    hostile_inputs(inputs)
    args = ["curate", str(inputs), "--run-id", "m", "--output-dir", str(work / "runs"),
            "--set", "curate.tokenizer.vocab_size=300", "--set", "curate.tokens.seq_len=32",
            "--set", "ray.num_cpus=2", "--set", "ray.dashboard=false",
            "--set", f"curate.reader.max_record_bytes={MAX_RECORD_BYTES}"]
    api = start_server(home=str(work / "prefect-home"))  # one server for both runs (each would start its own)
    env = {**os.environ, "PREFECT_API_URL": api.url}
    try:
        proc = subprocess.run([sys.executable, "-m", "tokenmill.flows.cli", *args], cwd=work, capture_output=True, text=True,
                              timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
        strict = subprocess.run([sys.executable, "-m", "tokenmill.flows.cli", *args[:3], "s", *args[4:], "--strict"],
                                cwd=work, capture_output=True, text=True, timeout=600, env=env)
    finally:
        stop_server(api)
    return work / "runs" / "m", proc.stdout + proc.stderr, strict


def _stages(run_dir: Path) -> list[str]:
    found = [p.parent.name for p in run_dir.glob("*/_stats.json")]
    return [s for s in found if "docs_in" in json.loads((run_dir / s / "_stats.json").read_text())]


def test_every_stage_balances_per_reason_against_its_parts(run):
    run_dir, _, _ = run
    stages = _stages(run_dir)
    assert {"read", "quality"} <= set(stages) and len(stages) >= 3
    for name in stages:
        stats = json.loads((run_dir / name / "_stats.json").read_text())
        kept = sum(pq.read_metadata(p).num_rows for p in (run_dir / name).glob("part-*.parquet"))
        rejected = Counter(r for p in (run_dir / "rejected" / name).glob("part-*.parquet")
                           for r in pq.read_table(p)["reason"].to_pylist())
        assert kept == stats["docs_kept"], name
        assert dict(rejected) == stats["rejected"], name
        assert stats["docs_in"] == kept + sum(rejected.values()), name
        assert set(stats["rejected_chars"]) == set(stats["rejected"]), name


def test_bad_inputs_are_reported_with_path_offset_and_error(run):
    run_dir, out, strict = run
    read = json.loads((run_dir / "read" / "_stats.json").read_text())
    for reason in ("read.invalid_json", "read.invalid_utf8", "read.missing_text", "read.empty_text",
                   "read.binary", "read.truncated"):
        assert read["rejected"].get(reason, 0) >= 1, reason
    [error] = read["errors"]
    assert error["path"].endswith("truncated.jsonl.gz") and error["reason"] == "read.truncated"
    assert int(error["offset"]) > 0 and "EOFError" in error["error"]
    assert "truncated.jsonl.gz" in out  # the warning is in the log
    assert strict.returncode != 0 and "truncated.jsonl.gz" in strict.stdout + strict.stderr


def test_warc_pages_come_out_as_clean_english_text(run):
    run_dir, _, _ = run
    kept = [d for p in sorted((run_dir / "quality").glob("part-*.parquet")) for d in pq.read_table(p).to_pylist()]
    warc = [d for d in kept if ".warc" in d["source"]]
    assert len(warc) >= 10
    for d in warc:
        text = d["text"]
        assert not re.search(r"</?[a-z]+[ >]|&nbsp;|&amp;|\{|function\s*\(", text), (d["url"], text[:300])
        assert d["lang"] == "en" and d["url"].startswith("http")
        assert text == text.strip() and "\n\n\n" not in text and "  " not in text
    # the Aragonese Wikipedia page of the Common Crawl sample is labelled and dropped by language
    rejected = [d for p in (run_dir / "rejected" / "quality").glob("part-*.parquet") for d in pq.read_table(p).to_pylist()]
    escopete = [d for d in rejected if d["url"] == "https://an.wikipedia.org/wiki/Escopete"]
    assert escopete and all(d["reason"].startswith("lang.") for d in escopete)
    manifest = json.loads((run_dir / "tokens" / "manifest.json").read_text())
    assert manifest["totals"]["train"]["tokens"] > 0


def test_funnel_md_and_inspect_show_what_happened(run):
    run_dir, out, _ = run
    funnel = (run_dir / "funnel.md").read_text()
    assert "| read | read.truncated | 1 |" in funnel and "| quality | kept |" in funnel
    assert "data funnel" in out and "lang.not_kept" in out  # printed with rich
    work = run_dir.parent.parent
    shown = subprocess.run([sys.executable, "-m", "tokenmill.flows.cli", "inspect", "m", "--reason", "lang", "--output-dir",
                            str(work / "runs"), "--limit", "5"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "an.wikipedia.org/wiki/Escopete" in shown.stdout and "lang.not_kept" in shown.stdout
    missing = subprocess.run([sys.executable, "-m", "tokenmill.flows.cli", "inspect", str(run_dir), "--reason", "gopher.nope"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "read.truncated (1)" in missing.stdout


def test_pages_carrying_evaluation_text_are_dropped_by_decontam_and_clean_ones_kept(run):
    """Decontamination is on in a default curate: every page with a planted evaluation passage that reaches it
    is rejected as decontam.<set> with an n-gram the page contains; no other page is."""
    from tokenmill.pipeline.decontam import words

    run_dir, _, _ = run
    stats = json.loads((run_dir / "decontam" / "_stats.json").read_text())
    assert json.loads((run_dir / "decontam" / "_config.json").read_text())["source"] == "dedup"
    assert stats["eval_texts"]["per_set"] == {"heldout": 1, "tokenmill_cloze": 400, "tokenmill_wikitext": 5}
    rejected = [r for p in (run_dir / "rejected" / "decontam").glob("part-*.parquet") for r in pq.read_table(p).to_pylist()]
    kept = [r["id"] for p in (run_dir / "decontam").glob("part-*.parquet") for r in pq.read_table(p).to_pylist()]
    planted = [i for i in kept + [r["id"] for r in rejected] if i.startswith("planted-")]
    assert len(planted) >= 4  # enough host pages passed the quality filters and dedup to check
    assert sorted(r["id"] for r in rejected) == sorted(planted) and len(kept) >= 10
    for r in rejected:
        assert r["reason"] == ("decontam.tokenmill_cloze" if "-cloze" in r["id"] else "decontam.heldout"), r
        assert len(r["duplicate_of"].split()) >= 8 and r["duplicate_of"] in " ".join(words(r["text"]))
    assert sum(stats["rejected"].values()) == len(planted) and "decontam.heldout" in (run_dir / "funnel.md").read_text()
    manifest = json.loads((run_dir / "tokens" / "manifest.json").read_text())
    assert manifest["source_docs"] == stats["docs_kept"]  # what is trained on is what decontam kept


def test_hostile_records_are_each_accounted_for_and_every_good_record_is_read(run):
    run_dir, _, _ = run
    rows = [d for kind in ("read", "rejected/read") for p in (run_dir / kind).glob("part-*.parquet")
            for d in pq.read_table(p).to_pylist()]
    by_id = {d["id"]: d for d in rows}
    kept = {d["id"] for d in rows if not d.get("reason")}
    # every good record is read, including the ones after a hostile record in the same shard
    assert {d["id"] for d in good_docs()} | {"after-bomb"} <= kept
    assert any(d["url"] == "http://hostile.example/ok" for d in rows if d["id"] in kept)
    # every line of hostile.jsonl is one row, kept or rejected with the reason for it
    lines = (run_dir.parent.parent / "in" / "hostile.jsonl").read_bytes().split(b"\n")
    assert len([d for d in rows if d["source"].endswith("hostile.jsonl")]) == len([x for x in lines if x.strip()])
    reason = {i: by_id[i].get("reason") for i in ("surrogate", "blank", "no-text")}
    # only a right-to-left mark between spaces: text to the reader, nothing once normalized (quality rejects it)
    assert reason == {"surrogate": "read.invalid_unicode", "blank": None, "no-text": "read.missing_text"}
    assert by_id["surrogate"]["text"] == "caf\ufffd broken emoji"
    reasons = Counter(d.get("reason") for d in rows if d["source"].endswith("hostile.jsonl"))
    # the bad id too; the 5,000-deep line; the line over max_record_bytes (both rejected unparsed: derived ids)
    assert (reasons["read.invalid_unicode"], reasons["read.invalid_json"], reasons["read.too_large"]) == (2, 1, 1)
    bomb = Counter(d.get("reason") for d in rows if d["source"].endswith("bomb.jsonl.zst"))
    assert bomb == {"read.too_large": 1, None: 1}  # the 64 MB line rejected while skipped, never held; then read on
    bombs = [d for d in rows if d["url"] in ("http://hostile.example/bomb", "http://hostile.example/404")]
    assert sorted(d["reason"] for d in bombs) == ["read.http_status", "read.too_large"]
    # the documents that were quadratic to split went through the quality stage (kept or rejected)
    quality = {d["id"]: d.get("reason") for kind in ("quality", "rejected/quality")
               for p in (run_dir / kind).glob("part-*.parquet") for d in pq.read_table(p).to_pylist()}
    assert {"run-of-section-signs", "run-of-dotted-words", "run-of-marks"} <= set(quality)
    assert quality["blank"]  # rejected, with its reason
