"""Build the local lm-eval task data from public-domain text: `python training/data/lm_eval/build_tasks.py [PROSE_DIR]`.

Deterministic (fixed seed, no model): rerunning it on the same sources writes the same files.

* tokenmill_cloze.jsonl: a sentence without its last ENDING_WORDS words, its true ending and three
  endings of the same length taken from other sentences (chance = 25%). Short endings fit the context
  of the smallest models (lm-eval needs the whole continuation inside the model's window). Sentences come from Botchan
  (Project Gutenberg #8868, English translation of 1919) and Tiny Shakespeare, both public domain.
* tokenmill_wikitext.jsonl: the WikiText-2 validation text already shipped in training/data/heldout,
  one record per article, for a loglikelihood_rolling perplexity task.
"""
from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
HELDOUT = HERE.parent / "heldout" / "wikitext2_valid_head.txt"
DEFAULT_PROSE = Path("/work/shared/data/prose")
PER_SOURCE = 200
ENDING_WORDS = 5
SEED = 0
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def botchan_text(path: Path) -> str:
    text = path.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    body = text.split("*** START OF THIS PROJECT GUTENBERG EBOOK", 1)[1].split("\n", 1)[1]
    body = body.split("*** END OF THIS PROJECT GUTENBERG EBOOK", 1)[0]
    body = body.split("\nCHAPTER I\n", 1)[-1]  # skip the translator's note and title page
    return " ".join(body.split())


def shakespeare_text(path: Path) -> str:
    """Speeches only: the 'NAME:' lines that open each speech are dropped."""
    speeches = []
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        lines = block.strip().split("\n")
        if len(lines) >= 2 and lines[0].endswith(":"):
            speeches.append(" ".join(" ".join(lines[1:]).split()))
    return " ".join(speeches)


def sentences(text: str) -> list[str]:
    out = []
    for s in SENTENCE_END.split(text):
        words = s.split()
        # whole sentences of a readable length, no dialogue fragments cut by quotes
        if 10 <= len(words) <= 30 and s[-1] in ".!?" and s.count('"') % 2 == 0 and not any(c.isdigit() for c in s):
            out.append(s)
    return out


def cloze_items(name: str, sents: list[str], n: int, rng: random.Random) -> list[dict]:
    split = [(" ".join(s.split()[:-ENDING_WORDS]), " " + " ".join(s.split()[-ENDING_WORDS:])) for s in sents]
    items = []
    for i in rng.sample(range(len(split)), len(split)):
        context, true_end = split[i]
        others = [j for j in rng.sample(range(len(split)), 8) if j != i and split[j][1] != true_end][:3]
        choices = [true_end] + [split[j][1] for j in others]
        order = rng.sample(range(4), 4)
        items.append({"id": f"{name}-{len(items):04d}", "source": name, "context": context,
                      "choices": [choices[k] for k in order], "label": order.index(0)})
        if len(items) == n:
            break
    return items


def wikitext_articles(path: Path) -> list[dict]:
    articles, title, lines = [], None, []
    for line in path.read_text(encoding="utf-8").split("\n"):
        m = re.fullmatch(r" = ([^=].*) = ", line)
        if m:
            if title is not None:
                articles.append({"title": title, "page": "\n".join(lines).strip("\n") + "\n"})
            title, lines = m.group(1), [line]
        elif title is not None:
            lines.append(line)
    if title is not None:
        articles.append({"title": title, "page": "\n".join(lines).strip("\n") + "\n"})
    return articles


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main(prose: Path) -> None:
    rng = random.Random(SEED)
    items = (cloze_items("botchan", sentences(botchan_text(prose / "gutenberg_botchan_en.txt")), PER_SOURCE, rng)
             + cloze_items("shakespeare", sentences(shakespeare_text(prose / "tinyshakespeare.txt")), PER_SOURCE, rng))
    write_jsonl(HERE / "tokenmill_cloze.jsonl", items)
    articles = wikitext_articles(HELDOUT)
    write_jsonl(HERE / "tokenmill_wikitext.jsonl", articles)
    print(f"{len(items)} cloze items, {len(articles)} wikitext articles written to {HERE}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PROSE)
