"""Accounting and the depth/width rule, torch-free (ehrfm.shapes, ehrfm.config)."""

import math
import subprocess
import sys

import pytest

from ehrfm.config import ModelConfig, TrainConfig, swiglu_hidden
from ehrfm.errors import UserError
from ehrfm.shapes import (
    ASPECT_RATIO,
    depth_for_params,
    flops_per_token,
    head_dim_for,
    n_params,
    n_params_total,
    shape_for_params,
)


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


def _members(max_n: float, vocab: int = 300, context: int = 128) -> list[ModelConfig]:
    """Every family member up to max_n by brute force: admissible shapes whose own size maps to their depth."""
    out = []
    for n_layer in range(1, 40):
        for d in range(16, 2048, 16):
            if d % head_dim_for(d):
                continue
            cfg = ModelConfig(n_layer=n_layer, d_model=d, n_head=d // head_dim_for(d), context=context, vocab_size=vocab)
            if n_params(cfg) <= max_n and depth_for_params(n_params(cfg)) == n_layer:
                out.append(cfg)
    return sorted(out, key=n_params)


@pytest.mark.parametrize("target", [3e3, 1e4, 3e4, 1e5, 3e5, 1e6, 3e6, 1e7, 3e7])
def test_shape_for_params_is_the_nearest_family_member(target):
    cfg = shape_for_params(target, vocab_size=300, context=128)
    members = _members(1e8)
    nearest = min(members, key=lambda m: (abs(math.log(n_params(m) / target)), n_params(m)))
    assert cfg == nearest
    assert cfg.d_model % head_dim_for(cfg.d_model) == 0 and cfg.head_dim == head_dim_for(cfg.d_model)
    assert cfg.vocab_size == 300 and cfg.context == 128
    if target >= 1e4:  # the members are at most 0.3 decades apart from here on
        assert abs(math.log10(n_params(cfg) / target)) <= 0.15, (target, cfg)


def test_family_members_hold_the_aspect_ratio():
    members = _members(1e8)
    # the smallest members, written out in the module docstring
    assert [(m.n_layer, m.d_model) for m in members[:11]] == [
        (1, 16), (1, 32), (1, 48), (2, 48), (2, 64), (2, 80), (3, 80), (3, 96), (3, 112), (4, 112), (4, 128)]
    for m in members:
        ratio = m.d_model / m.n_layer
        if n_params(m) >= 1e4:
            assert ASPECT_RATIO / 2 <= ratio <= ASPECT_RATIO * 1.5, m  # 16-48
        if n_params(m) >= 1.5e6:
            assert ratio == ASPECT_RATIO, m


def test_depth_grows_with_size_along_a_log_even_ladder():
    # a demo-like ladder: 7 targets 0.25 decades apart, 1.6e4 to 5e5 (closer rungs can share a
    # member: the members are 0.1-0.18 decades apart at these sizes)
    targets = [10 ** (4.2 + 0.25 * i) for i in range(7)]
    shapes = [shape_for_params(t, 360, 256) for t in targets]
    depths = [c.n_layer for c in shapes]
    sizes = [n_params(c) for c in shapes]
    assert depths == sorted(depths) and len(set(depths)) == 3, depths  # 1, 2 and 3 layers
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    for t, n in zip(targets, sizes, strict=True):
        assert abs(math.log10(n / t)) <= 0.15  # on the log-even ladder, to within the family's snapping
    assert (shapes[0].n_layer, shapes[-1].n_layer) == (1, 3)


def test_shape_for_params_monotone_and_deterministic():
    targets = [10 ** (3.5 + i / 200) for i in range(1001)]  # 3e3 to 3e8, dense
    shapes = [shape_for_params(t, 300, 128) for t in targets]
    ns = [n_params(c) for c in shapes]
    assert ns == sorted(ns)
    assert [c.n_layer for c in shapes] == sorted(c.n_layer for c in shapes)
    assert shape_for_params(1e6, 300, 128) == shape_for_params(1e6, 300, 128)
    # depth ~ (N / 12288)^(1/3): 1e9 is ~10x deeper than 1e6
    assert shape_for_params(1e9, 300, 128).n_layer == 44 and shape_for_params(1e6, 300, 128).n_layer == 4
    with pytest.raises(ValueError, match="> 0"):
        shape_for_params(0, 300, 128)


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


def test_depth_of_huge_targets_is_found_by_bisection_on_the_same_rule():
    # The rule is "the L whose exact-ratio shape is nearest in log N"; checked at every boundary
    # it decides, up to 1e20 parameters (~46,000 layers: a layer-by-layer count made planning a
    # 1e30-FLOP budget hang).
    from ehrfm.shapes import _count

    def boundary(n_layer):  # geometric mean of the exact-ratio sizes of depths L and L + 1
        return math.sqrt(_count(n_layer, ASPECT_RATIO * n_layer) * _count(n_layer + 1, ASPECT_RATIO * (n_layer + 1)))

    for target in (1.0, 3e4, 1e6, 1e9, 1e14, 1e20):
        depth = depth_for_params(target)
        assert (depth == 1 or boundary(depth - 1) <= target) and boundary(depth) > target, target
    assert abs(depth_for_params(1e20) / (1e20 / 12288) ** (1 / 3) - 1) < 0.05  # n_params(L, 32 L) ~ 12 * 32^2 L^3
    cfg = shape_for_params(1e14, vocab_size=500, context=256)  # even depths up there (module docstring)
    assert abs(cfg.n_layer - depth_for_params(1e14)) <= 1 and abs(math.log10(n_params(cfg) / 1e14)) < 0.05


def _scan_from_16(target: float, vocab_size: int, context: int) -> ModelConfig:
    """shape_for_params as first written: every width from 16 up at each candidate depth (slow when deep)."""
    depth, best = depth_for_params(target), None
    for n_layer in range(max(1, depth - 2), depth + 3):
        d = 16
        while True:
            if d % head_dim_for(d) == 0:
                cfg = ModelConfig(n_layer=n_layer, d_model=d, n_head=d // head_dim_for(d), context=context, vocab_size=vocab_size)
                n, own = n_params(cfg), depth_for_params(n_params(cfg))
                if own > n_layer:
                    break
                if own == n_layer:
                    score = abs(math.log(n / target))
                    if best is None or score < best[0] or (score == best[0] and n < n_params(best[1])):
                        best = (score, cfg)
                    if n > target:
                        break
            d += 16
    return best[1]


@pytest.mark.parametrize("target", [3.2e9, 1e10, 4e10, 2e11])  # depths 64-140: the deep path's start
def test_deep_members_are_the_full_scans_members(target):
    assert shape_for_params(target, 500, 256) == _scan_from_16(target, 500, 256)


def test_a_1e19_parameter_target_is_planned_at_once():
    cfg = shape_for_params(1e19, 500, 256)  # ~93,000 layers: the full scan takes minutes
    assert abs(cfg.n_layer - depth_for_params(1e19)) <= 1 and abs(math.log10(n_params(cfg) / 1e19)) < 0.05
