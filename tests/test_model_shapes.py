"""Accounting and the depth/width rule, torch-free (ehrfm.shapes, ehrfm.config)."""

import math
import subprocess
import sys

import pytest

from ehrfm.config import ModelConfig, TrainConfig, swiglu_hidden
from ehrfm.errors import UserError
from ehrfm.shapes import ASPECT_RANGE, flops_per_token, head_dim_for, n_params, n_params_total, shape_for_params


def test_counts_by_hand():
    cfg = ModelConfig(n_layer=2, d_model=32, n_head=2, context=128, vocab_size=100)
    assert cfg.mlp_hidden == 96  # ceil(8*32/3)=86 -> multiple of 32
    per_layer = 4 * 32 * 32 + 3 * 32 * 96 + 2 * 32
    assert n_params(cfg) == 2 * per_layer + 32 == 26_784
    assert n_params_total(cfg) == 26_784 + 2 * 100 * 32
    assert flops_per_token(cfg) == 6 * (26_784 + 32 * 100) + 6 * 2 * 128 * 32


def test_swiglu_width_rule():
    assert swiglu_hidden(768) == 2048
    assert swiglu_hidden(4096) == 10944  # Llama-7B uses 11008 with multiple_of=256; ours rounds to 32
    assert all(swiglu_hidden(d) % 32 == 0 and swiglu_hidden(d) >= 8 * d / 3 for d in range(16, 2000, 16))


@pytest.mark.parametrize("target", [3e4, 1e5, 3e5, 1e6, 3e6, 1e7, 3e7, 1e8, 1e9])
def test_shape_for_params_hits_target_with_sane_shape(target):
    cfg = shape_for_params(target, vocab_size=500, context=256)
    assert abs(math.log(n_params(cfg) / target)) < math.log(1.15), (target, cfg)
    assert ASPECT_RANGE[0] <= cfg.d_model / cfg.n_layer <= ASPECT_RANGE[1]
    assert cfg.d_model % head_dim_for(cfg.d_model) == 0 and cfg.head_dim == head_dim_for(cfg.d_model)
    assert cfg.vocab_size == 500 and cfg.context == 256


def test_shape_for_params_monotone_and_deterministic():
    targets = [10 ** (4 + i / 4) for i in range(21)]
    ns = [n_params(shape_for_params(t, 300, 128)) for t in targets]
    assert ns == sorted(ns)
    assert shape_for_params(1e6, 300, 128) == shape_for_params(1e6, 300, 128)
    # depth grows with size: 1e9 is much deeper than 1e6
    assert shape_for_params(1e9, 300, 128).n_layer > 3 * shape_for_params(1e6, 300, 128).n_layer


def test_bad_configs_are_user_errors():
    with pytest.raises(UserError, match="n_head"):
        ModelConfig(n_layer=2, d_model=30, n_head=4, context=8, vocab_size=10)
    with pytest.raises(UserError, match="exactly one of tokens"):
        TrainConfig(tokens_dir="t", out_dir="o")
    with pytest.raises(UserError, match="exactly one of tokens"):
        TrainConfig(tokens_dir="t", out_dir="o", tokens=10, flops=1e9)
    cfg = TrainConfig(tokens_dir="t", out_dir="o", tokens=10, batch_size=8)
    assert cfg.micro_batch_size == 8
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_shapes_is_torch_free():
    code = "import sys, ehrfm.shapes, ehrfm.config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
