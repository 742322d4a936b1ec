"""The final held-out loss's standard error (issue 13, item 5): over eval subjects, not tokens."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ehrfm.checkpoint import load_model
from ehrfm.config import TrainConfig
from ehrfm.packing import IGNORE_INDEX, PackedStream
from ehrfm.tokens import TokenDir
from ehrfm.train import ratio_se, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ratio_se_by_hand():
    # r = 6 / 4 = 1.5; residuals num - r den = -0.5, 0.5, 0; S / (S - 1) = 3 / 2
    assert ratio_se(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 2.0])) == pytest.approx(math.sqrt(1.5 * 0.5) / 4, rel=1e-12)
    # clusters without a denominator do not count; fewer than 2 left: no SE
    assert ratio_se(np.array([1.0, 2.0, 3.0, 0.0]), np.array([1.0, 1.0, 2.0, 0.0])) == ratio_se(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 2.0]))
    assert ratio_se(np.array([5.0, 0.0]), np.array([2.0, 0.0])) is None
    # equal ratios in every cluster: no spread
    assert ratio_se(np.array([2.0, 4.0, 6.0]), np.array([1.0, 2.0, 3.0])) == 0.0


def test_eval_loss_se_is_over_subjects(tok, tmp_path):
    """Recompute the SE from the trained weights, with subjects found from the split's lengths
    (not from the packer's segment ids), and compare with result.json."""
    eval_tokens, context = 1500, 64  # part of the tuning split: the last subject is cut
    res = train(TrainConfig(tokens_dir=str(tok), out_dir=str(tmp_path / "run"), n_layer=1, d_model=32, n_head=2,
                            context=context, tokens=6000, batch_size=8, lr=3e-3, eval_tokens=eval_tokens, seed=0))
    assert res["status"] == "completed"
    assert json.loads((tmp_path / "run" / "result.json").read_text())["eval_loss_se"] == res["eval_loss_se"]

    td = TokenDir(tok)
    split = td.split("tuning")
    rows = PackedStream(split, context, shuffle=False).rows(0, eval_tokens)
    model, _ = load_model(tmp_path / "run")
    with torch.no_grad():
        _, losses = model(torch.from_numpy(rows.tokens), torch.from_numpy(rows.targets),
                          segment_ids=torch.from_numpy(rows.segment_ids), reduction="none")
    losses = losses.double().numpy().ravel()
    targets = rows.targets.ravel()
    scored = targets != IGNORE_INDEX
    # stream position p (file order) belongs to the subject whose [offset, offset + length) holds it
    ends = np.cumsum(np.asarray(split.lengths, dtype=np.int64))
    subject = np.searchsorted(ends, np.arange(len(targets)), side="right")
    n = int(subject[eval_tokens - 1]) + 1
    assert res["eval_subjects"] == n >= 5  # several subjects, one of them cut at eval_tokens
    s = np.bincount(subject[scored], weights=losses[scored], minlength=n)
    c = np.bincount(subject[scored], minlength=n).astype(float)
    e = np.bincount(subject[scored], weights=td.event_head_mask[targets[scored]], minlength=n)
    r = s.sum() / c.sum()
    assert res["val_loss"] == pytest.approx(r, rel=1e-6)
    se = math.sqrt(n / (n - 1) * ((s - r * c) ** 2).sum()) / c.sum()
    assert res["eval_loss_se"] == pytest.approx(se, rel=1e-5) and 0 < se < 0.5 * r
    q = s.sum() / e.sum()
    assert res["loss_per_event"] == pytest.approx(q, rel=1e-6)
    assert res["loss_per_event_se"] == pytest.approx(math.sqrt(n / (n - 1) * ((s - q * e) ** 2).sum()) / e.sum(), rel=1e-5)
    # the per-token SE, which ignores the clustering, understates the noise
    per_token = losses[scored].std(ddof=1) / math.sqrt(scored.sum())
    assert per_token < 0.95 * se  # 0.0080 vs 0.0087 nats/token
