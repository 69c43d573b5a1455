"""How `tokenmill curate` scales with corpus size and with the number of input shards, on this machine.

    python bench/scale.py [--sizes-mb 16 128] [--files 4 40] [--cpus 2] [--out /tmp/scale] [--keep]

1. Builds a crawl-like corpus of each size from the bundled real text (pipeline/data/corpus, Common
   Crawl pages via Dolma, licences in its SOURCE.md): documents of 6-40 real sentences drawn at random,
   with planted exact copies (4%) and near copies (6%: a sentence or two changed), as `.jsonl.gz`
   files with an `id` per record. The same documents, in the same order, are cut into each number of
   files of `--files`, so every sharding of a size holds the same input.
2. Runs `tokenmill curate` (real Prefect server, local Ray with `--cpus` CPUs) on each (size, files),
   the smallest size also with bundling off (one Prefect task run per unit: the baseline the bundling
   is measured against), sampling the whole process tree (CLI driver, Prefect server, Ray) every 0.5 s.
3. Prints per run: wall time, task runs, per-stage MB/s per core (input bytes of the stage over the
   CPU-seconds of the Ray processes during the stage, cut at the flow log's 'stage X:' lines: CPU,
   not wall time, since this machine is shared), the orchestration share (Prefect server + driver CPU over all CPU of
   the tree), peak RSS of the whole tree (sum over processes: shared pages counted in each), and
   whether the kept documents (ids and text of the last document stage, in order) equal those of the
   first sharding of the same size. Then the ratios the issue asks for (memory at the largest size
   over the smallest, wall time at the most files over the fewest).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "pipeline" / "data" / "corpus"


def sentences() -> list[str]:
    """Real sentences of the bundled Common Crawl documents that the quality stage's own language
    identification calls English with a score of 0.9 or more (after a crude sentence split)."""
    from tokenmill.pipeline.filters.language import identify

    out = []
    for path in sorted(CORPUS.glob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                text = json.loads(line).get("text") or ""
                out += [s for s in (s.strip() for s in re.split(r"(?<=[.!?])\s+", text)) if 40 <= len(s) <= 400
                        and s[-1] in ".!?" and identify(s)[0] == "en" and identify(s)[1] >= 0.9]
    return out


def documents(size_bytes: int, seed: int = 0):
    """Crawl-like documents totalling about `size_bytes` of text: (id, text), with planted copies."""
    rng, pool, made, recent = random.Random(seed), sentences(), 0, []
    n = 0
    while made < size_bytes:
        roll = rng.random()
        if recent and roll < 0.04:
            text = rng.choice(recent)  # an exact copy of an earlier page
        elif recent and roll < 0.10:
            parts = rng.choice(recent).split("\n")
            parts[rng.randrange(len(parts))] = rng.choice(pool)  # a near copy: one sentence swapped
            text = "\n".join(parts)
        else:
            text = "\n".join(rng.choice(pool) for _ in range(rng.randint(6, 40)))
            recent = (recent + [text])[-2000:]
        made += len(text.encode())
        yield f"doc-{seed}-{n:09d}", text
        n += 1


def write_corpus(out: Path, size_bytes: int, files: int) -> Path:
    """The corpus of `size_bytes` cut into `files` .jsonl.gz files of about equal size, same order."""
    if (out / "_DONE").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    per_file, made, lines = size_bytes / files, 0, [[] for _ in range(files)]
    for doc_id, text in documents(size_bytes):
        lines[min(int(made // per_file), files - 1)].append(
            json.dumps({"id": doc_id, "text": text, "url": f"https://example.org/{doc_id}"}) + "\n")
        made += len(text.encode())
    for k, chunk in enumerate(lines):
        with gzip.open(out / f"crawl-{k:05d}.jsonl.gz", "wt", encoding="utf-8", compresslevel=3) as f:
            f.writelines(chunk)
    (out / "_DONE").write_text("")
    return out


def role(proc: psutil.Process, driver: int) -> str:
    if proc.pid == driver:
        return "driver"
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return "other"
    if "prefect" in cmd and "server" in cmd:
        return "prefect_server"
    return "ray"


def run_curate(inputs: Path, run_dir: Path, cpus: int, extra: list[str]) -> dict:
    """`tokenmill curate` on `inputs`, its process tree sampled every 0.5 s: wall, CPU by role, peak RSS,
    task runs (from the flow's log), and the CPU of the Ray processes during each stage."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HOME": str(run_dir / "home"),
           "PREFECT_HOME": str(run_dir / "home" / ".prefect")}
    env.pop("PREFECT_API_URL", None)
    (run_dir / "home").mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "tokenmill.flows.cli", "curate", "--run-id", "r", "--output-dir", str(run_dir / "runs"),
           "--set", f"curate.inputs=[\"{inputs}\"]", "--set", f"ray.num_cpus={cpus}", "--set", "ray.dashboard=false",
           "--set", f"ray.max_in_flight={2 * cpus}", "--set", "curate.tokens.seq_len=512", *extra]
    with open(run_dir / "curate.log", "wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        cpu, peak, peaks, series = watch(proc)
    wall = time.perf_counter() - started
    text = (run_dir / "curate.log").read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"curate failed ({proc.returncode}), log {run_dir / 'curate.log'}:\n{text[-3000:]}")
    by_role: dict[str, float] = {}
    for r, seconds in cpu.values():
        by_role[r] = by_role.get(r, 0.0) + seconds
    task_runs = sum(int(m) for m in re.findall(r"in (\d+) task runs", text))
    return {"wall_s": wall, "cpu_s": by_role, "peak_rss_mb": peak / 2**20, "task_runs": task_runs,
            "peaks_mb": {k: round(v / 2**20) for k, v in sorted(peaks.items())}, "stage_cpu_s": stage_cpu(text, series)}


def watch(proc: subprocess.Popen) -> tuple[dict[int, tuple[str, float]], int, dict[str, int], list]:
    """Until `proc` exits: CPU seconds of every process of its tree (by pid, with its role), the peak
    RSS summed over the tree, per kind of process the peak of its summed RSS (`<kind>`) and of its
    largest process (`<kind>_max`), so a growing peak can be put on a kind, and (time, CPU seconds of
    the Ray processes so far) at each sample."""
    cpu: dict[int, tuple[str, float]] = {}
    peak, peaks, series = 0, {}, []
    while proc.poll() is None:
        try:
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.Error:
            break
        rss, by_kind = 0, {}
        for p in tree:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    cpu[p.pid] = (cpu.get(p.pid, (None,))[0] or role(p, proc.pid), t.user + t.system)
                    one = p.memory_info().rss
            except psutil.Error:
                continue
            rss += one
            k = kind(p, cpu[p.pid][0])
            by_kind[k] = by_kind.get(k, 0) + one
            peaks[k + "_max"] = max(peaks.get(k + "_max", 0), one)
        peak = max(peak, rss)
        for k, v in by_kind.items():
            peaks[k] = max(peaks.get(k, 0), v)
        series.append((time.time(), sum(c for r, c in cpu.values() if r == "ray")))
        time.sleep(0.5)
    return cpu, peak, peaks, series


def kind(proc: psutil.Process, role_name: str) -> str:
    """A finer kind than the role for memory: Ray's own daemons apart from its workers."""
    if role_name != "ray":
        return role_name
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return "ray_other"
    for name in ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor.py", "runtime_env"):
        if name in cmd:
            return "ray_" + name.split(".")[0]
    return "ray_worker" if "default_worker" in cmd or "ray::" in cmd else "ray_other"


def stage_cpu(log: str, series: list[tuple[float, float]]) -> dict[str, float]:
    """CPU seconds the Ray processes spent from the end of the previous stage to the end of each
    stage, by the flow log's 'stage <name>:' lines (local time) and the sampled series."""
    import bisect
    import datetime as dt

    def at(t: float) -> float:
        i = bisect.bisect_right([x for x, _ in series], t)
        return series[max(i - 1, 0)][1] if series else 0.0

    today = dt.date.today()
    out, last = {}, series[0][0] if series else 0.0
    for hms, name in re.findall(r"^(\d\d:\d\d:\d\d\.\d+) \| INFO .*? - stage (\w+): ", log, re.MULTILINE):
        t = dt.datetime.combine(today, dt.time.fromisoformat(hms)).timestamp()
        out[name], last = at(t) - at(last), t
    return out


def stage_rates(run: Path, stage_cpu_s: dict[str, float]) -> dict[str, float]:
    """MB/s per core of each stage: its input bytes over the CPU-seconds of the Ray processes during it."""
    rates = {}
    for stage, seconds in stage_cpu_s.items():
        if stage == "tokens":
            source = json.loads((run / "tokens" / "_config.json").read_text())["source"]
            size = json.loads((run / source / "_stats.json").read_text())["bytes_kept"]
        else:
            size = json.loads((run / stage / "_stats.json").read_text())["bytes_in"]
        rates[stage] = size / 2**20 / seconds if seconds > 0 else float("nan")
    return rates


def kept_digest(run: Path) -> str:
    """sha256 over the ids and texts the last document stage kept (the tokens stage's source), in order."""
    source = json.loads((run / "tokens" / "_config.json").read_text())["source"]
    h = hashlib.sha256()
    for part in sorted((run / source).glob("part-*.parquet")):
        t = pq.read_table(part, columns=["id", "text"])
        for i, text in zip(t["id"].to_pylist(), t["text"].to_pylist()):
            h.update(i.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[16, 128])
    ap.add_argument("--files", type=int, nargs="+", default=[4, 40])
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unbundled run at the smallest size")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="tm-scale-"))
    rows = []
    plan = [(mb, files, True) for mb in args.sizes_mb for files in args.files]
    if not args.no_baseline:
        plan.insert(len(args.files), (args.sizes_mb[0], max(args.files), False))
    for mb, files, bundled in plan:
        inputs = write_corpus(out / f"corpus-{mb}mb-{files}f", mb << 20, files)
        run_dir = out / f"run-{mb}mb-{files}f-{'bundled' if bundled else 'unbundled'}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        extra = [] if bundled else ["--set", "ray.tasks_per_step=1000000"]
        print(f"curate {mb} MB in {files} files, {'bundled' if bundled else 'one task per unit'} ...", flush=True)
        m = run_curate(inputs, run_dir, args.cpus, extra)
        run = run_dir / "runs" / "r"
        cpu = m["cpu_s"]
        total = sum(cpu.values())
        row = {"mb": mb, "files": files, "bundled": bundled, "wall_s": round(m["wall_s"], 1), "task_runs": m["task_runs"],
               "rates": {k: round(v, 2) for k, v in stage_rates(run, m["stage_cpu_s"]).items()},
               "orchestration": round((cpu.get("prefect_server", 0) + cpu.get("driver", 0)) / total, 3),
               "cpu_s": {k: round(v, 1) for k, v in cpu.items()}, "peak_rss_mb": round(m["peak_rss_mb"]),
               "peaks_mb": m["peaks_mb"],
               "kept": kept_digest(run)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if not args.keep:
            shutil.rmtree(run, ignore_errors=True)

    stages = list(rows[0]["rates"]) if rows else []
    print(f"\n| input | files | Prefect task runs | wall s | {' | '.join(stages)} (MB/s per core) "
          "| orchestration share | peak RSS of the tree | kept docs |")
    print("|---|---|---|---|" + "---|" * len(stages) + "---|---|---|")
    for r in rows:
        same = r["kept"] == next(x["kept"] for x in rows if x["mb"] == r["mb"])
        print(f"| {r['mb']} MB | {r['files']}{'' if r['bundled'] else ' (no bundles)'} | {r['task_runs']} | {r['wall_s']} | "
              + " | ".join(f"{r['rates'].get(s, float('nan')):.2f}" for s in stages)
              + f" | {r['orchestration']:.1%} | {r['peak_rss_mb']} MB | {'same' if same else 'DIFFERENT'} ({r['kept']}) |")
    small, big = min(args.sizes_mb), max(args.sizes_mb)
    few, many = min(args.files), max(args.files)

    def pick(mb, files, bundled=True):
        return next((r for r in rows if (r["mb"], r["files"], r["bundled"]) == (mb, files, bundled)), None)
    if pick(big, few) and pick(small, few):
        print(f"\npeak RSS {big} MB / {small} MB: {pick(big, few)['peak_rss_mb'] / pick(small, few)['peak_rss_mb']:.2f}x")
        a, b = pick(small, few)["peaks_mb"], pick(big, few)["peaks_mb"]
        print("peak RSS by kind of process (MB; <kind>: all of that kind at once, _max: its largest process): "
              + ", ".join(f"{k} {a.get(k, 0)} -> {b.get(k, 0)}" for k in sorted(a.keys() | b.keys())))
    for mb in args.sizes_mb:
        if pick(mb, many) and pick(mb, few):
            print(f"wall {mb} MB in {many} files / {few} files: {pick(mb, many)['wall_s'] / pick(mb, few)['wall_s']:.2f}x")
    if pick(small, many, False) and pick(small, many):
        print(f"wall {small} MB in {many} files, one task per unit / bundled: "
              f"{pick(small, many, False)['wall_s'] / pick(small, many)['wall_s']:.2f}x")


if __name__ == "__main__":
    main()
