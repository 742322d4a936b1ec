"""Scoring of binary predictions: discrimination with bootstrap intervals, and calibration.

Every head writes `metrics.json` through `binary_metrics`: task, n, n_positive, prevalence,
AUROC and AUPRC with percentile-bootstrap 95% intervals (resampling labels with replacement;
resamples with a single class are skipped and counted), and a calibration summary (Brier score,
expected calibration error over 10 equal-width bins, calibration intercept and slope from a
logistic regression of the outcome on logit(p)). `auroc_se` is DeLong's standard error of the
AUROC (no resampling), which sweeps carry into the results table so that utility laws can be
fitted with each point's measurement noise.
"""

from __future__ import annotations

import warnings

import numpy as np

from ehrfm.errors import UserError


def _calibration_fit(y: np.ndarray, p: np.ndarray) -> tuple[float | None, float | None]:
    """Calibration intercept and slope: y ~ sigmoid(a + b * logit(p)), unpenalised."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        return None, None
    eps = 1e-6
    q = np.clip(p, eps, 1 - eps)
    logit = np.log(q / (1 - q)).reshape(-1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lr = LogisticRegression(C=np.inf, solver="lbfgs", max_iter=1000).fit(logit, y)
    return float(lr.intercept_[0]), float(lr.coef_[0, 0])


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over `bins` equal-width probability bins (Naeini et al. 2015).

    Args:
        y: (n,) 0/1 labels.
        p: (n,) predicted probabilities in [0, 1].
        bins: number of equal-width bins over [0, 1].

    Returns:
        sum over bins of (share of rows in the bin) * |mean label - mean probability|.
    """
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(y[m].mean() - p[m].mean())
    return float(ece)


def auroc_standard_error(y: np.ndarray, p: np.ndarray) -> float | None:
    """DeLong et al. (1988) standard error of the AUROC of scores p for labels y (None for one class).

    Placement values: V10_i is the share of negatives a positive outscores (ties count half),
    V01_j the share of positives that outscore a negative; var = var(V10)/m + var(V01)/n.
    Computed from midranks in O(n log n).
    """
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        return None
    pos, neg = p[y], p[~y]
    rank_all = rankdata(np.concatenate([pos, neg]))
    v10 = (rank_all[:m] - rankdata(pos)) / n
    v01 = 1.0 - (rank_all[m:] - rankdata(neg)) / m
    return float(np.sqrt(v10.var(ddof=1) / m + v01.var(ddof=1) / n))


def shared_bootstrap_auroc(y: np.ndarray, p: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """AUROC of p for y on `n_boot` resamples of the labels whose indices depend only on (len(y), seed).

    Two models scored on the same labels with the same seed are resampled identically, so their
    replicates are paired: replicate r of every model is its AUROC on the same bootstrap sample
    (Efron & Tibshirani 1993, ch. 8; the paired comparison DeLong et al. 1988 make analytically).
    A fit across models that uses replicate r of each keeps the correlation of their errors, which
    independent standard errors would ignore. AUROC by the Mann-Whitney statistic from midranks.

    Args:
        y: (n,) 0/1 labels.
        p: (n,) scores.
        n_boot: replicates.
        seed: fixes the resample indices (with n).

    Returns:
        (n_boot,) float64 AUROCs; NaN for a replicate that drew a single class.
    """
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    idx = np.random.default_rng([seed, 8]).integers(0, len(y), size=(n_boot, len(y)))
    yb, ranks = y[idx], rankdata(p[idx], axis=1)
    n_pos = yb.sum(axis=1)
    n_neg = yb.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * yb).sum(axis=1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def bootstrap_ci(y: np.ndarray, p: np.ndarray, metric, n_boot: int, seed: int) -> tuple[list[float] | None, int]:
    """Percentile 95% interval of metric(y, p) over label resamples; (interval, resamples used)."""
    if n_boot <= 0:
        return None, 0
    rng = np.random.default_rng(seed)
    n = len(y)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        yb = y[idx]
        if yb.min() == yb.max():
            continue
        values.append(metric(yb, p[idx]))
    if len(values) < 0.5 * n_boot:  # too few two-class resamples for a trustworthy interval
        return None, len(values)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)], len(values)


def binary_metrics(y, p, task: str, n_boot: int = 1000, seed: int = 0) -> dict:
    """AUROC and AUPRC with bootstrap 95% intervals, n, prevalence and calibration of p for y.

    Args:
        y: (n,) 0/1 labels.
        p: (n,) predicted P(y = 1), finite.
        task: the task name, stored and named in errors.
        n_boot: bootstrap resamples of the labels for the percentile intervals (0: none).
        seed: fixes the resamples.

    Returns:
        {task, n, n_positive, prevalence, auroc, auroc_ci, auroc_se (DeLong et al. 1988), auprc,
        auprc_ci, bootstrap, calibration: {brier, ece_10_bins, intercept, slope, mean_predicted}};
        the AUROC and AUPRC entries are None (with a "note") when y has a single class.

    Raises:
        ValueError: y and p differ in length.
        UserError: no labels, or non-finite predictions (their count is given).
    """
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    y = np.asarray(y).astype(np.int64)
    p = np.asarray(p, dtype=np.float64)
    if len(y) != len(p):
        raise ValueError("y and p differ in length")
    if len(y) == 0:
        raise UserError(f"task {task}: no labels to score")
    if not np.isfinite(p).all():
        raise UserError(f"task {task}: {int((~np.isfinite(p)).sum())} predictions are not finite (a diverged model?)")
    n_pos = int(y.sum())
    out: dict = {"task": task, "n": int(len(y)), "n_positive": n_pos, "prevalence": n_pos / len(y)}
    two_classes = 0 < n_pos < len(y)
    if two_classes:
        out["auroc"] = float(roc_auc_score(y, p))
        out["auroc_ci"], used = bootstrap_ci(y, p, roc_auc_score, n_boot, seed)
        out["auroc_se"] = auroc_standard_error(y, p)
        out["auprc"] = float(average_precision_score(y, p))
        out["auprc_ci"], _ = bootstrap_ci(y, p, average_precision_score, n_boot, seed)
        out["bootstrap"] = {"resamples": n_boot, "used": used, "interval": "percentile 95%"}
    else:
        out.update(auroc=None, auroc_ci=None, auroc_se=None, auprc=None, auprc_ci=None)
        out["note"] = "held_out labels have a single class: AUROC and AUPRC are undefined"
    intercept, slope = _calibration_fit(y, p)
    out["calibration"] = {
        "brier": float(brier_score_loss(y, p)),
        "ece_10_bins": expected_calibration_error(y, p),
        "intercept": intercept,
        "slope": slope,
        "mean_predicted": float(p.mean()),
    }
    return out


def format_metrics(m: dict) -> str:
    """One-line human summary of binary_metrics output."""
    if m.get("auroc") is None:
        return f"{m['task']}: n={m['n']} prevalence={m['prevalence']:.3f} AUROC n/a (one class)"
    ci = m.get("auroc_ci")
    ci_s = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    return (
        f"{m['task']}: n={m['n']} prevalence={m['prevalence']:.3f} AUROC {m['auroc']:.3f}{ci_s} "
        f"AUPRC {m['auprc']:.3f} Brier {m['calibration']['brier']:.3f}"
    )
