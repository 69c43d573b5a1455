import pytest

from tokenmill.training.config import PRESETS, ModelConfig
from tokenmill.training.metrics import final_table, loss_curve_png, mfu, peak_bf16_flops


def test_mfu_is_model_flops_over_the_gpu_peak():
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12 and peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12 and peak_bf16_flops("Some CPU") is None
    cfg = ModelConfig(**PRESETS["125m"], vocab_size=50304, seq_len=1024)
    # ~6 * 124M params + attention: ~0.85 GFLOP per token for a GPT-2-small-sized model
    assert 0.75e9 < cfg.flops_per_token() < 0.95e9
    h100, a100 = peak_bf16_flops("NVIDIA H100 80GB HBM3"), peak_bf16_flops("NVIDIA A100-SXM4-80GB")
    # 500k tokens/s is 427 TFLOP/s of the H100's 989; ~1.157M tokens/s would be all of it
    assert mfu(cfg.flops_per_token(), 500_000, h100) == pytest.approx(0.432, abs=0.001)
    assert mfu(cfg.flops_per_token(), 1_157_000, h100) == pytest.approx(1.0, abs=0.001)
    # the same throughput is a larger share of the slower A100
    assert mfu(cfg.flops_per_token(), 200_000, h100) == pytest.approx(0.173, abs=0.001)
    assert mfu(cfg.flops_per_token(), 200_000, a100) == pytest.approx(0.548, abs=0.001)
    assert peak_bf16_flops("NVIDIA L40S") == 362e12  # not the L4's peak, whose name it contains
    assert mfu(1e9, 1e3, peak_bf16_flops("Some CPU")) is None


def test_loss_curve_png_and_final_table():
    metrics = [{"step": s, "loss": 6 - s / 10, "lr": 1e-3, "tokens_per_s": 1000.0} for s in range(1, 11)]
    assert loss_curve_png(metrics)[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {r["metric"]: r["value"] for r in final_table({"steps": 10, "zero_stage": 2}, metrics)}
    assert rows["final loss"] == "5.0" and rows["first loss"] == "5.9" and rows["MFU (last step)"] == "n/a (CPU)"
