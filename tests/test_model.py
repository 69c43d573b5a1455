import math

import pytest
import torch

from tokenmill.training.checkpoint import load_model, save_weights
from tokenmill.training.config import PRESETS, ModelConfig
from tokenmill.training.model import Transformer


def small(**kw):
    return ModelConfig(**{"vocab_size": 300, "seq_len": 16, "n_layer": 2, "n_head": 4, "d_model": 32, **kw})


def test_forward_loss_at_init_is_near_uniform():
    torch.manual_seed(0)
    model = Transformer(small())
    idx = torch.randint(0, 300, (2, 16))
    assert model(idx).shape == (2, 16, 300)
    loss = model(idx[:, :-1], idx[:, 1:])
    assert abs(loss.item() - math.log(300)) < 0.3


def test_param_count_matches_the_module():
    for cfg in (small(), small(n_kv_head=2), small(tie_embeddings=False)):
        assert cfg.num_params() == sum(p.numel() for p in Transformer(cfg).parameters())
    assert 100e6 < ModelConfig(**PRESETS["125m"], vocab_size=50304, seq_len=1024).num_params() < 170e6


def test_attention_is_causal():
    torch.manual_seed(0)
    model = Transformer(small()).eval()
    idx = torch.randint(0, 300, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (changed[0, 10] + 1) % 300
    a, b = model(idx), model(changed)
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-6) and not torch.allclose(a[0, 10:], b[0, 10:])


def test_invalid_heads_are_rejected():
    with pytest.raises(ValueError, match="n_kv_head"):
        small(n_kv_head=3)


def test_safetensors_round_trip_with_tied_embeddings(tmp_path):
    torch.manual_seed(0)
    model = Transformer(small(n_kv_head=2)).eval()
    save_weights(model.state_dict(), model.cfg, tmp_path)
    loaded = load_model(tmp_path)
    idx = torch.randint(0, 300, (2, 16))
    assert torch.equal(model(idx), loaded(idx))
    assert loaded.lm_head.weight.data_ptr() == loaded.embed.weight.data_ptr()
    out = loaded.generate(idx[:, :4], 5)
    assert out.shape == (2, 9)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = Transformer(small())
    idx = torch.randint(0, 300, (2, 16))
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.checkpoint_activations = checkpointing
        model(idx[:, :-1], idx[:, 1:]).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
