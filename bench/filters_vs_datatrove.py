"""tokenmill's quality filters against datatrove's, on the same real documents, in one process run.

    pip install -e '.[bench]'       # datatrove[processing] + spaCy (datatrove's English word tokenizer)
    python bench/filters_vs_datatrove.py [INPUT ...] [--procs N] [--limit N]

Default corpus: the bundled one plus the web samples in ../shared/data/web when present.
For each filter, with the same thresholds on both sides: keep/drop agreement over every document
(each filter applied alone to the raw text). Then throughput of the whole chain (Gopher repetition
-> Gopher quality -> C4 -> FineWeb, FineWeb's order and settings) on one process and on N
processes, tokenmill vs datatrove, as ratios measured in this run.
datatrove is a bench-only dependency; the product never imports it.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from tokenmill.pipeline.config import (
    C4Config,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    QualityConfig,
    ReaderConfig,
)
from tokenmill.pipeline.filters import build_chain
from tokenmill.pipeline.filters.base import Doc
from tokenmill.pipeline.filters.c4 import C4
from tokenmill.pipeline.filters.fineweb import FineWeb
from tokenmill.pipeline.filters.gopher import GopherQuality, GopherRepetition
from tokenmill.pipeline.readers import expand_inputs, read_records


def datatrove_filters():
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    return {
        "gopher_repetition": GopherRepetitionFilter(),
        "gopher_quality": GopherQualityFilter(),
        "c4 (FineWeb: no terminal-punct rule)": C4QualityFilter(filter_no_terminal_punct=False),
        "c4 (C4: terminal-punct rule)": C4QualityFilter(),
        "fineweb": FineWebQualityFilter(),
    }


def tokenmill_filters():
    return {
        "gopher_repetition": GopherRepetition(GopherRepetitionConfig()),
        # datatrove counts punctuation tokens in the alphabetic-words ratio; the paper (and tokenmill's
        # default) does not. Same semantics here so the comparison is of implementations.
        "gopher_quality": GopherQuality(GopherQualityConfig(alpha_ratio_counts_punctuation=True)),
        "c4 (FineWeb: no terminal-punct rule)": C4(C4Config(terminal_punctuation=False)),
        "c4 (C4: terminal-punct rule)": C4(C4Config(terminal_punctuation=True)),
        "fineweb": FineWeb(FineWebConfig()),
    }


CHAIN = ["gopher_repetition", "gopher_quality", "c4 (FineWeb: no terminal-punct rule)", "fineweb"]


def dt_verdict(f, text: str) -> tuple[bool, str]:
    from datatrove.data import Document

    out = f.filter(Document(text=text, id="x"))
    if isinstance(out, tuple):
        return bool(out[0]), str(out[1]) if len(out) > 1 else ""
    return bool(out), ""


def tm_verdict(step, text: str) -> tuple[bool, str]:
    reason = step(Doc("x", text))
    return reason is None, reason or ""


def load_texts(inputs: list[str], limit: int | None) -> list[str]:
    texts = []
    for url in expand_inputs(inputs):
        texts += [r.doc["text"] for r in read_records(url, ReaderConfig()) if r.reason is None]
    return texts[:limit] if limit else texts


# --- chains, one per process --------------------------------------------------------------------
_chain = None


def _init(side: str) -> None:
    global _chain
    if side == "tokenmill":
        steps = tokenmill_filters()
        _chain = ("tokenmill", [steps[n] for n in CHAIN])
    elif side == "tokenmill-default":
        _chain = ("tokenmill", build_chain(QualityConfig()))
    else:
        steps = datatrove_filters()
        _chain = ("datatrove", [steps[n] for n in CHAIN])


def _run_chain(texts: list[str]) -> int:
    from datatrove.data import Document

    side, steps = _chain
    kept = 0
    for text in texts:
        if side == "tokenmill":
            doc = Doc("x", text)
            kept += all(step(doc) is None for step in steps)
        else:
            doc = Document(text=text, id="x")
            kept += all((r[0] if isinstance(r, tuple) else r) for r in (f.filter(doc) for f in steps))
    return kept


def throughput(side: str, texts: list[str], procs: int) -> tuple[float, int]:
    """docs/s of the whole chain on `procs` processes (1: in this process)."""
    if procs == 1:
        _init(side)
        _run_chain(texts[:20])  # warm-up: model and tokenizer loading is not throughput
        start = time.perf_counter()
        kept = _run_chain(texts)
        return len(texts) / (time.perf_counter() - start), kept
    chunks = [texts[i::procs * 8] for i in range(procs * 8)]
    with mp.get_context("fork").Pool(procs, initializer=_init, initargs=(side,)) as pool:
        pool.map(_run_chain, [texts[:10]] * procs)  # warm-up in every worker
        start = time.perf_counter()
        kept = sum(pool.map(_run_chain, chunks, chunksize=1))
        return len(texts) / (time.perf_counter() - start), kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="*")
    ap.add_argument("--procs", type=int, default=mp.cpu_count())
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    inputs = args.inputs or [str(REPO / "pipeline" / "data" / "corpus")] + [
        str(p) for p in sorted((REPO.parent / "shared" / "data" / "web").glob("*.jsonl*"))]
    texts = load_texts(inputs, args.limit)
    print(f"{len(texts)} documents, {sum(map(len, texts)):,} chars, from {len(inputs)} inputs\n")

    tm, dt = tokenmill_filters(), datatrove_filters()
    print("| filter | agree | tokenmill drops, datatrove keeps | tokenmill keeps, datatrove drops | dropped (tm / dt) |")
    print("|---|---:|---:|---:|---:|")
    disagreements = {}
    for name in tm:
        tm_only, dt_only, drops_tm, drops_dt = Counter(), Counter(), 0, 0
        for text in texts:
            (k1, r1), (k2, r2) = tm_verdict(tm[name], text), dt_verdict(dt[name], text)
            drops_tm += not k1
            drops_dt += not k2
            if k1 != k2:
                (tm_only if not k1 else dt_only)[(r1, r2)] += 1
        agree = 1 - (sum(tm_only.values()) + sum(dt_only.values())) / len(texts)
        print(f"| {name} | {100 * agree:.2f}% | {sum(tm_only.values())} | {sum(dt_only.values())} | {drops_tm} / {drops_dt} |")
        disagreements[name] = (tm_only + dt_only).most_common(4)
    print("\nmost common disagreements (tokenmill reason, datatrove reason): count")
    for name, common in disagreements.items():
        if common:
            print(f"  {name}: " + "; ".join(f"({a or 'keep'}, {b or 'keep'}): {n}" for (a, b), n in common))

    print(f"\nwhole chain ({' -> '.join(CHAIN)}), docs/s")
    print("| chain | 1 process | %d processes |" % args.procs)
    print("|---|---:|---:|")
    results = {}
    for side in ("datatrove", "tokenmill", "tokenmill-default"):
        one, kept1 = throughput(side, texts, 1)
        many, kept_n = throughput(side, texts, args.procs) if args.procs > 1 else (one, kept1)
        assert kept1 == kept_n, (side, kept1, kept_n)
        results[side] = (one, many)
        print(f"| {side} | {one:,.1f} | {many:,.1f} |  (kept {kept1})")
    base = results["datatrove"]
    print(f"\nspeed-up tokenmill / datatrove: {results['tokenmill'][0] / base[0]:.1f}x on 1 process, "
          f"{results['tokenmill'][1] / base[1]:.1f}x on {args.procs}")
    print("tokenmill-default = the product's whole quality stage (normalise, URL, fastText language id, "
          "Gopher, C4, FineWeb, PII): "
          f"{results['tokenmill-default'][0] / base[0]:.1f}x / {results['tokenmill-default'][1] / base[1]:.1f}x "
          "datatrove's four filters")


if __name__ == "__main__":
    main()
