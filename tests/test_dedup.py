import math
import random
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasketch import MinHash

from tokenmill.pipeline import dedup, storage
from tokenmill.pipeline.config import DedupConfig
from tokenmill.pipeline.contracts import docs_table
from tokenmill.pipeline.minhash import NO_SPACE_BLOCKS

CFG = DedupConfig(partitions=3)


def _write_parts(run, parts: list[list[tuple[str, str]]], stage="quality"):
    urls = []
    for n, docs in enumerate(parts):
        url = f"{run}/{stage}/part-{n:05d}.parquet"
        storage.write_parquet(url, docs_table([{"id": i, "text": t, "source": "s", "url": None, "meta": None} for i, t in docs]))
        urls.append(url)
    return urls


def _near_copy(text: str, seed: int, edits: int = 2) -> str:
    """A crawl-style near duplicate: a boilerplate header and a few word edits."""
    words = text.split()
    rng = random.Random(seed)
    for _ in range(edits):
        words[rng.randrange(len(words))] = "changed"
    return "Skip to main content | Menu\n" + " ".join(words)


def _run(run: str, urls: list[str], cfg: DedupConfig = CFG) -> tuple[dict, list[dict]]:
    summary = dedup.run_local(urls, run, cfg)
    rejected = [r for f in storage.list_files(f"{run}/rejected/dedup") for r in storage.read_parquet(f, columns=["id", "reason", "duplicate_of"]).to_pylist()]
    return summary, sorted(rejected, key=lambda r: r["id"])


# ---- shingles and signatures --------------------------------------------------------------------------


def reference_words(text: str) -> list[str]:
    """Plain-Python normalisation: the text's NFKC, case folded per character, then words = runs of
    letters, digits and combining marks."""
    folded = "".join(c.casefold() for c in unicodedata.normalize("NFKC", text))
    word = "".join(c if unicodedata.category(c)[0] in "LNM" else " " for c in folded)
    return word.split()


M64 = (1 << 64) - 1
B = 0x9E3779B97F4A7C15


def _fmix64(x: int) -> int:
    x ^= x >> 33
    x = x * 0xFF51AFD7ED558CCD & M64
    x ^= x >> 33
    x = x * 0xC4CEB9FE1A85EC53 & M64
    return x ^ (x >> 33)


def _horner(values) -> int:
    h = 0
    for v in values:
        h = (h * B + v) & M64
    return h


def reference_shingle_hashes(text: str, n: int = 5, char_n: int = 5) -> list[int]:
    """The documented hash scheme (pipeline/minhash.py) in plain Python, one document."""
    words = reference_words(text)
    chars = [c for w in words for c in w]
    by_chars = sum(any(lo <= ord(c) <= hi for lo, hi in NO_SPACE_BLOCKS) for c in chars) > 0.3 * max(len(chars), 1)
    if by_chars:
        tokens, n = [_fmix64((ord(c) + B) & M64) for c in chars], char_n
    else:
        tokens = [_fmix64((_horner(map(ord, w)) + len(w)) & M64) for w in words]
    if not tokens:
        return [0]
    windows = [tokens[i : i + n] for i in range(len(tokens) - n + 1)] or [tokens + [0] * (n - len(tokens))]
    return [_fmix64(_horner(w)) >> 32 for w in windows]


MIXED = [
    "Hello,   WORLD!\nＡＢＣ — ﬁne ½ … don’t",  # fullwidth, ligature, fraction, ellipsis, curly quote
    "The QUICK brown fox jumps over the lazy dog near the río Ñandú in São Paulo, 2019.",
    "Straße STRASSE strasse ΛΌΓΟΣ λόγος λόγοσ",  # case folding: ß = ss, final sigma
    "Cafe\u0301 de\u0301ja\u0300 vu, Café déjà vu",  # decomposed accents (not NFC) = composed
    "我们今天在北京召开了关于气候变化的国际会议，各国代表讨论了减排目标。",
    "ภาษาไทยเป็นภาษาที่ไม่มีการเว้นวรรค ทดสอบ",
    "Русский текст: «Привет, мир!» — и ещё немного слов для проверки.",
    "日本語のテキスト, mixed with English words and ｶﾀｶﾅ.",
    "ﾃﾞｰﾀﾍﾞｰｽ ｶﾞｲﾄﾞ: halfwidth voiced marks compose with the kana before them",
    "한국어 텍스트 \u1100\u1161\u11a8 conjoining jamo, ᄀ alone, compatibility jamo ㄱㅏ ㅋㅋㅋ",
    "ª\u0301 ´\u0323 ﬁ\u0308 spacing accents and compatibility letters before combining marks",
    "",
    "!!! ??? ...",
    "a b",
    "naïve coöperate résumé\u00a0nbsp\u2003emspace\ttab",
]


def test_normalize():
    assert dedup.normalize("Hello,   WORLD!\nＡＢＣ") == "hello world abc"
    assert dedup.normalize("ภาษาไทย, ทดสอบ") == "ภาษาไทย ทดสอบ"  # combining vowel marks are kept
    assert dedup.normalize("Straße ﬁne Cafe\u0301") == dedup.normalize("STRASSE fine café") == "strasse fine café"


def test_normalisation_equals_the_plain_python_reference(real_docs):
    texts = MIXED + [d["text"] for d in real_docs]
    cps, offsets, _ = dedup.normalize_batch(pa.array(texts))
    for i, text in enumerate(texts):
        assert cps[offsets[i] : offsets[i + 1]].tobytes().decode("utf-32-le") == " ".join(reference_words(text)), text[:60]


def test_shingle_hashes_equal_the_plain_python_reference(real_docs):
    texts = MIXED + [d["text"] for d in real_docs] + ["one two three four five six", "Same same same same same same"]
    h, offsets = dedup.shingle_hashes(pa.array(texts), DedupConfig(ngram=5, char_ngram=5))
    assert len(offsets) == len(texts) + 1 and np.all(np.diff(offsets) >= 1)
    for i, text in enumerate(texts):
        assert list(h[offsets[i] : offsets[i + 1]]) == reference_shingle_hashes(text), text[:60]


def test_n_grams_do_not_cross_documents():
    h_ab, o_ab = dedup.shingle_hashes(pa.array(["one two three", "four five six"]), DedupConfig(ngram=2))
    h_a, _ = dedup.shingle_hashes(pa.array(["one two three"]), DedupConfig(ngram=2))
    h_b, _ = dedup.shingle_hashes(pa.array(["four five six"]), DedupConfig(ngram=2))
    assert list(h_ab) == list(h_a) + list(h_b) and list(o_ab) == [0, 2, 4]


def test_text_without_spaces_is_shingled_by_characters():
    zh = "我们今天在北京召开了关于气候变化的国际会议，各国代表讨论了减排目标。"
    assert list(dedup.no_space_script(pa.array([zh, "ภาษาไทยเป็นภาษาที่ไม่มีการเว้นวรรค", "Ordinary English text, “quoted”."]))) == [True, True, False]
    h, _ = dedup.shingle_hashes(pa.array([zh]), DedupConfig(char_ngram=5))
    assert len(set(h)) == len(dedup.normalize(zh).replace(" ", "")) - 4  # one per 5-character window
    wrapped, _ = dedup.shingle_hashes(pa.array([zh[:20] + "\n\n  " + zh[20:]]), DedupConfig(char_ngram=5))
    assert list(wrapped) == list(h)  # line breaks and indentation are not characters of the text


# Characters that interact under NFKC (marks, composing pairs, compatibility forms ending or starting
# in one, Hangul jamo, halfwidth kana) with plain letters and a space: random strings of them check
# that a document is redone from its whole-text NFKC whenever per character would differ.
TRICKY = list("aeouAcnkszª º´¨ﬁﬀｶﾞﾟｱㄱㅏㅋ각가각ÅÅKǰẛςΣßİ㎏①¹½ें") + [
    "\u0301", "\u0300", "\u0323", "\u0308", "\u0327", "\u0345", "\u0344", "\u05b4", "\u05bc", "\u09c7",
    "\u09be", "\u09bc", "\u0bc6", "\u0bbe", "\u0bcd", "\u1037", "\u103a", "\u3099", "\u309a", "\u0f71", "\u0f72"]


def test_random_strings_of_interacting_characters_normalise_like_whole_text_nfkc():
    rng = random.Random(0)
    texts = ["".join(rng.choice(TRICKY) for _ in range(rng.randint(1, 12))) for _ in range(3000)]
    cps, offsets, _ = dedup.normalize_batch(pa.array(texts))
    h, h_offsets = dedup.shingle_hashes(pa.array(texts), DedupConfig(ngram=2, char_ngram=2))
    for i, text in enumerate(texts):
        assert cps[offsets[i] : offsets[i + 1]].tobytes().decode("utf-32-le") == " ".join(reference_words(text)), ascii(text)
        assert list(h[h_offsets[i] : h_offsets[i + 1]]) == reference_shingle_hashes(text, 2, 2), ascii(text)


def test_a_long_run_of_characters_that_fold_to_several_grows_the_buffer():
    text = "\ufdfa" * 5000 + " end"  # each folds to 18 code points
    assert dedup.normalize(text) == " ".join(reference_words(text))


def test_signatures_equal_datasketch_fed_the_same_shingle_hashes(real_docs):
    texts = pa.array([d["text"] for d in real_docs[:4]] + ["!!!"])
    h, offsets = dedup.shingle_hashes(texts, CFG)
    sig = dedup.minhash(h, offsets, CFG.num_perm, CFG.seed)
    for i in range(len(texts)):
        m = MinHash(num_perm=CFG.num_perm, seed=CFG.seed, hashfunc=int)
        m.update_batch(h[offsets[i] : offsets[i + 1]].tolist())
        assert np.array_equal(m.hashvalues, sig[i])


def test_jaccard_estimates_agree_with_datasketch_on_string_shingles(real_docs):
    """Our estimate and datasketch's (sha1 of the n-gram strings) both estimate the true Jaccard; with
    128 permutations each is within a few standard deviations of it."""
    for n, doc in enumerate(real_docs[:6]):
        for edits in (2, 20, 60):
            a, b = doc["text"], _near_copy(doc["text"], n, edits)
            ours = float(dedup.jaccard(*dedup.signatures(pa.array([a, b]), CFG)))
            sh_a, sh_b = dedup.shingle_texts(a, 5), dedup.shingle_texts(b, 5)
            true = len(sh_a & sh_b) / len(sh_a | sh_b)
            ma, mb = MinHash(num_perm=128, seed=1), MinHash(num_perm=128, seed=1)
            ma.update_batch([s.encode() for s in sh_a]), mb.update_batch([s.encode() for s in sh_b])
            sd = math.sqrt(max(true * (1 - true), 0.01) / 128)
            assert abs(ours - true) < 4 * sd and abs(ours - ma.jaccard(mb)) < 5 * sd, (n, edits, ours, true, ma.jaccard(mb))


def test_bands_split_the_signature_into_rows():
    bands, rows = dedup.lsh_params(DedupConfig(threshold=0.8, num_perm=128))
    assert (bands, rows) == (12, 10)
    sig = np.random.default_rng(0).integers(0, 2**32, (3, 128), dtype=np.uint64).astype(np.uint32)
    sig[1, : 2 * rows] = sig[0, : 2 * rows]  # doc 1 shares its first two bands with doc 0
    sig[2, rows : 2 * rows] = sig[0, rows : 2 * rows]  # doc 2 shares the second band only
    sig[2, 0] = sig[0, 0]  # ...and one value of the first, which is not a whole band
    keys = dedup.band_hashes(sig, bands, rows)
    assert keys.shape == (3, bands)
    assert list(keys[1] == keys[0]) == [True, True] + [False] * (bands - 2)
    assert list(keys[2] == keys[0]) == [False, True] + [False] * (bands - 2)
    assert len(set(keys[0])) == bands  # the band index is part of the key


def test_lsh_params_follow_threshold():
    b, r = dedup.lsh_params(DedupConfig(threshold=0.8, num_perm=128))
    assert b * r <= 128 and (1 / b) ** (1 / r) > 0.6
    wide = DedupConfig(threshold=0.8, partitions=2, max_partition_rows=1000)
    assert dedup.num_partitions(wide, docs=1000) == 12  # 1000 docs x 12 bands


# ---- the steps --------------------------------------------------------------------------------------


def test_near_duplicate_across_parts_keeps_the_lowest_id(tmp_path, real_docs):
    # A long page (734 shingles): the near copy's similarity (~0.96) is far from the threshold, so
    # LSH finds it with any hash function (at ~0.86 it would be missed 1 time in 5).
    original = real_docs[5]["text"]
    urls = _write_parts(str(tmp_path), [
        [("doc-b", _near_copy(original, 1)), ("doc-x", real_docs[2]["text"])],
        [("doc-a", original), ("doc-y", real_docs[3]["text"])],
    ])
    summary, rejected = _run(str(tmp_path), urls)
    assert rejected == [{"id": "doc-b", "reason": "dedup.near", "duplicate_of": "doc-a"}]
    assert summary["cluster_sizes"] == {"2": 1} and summary["near_duplicates"] == 1
    kept = storage.read_parquet(f"{tmp_path}/dedup/part-00000.parquet")["id"].to_pylist()
    assert kept == ["doc-x"]


def test_chinese_near_duplicate_is_found(tmp_path):
    base = ("联合国大会今天通过了一项关于可持续发展的决议，呼吁各国加强合作，共同应对气候变化带来的挑战。"
            "决议强调，发达国家应当向发展中国家提供资金和技术支持，帮助其实现减排目标。"
            "与会代表一致认为，国际社会必须采取紧急行动，保护地球生态环境，造福子孙后代。")
    edited = base.replace("今天", "昨天") + "来源：新华网"  # one word changed, a source line added
    other = ("北京时间周日晚，中国女排在世界联赛决赛中以三比一战胜对手，夺得冠军。主教练在赛后表示，"
             "队员们在比赛中表现出色，团队配合默契，这是大家共同努力的结果。球迷们在现场为球队欢呼庆祝。")
    urls = _write_parts(str(tmp_path), [[("zh-1", base), ("zh-3", other)], [("zh-2", edited)]])
    _, rejected = _run(str(tmp_path), urls)
    assert rejected == [{"id": "zh-2", "reason": "dedup.near", "duplicate_of": "zh-1"}]


def test_exact_copies_are_exact_and_point_to_the_kept_doc(tmp_path, real_docs):
    text = real_docs[5]["text"]  # long: its near copy (~0.96) is found by LSH with any hash function
    urls = _write_parts(str(tmp_path), [
        [("z", text.upper() + "!!"), ("m", real_docs[4]["text"])],
        [("c", text), ("q", text), ("b", _near_copy(text, 3))],
    ])
    summary, rejected = _run(str(tmp_path), urls)
    # c, q and z are the same text; b is a near copy with a lower id, so it is kept for all of them.
    assert rejected == [{"id": "c", "reason": "dedup.near", "duplicate_of": "b"},
                        {"id": "q", "reason": "dedup.near", "duplicate_of": "b"},
                        {"id": "z", "reason": "dedup.near", "duplicate_of": "b"}]
    assert summary["cluster_sizes"] == {"4": 1}
    summary, rejected = _run(str(tmp_path / "no-near"), _write_parts(str(tmp_path / "no-near"), [[("z", text), ("c", text)]]))
    assert rejected == [{"id": "z", "reason": "dedup.exact", "duplicate_of": "c"}]


def test_drop_streams_a_part_in_batches_and_keeps_the_rest_in_order(tmp_path, real_docs):
    """The drop step holds a batch, not the part: a part read two documents at a time gives the same
    kept and rejected rows (in the part's order, one row group per batch) as read whole."""
    docs = [(f"d{i}", real_docs[i]["text"]) for i in range(7)]
    [url] = _write_parts(str(tmp_path), [docs])
    storage.write_parquet(f"{tmp_path}/dups/part-00000.parquet", pa.table(
        {"id": ["d1", "d4", "d5"], "duplicate_of": ["d0", "d0", "d2"],
         "reason": [dedup.EXACT, dedup.NEAR, dedup.NEAR]}))
    stats = dedup.drop_duplicates(url, f"{tmp_path}/dups", str(tmp_path), batch_rows=2)
    assert stats["docs_in"] == 7 and stats["docs_kept"] == 4 and stats["rejected"] == {dedup.EXACT: 1, dedup.NEAR: 2}
    kept = pq.ParquetFile(f"{tmp_path}/dedup/part-00000.parquet")
    assert kept.read()["id"].to_pylist() == ["d0", "d2", "d3", "d6"]
    assert kept.num_row_groups == 3  # one per batch that kept a document (d4, d5's kept none)
    assert kept.read()["text"].to_pylist() == [real_docs[i]["text"] for i in (0, 2, 3, 6)]
    rejected = storage.read_parquet(f"{tmp_path}/rejected/dedup/part-00000.parquet",
                                    columns=["id", "reason", "duplicate_of"])
    assert rejected.to_pylist() == [{"id": "d1", "reason": dedup.EXACT, "duplicate_of": "d0"},
                                    {"id": "d4", "reason": dedup.NEAR, "duplicate_of": "d0"},
                                    {"id": "d5", "reason": dedup.NEAR, "duplicate_of": "d2"}]


def test_verification_drops_candidates_below_the_threshold(tmp_path, real_docs):
    """Template pages: the same long boilerplate with a different short body share LSH buckets at a
    low threshold; verification at a high one separates them."""
    frame = real_docs[5]["text"]
    docs = [(f"t{i}", frame + " " + real_docs[i]["text"][:300]) for i in range(3)]
    loose = DedupConfig(threshold=0.3, partitions=2, verify=False)
    _, unverified = _run(str(tmp_path / "a"), _write_parts(str(tmp_path / "a"), [docs]), loose)
    strict = DedupConfig(threshold=0.3, partitions=2)
    sig = dedup.signatures(pa.array([t for _, t in docs]), strict)
    assert len(unverified) == 2  # all three in one cluster without verification
    _, verified = _run(str(tmp_path / "b"), _write_parts(str(tmp_path / "b"), [docs]), strict.model_copy(update={"threshold": 0.95}))
    assert dedup.jaccard(sig[0], sig[1]) < 0.95 and verified == []


def test_duplicate_ids_are_a_clear_error(tmp_path, real_docs):
    """Two different documents under one id in different parts (nothing else links them) stop the
    stage before any work, naming the id and both records' files."""
    urls = _write_parts(str(tmp_path), [[("a", real_docs[0]["text"]), ("same", real_docs[1]["text"])],
                                        [("b", real_docs[2]["text"])], [("same", real_docs[3]["text"])]])
    storage.write_parquet(urls[2], docs_table([{"id": "same", "text": real_docs[3]["text"], "source": "other.jsonl", "url": None, "meta": None}]))
    with pytest.raises(ValueError, match=r"not unique.*id 'same' in s \(part 0\), other.jsonl \(part 2\).*id_key"):
        _run(str(tmp_path), urls)
    assert not storage.list_files(f"{tmp_path}/dedup/_work/bands")  # nothing was hashed


def test_union_find_result_does_not_depend_on_pair_order(tmp_path):
    pairs = [("d", "e"), ("b", "c"), ("a", "b"), ("x", "y"), ("c", "e")]
    results = []
    for seed in range(5):
        shuffled = [tuple(random.Random(seed + i).sample(p, 2)) for i, p in enumerate(pairs)]
        random.Random(seed).shuffle(shuffled)
        url = f"{tmp_path}/pairs-{seed}.parquet"
        storage.write_parquet(url, pa.table({"a": [p[0] for p in shuffled], "b": [p[1] for p in shuffled],
                                        "part_a": pa.array([0] * 5, pa.int32()), "part_b": pa.array([0] * 5, pa.int32())}))
        dedup.clusters([url], [], f"{tmp_path}/dups-{seed}")
        results.append(storage.read_parquet(f"{tmp_path}/dups-{seed}/part-00000.parquet").to_pylist())
    assert all(r == results[0] for r in results)
    assert {r["id"]: r["duplicate_of"] for r in results[0]} == {"b": "a", "c": "a", "d": "a", "e": "a", "y": "x"}
