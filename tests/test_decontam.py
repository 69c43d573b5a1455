"""Decontamination: the n-gram index of the evaluation sets, matching robust to reformatting, and a default
`tokenmill curate` (real Prefect, real local Ray) that drops web pages with planted evaluation passages and
keeps the clean ones."""
from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from helpers import CORPUS, write_jsonl

from tokenmill.pipeline import decontam
from tokenmill.pipeline.config import DecontamConfig
from tokenmill.pipeline.contracts import write_eval_texts
from tokenmill.training.eval_sets import HELDOUT, bundled_texts

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


PLANTED = {  # how an evaluation text appears in a crawled page: re-cased, re-spaced, re-punctuated
    "cloze": lambda: CLOZE[123].upper(),
    "cloze-quoted": lambda: "“" + CLOZE[301].replace(" ", "\n", 3) + "”",
    "heldout": lambda: " ".join(HELDOUT.read_text().split()[2000:2060]).replace(" @-@ ", "-").replace(" , ", ", "),
    "heldout-lower": lambda: " ".join(HELDOUT.read_text().split()[5000:5030]).lower(),
}


@pytest.mark.slow
def test_default_curate_drops_pages_with_planted_evaluation_text_and_keeps_clean_ones(tmp_path):
    clean = [json.loads(line) for line in (CORPUS / "datajuicer_redpajama_c4_10docs.jsonl").read_text().splitlines()]
    hosts = [json.loads(line) for line in (CORPUS / "datajuicer_redpajama_cc_2023_06_10docs.jsonl").read_text().splitlines()]
    records = [{"id": f"clean-{i}", "text": d["text"]} for i, d in enumerate(clean)]
    for n, host in enumerate(hosts):  # each host page gets one passage, in the middle of its text
        name, passage = list(PLANTED.items())[n % len(PLANTED)]
        paragraphs = host["text"].split("\n")
        paragraphs.insert(len(paragraphs) // 2, passage())
        records.append({"id": f"planted-{name}-{n}", "text": "\n".join(paragraphs)})
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "pages.jsonl", records)
    args = ["curate", str(tmp_path / "in"), "--run-id", "d", "--output-dir", str(tmp_path / "runs"),
            "--set", "curate.tokenizer.vocab_size=300", "--set", "curate.tokens.seq_len=16",
            "--set", "curate.tokens.val_fraction=0.3", "--set", "ray.num_cpus=2", "--set", "ray.dashboard=false"]
    proc = subprocess.run([sys.executable, "-m", "tokenmill.flows.cli", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    run = tmp_path / "runs" / "d"
    stats = json.loads((run / "decontam" / "_stats.json").read_text())
    assert json.loads((run / "decontam" / "_config.json").read_text())["source"] == "dedup"
    assert stats["docs_in"] == json.loads((run / "dedup" / "_stats.json").read_text())["docs_kept"]
    assert stats["eval_texts"]["per_set"] == {"heldout": 1, "tokenmill_cloze": 400, "tokenmill_wikitext": 5}
    rejected = pq.read_table(run / "rejected" / "decontam").to_pylist() if (run / "rejected" / "decontam").exists() else []
    kept = [r["id"] for p in sorted((run / "decontam").glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]
    reached = kept + [r["id"] for r in rejected]
    planted = [i for i in reached if i.startswith("planted-")]
    assert len(planted) >= 4, reached  # enough host pages passed the quality filters to check
    assert sorted(r["id"] for r in rejected) == sorted(planted)  # every planted page dropped, no clean one
    assert [i for i in kept if i.startswith("clean-")]  # clean pages reached it and were kept
    for r in rejected:
        expected = "decontam.tokenmill_cloze" if "-cloze" in r["id"] else "decontam.heldout"
        assert r["reason"] == expected and len(r["duplicate_of"].split()) >= 8, r
        assert r["duplicate_of"] in " ".join(decontam.words(r["text"]))
    assert stats["rejected"] == {k: v for k, v in {
        "decontam.heldout": sum("-heldout" in i for i in planted),
        "decontam.tokenmill_cloze": sum("-cloze" in i for i in planted)}.items() if v}
    funnel = (run / "funnel.md").read_text()
    assert "decontam.heldout" in funnel and "decontam.tokenmill_cloze" in funnel
    manifest = json.loads((run / "tokens" / "manifest.json").read_text())
    assert manifest["source_docs"] == stats["docs_kept"]  # what was trained on is what decontam kept
