"""flops_per_token against torch.utils.flop_counter on a real training step.

What the counter counts: matrix multiplies (mm/addmm/bmm) and SDPA kernels, forward and backward;
not elementwise ops, norms, softmax, the cross-entropy, the embedding gather or the optimizer.
On CPU SDPA runs its flash kernel, which the counter does not know, so the step runs under SDPA's
MATH backend: attention becomes plain bmm's and is counted for the full T x T square.
DESIGN.md's formula counts the causal half of that square (6 L T d per token instead of 12 L T d)
and includes the RMSNorm gains in n_params (they cost no matmul), hence the 10% tolerance at a
realistic shape where context < d_model, and an exact check of the decomposition.
"""

from pathlib import Path

import pytest
import torch
from test_train import make_token_dir
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ehrfm.config import ModelConfig
from ehrfm.model import GPT
from ehrfm.packing import PackedStream
from ehrfm.shapes import flops_per_token
from ehrfm.tokens import TokenDir


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    return make_token_dir(tmp_path_factory.mktemp("tok") / "tok", vocab_size=200, n_subjects=(40, 4, 4))


def counted_training_step(cfg: ModelConfig, tok: Path, rows: int) -> tuple[int, int]:
    torch.manual_seed(0)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = PackedStream(TokenDir(tok).split("train"), cfg.context, seed=0).rows(0, rows * cfg.context)
    assert (batch.segment_ids != batch.segment_ids[:, :1]).any()  # packed: the masked path is measured
    idx, tgt, seg = (torch.from_numpy(a) for a in (batch.tokens, batch.targets, batch.segment_ids))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        _, loss = model(idx, tgt, segment_ids=seg)
        loss.backward()
        opt.step()
    return counter.get_total_flops(), batch.n_tokens


def test_counter_matches_exact_decomposition(tok):
    cfg = ModelConfig(n_layer=2, d_model=64, n_head=2, context=64, vocab_size=200)
    counted, n_tokens = counted_training_step(cfg, tok, rows=2)
    L, d, h, V, T = cfg.n_layer, cfg.d_model, cfg.mlp_hidden, cfg.vocab_size, cfg.context
    matmul_params = L * (4 * d * d + 3 * d * h) + d * V
    assert counted == n_tokens * (6 * matmul_params + 12 * L * T * d)


def test_flops_per_token_within_ten_percent_of_counter(tok):
    # a realistic shape: attention is a minor share, as in a sweep's models (context <= d_model)
    cfg = ModelConfig(n_layer=4, d_model=256, n_head=8, context=256, vocab_size=200)
    counted, n_tokens = counted_training_step(cfg, tok, rows=2)
    formula = flops_per_token(cfg) * n_tokens
    assert abs(formula / counted - 1) < 0.10, formula / counted
    # and the remaining gap is exactly the causal half of attention (+ norm gains): < 0.1% after it
    L, T, d = cfg.n_layer, cfg.context, cfg.d_model
    assert abs(formula / (counted - 6 * L * T * d * n_tokens) - 1) < 1e-3
