"""How a job (pre-training, fine-tuning) is started, and how it reports back.

Starting: `python -m MODULE --job JOB.json` on every rank, through torchrun on one node or the
DeepSpeed launcher with a hostfile; all the launcher needs is the section's nproc, hostfile and
threads_per_proc (`Launch`). Ranks on this machine exit when the launching process is gone, however
it went (`exit_with_launcher`). On a Ray cluster the job runs as Ray Train workers instead (`ray_train.py`,
`run_module(..., ray_name=...)`).

Reporting: a job writes events to its stdout, one per line, as the marker `tokenmill-event: `
followed by a JSON object whose "event" names its kind:

    model    {params, processes, device, zero_stage, ...}   rank 0, once per model trained
    resumed  {checkpoint, step}                             rank 0, when it continued a checkpoint
    step     {step, max_steps, loss, lr, ...}               rank 0, every few steps
    done     {result}                                       rank 0, last: the job's summary
    error    {rank, message}                                any rank whose job raised

`run_module` logs each event as one readable line through `on_line` and returns the `done` result;
the rest of the output (DeepSpeed, torch warnings, tracebacks) goes only to the job's log, with the
event lines. Stdout rather than a status file: it reaches the launcher through torchrun and through
the DeepSpeed launcher's ssh/pdsh from other nodes (which put the host name before each line, so the
marker is looked for anywhere in a line), with no shared filesystem to poll.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Callable, Protocol

from tokenmill.pipeline import storage

from .config import TrainConfig

EVENT = "tokenmill-event: "


class Launch(Protocol):
    """The launch settings; the `train` and `finetune` sections both have them."""

    nproc: int
    hostfile: str | None
    threads_per_proc: int | None


# Where a job's events go besides stdout: set by a launcher whose workers' stdout does not reach it
# (Ray Train's workers send them to the driver through a queue; ray_train.py).
event_sink: Callable[[dict], None] | None = None


def emit(kind: str, **payload) -> None:
    """Report an event to the launcher (in the job)."""
    event = {"event": kind, **payload}
    # One write: the ranks share the launcher's pipe and run unbuffered, where print's separate write of
    # the newline let another rank's output land inside the event's line (seen in the fine-tune job).
    sys.stdout.write(EVENT + json.dumps(event) + "\n")
    sys.stdout.flush()
    if event_sink is not None:
        event_sink(event)


# The pid of the process that launched a one-node job (torchrun), in its ranks' environment.
LAUNCHER_PID = "TOKENMILL_LAUNCHER_PID"


def exit_with_launcher() -> None:
    """Leave (exit code 1) as soon as the process that launched this job is gone. torchrun outlives a
    launcher killed with SIGKILL (a CLI killed by the OOM killer, `kill -9`), and its ranks trained on as
    orphans holding the run's cores and checkpoints; a rank that leaves makes torchrun stop the others
    and exit. A pidfd becomes readable when its process exits: no polling, no race with a reused pid."""
    pid = os.environ.get(LAUNCHER_PID)
    if not pid:
        return
    try:
        fd = os.pidfd_open(int(pid))
    except ProcessLookupError:  # gone before this rank started
        os._exit(1)

    def watch():
        select.select([fd], [], [])
        print(f"launcher (pid {pid}) is gone: rank {os.environ.get('RANK', '0')} exits", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="launcher-watchdog", daemon=True).start()


def run_job_main(main: Callable[[str], None], job_path: str) -> None:
    """Run a job's main; an exception is reported as an `error` event (its traceback still goes to
    the log), so the launcher names the cause instead of guessing it from the last lines.

    A main that returned has written everything and destroyed its process group; the process then
    leaves without the interpreter's teardown, where a native thread that torch or DeepSpeed left
    behind can abort it ("terminate called without an active exception", seen on a ZeRO-3 CPU rank
    after its `done`), failing a job whose work is complete."""
    exit_with_launcher()
    try:
        main(job_path)
    except Exception as e:
        emit("error", rank=int(os.environ.get("RANK", "0")), message=f"{type(e).__name__}: {e}")
        raise
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def parse_event(line: str) -> dict | None:
    """The event a line of job output carries, or None for any other output."""
    _, marker, rest = line.partition(EVENT)
    return json.loads(rest) if marker else None


# How the numbers of a step read in the flow log; a step shows these of its fields that it has.
STEP_FIELDS = {"variant": "[{}]", "loss": "loss {:.4f}", "lr": "lr {:.2e}", "grad_norm": "grad_norm {:.3f}",
               "tokens_per_s": "{:,.0f} tok/s", "mfu": "mfu {:.1%}", "eta_s": "eta {:.0f}s"}


def describe(event: dict) -> str:
    """An event as the line the flow log shows."""
    kind, fields = event["event"], {k: v for k, v in event.items() if k != "event"}
    if kind == "step":
        return "  ".join([f"step {fields['step']}/{fields['max_steps']}"]
                         + [fmt.format(fields[k]) for k, fmt in STEP_FIELDS.items() if fields.get(k) is not None])
    if kind == "resumed":
        return f"resumed from {fields['checkpoint']} at step {fields['step']}"
    if kind == "error":
        return f"error on rank {fields['rank']}: {fields['message']}"
    if kind == "done":
        return "done: " + json.dumps(_brief(fields["result"]))
    return f"{kind}: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in fields.items())


def _brief(value):
    """A result as the log shows it: lists (fine-tuning's held-out predictions) by their length."""
    if isinstance(value, dict):
        return {k: _brief(v) for k, v in value.items()}
    return f"<{len(value)} values>" if isinstance(value, list) else value


def write_job(cfg: TrainConfig, tokens_dir: str, out_dir: str) -> str:
    """<out_dir>/job.json (a path, or a URL that workers on other nodes read too)."""
    path = storage.join(str(out_dir), "job.json")
    job = {"train": cfg.model_dump(), "tokens_dir": str(tokens_dir), "out_dir": str(out_dir)}
    storage.write_bytes(path, json.dumps(job, indent=2).encode())
    return path


def command(launch: Launch, job_path: str | Path, module: str = "tokenmill.training.train") -> list[str]:
    """argv (never a shell string) that starts every rank of the job (`python -m MODULE --job JOB.json`)."""
    if launch.hostfile:
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", launch.hostfile,
                "--module", module, "--job", str(job_path)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={launch.nproc}",
            "-m", module, "--job", str(job_path)]


def environment(launch: Launch) -> dict[str, str]:
    import torch  # here, not at the top: importing the flows must not import torch

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop(LAUNCHER_PID, None)
    if not launch.hostfile:  # ranks on this machine watch this process (ranks on other nodes cannot)
        env[LAUNCHER_PID] = str(os.getpid())
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
        threads = launch.threads_per_proc or max(1, (os.cpu_count() or 1) // launch.nproc)
        env["OMP_NUM_THREADS"] = str(threads)
    return env


class JobFailed(RuntimeError):
    pass


def run_job(cfg: TrainConfig, tokens_dir: str, out_dir: str, on_line: Callable[[str], None] = print,
            ray_name: str | None = None) -> dict:
    """Run the training job to the end, appending its output to out_dir/train.log and passing each
    event to `on_line`; return its summary, or raise JobFailed with the cause and the last lines of its output.
    With `ray_name`, the job runs as that Ray Train run on the connected Ray cluster (ray_train.py)."""
    job = write_job(cfg, tokens_dir, out_dir)
    return run_module("tokenmill.training.train", cfg, job, out_dir, "train.log", on_line, ray_name)


def run_module(module: str, launch: Launch, job: str | Path, out_dir: str, log_name: str,
               on_line: Callable[[str], None] = print, ray_name: str | None = None) -> dict:
    """Launch `python -m MODULE --job JOB` on launch.nproc processes (or launch.hostfile's nodes), the way
    the training job is, or as the Ray Train run `ray_name`; return the result of its `done` event. The log
    is appended to <out_dir>/LOG_NAME (through a local copy uploaded at the end when out_dir is object storage)."""
    if ray_name is not None:
        from .ray_train import run_on_ray

        return run_on_ray(module, launch, job, out_dir, log_name, ray_name, on_line)
    argv = command(launch, job, module)
    on_line("launching: " + " ".join(argv))
    tail: deque[str] = deque(maxlen=40)
    errors: list[str] = []
    done = None
    log_path = storage.join(out_dir, log_name)
    with (storage.LocalDir(out_dir, fetch=[log_name]) as work, open(Path(work.path, log_name), "a") as log,
          subprocess.Popen(argv, env=environment(launch), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, text=True, bufsize=1) as proc):
        try:
            for line in proc.stdout:
                log.write(line)
                tail.append(line.rstrip())
                event = parse_event(line)
                if event is None:
                    continue
                on_line(describe(event))
                if event["event"] == "done":
                    done = event["result"]
                elif event["event"] == "error":
                    errors.append(event["message"])
        except BaseException:  # stopped (SIGTERM, Ctrl-C, task cancelled): stop every rank too
            proc.terminate()  # torchrun / the DeepSpeed launcher pass it on to the ranks
            raise
    if proc.returncode != 0 or done is None:
        # The first error reported is the cause; the other ranks' usually follow from it. A job that died
        # without reporting (killed, a crash in the launcher) leaves its last error-looking line.
        guesses = [line for line in tail if "Error" in line or "error:" in line]
        cause = errors[0] if errors else guesses[-1] if guesses else tail[-1] if tail else "no output"
        raise JobFailed(f"{module} job failed (exit code {proc.returncode}): {cause}\n"
                        f"last lines:\n" + "\n".join(tail) + f"\nfull log: {log_path}")
    return done
