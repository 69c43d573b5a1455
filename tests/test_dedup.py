import random

import pyarrow as pa
import pytest
from datasketch import MinHash

from pipeline import dedup, io
from pipeline.config import DedupConfig
from pipeline.documents import docs_table

CFG = DedupConfig(partitions=3)


def _write_parts(run, parts: list[list[tuple[str, str]]], stage="quality"):
    urls = []
    for n, docs in enumerate(parts):
        url = f"{run}/{stage}/part-{n:05d}.parquet"
        io.write_parquet(url, docs_table([{"id": i, "text": t, "source": "s", "url": None, "meta": None} for i, t in docs]))
        urls.append(url)
    return urls


def _near_copy(text: str, seed: int) -> str:
    """A crawl-style near duplicate: a boilerplate header and a couple of word edits."""
    words = text.split()
    rng = random.Random(seed)
    for _ in range(2):
        words[rng.randrange(len(words))] = "changed"
    return "Skip to main content | Menu\n" + " ".join(words)


def test_normalize():
    assert dedup.normalize("Hello,   WORLD!\nＡＢＣ") == "hello world abc"


def test_shingles_of_short_text_is_the_text():
    assert dedup.shingles("a b", 5) == {b"a b"}
    assert len(dedup.shingles("one two three four five six", 5)) == 2


def test_signature_estimates_jaccard_like_datasketch(real_docs):
    a, b = real_docs[0]["text"], _near_copy(real_docs[0]["text"], 0)
    sa, sb = dedup.signature(a, CFG), dedup.signature(b, CFG)
    ours = float((sa == sb).mean())
    sh_a, sh_b = dedup.shingles(a, 5), dedup.shingles(b, 5)
    true = len(sh_a & sh_b) / len(sh_a | sh_b)
    ma, mb = MinHash(num_perm=128, seed=1), MinHash(num_perm=128, seed=1)
    ma.update_batch(list(sh_a)), mb.update_batch(list(sh_b))
    assert ours == pytest.approx(ma.jaccard(mb))
    assert abs(ours - true) < 0.15


def _run_minhash(run, urls, cfg=CFG):
    for u in urls:
        dedup.minhash_signatures(u, f"{run}/minhash/_bands", cfg)
    pair_urls = []
    for p in range(cfg.partitions):
        out = f"{run}/minhash/_pairs/partition-{p:05d}.parquet"
        dedup.minhash_buckets(f"{run}/minhash/_bands/partition-{p:05d}", out)
        pair_urls.append(out)
    summary = dedup.minhash_clusters(pair_urls, f"{run}/minhash/_duplicates.parquet")
    return summary, io.read_parquet(f"{run}/minhash/_duplicates.parquet").to_pylist()


def test_minhash_finds_handcrafted_near_duplicate_across_parts(tmp_path, real_docs):
    original = real_docs[1]["text"]
    urls = _write_parts(str(tmp_path), [
        [("doc-b", _near_copy(original, 1)), ("doc-x", real_docs[2]["text"])],
        [("doc-a", original), ("doc-y", real_docs[3]["text"])],
    ])
    summary, dups = _run_minhash(str(tmp_path), urls)
    assert dups == [{"id": "doc-b", "duplicate_of": "doc-a"}]  # the lowest id is kept
    assert summary["cluster_sizes"] == {"2": 1}
    stats = dedup.drop_duplicates(urls[0], f"{tmp_path}/minhash/_duplicates.parquet", str(tmp_path), "minhash", "minhash.duplicate")
    assert stats["rejected"] == {"minhash.duplicate": 1} and stats["docs_kept"] == 1
    rejected = io.read_parquet(f"{tmp_path}/rejected/minhash/part-00000.parquet").to_pylist()
    assert rejected[0]["id"] == "doc-b" and rejected[0]["duplicate_of"] == "doc-a"


def test_exact_dedup_keeps_lowest_id_and_ignores_case_and_punctuation(tmp_path, real_docs):
    text = real_docs[4]["text"]
    urls = _write_parts(str(tmp_path), [[("z", text.upper() + "!!"), ("m", real_docs[5]["text"])], [("c", text), ("q", text)]])
    hashes = [dedup.exact_hashes(u, f"{tmp_path}/exact/_hashes") for u in urls]
    assert dedup.exact_duplicates(hashes, f"{tmp_path}/exact/_dups.parquet") == {"duplicates": 2}
    assert io.read_parquet(f"{tmp_path}/exact/_dups.parquet").to_pylist() == [
        {"id": "q", "duplicate_of": "c"}, {"id": "z", "duplicate_of": "c"}]


def test_duplicate_ids_are_a_clear_error(tmp_path):
    urls = _write_parts(str(tmp_path), [[("same", "text one")], [("same", "text two")]])
    hashes = [dedup.exact_hashes(u, f"{tmp_path}/exact/_hashes") for u in urls]
    with pytest.raises(ValueError, match="not unique.*same"):
        dedup.exact_duplicates(hashes, f"{tmp_path}/exact/_dups.parquet")


def test_union_find_result_does_not_depend_on_pair_order(tmp_path):
    pairs = [("d", "e"), ("b", "c"), ("a", "b"), ("x", "y"), ("c", "e")]
    results = []
    for seed in range(5):
        shuffled = [tuple(random.Random(seed + i).sample(p, 2)) for i, p in enumerate(pairs)]
        random.Random(seed).shuffle(shuffled)
        url = f"{tmp_path}/pairs-{seed}.parquet"
        io.write_parquet(url, pa.table({"a": [p[0] for p in shuffled], "b": [p[1] for p in shuffled]}))
        dedup.minhash_clusters([url], f"{tmp_path}/dups-{seed}.parquet")
        results.append(io.read_parquet(f"{tmp_path}/dups-{seed}.parquet").to_pylist())
    assert all(r == results[0] for r in results)
    assert {r["id"]: r["duplicate_of"] for r in results[0]} == {"b": "a", "c": "a", "d": "a", "e": "a", "y": "x"}


def test_lsh_params_follow_threshold():
    b, r = dedup.lsh_params(DedupConfig(threshold=0.8, num_perm=128))
    assert b * r <= 128 and (1 / b) ** (1 / r) > 0.6
