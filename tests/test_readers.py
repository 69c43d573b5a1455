import gzip
import json

import pyarrow.parquet as pq

from pipeline import io
from pipeline.config import ReaderConfig
from pipeline.readers import expand_inputs, read_file, read_jsonl
from tests.conftest import write_jsonl


def test_read_jsonl_keeps_good_records_and_rejects_bad_ones_with_reasons(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "text": "hello world", "url": "http://x", "lang": "en"},
        "{not json",
        {"id": "b"},
        "",
        b"\xff\xfe{\"text\": \"bad utf8\"}",
        {"text": "   "},
        {"text": "no id here"},
        "[1, 2]",
    ])
    records = list(read_jsonl(str(path), ReaderConfig()))
    reasons = [r.reason for r in records]
    assert reasons == [None, "read.invalid_json", "read.missing_text", "read.invalid_utf8", "read.empty_text", None, "read.invalid_json"]
    first = records[0].doc
    assert first["id"] == "a" and first["url"] == "http://x" and json.loads(first["meta"]) == {"lang": "en"}
    # derived ids name the file and the line, so a rejected record can be found
    assert records[1].doc["id"] == "in.jsonl#2"
    assert records[5].doc["id"] == "in.jsonl#7"
    assert "Expecting" in json.loads(records[1].doc["meta"])["error"]


def test_custom_keys_and_gzip(tmp_path):
    path = tmp_path / "in.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"doc_id": 7, "content": "some text", "link": "http://y"}) + "\n")
    cfg = ReaderConfig(text_key="content", id_key="doc_id", url_key="link")
    [record] = list(read_jsonl(str(path), cfg))
    assert record.reason is None and record.doc["id"] == "7" and record.doc["url"] == "http://y"


def test_expand_inputs_finds_jsonl_in_directories_sorted(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.jsonl", "a.jsonl.gz", "sub/c.json", "notes.md"):
        (tmp_path / name).write_text("")
    found = expand_inputs([str(tmp_path)])
    assert [p.rsplit("/", 1)[1] for p in found] == ["a.jsonl.gz", "b.jsonl", "c.json"]


def test_read_file_writes_kept_and_rejected_parts_that_reconcile(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "one"}, "{bad", {"text": "two"}])
    run = str(tmp_path / "run")
    stats = read_file(str(path), 3, run, ReaderConfig())
    assert stats["docs_in"] == 3 and stats["docs_kept"] == 2 and stats["rejected"] == {"read.invalid_json": 1}
    kept = pq.read_table(f"{run}/read/part-00003.parquet")
    rejected = pq.read_table(f"{run}/rejected/read/part-00003.parquet")
    assert kept["text"].to_pylist() == ["one", "two"]
    assert rejected["reason"].to_pylist() == ["read.invalid_json"] and rejected["id"].to_pylist() == ["in.jsonl#2"]
    assert io.read_json(f"{run}/read/_parts/part-00003.json")["docs_kept"] == 2
