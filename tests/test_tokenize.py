import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from tokenmill.pipeline import storage
from tokenmill.pipeline.config import TokenizerConfig, TokensConfig
from tokenmill.pipeline.contracts import docs_table
from tokenmill.pipeline.tokenize import EOS, load_tokenizer, tokenize_part, train_tokenizer, write_manifest
from tokenmill.training.data import ManifestError, RankBatches, load_manifest, load_split


@pytest.fixture
def tokens(tmp_path, real_docs):
    part = str(tmp_path / "minhash" / "part-00000.parquet")
    docs = [{"id": f"doc{i}", "text": d["text"], "source": "s", "url": None, "meta": None} for i, d in enumerate(real_docs)]
    storage.write_parquet(part, docs_table(docs))
    out = str(tmp_path / "tokens")
    info = train_tokenizer([part], f"{out}/tokenizer.json", TokenizerConfig(vocab_size=500))
    cfg = TokensConfig(seq_len=32, val_fraction=0.3)
    shards = tokenize_part(part, f"{out}/tokenizer.json", out, cfg)
    manifest = write_manifest(out, f"{out}/tokenizer.json", shards, cfg, source_docs=len(docs))
    return out, manifest, info, docs


def test_tokenizer_round_trips_real_text(tokens):
    out, manifest, info, docs = tokens
    tok = load_tokenizer(f"{out}/tokenizer.json")
    assert info["vocab_size"] == tok.get_vocab_size() == 500
    text = docs[0]["text"]
    assert tok.decode(tok.encode(text).ids) == text
    assert tok.token_to_id(EOS) is not None


def test_shards_are_readable_and_match_the_manifest(tokens):
    out, manifest, _, docs = tokens
    assert manifest["dtype"] == "uint16" and manifest["seq_len"] == 32 and manifest["source_docs"] == len(docs)
    assert {s["split"] for s in manifest["shards"]} == {"train", "val"}
    for shard in manifest["shards"]:
        path = f"{out}/{shard['file']}"
        table = ipc.open_file(pa.memory_map(path)).read_all()
        assert table.num_rows == shard["rows"]
        assert table.num_rows * 33 == shard["tokens"]
        assert storage.sha256_file(path) == shard["sha256"]
    assert sum(s["docs"] for s in manifest["shards"]) == len(docs)
    train = load_split(out, "train")[:]
    assert train.shape == (manifest["totals"]["train"]["rows"], 33) and train.dtype == np.uint16


def test_tampered_shard_or_tokenizer_is_rejected(tokens):
    out, manifest, _, _ = tokens
    load_manifest(out)
    shard = f"{out}/{manifest['shards'][0]['file']}"
    data = bytearray(open(shard, "rb").read())
    data[-100] ^= 0xFF
    open(shard, "wb").write(bytes(data))
    with pytest.raises(ManifestError, match="sha256 differs"):
        load_manifest(out)
    open(f"{out}/tokenizer.json", "a").write(" ")
    with pytest.raises(ManifestError, match="tokenizer"):
        load_manifest(out)


@pytest.mark.parametrize("block_rows", [1, 7, 4096])
def test_rank_batches_do_not_overlap_and_resume_exactly(block_rows):
    rows = np.arange(43 * 3).reshape(43, 3)
    ranks = [RankBatches(rows, 4, r, 2, seed=7, block_rows=block_rows) for r in range(2)]
    seen = [set(map(tuple, ranks[r].next())) for r in range(2) for _ in range(5)]
    firsts = set().union(*seen[:5]), set().union(*seen[5:])
    assert not firsts[0] & firsts[1] and len(firsts[0] | firsts[1]) == 40  # one epoch, no overlap
    order = ranks[0].positions(np.arange(43))
    assert sorted(order) == list(range(43)) and list(order) != list(range(43))  # a permutation of every row
    a = RankBatches(rows, 4, 0, 2, seed=7, block_rows=block_rows)
    for _ in range(7):
        a.next()
    b = RankBatches(rows, 4, 0, 2, seed=7, block_rows=block_rows)
    b.load_state(a.state())
    assert all(np.array_equal(a.next(), b.next()) for _ in range(6))


def test_token_rows_are_memory_mapped_across_shards_and_batches(tmp_path, real_docs):
    """A split of several shards of several record batches each reads as one sequence of rows, and the
    block order of an epoch keeps each micro-batch's reads within a window of two blocks."""
    from tokenmill.pipeline.contracts import read_token_shard
    from tokenmill.training.data import TokenRows

    docs = [{"id": f"doc{i}-{j}", "text": d["text"], "source": "s", "url": None, "meta": None}
            for j in range(3) for i, d in enumerate(real_docs)]
    parts = _parts(tmp_path, docs, [9, 20])
    out, cfg = str(tmp_path / "tokens"), TokensConfig(seq_len=16, val_fraction=0.2)
    train_tokenizer(parts, f"{out}/tokenizer.json", TokenizerConfig(vocab_size=400))
    shards = [s for p in parts for s in tokenize_part(p, f"{out}/tokenizer.json", out, cfg, batch_rows=3)]
    manifest = write_manifest(out, f"{out}/tokenizer.json", shards, cfg, len(docs))
    rows = TokenRows(out, "train", manifest)
    whole = np.concatenate([read_token_shard(f"{out}/{s['file']}", 16) for s in manifest["shards"] if s["split"] == "train"])
    assert len(rows) == len(whole) == manifest["totals"]["train"]["rows"] > 100 and len(rows._batches) > 3
    assert np.array_equal(rows[np.arange(len(rows))[::-1]], whole[::-1]) and np.array_equal(rows[5], whole[5])
    batches = RankBatches(rows, 4, 1, 2, seed=3, block_rows=16)
    for _ in range(batches.per_epoch):
        batch = batches.next()
        assert len(batches._within) <= 2  # the window: a micro-batch reads from two blocks at most
        assert all(any(np.array_equal(r, w) for w in whole) for r in batch)


def test_token_byte_lengths_add_up_to_the_utf8_size_of_the_text(tokens, real_docs):
    from tokenmill.training.evaluate import text_rows, token_byte_lengths

    out, manifest, _, _ = tokens
    tok = load_tokenizer(f"{out}/tokenizer.json")
    lengths = token_byte_lengths(tok)
    text = real_docs[0]["text"] + " Ünïcödé — 東京 ✓"
    assert lengths[tok.encode(text).ids].sum() == len(text.encode("utf-8"))
    assert lengths[tok.token_to_id(EOS)] == 0
    rows = text_rows(tok, text, seq_len=16, max_rows=3)
    assert rows.shape == (3, 17) and rows.flatten().tolist() == tok.encode(text).ids[:51]


def test_vocab_size_mismatch_between_manifest_and_tokenizer_is_rejected(tokens):
    out, manifest, _, _ = tokens
    path = f"{out}/manifest.json"
    open(path, "w").write(json.dumps({**manifest, "vocab_size": 800}))
    with pytest.raises(ManifestError, match="vocab_size 800 but .*tokenizer.json has 500 tokens"):
        load_manifest(out)


def _parts(tmp_path, docs, cuts) -> list[str]:
    """The same documents as parts cut at `cuts` (another sharding of one corpus)."""
    bounds = [0, *cuts, len(docs)]
    urls = []
    for n, (a, b) in enumerate(itertools.pairwise(bounds)):
        urls.append(str(tmp_path / f"part-{n:05d}.parquet"))
        storage.write_parquet(urls[-1], docs_table(docs[a:b]))
    return urls


def test_tokenizer_sample_is_bounded_and_the_same_whatever_the_sharding(tmp_path, real_docs):
    from tokenmill.pipeline.tokenize import sample_part

    docs = [{"id": f"doc{i}-{j}", "text": d["text"], "source": "s", "url": None, "meta": None}
            for j in range(4) for i, d in enumerate(real_docs)]
    total = sum(len(d["text"].encode()) for d in docs)
    cfg = TokenizerConfig(vocab_size=400, sample_bytes=total // 3)
    made = []
    for name, cuts in (("one", []), ("four", [3, 17, 30])):
        parts = _parts(tmp_path / name, docs, cuts)
        samples = [str(tmp_path / name / "_sample" / f"part-{n:05d}.parquet") for n in range(len(parts))]
        sampled = [sample_part(p, s, fraction=cfg.sample_bytes / total) for p, s in zip(parts, samples)]
        info = train_tokenizer(samples, str(tmp_path / name / "tokenizer.json"), cfg)
        made.append((info, (tmp_path / name / "tokenizer.json").read_bytes()))
        assert 0 < sum(s["docs"] for s in sampled) < len(docs) and info["source"]["trained"]["bytes"] <= cfg.sample_bytes
    assert made[0] == made[1]  # same sample, same tokenizer, byte for byte


def test_a_named_tokenizer_is_used_and_recorded_and_a_wrong_one_refused(tokens, tmp_path):
    from tokenizers import Tokenizer, models

    from tokenmill.pipeline.tokenize import use_tokenizer

    out, manifest, _, _ = tokens
    info = use_tokenizer(f"{out}/tokenizer.json", str(tmp_path / "tokens" / "tokenizer.json"))
    assert info["source"] == {"file": f"{out}/tokenizer.json", "sha256": manifest["tokenizer_sha256"]}
    assert (tmp_path / "tokens" / "tokenizer.json").read_bytes() == open(f"{out}/tokenizer.json", "rb").read()
    Tokenizer(models.WordLevel({"a": 0, EOS: 1}, unk_token="a")).save(str(tmp_path / "word.json"))
    with pytest.raises(ValueError, match=r"word.json: not a byte-level BPE tokenizer"):
        use_tokenizer(str(tmp_path / "word.json"), str(tmp_path / "x.json"))
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"junk.json: not a tokenizers JSON file"):
        use_tokenizer(str(tmp_path / "junk.json"), str(tmp_path / "x.json"))


def test_tokenize_streams_a_part_in_batches_with_the_same_rows(tokens, tmp_path):
    from tokenmill.pipeline.contracts import read_token_shard

    out, manifest, _, _ = tokens
    part = str(tmp_path / "minhash" / "part-00000.parquet")
    small = tokenize_part(part, f"{out}/tokenizer.json", str(tmp_path / "small"), TokensConfig(seq_len=32, val_fraction=0.3),
                          batch_rows=2)
    assert [{k: s[k] for k in ("file", "rows", "tokens", "docs", "dropped_tail_tokens")} for s in small] == [
        {k: s[k] for k in ("file", "rows", "tokens", "docs", "dropped_tail_tokens")} for s in manifest["shards"]]
    for s in small:
        assert np.array_equal(read_token_shard(tmp_path / "small" / s["file"], 32), read_token_shard(f"{out}/{s['file']}", 32))
