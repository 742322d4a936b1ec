"""Parameter and FLOP accounting of the GPT family, and the depth/width rule. Torch-free.

Counts (ehrfm.model.GPT has exactly these parameters; a test checks it):
- per layer: attention q, k, v, o (4 d^2, no biases), SwiGLU w1, w3, w2 (3 d h), two RMSNorm gains (2 d);
- final RMSNorm gain (d);
- token embedding (vocab d) and the untied output head (d vocab).
`n_params` is the non-embedding count (layers + final norm; neither the embedding nor the head),
as in Kaplan et al. 2020; `n_params_total` adds both.

`flops_per_token` (DESIGN.md): 6 * (n_params + d_model * vocab) + 6 * n_layer * context * d_model.
6 = 2 (multiply-add) x 3 (forward + backward) per weight; the head matmul counts, the embedding
lookup does not; attention scores and mixing of a causal row cost 2 * 2 * n_layer * context * d
forward per token for the full T x T square, half of it for the causal triangle: the formula
counts the causal half (6 * n_layer * context * d). torch's FLOP counter counts the full square
for SDPA (12 * n_layer * context * d per token), so the two agree when context << 12 * d_model
+ vocab / n_layer; tests/test_model_accounting.py checks both the exact decomposition and the 10%.

Depth/width rule (`shape_for_params`), fixed for the whole family: depth and width grow together
at a fixed aspect ratio, as in the Kaplan et al. (2020) and Chinchilla (Hoffmann et al. 2022)
families, so that a ladder of sizes is a family of models, not a width sweep at one depth.
- head dim 16 below d_model 128, 32 below 512, 64 from 512 on; d_model a multiple of it;
  n_head = d_model / head_dim;
- ASPECT_RATIO = d_model / n_layer = 32 (Kaplan et al. 2020, fig. 5: loss is flat within a few
  percent for ratios 20-200; 32 is near the low end so that the demo's sizes, 1e4-5e5 non-embedding
  parameters, already take depths 1 to 3 rather than all being 1 layer deep);
- depth: n_layer(N) = the L whose exact-ratio shape (L, 32 L) is nearest to N in log N, i.e.
  L steps up where N crosses the geometric mean of n_params(L, 32 L) and n_params(L + 1, 32 (L + 1)).
  n_params(L, 32 L) ~ 12 * 32^2 * L^3, so L ~ (N / 12288)^(1/3) (1 layer below ~3.8e4, 2 up to
  ~1.9e5, 3 up to ~5.2e5, 4 up to ~1.1e6, 9 at 1e7, 43 at 1e9). Depth is non-decreasing in N;
- members: the admissible (n_layer, d_model) whose own n_params has that depth, i.e. each depth
  keeps the widths whose size falls in its band of N. `shape_for_params(N)` is the member nearest
  to N in log N (ties to the smaller), so realised sizes and depths are both non-decreasing in N.
  The members below 1e6 are (1, 16|32|48), (2, 48|64|80), (3, 80|96|112), (4, 112|128):
  aspect ratios 16-48, neighbours 0.1-0.18 decades apart in N (0.5 decades from (1, 16) to
  (1, 32)); from 1.6e6 on the members are exactly (L, 32 L) (every depth up to 16, even depths
  above, where d_model moves in steps of 64), 0.3 decades apart at 1e6, 0.13 at 1e7, 0.1 at 1e8.
  A target is thus matched to within half its neighbours' gap (<= 0.15 decades from 1e4 on).
A ladder of targets evenly spaced in log N (sweeps.plan) thus gives shapes evenly spaced in
log N to within those snapping errors, with depth growing along it.
"""

from __future__ import annotations

import math

from ehrfm.config import ModelConfig, swiglu_hidden

ASPECT_RATIO = 32  # d_model / n_layer of the family (module docstring)


def n_params(cfg: ModelConfig) -> int:
    """Non-embedding parameters: transformer layers and the final norm (no embedding, no head)."""
    d, h = cfg.d_model, cfg.mlp_hidden
    per_layer = 4 * d * d + 3 * d * h + 2 * d
    return cfg.n_layer * per_layer + d


def n_params_total(cfg: ModelConfig) -> int:
    """All parameters: non-embedding + token embedding + untied head."""
    return n_params(cfg) + 2 * cfg.vocab_size * cfg.d_model


def flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token (DESIGN.md): 6 (N + d V) + 6 L T d.

    Kaplan et al. (2020, table 1): a forward pass costs 2 N + 2 n_layer n_ctx d_model FLOPs per
    token, the backward pass twice that, so C = 6 N D plus the attention term. N here is the
    non-embedding count plus the output head's d_model * vocab_size multiply-adds (the embedding
    lookup costs none).

    Args:
        cfg: the model shape (n_layer L, d_model d, vocab_size V, context T).

    Returns:
        FLOPs per trained token.
    """
    return 6.0 * (n_params(cfg) + cfg.d_model * cfg.vocab_size) + 6.0 * cfg.n_layer * cfg.context * cfg.d_model


def head_dim_for(d_model: int) -> int:
    """Head width of the family at width d_model."""
    return 16 if d_model < 128 else 32 if d_model < 512 else 64


def _count(n_layer: int, d_model: float) -> float:
    """n_params of a (n_layer, d_model) shape with the default SwiGLU width, any d_model."""
    d = d_model
    return n_layer * (4 * d * d + 3 * d * swiglu_hidden(math.ceil(d)) + 2 * d) + d


def depth_for_params(target_n_params: float) -> int:
    """The family's n_layer for a target non-embedding size N.

    The family's n_layer for a target non-embedding size N (module docstring): the depth whose
    exact-ratio shape (L, ASPECT_RATIO * L) is nearest to N in log N. Non-decreasing in N.

    Raises:
        ValueError: target_n_params <= 0.
    """
    if not target_n_params > 0:
        raise ValueError(f"target_n_params must be > 0 (got {target_n_params})")

    def steps_up(n_layer: int) -> bool:  # is N past the boundary between depth n_layer and n_layer + 1? (monotone)
        return math.sqrt(_count(n_layer, ASPECT_RATIO * n_layer) * _count(n_layer + 1, ASPECT_RATIO * (n_layer + 1))) <= target_n_params

    # the smallest L with not steps_up(L): doubling, then bisection (a 1e14-parameter target is
    # ~2,000 layers deep; counting up one layer at a time made planning such budgets hang)
    lo, hi = 0, 1  # steps_up(lo) holds (or lo = 0); steps_up(hi) does not
    while steps_up(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if steps_up(mid) else (lo, mid)
    return hi


def _first_width_of_depth(n_layer: int) -> int:
    """The smallest d_model (a multiple of 64) whose (n_layer, d_model) shape has depth n_layer or more.

    For deep members only (n_layer > 64, where d_model >= 512 moves in steps of 64): a bisection
    between half and twice the family's width 32 L (sizes 1/4 and 4 times its own, depths ~0.63 L
    and ~1.59 L), so `shape_for_params` scans the few widths of a depth's band instead of every
    width from 16 up (~2 L steps: a 1e19-parameter model is ~86,000 layers deep).
    """
    lo, hi = ASPECT_RATIO * n_layer // 2 // 64, 2 * ASPECT_RATIO * n_layer // 64 + 1  # in units of 64
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if depth_for_params(_count(n_layer, 64 * mid)) >= n_layer else (mid, hi)
    return 64 * lo


def shape_for_params(target_n_params: float, vocab_size: int, context: int) -> ModelConfig:
    """The family member nearest to `target_n_params` (non-embedding) in log N (module docstring).

    Members are the admissible (n_layer, d_model) whose own n_params maps back to their depth
    (`depth_for_params`), so sizes and depths are both non-decreasing in the target. Ties go to
    the smaller shape. Deterministic.

    Args:
        target_n_params: the non-embedding parameter count N aimed at (> 0).
        vocab_size: V of the token dir.
        context: T, tokens per sequence.

    Returns:
        The ModelConfig of the nearest member.

    Raises:
        ValueError: target_n_params <= 0.
    """
    depth = depth_for_params(target_n_params)
    best = None
    for n_layer in range(max(1, depth - 2), depth + 3):
        d = _first_width_of_depth(n_layer) if n_layer > 64 else 16
        while True:
            if d % head_dim_for(d) == 0:
                cfg = ModelConfig(n_layer=n_layer, d_model=d, n_head=d // head_dim_for(d), context=context, vocab_size=vocab_size)
                n = n_params(cfg)
                own = depth_for_params(n)
                if own > n_layer:
                    break  # wider shapes belong to deeper depths
                if own == n_layer:
                    score = abs(math.log(n / target_n_params))
                    if best is None or score < best[0] or (score == best[0] and n < n_params(best[1])):
                        best = (score, cfg)
                    if n > target_n_params:
                        break  # wider members only move further away
            d += 16
    return best[1]
