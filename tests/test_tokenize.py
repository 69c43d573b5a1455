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
    train = load_split(out, "train")
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


def test_rank_batches_do_not_overlap_and_resume_exactly():
    rows = np.arange(40 * 3).reshape(40, 3)
    ranks = [RankBatches(rows, 4, r, 2, seed=7) for r in range(2)]
    seen = [set(map(tuple, ranks[r].next())) for r in range(2) for _ in range(5)]
    firsts = set().union(*seen[:5]), set().union(*seen[5:])
    assert not firsts[0] & firsts[1] and len(firsts[0] | firsts[1]) == 40  # one epoch, no overlap
    a = RankBatches(rows, 4, 0, 2, seed=7)
    for _ in range(7):
        a.next()
    b = RankBatches(rows, 4, 0, 2, seed=7)
    b.load_state(a.state())
    assert all(np.array_equal(a.next(), b.next()) for _ in range(6))


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
