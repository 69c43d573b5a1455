"""Decontamination: the n-gram index of the evaluation sets and matching robust to reformatting. The stage in a
default `tokenmill curate` (pages with planted evaluation passages dropped, clean ones kept) is tested on
test_curate_messy's run, which carries helpers.planted_pages() among its inputs."""
from __future__ import annotations

import pyarrow.parquet as pq
from helpers import planted_pages

from tokenmill.pipeline import decontam, storage
from tokenmill.pipeline.config import DecontamConfig
from tokenmill.pipeline.contracts import docs_table, write_eval_texts
from tokenmill.training.eval_sets import HELDOUT, HELDOUT_SET, bundled_texts

CLOZE = list(bundled_texts("tokenmill_cloze"))
ARTICLE = "The lobster is a large crustacean of the rocky coasts of the eastern Atlantic Ocean , and its shell is blue " \
          "above with spots that join together , and yellow below . It is eaten in many countries and is fished with traps ."


def _index(tmp_path, sets: dict[str, list[str]], **cfg):
    texts = str(tmp_path / "texts.jsonl.gz")
    write_eval_texts(texts, [(name, t) for name, ts in sets.items() for t in ts])
    config = DecontamConfig(**cfg)
    stats = decontam.build_index(texts, str(tmp_path / "index.npz"), config)
    return decontam.load_index(str(tmp_path / "index.npz")), stats


def test_words_ignore_case_whitespace_and_punctuation():
    assert decontam.words("The  EUROPEAN\nlobster,  (Homarus) — well-known_ Ｆｕｌｌ") == \
        decontam.words("the european lobster homarus well known full")


def test_reformatted_copies_match_and_unrelated_or_reordered_text_does_not(tmp_path):
    index, stats = _index(tmp_path, {"wiki": [ARTICLE], "cloze": CLOZE[:50]})
    assert stats["sets"] == ["wiki", "cloze"] and stats["ngrams"] > 0
    page = "Welcome to our seafood blog! Today:\n\n{}\n\nThanks for reading, see you next week."
    reformatted = ARTICLE.upper().replace(" , ", ", ").replace(" . ", ".\n").replace(" ", "  ")
    reason, ngram = decontam.check(index, page.format(reformatted), 1)
    assert reason == "decontam.wiki" and ngram == "the lobster is a large crustacean of the rocky coasts of the eastern"
    # a cloze item (a sentence and its true ending) inside a page, quoted with other punctuation
    sentence = CLOZE[7].replace(",", ";")
    assert decontam.check(index, page.format(f'"{sentence}"'), 1)[0] == "decontam.cloze"
    # the same words in another order, and a page sharing only short phrases, are left alone
    shuffled = " ".join(reversed(ARTICLE.split()))
    assert decontam.check(index, page.format(shuffled), 1) is None
    assert decontam.check(index, page.format("The lobster is a large animal. Spots join together here."), 1) is None


def test_min_matches_and_n_are_configurable_and_short_texts_match_whole(tmp_path):
    index, _ = _index(tmp_path, {"wiki": [ARTICLE]}, n=13, min_matches=5)
    words = decontam.words(ARTICLE)
    assert decontam.check(index, " ".join(words[:16]), 5) is None  # 4 shared 13-grams
    assert decontam.check(index, " ".join(words[:17]), 5)[0] == "decontam.wiki"  # 5
    short_question = "Which gas do plants take in from the air to make food"  # 12 words < n
    index, stats = _index(tmp_path / "q", {"qa": [short_question, "Too short"]}, n=13, min_words=8)
    assert stats["indexed_whole"] == {"qa": 1} and stats["too_short"] == {"qa": 1}
    assert decontam.check(index, f"Quiz time. {short_question.upper()}? Answer below.", 1)[0] == "decontam.qa"
    assert decontam.check(index, "Which gas do plants take in from the soil", 1) is None


def test_a_part_is_split_into_kept_and_rejected_with_the_shared_ngram(tmp_path):
    """decontam_part on a stored part (what each Ray task runs): planted pages rejected with reason and n-gram,
    the rest kept, the books balance."""
    texts, index = str(tmp_path / "texts.jsonl.gz"), str(tmp_path / "index.npz")
    write_eval_texts(texts, [(HELDOUT_SET, HELDOUT.read_text(encoding="utf-8"))]
                     + [("tokenmill_cloze", t) for t in CLOZE])
    decontam.build_index(texts, index, DecontamConfig())
    clean = [{"id": f"clean-{i}", "text": f"Page {i}. " + " ".join(w for w in ARTICLE.split()[::-1])} for i in range(3)]
    rows = [{**d, "source": "s", "url": None, "meta": None} for d in planted_pages() + clean]
    part = str(tmp_path / "run" / "dedup" / "part-00003.parquet")
    storage.write_parquet(part, docs_table(rows))
    stats = decontam.decontam_part(part, str(tmp_path / "run"), index, DecontamConfig())
    rejected = pq.read_table(tmp_path / "run" / "rejected" / "decontam" / "part-00003.parquet").to_pylist()
    assert sorted(r["id"] for r in rejected) == sorted(r["id"] for r in rows if r["id"].startswith("planted-"))
    assert stats["docs_in"] == 13 and stats["docs_kept"] == 3 and stats["rejected"] == {
        "decontam.heldout": 4, "decontam.tokenmill_cloze": 6}
    for r in rejected:
        assert r["duplicate_of"] in " ".join(decontam.words(r["text"])) and len(r["duplicate_of"].split()) >= 8

