"""Near-duplicate detection quality of tokenmill's dedup on a labeled set built from real documents.

    python bench/dedup_quality.py [--originals 300] [--seed 0]

Originals are real web documents of the bundled corpus (pipeline/data/corpus; Common Crawl pages,
including Chinese and Japanese ones), with natural duplicates among them removed first (true
Jaccard >= 0.5 of their word 5-grams). Each chosen original gets crawl-style variants that are its
duplicates by construction:
    boilerplate    a site header and footer added
    reorder        two paragraphs swapped
    drop_line      one line of ten or more dropped
    typos          1% of the words get a character typo
    truncate       the last 8% of the text cut
    template       a few words (dates, numbers, names) changed, as on template pages
    mixed          boilerplate + typos + drop_line
    sentences      two or three sentences dropped, two swapped
    replace        one word in a hundred replaced by another word of the page
    crawl          the edits of a recrawl at once: a navigation header and footer of the site's menu
                   items, sentences dropped and swapped, one word in a hundred replaced
                   (every original gets a crawl variant, plus two of the others)
and hard negatives are made that must NOT be detected: different real bodies wrapped in the same
long site template (header + footer of real navigation text). Chinese/Japanese originals get
character-level variants. Ground truth clusters = an original with its variants; every other pair
is a negative.

Prints pair precision / recall / F1 at the default threshold (with per-edit recall), a threshold
sweep, and a cross-check against a plain datasketch MinHashLSH run on the same shingles (Jaccard
of the two removed-doc sets).
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import json
import random
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasketch import MinHash, MinHashLSH

from tokenmill.pipeline import dedup, storage
from tokenmill.pipeline.config import BUNDLED_CORPUS, DedupConfig
from tokenmill.pipeline.contracts import docs_table

HEADER = "Home | About us | Products | Blog | Contact | Login\nSkip to main content\n"
FOOTER = "\nCopyright © 2019 All rights reserved. Privacy Policy | Terms of Use | Cookie settings"
EDITS = ("boilerplate", "reorder", "drop_line", "typos", "truncate", "template", "mixed", "sentences", "replace")
MENU = ("Home", "News", "Sport", "Business", "Contact", "About us", "Login", "Register", "Search", "Archive",
        "Categories", "Tags", "Sitemap", "RSS", "Subscribe", "Follow us", "Share", "Print", "Previous", "Next",
        "Related posts", "Comments", "Events", "Shop", "Cart", "Help", "FAQ", "Jobs", "Press", "Blog")
SENTENCE = re.compile(r"(?<=[.!?。！？])\s*")


def load_corpus() -> list[str]:
    texts = []
    for path in sorted(Path(BUNDLED_CORPUS).glob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            texts += [json.loads(line).get("text") or "" for line in f if line.strip()]
    return texts


def is_cjk(text: str) -> bool:
    return bool(dedup.no_space_script(pa.array([text]))[0])


def shingles(text: str, cfg: DedupConfig) -> set[str]:
    """The shingles tokenmill hashes, as strings: word n-grams, or character n-grams for CJK/Thai."""
    if is_cjk(text):
        chars = dedup.normalize(text).replace(" ", "")
        return {chars[i : i + cfg.char_ngram] for i in range(max(len(chars) - cfg.char_ngram + 1, 1))}
    return dedup.shingle_texts(text, cfg.ngram)


def true_jaccard(a: set, b: set) -> float:
    return len(a & b) / max(len(a | b), 1)


def distinct_originals(texts: list[str], cfg: DedupConfig) -> list[str]:
    """Real documents with >= 150 words (or 500 CJK characters), none a near duplicate of another."""
    keep = [t for t in texts if len(t.split()) >= 150 or (is_cjk(t) and len(t) >= 500)]
    sh = [shingles(t, cfg) for t in keep]
    lsh = MinHashLSH(threshold=0.4, num_perm=64)
    out = []
    for i, s in enumerate(sh):
        m = MinHash(num_perm=64)
        m.update_batch([x.encode() for x in s])
        if any(true_jaccard(s, sh[j]) >= 0.5 for j in lsh.query(m)):
            continue
        lsh.insert(i, m)
        out.append(keep[i])
    return out


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 3:
        return word
    i = rng.randrange(len(word) - 1)
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def edit(text: str, kind: str, rng: random.Random) -> str:
    cjk = is_cjk(text)
    lines = text.split("\n")
    if kind == "boilerplate":
        return HEADER + text + FOOTER
    if kind == "reorder":
        paras = [p for p in lines if p.strip()]
        if len(paras) >= 4:
            i, j = rng.sample(range(len(paras)), 2)
            paras[i], paras[j] = paras[j], paras[i]
            return "\n".join(paras)
        kind = "typos"
    if kind == "drop_line":
        if len(lines) >= 10:
            del lines[rng.randrange(len(lines))]
            return "\n".join(lines)
        kind = "truncate"
    if kind == "truncate":
        return text[: int(len(text) * 0.92)]
    if kind == "typos":
        if cjk:  # a character replaced every ~150 characters
            chars = list(text)
            for _ in range(max(1, len(chars) // 150)):
                chars[rng.randrange(len(chars))] = "的"
            return "".join(chars)
        words = text.split(" ")
        for _ in range(max(1, len(words) // 100)):
            k = rng.randrange(len(words))
            words[k] = _typo(words[k], rng)
        return " ".join(words)
    if kind == "template":
        words = text.split(" ")
        for _ in range(3):
            words[rng.randrange(len(words))] = str(rng.randrange(1, 2030))
        return " ".join(words)
    if kind == "mixed":
        return edit(edit(edit(text, "drop_line", rng), "typos", rng), "boilerplate", rng)
    if kind == "sentences":
        sents = [x for x in SENTENCE.split(text) if x]
        if len(sents) < 8:
            return edit(text, "truncate", rng)
        for _ in range(rng.randint(2, 3)):
            del sents[rng.randrange(len(sents))]
        i = rng.randrange(len(sents) - 1)
        sents[i], sents[i + 1] = sents[i + 1], sents[i]
        return ("" if cjk else " ").join(sents)
    if kind == "replace":
        if cjk:  # a word is ~1.7 characters: one character in ~170
            chars = list(text)
            for _ in range(max(1, len(chars) // 170)):
                chars[rng.randrange(len(chars))] = rng.choice(chars)
            return "".join(chars)
        words = text.split(" ")
        for _ in range(max(1, len(words) // 100)):
            words[rng.randrange(len(words))] = rng.choice(words)
        return " ".join(words)
    if kind == "crawl":
        header = " | ".join(rng.sample(MENU, rng.randint(8, 14)))
        footer = " | ".join(rng.sample(MENU, rng.randint(6, 10))) + f"\n© {rng.randint(2015, 2025)} All rights reserved."
        return header + "\n" + edit(edit(text, "sentences", rng), "replace", rng) + "\n" + footer
    raise ValueError(kind)


def build(originals: int, seed: int, cfg: DedupConfig):
    rng = random.Random(seed)
    pool = distinct_originals(load_corpus(), cfg)
    cjk = [t for t in pool if is_cjk(t)]
    latin = [t for t in pool if not is_cjk(t)]
    rng.shuffle(latin)
    chosen = cjk + latin[: max(originals - len(cjk), 0)]
    rest = latin[max(originals - len(cjk), 0) :]
    docs, truth, kinds = [], {}, {}
    for n, text in enumerate(chosen):
        cid = f"c{n:04d}"
        docs.append((f"{cid}-orig", text))
        truth[f"{cid}-orig"] = cid
        for k in ("crawl", *rng.sample(EDITS, 2)):
            did = f"{cid}-{k}"
            docs.append((did, edit(text, k, rng)))
            truth[did], kinds[did] = cid, k + ("/cjk" if is_cjk(text) else "")
    # Hard negatives: a long real navigation template around different real bodies; on a second site,
    # shorter bodies (500-1,500 characters: product and tag pages), where the template is most of the page.
    for site, (lo, hi) in enumerate(((3000, 3000), (500, 1500))):
        head_doc, foot_doc, *bodies = rest[site * 42:(site + 1) * 42]
        if site == 0:
            template_head = "\n".join(head_doc.split("\n")[:8])[:1500]
            template_foot = "\n".join(foot_doc.split("\n")[-6:])[-1000:]
        else:  # a full 1,500-character header and 1,000-character footer
            template_head, template_foot = head_doc[:1500], foot_doc[-1000:]
        for n, body in enumerate(bodies):
            did = f"neg{site}-{n:03d}"
            docs.append((did, template_head + "\n" + body[:rng.randint(lo, hi)] + "\n" + template_foot))
            truth[did] = did
    return docs, truth, kinds


def pairs_of(clusters: dict[str, str]) -> set[tuple[str, str]]:
    groups = defaultdict(list)
    for doc, c in clusters.items():
        groups[c].append(doc)
    return {tuple(sorted(p)) for g in groups.values() for p in itertools.combinations(sorted(g), 2)}


def run_tokenmill(docs, cfg: DedupConfig, work: str) -> dict[str, str]:
    """doc -> its cluster's kept doc, running every dedup step (4 partitions)."""
    half = len(docs) // 2
    urls = []
    for n, chunk in enumerate((docs[:half], docs[half:])):
        url = f"{work}/in/part-{n:05d}.parquet"
        storage.write_parquet(url, docs_table([{"id": i, "text": t, "source": "bench", "url": None, "meta": None} for i, t in chunk]))
        urls.append(url)
    dedup.run_local(urls, work, cfg, partitions=4)
    rep = {i: i for i, _ in docs}
    for f in storage.list_files(f"{work}/rejected/dedup"):
        for r in storage.read_parquet(f, columns=["id", "duplicate_of"]).to_pylist():
            rep[r["id"]] = r["duplicate_of"]
    return rep


def run_datasketch(docs, cfg: DedupConfig) -> dict[str, str]:
    """Plain datasketch MinHashLSH on the same shingles: query each doc in id order, link to the lowest hit."""
    bands, rows = dedup.lsh_params(cfg)
    lsh = MinHashLSH(num_perm=cfg.num_perm, params=(bands, rows))
    parent = {}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for doc_id, text in sorted(docs):
        m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
        m.update_batch([s.encode() for s in shingles(text, cfg)])
        parent[doc_id] = doc_id
        for hit in lsh.query(m):
            a, b = find(hit), find(doc_id)
            parent[max(a, b)] = min(a, b)
        lsh.insert(doc_id, m)
    return {d: find(d) for d in parent}


def scores(pred: dict[str, str], truth_pairs: set) -> tuple[float, float, float]:
    p = pairs_of(pred)
    tp = len(p & truth_pairs)
    precision = tp / len(p) if p else 1.0
    recall = tp / len(truth_pairs) if truth_pairs else 1.0
    return precision, recall, 2 * precision * recall / max(precision + recall, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--originals", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = DedupConfig()
    docs, truth, kinds = build(args.originals, args.seed, cfg)
    truth_pairs = pairs_of(truth)
    sh = {i: shingles(t, cfg) for i, t in docs}
    pos_j = [true_jaccard(sh[a], sh[b]) for a, b in truth_pairs]
    negs = [d for d in truth if d.startswith("neg")]
    neg_j = [true_jaccard(sh[a], sh[b]) for a, b in itertools.combinations(negs, 2) if a[:4] == b[:4]]
    n_cjk = sum(1 for d in truth if d.endswith("-orig") and is_cjk(dict(docs)[d]))
    print(f"labeled set: {len(docs)} docs, {len(set(truth.values()))} true clusters, {len(truth_pairs)} duplicate pairs "
          f"({n_cjk} CJK originals), {len(negs)} hard negatives (same site template)")
    print(f"true Jaccard of duplicate pairs: min {min(pos_j):.2f} median {np.median(pos_j):.2f}; "
          f"of hard-negative pairs (same site): max {max(neg_j):.2f} median {np.median(neg_j):.2f}, "
          f"{np.mean(np.array(neg_j) >= 0.5):.1%} at 0.5 or more\n")

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        ours = run_tokenmill(docs, cfg, f"{tmp}/default")
        ours_s = time.perf_counter() - t
        p, r, f1 = scores(ours, truth_pairs)
        print(f"tokenmill at the default threshold {cfg.threshold} (num_perm {cfg.num_perm}, ngram {cfg.ngram}, verify on): "
              f"precision {p:.3f}  recall {r:.3f}  F1 {f1:.3f}   ({ours_s:.1f} s)")
        print("\nrecall per edit (variant found in its original's cluster):")
        print("| edit | variants | true Jaccard with the original (median, min) | recall |\n|---|---|---|---|")
        by_kind, jac_kind = defaultdict(list), defaultdict(list)
        for did, k in kinds.items():
            orig = f"{did.split('-')[0]}-orig"
            by_kind[k].append(ours[did] == ours[orig])
            jac_kind[k].append(true_jaccard(sh[did], sh[orig]))
        for k in sorted(by_kind):
            print(f"| {k} | {len(by_kind[k])} | {np.median(jac_kind[k]):.2f}, {min(jac_kind[k]):.2f} | "
                  f"{np.mean(by_kind[k]):.3f} |")
        fp_negs = sum(1 for d in negs if ours[d] != d)
        print(f"\nhard negatives wrongly removed: {fp_negs} of {len(negs)}")
        # Labels by the true Jaccard instead of by construction: how well MinHash LSH approximates
        # "true Jaccard >= threshold" (pairs of distinct originals are < 0.5 by construction).
        judged = truth_pairs | pairs_of(ours) | {tuple(sorted(p)) for p in itertools.combinations(negs, 2)}
        jac_truth = {p for p in judged if true_jaccard(sh[p[0]], sh[p[1]]) >= cfg.threshold}
        p, r, f1 = scores(ours, jac_truth)
        print(f"against labels 'true Jaccard >= {cfg.threshold}' ({len(jac_truth)} pairs): precision {p:.3f} recall {r:.3f} F1 {f1:.3f}")

        print("\nthreshold sweep (tokenmill, verify on / off):")
        print("| threshold | bands x rows | precision | recall | F1 | precision (no verify) | recall (no verify) | F1 (no verify) |")
        print("|---|---|---|---|---|---|---|---|")
        verified = {}
        for th in (0.5, 0.55, 0.6, 0.65, 0.7, 0.72, 0.75, 0.8, 0.85, 0.9):
            row = [f"{th}", "{} x {}".format(*dedup.lsh_params(DedupConfig(threshold=th)))]
            for verify in (True, False):
                c = DedupConfig(threshold=th, verify=verify)
                got = scores(run_tokenmill(docs, c, f"{tmp}/t{th}-{verify}"), truth_pairs)
                if verify:
                    verified[th] = got
                row += [f"{x:.3f}" for x in got]
            print("| " + " | ".join(row) + " |", flush=True)
        eligible = {th: f1 for th, (p, _, f1) in verified.items() if p >= 0.99}
        best = max(eligible, key=lambda th: (eligible[th], th)) if eligible else None
        print(f"highest F1 with precision >= 0.99 (verify on): threshold {best}"
              + (f", F1 {eligible[best]:.3f} (the default is {cfg.threshold})" if best else ""))

        t = time.perf_counter()
        plain = run_datasketch(docs, cfg)
        ds_s = time.perf_counter() - t
        noverify = run_tokenmill(docs, DedupConfig(verify=False), f"{tmp}/noverify")
        removed = {k: {d for d, rep in v.items() if rep != d} for k, v in
                   (("tokenmill", ours), ("tokenmill_noverify", noverify), ("datasketch", plain))}
        p2, r2, f2 = scores(plain, truth_pairs)
        print(f"\ncross-check, plain datasketch MinHashLSH (same shingles, {cfg.num_perm} perms, same bands x rows, "
              f"sha1 shingle hashes, no verification): precision {p2:.3f} recall {r2:.3f} F1 {f2:.3f}   ({ds_s:.1f} s)")
        for name in ("tokenmill", "tokenmill_noverify"):
            a, b = removed[name], removed["datasketch"]
            print(f"  removed-doc sets, {name} vs datasketch: {len(a)} vs {len(b)}, Jaccard {len(a & b) / max(len(a | b), 1):.3f}; "
                  f"only {name}: {sorted(a - b)[:6]}, only datasketch: {sorted(b - a)[:6]}")
        diff = removed["tokenmill"] ^ removed["datasketch"]
        if diff:
            print("  true Jaccard of the differing docs with their original:",
                  ", ".join(f"{d} {true_jaccard(sh[d], sh[d.split('-')[0] + '-orig']):.2f}" for d in sorted(diff)[:8] if not d.startswith("neg")))


if __name__ == "__main__":
    main()
