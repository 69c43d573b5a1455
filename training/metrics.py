"""Training metrics: MFU against the GPU's peak, and what the train flow publishes from metrics.jsonl
(a loss-curve PNG and a final table)."""
from __future__ import annotations

import io
import json
from pathlib import Path

from tokenmill.pipeline import storage

# Dense bf16 tensor-core peak (no sparsity), FLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_BF16_FLOPS = {
    "GH200": 989e12,
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
}


def peak_bf16_flops(device_name: str | None = None) -> float | None:
    """Peak bf16 FLOP/s of the CUDA device (None on CPU or an unknown GPU)."""
    if device_name is None:
        import torch  # here: the train flow imports this module for its plots, and must not import torch

        if not torch.cuda.is_available():
            return None
        device_name = torch.cuda.get_device_name()
    for key, flops in PEAK_BF16_FLOPS.items():  # most specific names first
        if key in device_name:
            return flops
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the hardware peak."""
    return flops_per_token * tokens_per_s / peak_flops if peak_flops else None


def read_metrics(path: str | Path) -> list[dict]:
    """A job's metrics.jsonl (a path or an object-storage URL), one dict per step; [] before the first."""
    path = str(path)
    text = storage.read_bytes(path).decode() if storage.exists(path) else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def truncate_metrics(path: str | Path, step: int) -> None:
    """Keep the lines of steps <= `step` (the checkpoint a run resumes from): the lines after it were
    written by a run that was killed, and are computed again."""
    if Path(path).exists():
        kept = [m for m in read_metrics(path) if m["step"] <= step]
        storage.write_bytes(str(path), "".join(json.dumps(m) + "\n" for m in kept).encode())


def loss_curve_png(metrics: list[dict], title: str = "training loss and learning rate") -> bytes:
    """Loss (top) and learning rate (bottom) per step, from train/metrics.jsonl, as a PNG (the train
    flow's artifact and the report's figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    fig, (loss, lr) = plt.subplots(2, 1, figsize=(7, 5), dpi=100, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    loss.plot(steps, [m["loss"] for m in metrics], color="tab:blue")
    loss.set(ylabel="train loss (nats/token)", title=title)
    loss.grid(alpha=0.3)
    lr.plot(steps, [m["lr"] for m in metrics], color="tab:orange")
    lr.set(xlabel="step", ylabel="learning rate")
    lr.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: same input, same bytes
    plt.close(fig)
    return buf.getvalue()


def final_table(summary: dict, metrics: list[dict]) -> list[dict]:
    """Rows (metric, value) summarising a finished job."""
    last = metrics[-1] if metrics else {}
    rows = {
        "steps": summary.get("steps"),
        "first loss": round(metrics[0]["loss"], 4) if metrics else None,
        "final loss": round(last["loss"], 4) if last else None,
        "tokens": summary.get("tokens"),
        "tokens/s (last step)": round(last["tokens_per_s"]) if last else None,
        "MFU (last step)": f"{last['mfu']:.1%}" if last.get("mfu") is not None else "n/a (CPU)",
        "parameters": summary.get("params"),
        "ZeRO stage": summary.get("zero_stage"),
        "processes": summary.get("world_size"),
        "seconds": summary.get("seconds"),
    }
    return [{"metric": k, "value": str(v)} for k, v in rows.items()]
