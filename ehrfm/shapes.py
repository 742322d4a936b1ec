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

Depth/width rule (`shape_for_params`), fixed for the whole family:
- head dim 16 below d_model 128, 32 below 512, 64 from 512 on; d_model a multiple of it;
  n_head = d_model / head_dim;
- target aspect ratio d_model / n_layer = 64 (Kaplan et al. 2020: loss is flat over 20-200);
- among all (n_layer, d_model) with aspect ratio in [16, 256], pick the one minimising
  |ln(n_params / N)| + 0.1 * |log2((d_model / n_layer) / 64)|: the count closest to the target,
  with a mild pull to the target ratio (a factor 2 off the ratio costs as much as 10% off in N).
"""

from __future__ import annotations

import math

from ehrfm.config import ModelConfig

ASPECT_RATIO = 64  # d_model / n_layer
ASPECT_RANGE = (16, 256)
ASPECT_WEIGHT = 0.1  # cost of a factor 2 off ASPECT_RATIO, in units of |ln(n_params / target)|


def n_params(cfg: ModelConfig) -> int:
    """Non-embedding parameters: transformer layers and the final norm (no embedding, no head)."""
    d, h = cfg.d_model, cfg.mlp_hidden
    per_layer = 4 * d * d + 3 * d * h + 2 * d
    return cfg.n_layer * per_layer + d


def n_params_total(cfg: ModelConfig) -> int:
    """All parameters: non-embedding + token embedding + untied head."""
    return n_params(cfg) + 2 * cfg.vocab_size * cfg.d_model


def flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token (DESIGN.md): 6 (N + d V) + 6 L T d."""
    return 6.0 * (n_params(cfg) + cfg.d_model * cfg.vocab_size) + 6.0 * cfg.n_layer * cfg.context * cfg.d_model


def head_dim_for(d_model: int) -> int:
    """Head width of the family at width d_model."""
    return 16 if d_model < 128 else 32 if d_model < 512 else 64


def shape_for_params(target_n_params: float, vocab_size: int, context: int) -> ModelConfig:
    """The family's ModelConfig whose non-embedding n_params best matches `target_n_params`.

    See the module docstring for the rule. Deterministic.
    """
    if not target_n_params > 0:
        raise ValueError(f"target_n_params must be > 0 (got {target_n_params})")
    best = None
    n_layer = 1
    while True:
        lo, hi = ASPECT_RANGE[0] * n_layer, ASPECT_RANGE[1] * n_layer
        if n_layer > 1 and 12 * n_layer * lo * lo > 4 * target_n_params:
            break  # every deeper shape is far too big
        d = 16
        while d <= hi:
            if d >= lo and d % head_dim_for(d) == 0:
                cfg = ModelConfig(n_layer=n_layer, d_model=d, n_head=d // head_dim_for(d), context=context, vocab_size=vocab_size)
                n = n_params(cfg)
                score = abs(math.log(n / target_n_params)) + ASPECT_WEIGHT * abs(math.log2(d / n_layer / ASPECT_RATIO))
                if best is None or score < best[0]:
                    best = (score, cfg)
                if n > 4 * target_n_params:
                    break
            d += 16
        n_layer += 1
    return best[1]
