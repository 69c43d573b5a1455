"""Hostile input, in general rather than case by case (issue 15).

1. Fuzzing (hypothesis) the readers and the quality chain with random bytes, random JSON and random
   Unicode (lone surrogates, controls, bidi marks, combining runs, deep nesting, long lines): no
   exception escapes, and every input record is kept or rejected with a `read.*` reason; the kept
   documents then go through the whole quality chain, which keeps or rejects each with a reason.
2. Cost per document: adversarial documents (a long run of each kind of character, one huge line)
   through every quality step cost time linear in their size: the ratio of 100k to 10k characters is
   measured in the test run, where a quadratic step would give ~100.
"""
from __future__ import annotations

import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenmill.pipeline.config import (
    C4Config,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    LanguageConfig,
    QualityConfig,
    ReaderConfig,
)
from tokenmill.pipeline.filters import build_chain, filter_docs
from tokenmill.pipeline.filters.base import Doc
from tokenmill.pipeline.readers import read_file, read_records

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

# Every code point, lone surrogates (category Cs) included; and the kinds that break text handling.
ANY_CHAR = st.characters(codec=None, blacklist_categories=())
TRICKY = st.sampled_from(["\u200f", "\u202e", "\u2066", "\u0301", "\u0300\u0301\u0302", "\x00", "\x1b[31m", "\r",
                          "\ufeff", "\ud800", "\udfff", "\U0001f600", "\u00a0", "\u2028", "§", "@", "...", "a:", "'s"])
TEXT = st.lists(st.one_of(st.text(ANY_CHAR, max_size=20), TRICKY, st.text("ab .,\n", max_size=30)),
                max_size=12).map("".join)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8)
RECORD = st.dictionaries(st.sampled_from(["text", "id", "url", "lang"]) | TEXT, JSON, max_size=4) | st.builds(
    lambda text, rest: {"text": text, **rest}, TEXT,
    st.dictionaries(st.sampled_from(["id", "url", "x"]), JSON, max_size=2))
LINE = st.one_of(
    RECORD.map(lambda r: json.dumps(r).encode()),  # surrogates escaped: valid JSON
    RECORD.map(lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8", "surrogatepass")),  # raw: invalid UTF-8
    st.binary(max_size=80),
    TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.integers(1, 4000).map(lambda depth: b'{"text": "x", "a": ' + b"[" * depth + b"]" * depth + b"}"),
    TEXT.map(lambda t: json.dumps({"text": t * 200}).encode()),  # long lines (some over max_record_bytes)
)
CFG = ReaderConfig(max_record_bytes=4096, batch_rows=7)
FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def chain():
    return build_chain(QualityConfig())


@FUZZ
@given(lines=st.lists(LINE, min_size=1, max_size=12), compression=st.sampled_from(["", ".gz", ".zst"]))
def test_every_jsonl_record_is_kept_or_rejected_with_a_reason(chain, lines, compression):
    content = b"\n".join(lines) + b"\n"
    records = [line for line in content.split(b"\n") if line.strip()]  # a record per non-blank line
    pack = {"": bytes, ".gz": gzip.compress, ".zst": zstd.compress}[compression]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz.jsonl{compression}"
        path.write_bytes(pack(content))
        stats = read_file(str(path), 0, f"{tmp}/run", CFG)  # the read task: writes kept and rejected rows
        assert stats["docs_in"] == len(records) == stats["docs_kept"] + sum(stats["rejected"].values())
        assert not stats["errors"] and all(reason.startswith("read.") for reason in stats["rejected"])
        kept = [r for r in read_records(str(path), CFG) if r.reason is None]
    assert len(kept) == stats["docs_kept"]
    docs = [Doc(r.doc["id"], r.doc["text"], r.doc["url"]) for r in kept]
    for doc in docs:
        doc.text.encode("utf-8")  # what was kept can be stored
    reasons = filter_docs(chain, docs)
    assert len(reasons) == len(docs) and all(r is None or "." in r for r in reasons)


@FUZZ
@given(data=st.binary(max_size=3000), name=st.sampled_from(
    ["x.jsonl", "x.jsonl.gz", "x.jsonl.zst", "x.jsonl.bz2", "x.txt", "x.parquet", "x.warc", "x.warc.gz", "x.wet.gz"]))
def test_random_bytes_in_any_format_become_records_with_reasons(data, name):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        for record in read_records(str(path), CFG):
            assert record.reason is None or record.reason.startswith("read."), record
            if record.reason is None:
                record.doc["text"].encode("utf-8")


@FUZZ
@given(texts=st.lists(TEXT.map(lambda t: t.encode("utf-8", "replace").decode()), min_size=1, max_size=8))
def test_the_quality_chain_keeps_or_rejects_any_text_with_a_reason(texts):
    lenient = QualityConfig(language=LanguageConfig(keep=[]), gopher_quality=GopherQualityConfig(min_words=0))
    for cfg in (QualityConfig(), lenient):
        reasons = filter_docs(build_chain(cfg), [Doc(str(i), t, None) for i, t in enumerate(texts)])
        assert len(reasons) == len(texts) and all(r is None or "." in r for r in reasons)


# --- cost per document -----------------------------------------------------------------------------

# Thresholds that keep everything, so that every rule of every step is computed at both sizes.
PERMISSIVE = QualityConfig(
    language=LanguageConfig(keep=[], min_score=0),
    gopher_repetition=GopherRepetitionConfig(
        max_duplicate_line_fraction=1, max_duplicate_paragraph_fraction=1, max_duplicate_line_char_fraction=1,
        max_duplicate_paragraph_char_fraction=1, top_ngram_char_fractions={2: 1, 3: 1, 4: 1},
        duplicate_ngram_char_fractions={n: 1 for n in range(5, 11)}),
    gopher_quality=GopherQualityConfig(
        min_words=0, max_words=10**12, min_mean_word_length=0, max_mean_word_length=10**9, max_symbol_word_ratio=10**9,
        max_bullet_lines_ratio=1, max_ellipsis_lines_ratio=1, min_alpha_words_ratio=0, min_stop_words=0),
    c4=C4Config(clean_lines=False, min_words_per_line=0, max_word_length=10**9, min_sentences=0, lorem_ipsum=False,
                curly_brace=False),
    fineweb=FineWebConfig(min_line_punctuation_ratio=0, max_short_line_ratio=1, max_char_duplication_ratio=1,
                          max_newline_word_ratio=10**9),
)
# A long run of each kind of character that word splitting, the line rules or PII treat specially,
# and one huge line mixing them all.
RUNS = ["§", "\U0001f600", "'", "a:", "a.b", "a@b.", "a\u0301\u0301", "\u200f", "x", "7", "0.", "+1 ", "-",
        "...", "#", "the cat ", "a b c\n", "• item\n", "p\n\n", "http://x.example.com/", "中文字",
        "Ab1.,;:'\"§$€(){}[]<>/\\@#-–—…\U0001f600\u0301\u200f\t "]


def _chain_seconds(steps, text: str, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        doc = Doc("x", text, "http://example.com/page")
        started = time.process_time()  # CPU time: other processes on the machine do not count
        for step in steps:
            step(doc)  # every step, whatever the previous one decided
        best = min(best, time.process_time() - started)
    return best


def test_adversarial_documents_cost_time_linear_in_their_size():
    steps = build_chain(PERMISSIVE)
    ratios = {}
    for unit in RUNS:
        small, large = ((unit * (n // len(unit) + 1))[:n] for n in (10_000, 100_000))
        _chain_seconds(steps, small[:1000], 1)  # loads what the text's language needs (a segmenter's dictionary)
        ratios[unit] = _chain_seconds(steps, large, 1) / max(_chain_seconds(steps, small, 3), 1e-3)
    # linear: ~10; quadratic: ~100 (the word splitter on a run of "§" was; 20,000 of them took 19 s)
    assert max(ratios.values()) < 30, {u: round(r, 1) for u, r in ratios.items()}
