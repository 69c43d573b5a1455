"""Consolidated weights: model.safetensors + model_config.json, loadable without pickle."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .model import ModelConfig, Transformer

TIED = "lm_head.weight"


def save_weights(state: dict[str, torch.Tensor], cfg: ModelConfig, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    # Own, contiguous fp32 copies: ZeRO keeps parameters as views into flat buffers.
    tensors = {k: v.detach().float().cpu().clone().contiguous() for k, v in state.items()
               if not (cfg.tie_embeddings and k == TIED)}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "model_config.json").write_text(cfg.model_dump_json(indent=2))


def load_model(weights_dir: str | Path, device: str = "cpu") -> Transformer:
    weights_dir = Path(weights_dir)
    cfg = ModelConfig.model_validate_json((weights_dir / "model_config.json").read_text())
    model = Transformer(cfg)
    missing, unexpected = model.load_state_dict(load_file(str(weights_dir / "model.safetensors")), strict=False)
    if unexpected or set(missing) - ({TIED} if cfg.tie_embeddings else set()):
        raise ValueError(f"{weights_dir}/model.safetensors does not match model_config.json: "
                         f"missing {missing}, unexpected {unexpected}")
    return model.to(device).eval()
