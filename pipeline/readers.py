"""Readers: turn input files into document rows, streaming, one shard at a time (a file, or a byte
range / row-group range of one), so memory is bounded by a batch of records, not the file.

Formats, by extension (compression .gz/.zst/.bz2 inferred): JSONL, Parquet, plain text (one
document per file), Common Crawl WARC (HTML responses -> main text with resiliparse) and WET.
Shards (plan_shards): byte ranges of JSONL (of the uncompressed text for .gz/.zst), row-group ranges
of Parquet, gzip-member-aligned byte ranges of .warc.gz/.wet.gz.

Nothing is dropped silently: a record that cannot be used (bad or too deeply nested JSON, invalid
UTF-8, lone surrogates, no text, too large, not HTML) is a rejected row with a reason code, and the
rest of its shard is read; a record's size is checked (`max_record_bytes`) before it is decoded or
decompressed further. A file that cannot be read, or ends early (truncated gzip/zstd), is a rejected
row `read.unreadable_file` / `read.truncated` and an entry in the stage's `errors` (path, offset,
error). Derived ids are `<file name>@<byte offset>` (or
`@row<n>` for Parquet), so they are the same whatever the shard size.
"""
from __future__ import annotations

import contextlib
import io
import json
import posixpath
import re
import sys
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator

import fsspec
from fsspec.spec import AbstractBufferedFile

from . import storage
from .config import ReaderConfig
from .contracts import docs_table
from .stages import PartWriter, Step, marker_url
from .storage import fs_path

COMPRESSIONS = (".gz", ".zst", ".bz2")
FORMATS = {
    ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".txt": "text", ".text": "text",
    ".warc": "warc", ".arc": "warc",
    ".wet": "wet",
}
PREVIEW_CHARS = 2000
FILE_ERRORS = ("read.unreadable_file", "read.truncated")  # rejected rows of unusable records keep this much of the raw text


@dataclass
class Record:
    doc: dict
    reason: str | None = None  # None: a usable document; else why it was rejected
    offset: str = ""  # where in the file: byte offset, or row<n> for Parquet


def format_of(url: str) -> str | None:
    name = posixpath.basename(url).lower()
    for c in COMPRESSIONS:
        name = name.removesuffix(c)
    if name.endswith(".warc.wet"):
        return "wet"
    return FORMATS.get(posixpath.splitext(name)[1])


def list_inputs(inputs: list[str]) -> dict[str, int]:
    """Input files from paths, directories and globs with their sizes in bytes, sorted so shard numbers
    are stable. One listing per input item (sizes come with it): O(files) metadata, no file is opened."""
    files: dict[str, int] = {}
    for item in inputs:
        fs, path = fs_path(item)
        if fs.isdir(path):
            matches = {p: info for p, info in fs.find(path, detail=True).items() if format_of(p)}
        elif any(c in path for c in "*?["):
            matches = fs.glob(path, detail=True)
        else:
            matches = {path: fs.info(path) if fs.exists(path) else {}}  # a missing file: its read task reports it
        if not matches:
            raise FileNotFoundError(f"input {item!r} matches no file")
        for p, info in matches.items():
            if info.get("type", "file") == "file":
                files[fs.unstrip_protocol(p) if "://" in item else p] = int(info.get("size") or 0)
    return dict(sorted(files.items()))


def expand_inputs(inputs: list[str]) -> list[str]:
    """Input files from paths, directories and globs, sorted so shard numbers are stable."""
    return list(list_inputs(inputs))


SPLIT_COMPRESSIONS = (".gz", ".zst")  # bz2 decompresses too slowly to skip through; such a file is one shard
MIN_EXPANSION = 8  # a compressed file smaller than shard_bytes / this is not measured: it is one shard anyway, likely


def _needs_measuring(url: str, size: int, shard_bytes: int) -> bool:
    """Could this file hold more than shard_bytes, and can it be split only after reading some of it
    (decompressing it, its footer, its first member)? Decided by its listed size alone."""
    fmt, lower = format_of(url), url.lower()
    return ((fmt == "parquet" and size * MIN_EXPANSION > shard_bytes)
            or (fmt == "jsonl" and lower.endswith(SPLIT_COMPRESSIONS) and size * MIN_EXPANSION > shard_bytes)
            or (fmt in ("warc", "wet") and size > shard_bytes and lower.endswith(".gz")))


def measure_input(url: str, shard_bytes: int, index_dir: str | None = None) -> dict:
    """What splitting one input file needs to know, read from the file (a task of its own, never the
    flow driver): a compressed JSONL's uncompressed size (and, with `index_dir`, a .gz seek index),
    a Parquet file's row-group sizes, whether a WARC/WET can be split at record members.
    {"kind": "whole"} when it cannot be split (or read: its read task reports why)."""
    fmt = format_of(url)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            fs, path = fs_path(url)
            with fs.open(path, "rb") as f:
                meta = pq.ParquetFile(f).metadata
            return {"kind": "parquet", "groups": [meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)]}
        if fmt == "jsonl":
            size, complete = uncompressed_size(url)
            # indexed_gzip reads a truncated file without an error: such a file's shards skip, and report it
            index = gzip_index(url, index_dir, shard_bytes) if index_dir and complete and url.lower().endswith(".gz") else None
            return {"kind": "jsonl", "size": size, "index": index and index["url"]}
        if fmt in ("warc", "wet") and warc_splittable(url):
            return {"kind": "warc"}
    except (ConnectionError, TimeoutError):
        raise
    except Exception:  # noqa: BLE001 - unreadable: the read task reports it with its error
        return {"kind": "whole"}
    return {"kind": "whole"}


def measure_step(calls: list[dict], index_dir: str) -> Step:
    """measure_input over `calls` as a step (one task each on Ray), committed under <index_dir>/_parts."""
    import hashlib

    def unit(call: dict) -> str:
        return f"{posixpath.basename(call['url'])}.{hashlib.sha1(call['url'].encode()).hexdigest()[:12]}"
    return Step("plan", measure_input, calls, marker=lambda call: marker_url(index_dir, unit(call)),
                outputs=lambda call, result: [result["index"]] if result.get("index") else [])


def plan_shards(files: list[str] | dict[str, int], shard_bytes: int, index_dir: str | None = None,
                run: Callable[[Step], list] | None = None) -> list[dict]:
    """Work units of about `shard_bytes` of (uncompressed) input each.

    Planning is metadata: `files` with their sizes (list_inputs) are planned without opening any.
    An uncompressed JSONL file is split into byte ranges (by its size). A file that has to be read to
    be split (measure_input: .gz/.zst JSONL, Parquet, WARC/WET) is measured whenever it could hold
    more than `shard_bytes` (_needs_measuring), whatever the number of files, so a part never grows
    with the corpus (every per-part step's memory and time are bounded by shard_bytes); what it takes
    to read is a step (`run`: e.g. Prefect tasks on Ray; default: in this process; a .gz costs one
    decompression for its size and one for its index): .gz/.zst JSONL into ranges of its uncompressed bytes
    (exact for multi-member gzip and zstd frames; a .gz with `index_dir` gets a seek index, its shards
    start at the index point before their range, otherwise a shard decompresses from the start and
    skips), Parquet into row-group ranges, a one-member-per-record .warc.gz at member offsets. The last
    shard is open-ended, so a file that ends early is read (and its truncation reported) exactly as if
    it were one shard. Every other file is one shard."""
    sizes = files if isinstance(files, dict) else {u: _size(u) for u in files}
    todo = [u for u, size in sizes.items() if _needs_measuring(u, size, shard_bytes)]
    calls = [{"url": u, "shard_bytes": shard_bytes, "index_dir": index_dir} for u in todo]
    if not calls:
        measured = []
    elif index_dir is None:
        measured = [measure_input(**call) for call in calls]
    else:
        step = measure_step(calls, index_dir)
        measured = run(step) if run else step.run_serially()
    found = dict(zip(todo, measured))
    shards: list[dict] = []
    for url, size in sizes.items():
        fmt, m = format_of(url), found.get(url, {"kind": None})
        if m["kind"] == "parquet" and m["groups"]:
            start, acc = 0, 0
            for g, group_bytes in enumerate(m["groups"]):
                acc += group_bytes
                if acc >= shard_bytes or g == len(m["groups"]) - 1:
                    shards.append({"url": url, "start": start, "end": g + 1})
                    start, acc = g + 1, 0
        elif m["kind"] == "jsonl":
            bounds = list(range(0, m["size"], shard_bytes)) or [0]
            pieces = [{"url": url, "start": s, "end": s + shard_bytes} for s in bounds[:-1]]
            pieces.append({"url": url, "start": bounds[-1], "end": None})
            shards += [p | {"index": m["index"]} for p in pieces] if m["index"] else pieces
        elif m["kind"] == "warc":
            shards += [{"url": url, "start": s, "end": s + shard_bytes} for s in range(0, size, shard_bytes)]
            shards[-1]["end"] = None
        elif fmt == "jsonl" and not url.lower().endswith(COMPRESSIONS) and size > shard_bytes:
            shards += [{"url": url, "start": s, "end": min(size, s + shard_bytes)} for s in range(0, size, shard_bytes)]
        else:
            shards.append({"url": url, "start": 0, "end": None})
    return shards


def _size(url: str) -> int:
    try:
        fs, path = fs_path(url)
        return fs.size(path) or 0
    except (ConnectionError, TimeoutError):
        raise
    except Exception:  # noqa: BLE001 - unreadable: the read task reports it with its error
        return 0


def gzip_index(url: str, index_dir: str, spacing: int) -> dict | None:
    """A seek index of a gzip file (indexed_gzip), saved under `index_dir` and reused while the file
    keeps its size: {"url": index file, "size": uncompressed bytes}. None when the file cannot be
    indexed (truncated, corrupt): its shards then skip through the stream instead."""
    import hashlib

    import indexed_gzip

    fs, path = fs_path(url)
    name = f"{posixpath.basename(url)}.{hashlib.sha1(url.encode()).hexdigest()[:12]}"
    index_url, meta_url = posixpath.join(index_dir, name + ".gzidx"), posixpath.join(index_dir, name + ".json")
    source_bytes = fs.size(path)
    if storage.exists(meta_url) and storage.exists(index_url):
        meta = storage.read_json(meta_url)
        if meta.get("source_bytes") == source_bytes:
            return {"url": index_url, "size": meta["size"]}
    try:
        with fs.open(path, "rb") as raw:
            gz = indexed_gzip.IndexedGzipFile(fileobj=raw, spacing=max(spacing, 1 << 20))  # zran needs >= 1 MB or so
            try:
                gz.build_full_index()
                size = gz.seek(0, 2)
                storage.atomic_write(index_url, lambda f: gz.export_index(fileobj=f))
            finally:
                gz.close()
    except (ConnectionError, TimeoutError):
        raise
    except Exception:  # noqa: BLE001 - truncated or corrupt: the shards skip instead, the reader reports it
        return None
    storage.write_json(meta_url, {"size": size, "source_bytes": source_bytes})  # last: the index is complete
    return {"url": index_url, "size": size}


def uncompressed_size(url: str) -> tuple[int, bool]:
    """(bytes a compressed file decompresses to, whether it decompressed to its end), counted by
    decompressing it; a truncated or corrupt file counts up to where it breaks off (the shard reading
    that far reports the error)."""
    size = 0
    try:
        with _open_stream(url) as f:
            while chunk := f.read1(1 << 20):  # read1: what one step decompressed, so a cut loses little
                size += len(chunk)
    except (EOFError, OSError, ValueError):
        return size, False
    return size, True


def _base(url: str, key: str) -> dict:
    return {"id": f"{posixpath.basename(url)}{key}", "source": url, "url": None, "meta": None}


def _error_record(url: str, key: str, reason: str, error: str, text: str = "", **meta) -> Record:
    meta = {"error": error, "offset": key.lstrip("@!"), **meta}
    return Record({**_base(url, key), "text": text[:PREVIEW_CHARS], "meta": json.dumps(meta)}, reason, key.lstrip("@!"))


def _from_mapping(obj: dict, url: str, key: str, cfg: ReaderConfig) -> Record:
    try:
        text = obj.pop(cfg.text_key, None)
        doc_id = obj.pop(cfg.id_key, None) if cfg.id_key else None
        url_value = obj.pop(cfg.url_key, None) if cfg.url_key else None
        doc = {
            **_base(url, key),
            "id": str(doc_id) if doc_id not in (None, "") else _base(url, key)["id"],
            "text": text if isinstance(text, str) else "",
            "url": str(url_value) if url_value is not None else None,
            "meta": json.dumps(obj, ensure_ascii=False, default=str) if obj else None,
        }
    except (RecursionError, ValueError, TypeError) as e:  # a field nested too deep (or too big) to print as meta
        return _error_record(url, key, "read.invalid_record", f"{type(e).__name__}: {e}")
    return _checked(doc, cfg, key, missing=not isinstance(text, str))


def _checked(doc: dict, cfg: ReaderConfig, key: str, missing: bool = False) -> Record:
    record = _checked_doc(doc, cfg, missing)
    record.offset = key.lstrip("@")
    return record


# Lone UTF-16 surrogates: JSON may escape them ("\ud800", from broken emoji), Python keeps them,
# UTF-8 (Arrow, Parquet) cannot encode them.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _checked_doc(doc: dict, cfg: ReaderConfig, missing: bool) -> Record:
    unencodable = [k for k, v in doc.items() if isinstance(v, str) and _SURROGATE.search(v)]
    if unencodable:  # the rejected row itself must be writable: surrogates become U+FFFD there
        doc = {k: _SURROGATE.sub("\ufffd", v) if isinstance(v, str) else v for k, v in doc.items()}
        meta = json.loads(doc["meta"] or "{}") | {"error": f"lone surrogate in {', '.join(unencodable)}"}
        return Record({**doc, "text": doc["text"][:PREVIEW_CHARS], "meta": json.dumps(meta, ensure_ascii=False)},
                      "read.invalid_unicode")
    text = doc["text"]
    if missing:
        return Record(doc, "read.missing_text")
    if len(text) > cfg.max_doc_chars:
        meta = json.loads(doc["meta"] or "{}") | {"chars": len(text)}
        return Record({**doc, "text": text[:PREVIEW_CHARS], "meta": json.dumps(meta, ensure_ascii=False)}, "read.too_large")
    if "\x00" in text:
        return Record({**doc, "text": text[:PREVIEW_CHARS]}, "read.binary")
    if not text.strip():
        return Record(doc, "read.empty_text")
    return Record(doc)


def _decode(raw: bytes) -> tuple[str, str | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return raw.decode("utf-8", "replace"), str(e)


def _zstd():
    """The standard library's zstd (Python 3.14), or its backport: multi-frame, bounded reads, and an
    EOFError on a truncated frame."""
    if sys.version_info >= (3, 14):
        from compression import zstd
    else:
        from backports import zstd
    return zstd


@contextlib.contextmanager
def _open_stream(url: str, index: str | None = None):
    """A binary stream with readline(size), decompressed by extension; seekable for a gzip file with
    an `index` (gzip_index). Decompression is bounded by what is read, whatever the ratio."""
    if index:
        import indexed_gzip

        with fsspec.open(url, "rb") as raw, fsspec.open(index, "rb") as index_file:
            gz = indexed_gzip.IndexedGzipFile(fileobj=raw, auto_build=False)
            try:
                gz.import_index(fileobj=index_file)
                yield gz
            finally:
                gz.close()
    elif url.lower().endswith(".zst"):
        with fsspec.open(url, "rb") as raw, _zstd().ZstdFile(raw) as f:
            yield f
    else:
        with fsspec.open(url, "rb", compression="infer") as f:
            # fsspec's own buffered files (object stores) have a readline() without a size limit
            yield io.BufferedReader(f, 1 << 20) if isinstance(f, AbstractBufferedFile) else f


def _readline(f, limit: int) -> tuple[bytes, int, bool]:
    """(the next line, its size in bytes, whether it is whole). A line over `limit` bytes is read past
    in pieces: only its first `limit` bytes are returned, never the whole line held."""
    raw = f.readline(limit + 1)
    if len(raw) <= limit or raw.endswith(b"\n"):
        return raw, len(raw), True
    size, piece = len(raw), raw
    while piece and not piece.endswith(b"\n"):
        piece = f.readline(1 << 20)
        size += len(piece)
    return raw, size, False


def read_jsonl(url: str, cfg: ReaderConfig, start: int = 0, end: int | None = None,
               index: str | None = None) -> Iterator[Record]:
    """Records of the lines of a JSONL file that start in [start, end) (byte offsets of the
    uncompressed text; end None: to the end of the file); `index`: a gzip file's seek index.
    Every error is one record's: a line over `cfg.max_record_bytes` is read.too_large before it is
    decoded, a line JSON cannot parse (bad syntax, nesting deeper than the parser goes) read.invalid_json."""
    limit = cfg.max_record_bytes
    with _open_stream(url, index) as f:
        pos = start
        if start:
            if url.lower().endswith(COMPRESSIONS) and not index:
                _skip(f, start - 1)  # a decompressing stream cannot seek: decompress up to the range
            else:
                f.seek(start - 1)
            pos = start - 1 + _readline(f, limit)[1]  # the line running into `start` belongs to the previous shard
        while end is None or pos < end:
            offset = pos
            raw, size, whole = _readline(f, limit)
            if not size:
                break
            pos += size
            if not whole:
                yield _error_record(url, f"@{offset}", "read.too_large", f"a line of {size} bytes, over "
                                    f"max_record_bytes ({limit})", _decode(raw[:PREVIEW_CHARS])[0], bytes=size)
                continue
            if not raw.strip():
                continue  # blank lines are not records
            line, error = _decode(raw)
            if error:
                yield _error_record(url, f"@{offset}", "read.invalid_utf8", error, line)
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
            except (ValueError, RecursionError) as e:
                error = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
                yield _error_record(url, f"@{offset}", "read.invalid_json", error, line)
                continue
            yield _from_mapping(obj, url, f"@{offset}", cfg)


def _skip(f, n: int) -> None:
    while n > 0:
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            raise EOFError(f"stream ends {n} bytes before the shard's start")
        n -= len(chunk)


def read_parquet_rows(url: str, cfg: ReaderConfig, start: int = 0, end: int | None = None) -> Iterator[Record]:
    """Rows of row groups [start, end) of a Parquet file, a record batch at a time."""
    import pyarrow.parquet as pq

    fs, path = fs_path(url)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        groups = list(range(start, pf.metadata.num_row_groups if end is None else end))
        row = sum(pf.metadata.row_group(g).num_rows for g in range(start))
        for batch in pf.iter_batches(batch_size=1024, row_groups=groups):
            for obj in batch.to_pylist():
                yield _from_mapping(obj, url, f"@row{row}", cfg)
                row += 1


def read_text(url: str, cfg: ReaderConfig, start: int = 0, end: int | None = None) -> Iterator[Record]:
    """A plain-text file is one document; its id is the file name."""
    limit = cfg.max_record_bytes
    with _open_stream(url) as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        preview = _decode(raw[:PREVIEW_CHARS])[0]
        yield _error_record(url, "", "read.too_large", f"over max_record_bytes ({limit})", preview)
        return
    text, error = _decode(raw)
    doc = {**_base(url, ""), "text": text}
    if error and "\x00" not in text:
        yield _error_record(url, "", "read.invalid_utf8", error, text)
    else:
        yield _checked(doc, cfg, "")


def _warc_records(url: str, wanted, start: int = 0, end: int | None = None):
    """Records of the wanted types that start in [start, end) (compressed byte offsets: a split
    .warc.gz starts its shards at gzip members, one record each; see warc_member_at)."""
    from fastwarc.warc import ArchiveIterator

    with fsspec.open(url, "rb") as f:  # fastwarc detects and decompresses gzip/lz4 itself
        if start:
            start = warc_member_at(f, start, end)
            if start is None:
                return
            f.seek(start)  # fastwarc's stream_pos stays the offset in the file
        for rec in ArchiveIterator(f, record_types=wanted, parse_http=True):
            if end is not None and rec.stream_pos >= end:
                break
            key = f"@{rec.stream_pos}"
            uri = (rec.headers.get("WARC-Target-URI") or "").strip("<>") or None
            meta = {"warc_record_id": rec.record_id, "warc_date": rec.headers.get("WARC-Date")}
            yield rec, key, uri, meta


GZIP_MEMBER = b"\x1f\x8b\x08"


def _is_warc_member(data: bytes) -> bool:
    """Does `data` start with a gzip member that decompresses to a WARC record header?"""
    with contextlib.suppress(zlib.error):
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, 16).startswith(b"WARC/")
    return False


def warc_member_at(f, start: int, end: int | None, window: int = 1 << 20) -> int | None:
    """Offset of the first gzip member at or after `start` (and before `end`) that holds a WARC record."""
    pos = start
    while end is None or pos < end:
        f.seek(pos)
        data = f.read(window + 64 * 1024)  # the overlap lets a member found near the window's end be checked
        if not data:
            return None
        i = data.find(GZIP_MEMBER)
        while 0 <= i < window and (end is None or pos + i < end):
            if _is_warc_member(data[i:]):
                return pos + i
            i = data.find(GZIP_MEMBER, i + 1)
        pos += window
    return None


def warc_splittable(url: str) -> bool:
    """Can this WARC/WET file be split at byte offsets? Only a .warc.gz made of one gzip member per
    record (as Common Crawl's are): its first member must hold exactly one record."""
    if not url.lower().endswith(".gz"):
        return False
    with fsspec.open(url, "rb") as f:
        raw = f.read(1 << 20)
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    with contextlib.suppress(zlib.error):
        first = d.decompress(raw)
        return d.eof and bool(d.unused_data) and first.startswith(b"WARC/") and first.count(b"\r\nWARC/1.") == 0
    return False


def read_warc(url: str, cfg: ReaderConfig, start: int = 0, end: int | None = None) -> Iterator[Record]:
    """HTTP responses of a WARC file: HTML -> main text (resiliparse); other content is rejected. The
    status, type and declared size are checked before a body is read; a body is read and
    decompressed only up to `cfg.max_record_bytes`."""
    from fastwarc.warc import WarcRecordType
    from resiliparse.extract.html2text import extract_plain_text

    limit = cfg.max_record_bytes
    for rec, key, uri, meta in _warc_records(url, WarcRecordType.response, start, end):
        content_type = (rec.http_headers.get("Content-Type") or "") if rec.http_headers else ""
        status = rec.http_headers.status_code if rec.http_headers else None
        meta |= {"content_type": content_type, "http_status": status}
        doc = {**_base(url, key), "url": uri, "text": "", "meta": json.dumps(meta)}
        if status is not None and status != 200:
            yield Record(doc, "read.http_status", key[1:])
        elif "html" not in content_type.lower():
            yield Record(doc, "read.not_html", key[1:])
        elif (body := _http_body(rec, limit) if rec.content_length <= limit else None) is None:
            yield Record(doc | {"meta": json.dumps(meta | {"bytes": rec.content_length})}, "read.too_large", key[1:])
        else:
            html = _html_text(body, content_type)
            doc["text"] = extract_plain_text(html, main_content=True, alt_texts=False, links=False)
            yield _checked(doc, cfg, key)


def _http_body(rec, limit: int) -> bytes | None:
    """The HTTP payload, de-chunked and decompressed (wget and some crawlers store it raw); None when
    it is over `limit` bytes, before or after decompression (read no further than that)."""
    from fastwarc.stream_io import ChunkedReader

    headers = rec.http_headers
    chunked = headers is not None and "chunked" in (headers.get("Transfer-Encoding") or "").lower()
    body = (ChunkedReader(rec.reader) if chunked else rec.reader).read(limit + 1)
    if len(body) > limit:
        return None
    if headers is not None and (headers.get("Content-Encoding") or "").lower() in ("gzip", "x-gzip"):
        gunzip = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            text = gunzip.decompress(body, limit + 1)
        except zlib.error:
            return body  # mislabelled: keep the bytes as they are
        if len(text) > limit:
            return None
        return text if gunzip.eof else body  # a cut-off stream: as mislabelled
    return body


def _html_text(body: bytes, content_type: str) -> str:
    """The page's HTML as text: the declared charset, else UTF-8 when it decodes, else detected."""
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    charset = content_type.lower().partition("charset=")[2].split(";")[0].strip(" \"'")
    for encoding in filter(None, (charset, "utf-8")):
        try:
            return body.decode(encoding)
        except (LookupError, UnicodeDecodeError):
            continue
    return bytes_to_str(body, detect_encoding(body))


def read_wet(url: str, cfg: ReaderConfig, start: int = 0, end: int | None = None) -> Iterator[Record]:
    """Extracted text (conversion records) of a Common Crawl WET file."""
    from fastwarc.warc import WarcRecordType

    limit = cfg.max_record_bytes
    for rec, key, uri, meta in _warc_records(url, WarcRecordType.conversion, start, end):
        if rec.content_length > limit:  # declared in the record's header: rejected before its body is read
            doc = {**_base(url, key), "url": uri, "text": "", "meta": json.dumps(meta | {"bytes": rec.content_length})}
            yield Record(doc, "read.too_large", key[1:])
            continue
        text, error = _decode(rec.reader.read())
        if error:
            yield _error_record(url, key, "read.invalid_utf8", error, text)
        else:
            yield _checked({**_base(url, key), "url": uri, "text": text, "meta": json.dumps(meta)}, cfg, key)


READERS = {"jsonl": read_jsonl, "parquet": read_parquet_rows, "text": read_text, "warc": read_warc, "wet": read_wet}


def read_records(url: str, cfg: ReaderConfig, start: int = 0, end: int | None = None,
                 index: str | None = None) -> Iterator[Record]:
    """Records of one shard; a file that fails to open or ends early becomes a rejected record."""
    fmt = format_of(url) or "jsonl"
    last = None
    try:
        for record in READERS[fmt](url, cfg, start, end, **({"index": index} if index else {})):
            last = record.offset
            yield record
    except (ConnectionError, TimeoutError):
        raise  # transient storage errors: the task is retried (prefect.task_retries)
    except Exception as e:  # noqa: BLE001 - any failure of the file itself is reported, not raised
        # the id names the last good record before the failure (or the shard start)
        reason = "read.unreadable_file" if last is None else "read.truncated"
        yield _error_record(url, f"!{start if last is None else last}", reason, f"{type(e).__name__}: {e}")


RECORD_OVERHEAD = 64  # bytes a row costs in a batch beyond its strings (a record without text still counts)


def read_file(url: str, shard: int, run_dir: str, cfg: ReaderConfig, start: int = 0, end: int | None = None,
              index: str | None = None) -> dict:
    """The read stage for one shard of an input file: its records become part `shard` of <run>/read,
    written in batches of about `cfg.batch_bytes` (every field of a record counted, not only its text)
    or `cfg.batch_rows` records, so memory is bounded by a batch, not the shard."""
    writer = PartWriter(run_dir, "read", shard)
    errors: list[dict] = []
    batch: list[Record] = []
    size = 0

    def flush():
        writer.write(docs_table([r.doc for r in batch]), [r.reason for r in batch])
        batch.clear()

    try:
        for record in read_records(url, cfg, start, end, index):
            if record.reason in FILE_ERRORS:
                errors.append({"path": url, "offset": record.offset, "reason": record.reason,
                               "error": json.loads(record.doc["meta"])["error"]})
            batch.append(record)
            size += sum(len(v) for v in record.doc.values() if isinstance(v, str)) + RECORD_OVERHEAD
            if size >= cfg.batch_bytes or len(batch) >= cfg.batch_rows:
                flush()
                size = 0
        if errors and cfg.strict:
            raise IOError(f"{url}: {errors[0]['error']} (at offset {errors[0]['offset']}; strict mode)")
        if batch:
            flush()
    except BaseException:
        writer.abort()
        raise
    return writer.close(extra={"source": url, "errors": errors})
