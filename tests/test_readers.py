import gzip
import json
import sys
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import http_response, warc_bytes, write_jsonl

from tokenmill.pipeline import storage
from tokenmill.pipeline.config import ReaderConfig
from tokenmill.pipeline.readers import _from_mapping, expand_inputs, plan_shards, read_file, read_jsonl, read_records
from tokenmill.pipeline.stages import part_step

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

WARC_DIR = Path(__file__).parent / "data" / "warc"
CFG = ReaderConfig()
ARTICLE = ("Die Stadtbibliothek öffnet ab Montag länger. Der Gemeinderat hat die zusätzlichen Stellen bewilligt, "
           "und die Schulen dürfen die Lesesäle am Nachmittag nutzen.")


def reasons_of(records):
    return [r.reason for r in records]


def test_read_jsonl_keeps_good_records_and_rejects_bad_ones_with_reasons(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "text": "hello world", "url": "http://x", "lang": "en"},
        "{not json",
        {"id": "b"},
        "",
        b"\xff\xfe{\"text\": \"bad utf8\"}",
        {"text": "   "},
        {"text": ARTICLE},
        "[1, 2]",
        {"text": "ok\x00\x01\x02binary"},
    ])
    records = list(read_jsonl(str(path), CFG))
    assert reasons_of(records) == [None, "read.invalid_json", "read.missing_text", "read.invalid_utf8", "read.empty_text",
                                   None, "read.invalid_json", "read.binary"]
    first = records[0].doc
    assert first["id"] == "a" and first["url"] == "http://x" and json.loads(first["meta"]) == {"lang": "en"}
    # derived ids name the file and the byte offset, so a rejected record can be found
    offset = len(path.read_bytes().split(b"\n")[0]) + 1
    assert records[1].doc["id"] == f"in.jsonl@{offset}"
    assert path.read_bytes()[offset:].startswith(b"{not json")
    assert records[5].doc["text"] == ARTICLE and records[5].doc["id"].startswith("in.jsonl@")
    assert "Expecting" in json.loads(records[1].doc["meta"])["error"]


def test_custom_keys_and_compressions(tmp_path):
    rows = [{"doc_id": 7, "content": ARTICLE, "link": "http://y"}]
    gz = tmp_path / "in.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(json.dumps(rows[0]) + "\n")
    zst = tmp_path / "in.jsonl.zst"
    zst.write_bytes(zstd.compress((json.dumps(rows[0]) + "\n").encode()))
    cfg = ReaderConfig(text_key="content", id_key="doc_id", url_key="link")
    for path in (gz, zst):
        [record] = list(read_records(str(path), cfg))
        assert record.reason is None and record.doc["id"] == "7" and record.doc["url"] == "http://y"
        assert record.doc["text"] == ARTICLE


def test_truncated_gzip_and_zstd_keep_what_was_read_and_report_the_rest(tmp_path):
    lines = b"".join(json.dumps({"text": f"{ARTICLE} ({i})"}).encode() + b"\n" for i in range(2000))
    for path, data in ((tmp_path / "cut.jsonl.gz", gzip.compress(lines)),
                       (tmp_path / "cut.jsonl.zst", zstd.compress(lines))):
        path.write_bytes(data[: len(data) * 2 // 3])
        records = list(read_records(str(path), CFG))
        assert records[0].reason is None and records[-1].reason == "read.truncated"
        assert 0 < len(records) - 1 < 2000
        assert "Error" in json.loads(records[-1].doc["meta"])["error"]


def test_unreadable_empty_and_binary_files(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert list(read_records(str(tmp_path / "empty.jsonl"), CFG)) == []
    (tmp_path / "bad.jsonl.gz").write_bytes(b"this is not gzip at all")
    [record] = list(read_records(str(tmp_path / "bad.jsonl.gz"), CFG))
    assert record.reason == "read.unreadable_file" and "gzip" in json.loads(record.doc["meta"])["error"].lower()
    (tmp_path / "image.txt").write_bytes(bytes(range(256)) * 4)
    [record] = list(read_records(str(tmp_path / "image.txt"), CFG))
    assert record.reason == "read.binary"


def test_a_50mb_document_is_rejected_as_too_large_not_loaded_into_the_run(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "w") as f:
        f.write(json.dumps({"text": "word " * 10_000_000}) + "\n")
        f.write(json.dumps({"text": ARTICLE}) + "\n")
    records = list(read_records(str(path), CFG))
    assert reasons_of(records) == ["read.too_large", None]  # over max_record_bytes: never decoded or parsed
    assert len(records[0].doc["text"]) <= 2000 and json.loads(records[0].doc["meta"])["bytes"] == 50_000_013
    small = write_jsonl(tmp_path / "long.jsonl", [{"text": "word " * 1000}, {"text": ARTICLE}])
    chars = list(read_records(str(small), ReaderConfig(max_doc_chars=4000)))  # parsed, then over max_doc_chars
    assert reasons_of(chars) == ["read.too_large", None] and json.loads(chars[0].doc["meta"])["chars"] == 5000


def test_parquet_and_text_files(tmp_path):
    table = pa.table({"id": ["p1", None], "text": [ARTICLE, "Second document of the table."], "url": ["http://p", None]})
    pq.write_table(table, tmp_path / "docs.parquet", row_group_size=1)
    records = list(read_records(str(tmp_path / "docs.parquet"), CFG))
    assert [r.doc["id"] for r in records] == ["p1", "docs.parquet@row1"] and reasons_of(records) == [None, None]
    (tmp_path / "note.txt").write_text(ARTICLE + "\n")
    [record] = list(read_records(str(tmp_path / "note.txt"), CFG))
    assert record.reason is None and record.doc["id"] == "note.txt" and record.doc["text"].startswith("Die Stadt")


def test_warc_html_responses_become_main_text():
    records = list(read_records(str(WARC_DIR / "dolma_wget_sample_0000.warc.gz"), CFG))
    assert len(records) == 22 and all(r.reason is None for r in records)
    by_url = {r.doc["url"]: r.doc for r in records}
    team = by_url["https://www.semanticscholar.org/research/research-team"]
    assert team["text"].startswith("Meet Our Team") and "<div" not in team["text"] and "function(" not in team["text"]
    assert json.loads(team["meta"])["http_status"] == 200
    soldaini = by_url["https://soldaini.net/"]
    assert soldaini["text"].startswith("DALL•E 2 generation") and "👋" in soldaini["text"]  # charset from the headers
    assert all(r.doc["id"].startswith("dolma_wget_sample_0000.warc.gz@") for r in records)


def test_warc_chunked_http_bodies_are_decoded():
    records = list(read_records(str(WARC_DIR / "dolma_wget_sample_0001.warc.gz"), CFG))
    assert len(records) == 15 and all(r.reason is None for r in records)
    home = next(r.doc for r in records if r.doc["url"] == "https://creativecommons.org/")
    assert home["text"].startswith("Better Sharing, Brighter Future")


def test_wet_conversion_records():
    [record] = list(read_records(str(WARC_DIR / "commoncrawl_whirlwind.warc.wet.gz"), CFG))
    assert record.reason is None and record.doc["url"] == "https://an.wikipedia.org/wiki/Escopete"
    assert record.doc["text"].startswith("Escopete - Biquipedia")


def test_expand_inputs_finds_known_formats_in_directories_sorted(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.jsonl", "a.jsonl.gz", "sub/c.json", "notes.md", "d.parquet", "e.warc.gz", "f.warc.wet.gz", "g.txt"):
        (tmp_path / name).write_text("")
    found = expand_inputs([str(tmp_path)])
    assert [p.rsplit("/", 1)[1] for p in found] == ["a.jsonl.gz", "b.jsonl", "d.parquet", "e.warc.gz", "f.warc.wet.gz",
                                                    "g.txt", "c.json"]


def test_one_big_file_is_split_into_byte_range_shards_with_stable_ids(tmp_path):
    path = write_jsonl(tmp_path / "big.jsonl", [{"text": f"{ARTICLE} ({i})"} for i in range(100)])
    whole = [r.doc for r in read_records(str(path), CFG)]
    shards = plan_shards([str(path)], shard_bytes=1500)
    assert len(shards) > 5 and shards[0]["start"] == 0 and shards[-1]["end"] == path.stat().st_size
    pieces = [r.doc for s in shards for r in read_records(s["url"], CFG, s["start"], s["end"])]
    assert pieces == whole  # every record exactly once, same ids as reading the file whole


def test_read_file_writes_kept_and_rejected_parts_and_reports_file_errors(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "one"}, "{bad", {"text": "two"}])
    run = str(tmp_path / "run")
    [stats] = part_step("read", read_file, [dict(url=str(path), shard=3, run_dir=run, cfg=CFG)], run, "read",
                        lambda call: call["shard"]).run_serially()
    assert stats["docs_in"] == 3 and stats["docs_kept"] == 2 and stats["rejected"] == {"read.invalid_json": 1}
    kept = pq.read_table(f"{run}/read/part-00003.parquet")
    rejected = pq.read_table(f"{run}/rejected/read/part-00003.parquet")
    assert kept["text"].to_pylist() == ["one", "two"]
    assert rejected["reason"].to_pylist() == ["read.invalid_json"] and rejected["id"].to_pylist() == ["in.jsonl@16"]
    assert storage.read_json(f"{run}/read/_parts/part-00003.json")["docs_kept"] == 2

    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(b'{"text": "kept before the cut"}\n' * 50)[:-20])
    stats = read_file(str(broken), 4, run, CFG)
    assert stats["rejected"] == {"read.truncated": 1} and stats["docs_kept"] >= 1
    [error] = stats["errors"]
    assert error["path"] == str(broken) and error["reason"] == "read.truncated" and error["offset"].isdigit()
    with pytest.raises(IOError, match="broken.jsonl.gz"):
        read_file(str(broken), 5, run, ReaderConfig(strict=True))


def _split_read(path, shard_bytes, index_dir=None):
    shards = plan_shards([str(path)], shard_bytes=shard_bytes, index_dir=index_dir)
    return shards, [r for s in shards for r in read_records(s["url"], CFG, s["start"], s["end"], s.get("index"))]


def test_compressed_jsonl_is_split_into_uncompressed_byte_ranges_with_the_same_records(tmp_path):
    records = [{"text": f"{ARTICLE} ({i})" + " tail" * (i % 7)} for i in range(120)] + ["{broken json"]
    plain = write_jsonl(tmp_path / "all.jsonl", records).read_bytes()
    half = plain.index(b"\n", len(plain) // 2) + 1
    members = gzip.compress(plain[:half]) + gzip.compress(plain[half:])  # multi-member gzip, as pigz or cat make
    frames = zstd.compress(plain[:half]) + zstd.compress(plain[half:])
    for name, data in (("in.jsonl.gz", gzip.compress(plain)), ("multi.jsonl.gz", members),
                       ("in.jsonl.zst", zstd.compress(plain)), ("frames.jsonl.zst", frames)):
        path = tmp_path / name
        path.write_bytes(data)
        whole = [(r.doc, r.reason) for r in read_records(str(path), CFG)]
        for index_dir in (None, str(tmp_path / "index")):  # .gz with an index: shards seek instead of skipping
            shards, pieces = _split_read(path, 4000, index_dir)
            assert len(shards) == -(-len(plain) // 4000) >= 3 and shards[-1]["end"] is None
            assert all("index" in s for s in shards) == (index_dir is not None and name.endswith(".gz"))
            # boundaries fall inside records: each record is read once, by the shard it starts in
            assert any(plain[s["start"] - 1:s["start"]] != b"\n" for s in shards[1:])
            assert [(r.doc, r.reason) for r in pieces] == whole, (name, index_dir)
        assert len(whole) == 121 and whole[0][0]["id"] == f"{name}@0"
        assert whole[-1][1] == "read.invalid_json" and whole[-1][0]["id"] == f"{name}@{plain.index(b'{broken')}"


def test_a_truncated_compressed_file_split_in_shards_reports_the_cut_once_with_path_and_offset(tmp_path):
    lines = b"".join(json.dumps({"text": f"{ARTICLE} ({i})"}).encode() + b"\n" for i in range(2000))
    for path, data in ((tmp_path / "cut.jsonl.gz", gzip.compress(lines)),
                       (tmp_path / "cut.jsonl.zst", zstd.compress(lines))):
        path.write_bytes(data[: len(data) * 2 // 3])
        whole = [(r.doc, r.reason) for r in read_records(str(path), CFG)]
        shards, pieces = _split_read(path, 10_000, str(tmp_path / "index"))  # cannot be indexed: shards skip
        assert len(shards) >= 3 and not any("index" in s for s in shards)
        assert [(r.doc, r.reason) for r in pieces] == whole
        cut = [r for r in pieces if r.reason == "read.truncated"]
        assert len(cut) == 1 and cut[0].doc["source"] == str(path) and cut[0].offset == pieces[-2].offset
        assert "Error" in json.loads(cut[0].doc["meta"])["error"]


def test_warc_and_wet_gz_are_split_at_record_members_with_the_same_records(tmp_path):
    for name, shard_bytes in (("dolma_wget_sample_0000.warc.gz", 40_000), ("commoncrawl_whirlwind.warc.gz", 4_000),
                              ("commoncrawl_whirlwind.warc.wet.gz", 1024)):
        path = WARC_DIR / name
        whole = [(r.doc, r.reason) for r in read_records(str(path), CFG)]
        shards, pieces = _split_read(path, shard_bytes)
        assert len(shards) >= 3 and shards[-1]["end"] is None
        assert [(r.doc, r.reason) for r in pieces] == whole and len(whole) > 0, name
    # a .warc.gz compressed as one gzip member has no offsets to split at: one shard
    single = tmp_path / "single.warc.gz"
    single.write_bytes(gzip.compress(gzip.decompress((WARC_DIR / "dolma_wget_sample_0000.warc.gz").read_bytes())))
    assert len(plan_shards([str(single)], 1024)) == 1 and len(list(read_records(str(single), CFG))) == 22


def test_hostile_jsonl_records_are_rejected_one_by_one_and_the_rest_of_the_shard_is_read(tmp_path):
    good = [{"text": f"{ARTICLE} ({i})"} for i in range(10)]
    path = write_jsonl(tmp_path / "hostile.jsonl", [
        '{"text": "caf\\ud800 broken emoji"}',  # valid JSON, a lone surrogate: UTF-8 cannot store it
        '{"text": "fine text", "id": "\\udfff", "tags": ["\\ud83d"]}',  # in the id and the meta
        '{"text": ' + "[" * 5000 + "]" * 5000 + "}",  # deeper than the parser goes: RecursionError
        '{"text": "ok", "deep": ' + "[" * 200 + "]" * 200 + "}",  # nested, but not too deep: kept
        '{"text": "' + "x" * 20_000 + '"}',  # over max_record_bytes below
        *good,
    ])
    cfg = ReaderConfig(max_record_bytes=16_384)
    records = list(read_records(str(path), cfg))
    assert reasons_of(records)[:3] == ["read.invalid_unicode", "read.invalid_unicode", "read.invalid_json"]
    assert reasons_of(records)[3:5] == [None, "read.too_large"] and records[3].doc["meta"].startswith('{"deep": [[[')
    assert [r.doc["text"] for r in records[5:]] == [g["text"] for g in good] and reasons_of(records[5:]) == [None] * 10
    assert records[0].doc["text"] == "caf\ufffd broken emoji" and "lone surrogate in text" in records[0].doc["meta"]
    assert "RecursionError" in json.loads(records[2].doc["meta"])["error"]
    assert json.loads(records[4].doc["meta"])["bytes"] == 20_000 + 13 and len(records[4].doc["text"]) <= 2000

    # the read task writes all of them: the rejected rows are encodable, the books add up
    stats = read_file(str(path), 0, str(tmp_path / "run"), cfg)
    assert stats["docs_in"] == 15 and stats["docs_kept"] == 11
    rejected = pq.read_table(tmp_path / "run" / "rejected" / "read" / "part-00000.parquet")
    assert rejected["text"].to_pylist()[0] == "caf\ufffd broken emoji"

    deep: list = []
    for _ in range(sys.getrecursionlimit() + 100):  # a mapping (JSON or Parquet) too deep to print as meta
        deep = [deep]
    record = _from_mapping({"text": "ok", "deep": deep}, "x.jsonl", "@0", cfg)
    assert record.reason == "read.invalid_record" and "RecursionError" in record.doc["meta"]


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_compressed_line_bomb_is_skipped_in_bounded_memory(tmp_path):
    # 16 MB of one line, compressed to a few KB: neither decompressed whole nor held as a line
    bomb = b'{"text": "' + b"a" * (16 << 20) + b'"}\n' + json.dumps({"text": ARTICLE}).encode() + b"\n"
    for name, data in (("bomb.jsonl.zst", zstd.compress(bomb)), ("bomb.jsonl.gz", gzip.compress(bomb))):
        (tmp_path / name).write_bytes(data)
    del bomb
    cfg = ReaderConfig(max_record_bytes=256 << 10)
    for name in ("bomb.jsonl.zst", "bomb.jsonl.gz"):
        records, peak = _peak_bytes(lambda: list(read_records(str(tmp_path / name), cfg)))
        assert reasons_of(records) == ["read.too_large", None] and records[1].doc["text"] == ARTICLE
        assert json.loads(records[0].doc["meta"])["bytes"] == (16 << 20) + 13
        assert peak < 4 << 20, (name, peak)  # a few times max_record_bytes, not the 16 MB line


def test_warc_bodies_are_checked_before_they_are_read_and_decompressed_in_bounds(tmp_path):
    page = f"<html><body><p>{ARTICLE}</p></body></html>".encode()
    html = "Content-Type: text/html; charset=utf-8\r\n"
    path = tmp_path / "hostile.warc"
    path.write_bytes(warc_bytes([
        ("http://a/404", http_response("404 Not Found", html, b"x" * (1 << 20))),
        ("http://a/pdf", http_response("200 OK", "Content-Type: application/pdf\r\n", b"%PDF" + b"\0" * (1 << 20))),
        ("http://a/big", http_response("200 OK", html, b"<p>" + b"y" * (1 << 20))),  # declared size over the limit
        ("http://a/bomb", http_response("200 OK", html + "Content-Encoding: gzip\r\n",
                                gzip.compress(b"<p>" + b"z" * (16 << 20)))),  # a few KB that gunzip to 16 MB
        ("http://a/ok", http_response("200 OK", html, page)),
    ]))
    records, peak = _peak_bytes(lambda: list(read_records(str(path), ReaderConfig(max_record_bytes=256 << 10))))
    assert reasons_of(records) == ["read.http_status", "read.not_html", "read.too_large", "read.too_large", None]
    assert records[-1].doc["url"] == "http://a/ok" and ARTICLE in records[-1].doc["text"]
    assert peak < 4 << 20, peak


def test_read_batches_are_bounded_by_records_not_only_text(tmp_path):
    path = write_jsonl(tmp_path / "no_text.jsonl", [{"body": f"record {i} under another key"} for i in range(100)])
    stats = read_file(str(path), 0, str(tmp_path / "run"), ReaderConfig(batch_rows=10))
    assert stats["rejected"] == {"read.missing_text": 100}
    assert pq.ParquetFile(tmp_path / "run" / "rejected" / "read" / "part-00000.parquet").num_row_groups == 10
