"""Scoring of binary predictions: discrimination with bootstrap intervals, and calibration.

Every head writes `metrics.json` through `binary_metrics`: task, n, n_positive, prevalence,
AUROC and AUPRC with percentile-bootstrap 95% intervals, and a calibration summary (Brier score,
expected calibration error over 10 equal-width bins, calibration intercept and slope from a
logistic regression of the outcome on logit(p)). `auroc_se` is the analytic standard error of the
AUROC (no resampling), which sweeps carry into the results table so that utility laws can be
fitted with each point's measurement noise: DeLong's when each subject has one label, else the
clustered DeLong variance of Obuchowski (1997) with subjects as the independent units, as the
bootstrap below resamples them; `auroc_se_method` says which.

Resampling: subjects with replacement, each with all of its labels, when the labels' subjects
are given and some subject has several (the stays of one patient are not independent:
resampling them one by one gives intervals that are too narrow); else labels. Resamples with a
single class are skipped and counted.

Small samples: the percentile bootstrap is only as good as the rarer class it resamples. With few
positives (or negatives) its intervals are far too narrow: scores unrelated to the labels (true
AUROC 0.5) with 200 negatives, 300 replicates, 300 draws each, gave a nominal 95% interval
covering 0.5 in 16% of draws with 1 positive, 56% with 2, 77% with 3, 89% with 5, 93% with 10
and 98% with 20. So no interval is given (None, with the reason in "note") unless each class has
at least MIN_CLASS_FOR_INTERVAL labels (and, when subjects are resampled, as many distinct subjects);
the AUROC itself is still reported.
"""

from __future__ import annotations

import warnings

import numpy as np

from ehrfm.errors import UserError

MIN_CLASS_FOR_INTERVAL = 10  # labels of each class needed for a bootstrap interval (module docstring)


def class_support(y, groups=None) -> int:
    """What an interval rests on: the labels of the rarer class (or its subjects, when fewer).

    When subjects hold several labels (the cluster bootstrap resamples subjects), the fewer of that
    and each class's distinct subjects.

    y: (n,) 0/1 labels; groups: (n,) subject ids or None. An interval needs MIN_CLASS_FOR_INTERVAL of it.
    """
    y = np.asarray(y).astype(bool)
    n_min = int(min(y.sum(), (~y).sum()))
    if groups is not None:
        g = np.asarray(groups)
        if len(np.unique(g)) < len(y):
            n_min = min(n_min, len(np.unique(g[y])), len(np.unique(g[~y])))
    return n_min
SE_DELONG = "DeLong 1988 (labels independent)"  # metrics.json "auroc_se_method"
SE_CLUSTERED = "clustered DeLong, Obuchowski 1997 (subjects independent, their labels not)"


def _calibration_fit(y: np.ndarray, p: np.ndarray) -> tuple[float | None, float | None]:
    """Calibration intercept and slope: y ~ sigmoid(a + b * logit(p)), unpenalised.

    (None, None) when y has one class or logit(p) is constant (after clipping): then the fit is not
    identifiable. Raises nothing.
    """
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        return None, None
    eps = 1e-6
    q = np.clip(p, eps, 1 - eps)
    logit = np.log(q / (1 - q)).reshape(-1, 1)
    if np.ptp(logit) == 0:  # constant logit(p): a + b*logit(p) is not identifiable, lbfgs would pick any split
        return None, None
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


def auroc_standard_error(y: np.ndarray, p: np.ndarray, groups: np.ndarray | None = None) -> float | None:
    """Standard error of the AUROC of scores p (n,) for labels y (n,); None with < 2 of a class.

    Without `groups`: DeLong et al. (1988). Placement values: V10_j is the share of negatives
    positive j outscores (ties count half), V01_k the share of positives that outscore negative k;
    var = var(V10)/m + var(V01)/n. Computed from midranks in O(n log n).

    With `groups` (n,), the subject of each label: the clustered DeLong variance of Obuchowski
    (1997, Biometrics 53:567). The labels of one subject (its stays) are not independent, so the
    placements are summed per subject and the subjects are the independent units:
    var = S10/m + S01/n + 2 S11/(m n), with S10 = I10/((I10-1) m) sum_i (V10_i - m_i A)^2 over the
    I10 subjects with a positive, S01 likewise, S11 = I/(I-1) sum_i (V10_i - m_i A)(V01_i - n_i A).
    With one label per subject it equals DeLong's; with several it is as a rule wider (DeLong
    treating 10 identical stays of 40 patients as 400 labels gives an SE sqrt(10) times too small).
    None when fewer than 2 subjects have a positive (or a negative).
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
    if groups is None:
        return float(np.sqrt(v10.var(ddof=1) / m + v01.var(ddof=1) / n))
    _, subject = np.unique(np.asarray(groups), return_inverse=True)
    subject = subject.reshape(-1)
    n_subj = int(subject.max()) + 1
    auc = v10.mean()
    m_i = np.bincount(subject[y], minlength=n_subj)
    n_i = np.bincount(subject[~y], minlength=n_subj)
    d10 = np.bincount(subject[y], weights=v10, minlength=n_subj) - m_i * auc  # per subject, 0 without positives
    d01 = np.bincount(subject[~y], weights=v01, minlength=n_subj) - n_i * auc
    i10, i01 = int((m_i > 0).sum()), int((n_i > 0).sum())
    if i10 < 2 or i01 < 2:
        return None
    s10 = i10 / ((i10 - 1) * m) * float((d10**2).sum())
    s01 = i01 / ((i01 - 1) * n) * float((d01**2).sum())
    s11 = n_subj / (n_subj - 1) * float((d10 * d01).sum())
    return float(np.sqrt(max(s10 / m + s01 / n + 2 * s11 / (m * n), 0.0)))


def shared_bootstrap_auroc(y: np.ndarray, p: np.ndarray, n_boot: int, seed: int,
                           groups: np.ndarray | None = None) -> np.ndarray:
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
        groups: (n,) the subject of each label, or None. When some subject has several labels,
            replicate r draws subjects with replacement (their draws depend only on the groups
            and the seed, so they are still shared by every model scored on the same labels) and
            counts each label as often as its subject was drawn: a weighted Mann-Whitney AUROC.
            Else the label resamples above (unchanged figures for one label per subject).

    Returns:
        (n_boot,) float64 AUROCs; NaN for a replicate that drew a single class.
    """
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    if groups is not None:
        _, inverse = np.unique(np.asarray(groups), return_inverse=True)
        inverse = inverse.reshape(-1)
        if len(y) and int(inverse.max()) + 1 < len(y):
            return _cluster_bootstrap_auroc(y, p, inverse, n_boot, seed)
    idx = np.random.default_rng([seed, 8]).integers(0, len(y), size=(n_boot, len(y)))
    yb, ranks = y[idx], rankdata(p[idx], axis=1)
    n_pos = yb.sum(axis=1)
    n_neg = yb.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * yb).sum(axis=1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def _cluster_bootstrap_auroc(y: np.ndarray, p: np.ndarray, inverse: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """shared_bootstrap_auroc's subject resamples: y (n,) bool, p (n,), inverse (n,) subject index 0..G-1."""
    n_groups = int(inverse.max()) + 1
    draws = np.random.default_rng([seed, 9]).integers(0, n_groups, size=(n_boot, n_groups))
    offsets = (np.arange(n_boot) * n_groups)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=n_boot * n_groups).reshape(n_boot, n_groups)
    auc, _ = weighted_auroc_auprc(y, p, counts[:, inverse].astype(np.float64))
    return auc


def weighted_auroc_auprc(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and average precision of scores p for labels y under each row of weights w, at once.

    Args:
        y: (n,) 0/1 labels.
        p: (n,) scores.
        w: (b, n) non-negative label weights (a bootstrap replicate's draw counts: a label drawn
            k times weighs k).

    Returns:
        (auroc, auprc), each (b,) float64; NaN where a row's weight is all on one class. They equal
        sklearn's roc_auc_score and average_precision_score with sample_weight=w[r] (to rounding):
        AUROC as the Mann-Whitney statistic with ties counted half (the trapezoidal ROC area), AP
        as sum over distinct thresholds of (recall step) * (precision at that threshold).
    """
    y = np.asarray(y).astype(bool)
    order = np.argsort(p, kind="stable")
    p_sorted = np.asarray(p)[order]
    starts = np.flatnonzero(np.r_[True, p_sorted[1:] != p_sorted[:-1]])  # one bin per distinct score, ascending
    ws, ys = w[:, order], y[order]
    w_pos = np.add.reduceat(ws * ys, starts, axis=1)  # (b, distinct scores)
    w_neg = np.add.reduceat(ws * ~ys, starts, axis=1)
    n_pos, n_neg = w_pos.sum(axis=1), w_neg.sum(axis=1)
    below = np.cumsum(w_neg, axis=1) - w_neg  # negative weight strictly below each score
    tp = np.cumsum(w_pos[:, ::-1], axis=1)[:, ::-1]  # weight at or above each score (the threshold)
    fp = np.cumsum(w_neg[:, ::-1], axis=1)[:, ::-1]
    called = tp + fp
    precision = np.divide(tp, called, out=np.zeros_like(tp), where=called > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (w_pos * (below + 0.5 * w_neg)).sum(axis=1) / (n_pos * n_neg)
        ap = (w_pos * precision).sum(axis=1) / n_pos
    two = (n_pos > 0) & (n_neg > 0)
    return np.where(two, auc, np.nan), np.where(two, ap, np.nan)


def bootstrap_intervals(y: np.ndarray, p: np.ndarray, n_boot: int, seed: int,
                        groups: np.ndarray | None = None) -> tuple[list[float] | None, list[float] | None, int]:
    """Percentile 95% intervals of AUROC and AUPRC over the same resamples; (auroc_ci, auprc_ci, resamples used).

    Args:
        y: (n,) 0/1 labels.
        p: (n,) scores.
        n_boot: resamples (0: no interval).
        seed: fixes the resamples.
        groups: (n,) the subject of each label, or None. When some subject has several labels, a
            resample draws subjects with replacement and weighs each label by its subject's draws
            (a cluster bootstrap); else labels are drawn (the same resamples as without groups).

    Resamples with a single class are skipped; with fewer than half of n_boot left, no interval
    (None). Every replicate is scored at once from its weights (weighted_auroc_auprc, equal to
    sklearn's metrics on the resample): on 8,400 held-out labels, 1,000 replicates take ~1 s
    instead of ~20 s of one sklearn call per replicate.
    """
    if n_boot <= 0:
        return None, None, 0
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = len(y)
    inverse = None
    if groups is not None:
        _, inverse = np.unique(np.asarray(groups), return_inverse=True)
        inverse = inverse.reshape(-1)
        n_groups = int(inverse.max()) + 1 if n else 0
        if n_groups == n:  # one label per subject: the label bootstrap is the cluster bootstrap
            inverse = None
    chunk = max(1, 4_000_000 // max(n, 1))  # replicates scored together (~32 MB of weights)
    aucs, aps = [], []
    for first in range(0, n_boot, chunk):
        w = np.empty((min(chunk, n_boot - first), n))
        for r in range(len(w)):  # the draws of one replicate at a time: the resamples do not depend on `chunk`
            if inverse is None:
                w[r] = np.bincount(rng.integers(0, n, n), minlength=n)
            else:
                w[r] = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)[inverse]
        auc, ap = weighted_auroc_auprc(y, p, w)
        aucs.append(auc)
        aps.append(ap)
    auc, ap = np.concatenate(aucs), np.concatenate(aps)
    used = int(np.isfinite(auc).sum())
    if used < 0.5 * n_boot:  # too few two-class resamples for a trustworthy interval
        return None, None, used
    ci = [[float(v) for v in np.percentile(x[np.isfinite(x)], [2.5, 97.5])] for x in (auc, ap)]
    return ci[0], ci[1], used


def binary_metrics(y, p, task: str, n_boot: int = 1000, seed: int = 0, groups=None) -> dict:
    """AUROC and AUPRC with bootstrap 95% intervals, n, prevalence and calibration of p for y.

    Args:
        y: (n,) 0/1 labels.
        p: (n,) predicted P(y = 1), finite.
        task: the task name, stored and named in errors.
        n_boot: bootstrap resamples of the labels for the percentile intervals (0: none).
        seed: fixes the resamples.
        groups: (n,) the subject_id of each label, or None: when a subject has several labels the
            intervals resample subjects (bootstrap_intervals), and "bootstrap" says so ("unit").

    Returns:
        {task, n, n_positive, prevalence, auroc, auroc_ci, auroc_se, auroc_se_method (DeLong et al.
        1988, or its clustered form when a subject has several labels: auroc_standard_error), auprc,
        auprc_ci, bootstrap, calibration: {brier, ece_10_bins, intercept, slope, mean_predicted}};
        the AUROC and AUPRC entries are None (with a "note") when y has a single class; the
        intervals are None (with a "note" giving the counts) when a class has fewer than
        MIN_CLASS_FOR_INTERVAL labels, or (labels clustered by subject) fewer than that many distinct
        subjects, as they would be falsely narrow (module docstring).

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
        if groups is not None and len(groups) != len(y):
            raise ValueError("groups and y differ in length")
        clustered = groups is not None and len(np.unique(np.asarray(groups))) < len(y)
        n_min = class_support(y, groups)
        if clustered:
            g = np.asarray(groups)
            s_pos, s_neg = len(np.unique(g[y == 1])), len(np.unique(g[y == 0]))
        boot = n_boot if n_min >= MIN_CLASS_FOR_INTERVAL else 0
        out["auroc"] = float(roc_auc_score(y, p))
        out["auroc_ci"], auprc_ci, used = bootstrap_intervals(y, p, boot, seed, groups)
        # The SE follows the interval's unit: subjects when some have several labels (clustered). Withheld with the
        # interval: DeLong's SE of 2 positives that separate perfectly is 0.0, which weighted the utility law as exact.
        enough = n_min >= MIN_CLASS_FOR_INTERVAL
        out["auroc_se"] = auroc_standard_error(y, p, groups if clustered else None) if enough else None
        out["auroc_se_method"] = (SE_CLUSTERED if clustered else SE_DELONG) if enough else None
        out["auprc"] = float(average_precision_score(y, p))
        out["auprc_ci"] = auprc_ci
        out["bootstrap"] = {"resamples": boot, "used": used, "interval": "percentile 95%",
                            "unit": "subject" if clustered else "label"}
        if not enough:
            if clustered:
                out["note"] = (f"{n_pos} positive and {len(y) - n_pos} negative labels from {s_pos} and {s_neg} "
                               f"subjects: no interval or standard error with fewer than {MIN_CLASS_FOR_INTERVAL} labels "
                               "or subjects of a class (they would be falsely narrow)")
            else:
                out["note"] = (f"{n_pos} positive and {len(y) - n_pos} negative labels: no interval or standard error "
                               f"with fewer than {MIN_CLASS_FOR_INTERVAL} of a class (they would be falsely narrow)")
    else:
        out.update(auroc=None, auroc_ci=None, auroc_se=None, auroc_se_method=None, auprc=None, auprc_ci=None)
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
    # the note's first clause names the counts that fall short (labels, and subjects when the resampling is by subject)
    short = f"{m['note'].split(': ')[0]}, under {MIN_CLASS_FOR_INTERVAL} of a class" if m.get("note") else ""
    ci_s = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f" (no interval: {short})" if short else ""
    return (
        f"{m['task']}: n={m['n']} prevalence={m['prevalence']:.3f} AUROC {m['auroc']:.3f}{ci_s} "
        f"AUPRC {m['auprc']:.3f} Brier {m['calibration']['brier']:.3f}"
    )
