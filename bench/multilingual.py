"""The quality stage beyond English: kept rate per language on clean real documents, rejected rate on
junk made from the same languages, in one run.

    python bench/multilingual.py [--sentences 20] [--junk 12] [--seed 0]

Clean documents come from tests/data/multilingual (21 languages, see its SOURCE.md): `--sentences`
consecutive Leipzig web sentences of one language, four to a paragraph line (as extracted web text
has them), and ~1,500-character chunks of a Japanese novel with its Aozora ruby markup removed.
Junk is built from the same sentences and their words (the language's own splitter), `--junk` of
each kind per language:
    repeated     one sentence as thirty lines
    menu         a navigation list: one to three words a line, or items joined by " | "
    boilerplate  a teaser page: a menu bar, the first words of sentences cut with an ellipsis, each
                 with a date, a footer
    keywords     a handful of words repeated in a shuffled run (keyword stuffing)
Every document goes through the whole quality chain (build_chain) with the 21 languages in the
keep-list. Prints, per language, clean documents kept and junk rejected, with the reasons.
"""
from __future__ import annotations

import argparse
import gzip
import random
import re
import statistics
import time
from collections import Counter
from pathlib import Path

from tokenmill.pipeline.config import QualityConfig
from tokenmill.pipeline.filters import build_chain, filter_docs
from tokenmill.pipeline.filters.base import Doc, is_symbol
from tokenmill.pipeline.filters.languages import has_spaces, splitter

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "multilingual"
LANGS = ["ar", "bn", "de", "en", "es", "fa", "fr", "hi", "id", "it", "ja", "ko", "nl", "pl", "pt", "ru", "sw", "tr", "uk",
         "vi", "zh"]
RUBY = re.compile(r"《[^》]*》|｜|［＃[^］]*］")


def sentences(lang: str) -> list[str]:
    with gzip.open(DATA / f"leipzig_{lang}.txt.gz", "rt", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def joiner(lang: str) -> str:
    return " " if has_spaces(lang) else ""


def clean_docs(lang: str, per_doc: int) -> list[str]:
    lines = sentences(lang)
    docs = []
    for start in range(0, len(lines) - per_doc + 1, per_doc):
        group = lines[start:start + per_doc]
        docs.append("\n".join(joiner(lang).join(group[i:i + 4]) for i in range(0, len(group), 4)))
    return docs


def novel_chunks(size: int = 1500) -> list[str]:
    """The novel in ~`size`-character chunks, cut after a sentence end or a line."""
    with gzip.open(DATA / "aozora_wagahaiwa_nekodearu_ja_head.txt.gz", "rt", encoding="utf-8") as f:
        text = RUBY.sub("", f.read())
    chunks, start = [], 0
    while start < len(text):
        cut = min((i for i in (text.find("。", start + size), text.find("\n", start + size)) if i >= 0),
                  default=len(text))
        chunks.append(text[start:cut + 1].strip())
        start = cut + 1
    return [c for c in chunks if len(c) >= size // 2]


def junk_docs(lang: str, n: int, rng: random.Random) -> list[tuple[str, str]]:
    lines = sentences(lang)
    split, sep = splitter(lang), joiner(lang)
    words = sorted({w for line in lines for w in split(line) if not is_symbol(w) and not w.isdigit()})
    out = []
    for _ in range(n):
        out.append(("repeated", "\n".join([rng.choice(lines)] * 30)))
        items = [sep.join(rng.sample(words, rng.randint(1, 3))) for _ in range(rng.randint(20, 40))]
        if rng.random() < 0.5:
            menu = "\n".join(items)
        else:
            menu = "\n".join(" | ".join(items[i:i + 6]) for i in range(0, len(items), 6))
        out.append(("menu", menu))
        bar = " | ".join(rng.sample(words, 7))
        teasers = []
        for line in rng.sample(lines, 15):
            head = [w for w in split(line) if not is_symbol(w)][:rng.randint(4, 7)]
            cut = rng.choice(("…", "..."))  # a teaser's cut
            teasers.append(f"{sep.join(head)} {cut}\n{rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.2024")
        footer = f"© 2024 {rng.choice(words)} | {rng.choice(words)} | {rng.choice(words)}"
        out.append(("boilerplate", "\n".join([bar, *teasers, footer])))
        few = rng.sample(words, 5)
        out.append(("keywords", sep.join(rng.choice(few) for _ in range(300))))
    return out


def print_stats(per_doc: int) -> None:
    """Median over clean documents of their mean word length, and lid.176's scores."""
    from tokenmill.pipeline.filters.language import identify

    print("| language | median mean word length | lid.176 score min / median |")
    print("|---|---|---|")
    for lang in LANGS:
        docs = clean_docs(lang, per_doc)
        means = []
        for text in docs:
            words = [w for w in splitter(lang)(text) if not is_symbol(w)]
            means.append(sum(map(len, words)) / len(words))
        scores = sorted(identify(text)[1] for text in docs)
        print(f"| {lang} | {statistics.median(means):.2f} | {scores[0]:.2f} / {statistics.median(scores):.2f} |")


def run(steps, texts: list[str]) -> list[str | None]:
    return filter_docs(steps, [Doc(str(i), t) for i, t in enumerate(texts)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=20, help="sentences per clean document")
    ap.add_argument("--junk", type=int, default=12, help="junk documents of each kind per language")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stats", action="store_true", help="print each language's word lengths (languages.WORD_LENGTH)")
    args = ap.parse_args()
    if args.stats:
        return print_stats(args.sentences)
    rng = random.Random(args.seed)
    cfg = QualityConfig.model_validate({"language": {"keep": LANGS}})
    steps = build_chain(cfg)
    rows, all_clean, all_junk = [], [0, 0], [0, 0]
    junk_kinds: Counter = Counter()
    junk_kinds_rejected: Counter = Counter()
    junk_why: dict[str, Counter] = {}
    t0 = time.perf_counter()
    sets = [(lang, lang, clean_docs(lang, args.sentences)) for lang in LANGS]
    sets.insert(LANGS.index("ja") + 1, ("ja (novel)", "ja", novel_chunks()))
    for name, lang, clean in sets:
        reasons = run(steps, clean)
        kept = sum(r is None for r in reasons)
        clean_why = Counter(r for r in reasons if r)
        junk_row = ""
        if name == lang:
            junk = junk_docs(lang, args.junk, rng)
            jr = run(steps, [t for _, t in junk])
            rejected = sum(r is not None for r in jr)
            for (kind, _), r in zip(junk, jr):
                junk_why.setdefault(kind, Counter())
                junk_kinds[kind] += 1
                junk_kinds_rejected[kind] += r is not None
            all_junk[0] += rejected
            all_junk[1] += len(junk)
            leaked = Counter(kind for (kind, _), r in zip(junk, jr) if r is None)
            junk_row = f"{rejected}/{len(junk)} = {rejected / len(junk):.0%}" + (
                f" (kept: {dict(leaked)})" if leaked else "")
            for (kind, _), r in zip(junk, jr):
                junk_why[kind][r] += 1
        all_clean[0] += kept
        all_clean[1] += len(clean)
        why = ", ".join(f"{r} {c}" for r, c in clean_why.most_common(3))
        rows.append((name, f"{kept}/{len(clean)} = {kept / len(clean):.0%}", why or "-", junk_row or "-"))
    took = time.perf_counter() - t0
    print("| language | clean kept | why clean ones were dropped | junk rejected |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"| all | {all_clean[0]}/{all_clean[1]} = {all_clean[0] / all_clean[1]:.1%} | | "
          f"{all_junk[0]}/{all_junk[1]} = {all_junk[0] / all_junk[1]:.1%} |")
    print("\njunk rejected by kind: " + ", ".join(
        f"{k} {junk_kinds_rejected[k]}/{junk_kinds[k]}" for k in junk_kinds))
    for kind, why in junk_why.items():
        print(f"  {kind}: " + ", ".join(f"{r or 'KEPT'} {c}" for r, c in why.most_common(6)))
    print(f"{all_clean[1] + all_junk[1]} documents in {took:.1f} s")
    worst = min(int(r[1].split("/")[0]) / int(r[1].split("/")[1].split()[0]) for r in rows)
    print(f"lowest kept rate {worst:.0%} (goal >= 80%), junk rejected {all_junk[0] / all_junk[1]:.1%} (goal >= 90%)")


if __name__ == "__main__":
    main()
