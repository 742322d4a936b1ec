"""Scoring of binary predictions: AUROC standard error against resampling and known cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ehrfm.clinical.metrics import auroc_standard_error, binary_metrics


def binormal(n: int, prevalence: float, shift: float, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < prevalence
    return y, rng.normal(0.0, 1.0, n) + shift * y


def test_delong_se_matches_the_spread_of_auroc_over_fresh_samples():
    # The SE of one sample's AUROC should be the standard deviation of AUROC across independent
    # samples of the same population (here 200 samples of 400 labels at 15% prevalence).
    aucs, ses = [], []
    for seed in range(200):
        y, p = binormal(400, 0.15, 1.0, seed)
        aucs.append(roc_auc_score(y, p))
        ses.append(auroc_standard_error(y, p))
    assert np.median(ses) == pytest.approx(np.std(aucs), rel=0.12)


def test_delong_se_edge_cases():
    y = np.array([0, 0, 1, 1, 0, 1])
    # Perfect separation: every placement value is 1, no spread.
    assert auroc_standard_error(y, y.astype(float)) == 0.0
    # Constant scores: AUROC 0.5 from ties, no spread either.
    assert auroc_standard_error(y, np.zeros(6)) == 0.0
    # Fewer than two of a class: undefined.
    assert auroc_standard_error(np.array([0, 0, 0, 1]), np.arange(4.0)) is None
    # Independent of the scale of the scores (ranks only).
    y, p = binormal(200, 0.3, 0.7, 1)
    assert auroc_standard_error(y, p) == pytest.approx(auroc_standard_error(y, 5 * p + 3), abs=1e-12)


def test_binary_metrics_reports_the_se_beside_the_interval():
    y, p = binormal(1000, 0.2, 1.2, 7)
    m = binary_metrics(y.astype(int), 1 / (1 + np.exp(-p)), "t", n_boot=400, seed=0)
    lo, hi = m["auroc_ci"]
    # A 95% percentile interval is about 2 x 1.96 standard errors wide.
    assert (hi - lo) / (2 * 1.96) == pytest.approx(m["auroc_se"], rel=0.2)
    assert binary_metrics(np.zeros(5, int), np.zeros(5), "t", n_boot=0)["auroc_se"] is None


def test_equal_histories_tie_exactly_whatever_the_blas_summation_order():
    from ehrfm.clinical.common import positive_proba

    class LastBitNoise:  # what BLAS does to two equal rows summed in different orders
        def predict_proba(self, x):
            p = 1 / (1 + np.exp(-x[:, 0]))
            p = p + np.where(np.arange(len(p)) % 2 == 1, np.spacing(p), 0.0)
            return np.stack([1 - p, p], 1)

    x = np.array([[0.3], [0.3], [-1.0]])
    y = np.array([0, 1, 0])
    raw = LastBitNoise().predict_proba(x)[:, 1]
    assert raw[0] != raw[1] and roc_auc_score(y, raw) == 1.0  # the noise decides the ranking
    p = positive_proba(LastBitNoise(), x)
    assert p[0] == p[1] and roc_auc_score(y, p) == 0.75  # a tie counts half, as it should
    assert p[0] == pytest.approx(raw[0]) and p[2] == pytest.approx(raw[2])

    # Sparse count features (the baseline): rows equal as (index, value) lists, whatever their storage.
    from scipy.sparse import csr_matrix

    class SparseNoise(LastBitNoise):
        def predict_proba(self, x):
            return super().predict_proba(np.asarray(x.toarray()))

    xs = csr_matrix(np.array([[0.3, 0.0], [0.3, 0.0], [-1.0, 2.0]]))
    ps = positive_proba(SparseNoise(), xs)
    assert ps[0] == ps[1] and ps[2] != ps[0]


def test_vectorised_bootstrap_equals_sklearn_on_each_resample():
    """bootstrap_intervals scores all replicates at once; each must equal sklearn on that resample."""
    from sklearn.metrics import average_precision_score

    from ehrfm.clinical.metrics import bootstrap_intervals, weighted_auroc_auprc

    rng = np.random.default_rng(5)
    n = 300
    y = (rng.random(n) < 0.3).astype(int)
    p = np.round(rng.random(n) + 0.4 * y, 1)  # 15 distinct scores: many ties
    w = rng.integers(0, 4, (20, n)).astype(float)  # replicate weights, zeros included
    w[0, y == 1] = 0  # a replicate with one class only
    auc, ap = weighted_auroc_auprc(y, p, w)
    assert np.isnan(auc[0]) and np.isnan(ap[0])
    for r in range(1, len(w)):
        assert auc[r] == pytest.approx(roc_auc_score(y, p, sample_weight=w[r]), abs=1e-12)
        assert ap[r] == pytest.approx(average_precision_score(y, p, sample_weight=w[r]), abs=1e-12)

    # The same resamples as one sklearn call per replicate: label draws, then subject draws.
    for groups in (None, rng.integers(0, 120, n)):
        got_auc, got_ap, used = bootstrap_intervals(y, p, 200, 3, groups)
        draws = np.random.default_rng(3)
        ref_auc, ref_ap = [], []
        for _ in range(200):
            if groups is None:
                wr = np.bincount(draws.integers(0, n, n), minlength=n)
            else:
                _, inv = np.unique(groups, return_inverse=True)
                wr = np.bincount(draws.integers(0, inv.max() + 1, inv.max() + 1), minlength=inv.max() + 1)[inv]
            ref_auc.append(roc_auc_score(y, p, sample_weight=wr))
            ref_ap.append(average_precision_score(y, p, sample_weight=wr))
        assert used == 200
        assert got_auc == pytest.approx(list(np.percentile(ref_auc, [2.5, 97.5])), abs=1e-12)
        assert got_ap == pytest.approx(list(np.percentile(ref_ap, [2.5, 97.5])), abs=1e-12)
