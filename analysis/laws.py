"""Small shared pieces of scaling-law algebra: power laws in compute, intervals, repeated data."""

from __future__ import annotations

import numpy as np

from analysis.fit_config import R_STAR_DATA  # Muennighoff et al. 2023's R_D*, defined beside the fit config

# shared with the sweep planner and the clinical heads; re-exported
from ehrfm.law_checks import edge_note, min_replicates  # noqa: F401


def fit_power_law(c, y, weights=None) -> tuple[float, float, float]:
    """Least squares in log-log: y = coef * c^exponent.

    Args:
        c: (k,) positive x values (compute in FLOPs, in this package).
        y: (k,) positive y values (N_opt, D_opt, loss, 1 - AUROC ...).
        weights: optional (k,) weights of the log-log residuals (inverse variances of ln y).

    Returns:
        (coef, exponent, r2): r2 of the weighted log-log fit; all NaN when c has one distinct value.
    """
    x, z = np.log(np.asarray(c, dtype=float)), np.log(np.asarray(y, dtype=float))
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    xm, zm = np.average(x, weights=w), np.average(z, weights=w)
    sxx = np.sum(w * (x - xm) ** 2)
    if sxx <= 0:
        return float("nan"), float("nan"), float("nan")
    slope = np.sum(w * (x - xm) * (z - zm)) / sxx
    intercept = zm - slope * xm
    ss_res = np.sum(w * (z - intercept - slope * x) ** 2)
    ss_tot = np.sum(w * (z - zm) ** 2)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    with np.errstate(over="ignore"):  # a wild bootstrap replicate's coefficient past 1e308 is inf (a failed replicate)
        return float(np.exp(intercept)), float(slope), float(r2)


def power_law(coef, exponent, c):
    """The power law coef * c^exponent over arrays of bootstrap draws (broadcast), without overflow warnings.

    A draw whose value overflows (a wild replicate: coefficient 1e300, exponent -15) is inf or NaN,
    which percentile_ci counts as not fitted; numpy's RuntimeWarning on stderr said nothing more.
    """
    with np.errstate(all="ignore"):
        return np.asarray(coef, dtype=float) * np.asarray(c, dtype=float) ** np.asarray(exponent, dtype=float)


# A bootstrap interval is reported only when at least this share of its replicates gave a value.
# The percentile interval of the replicates that succeeded is conditional on success: in the worst
# case (every failed replicate would have fallen beyond one end) a nominal 95% interval of a share s
# covers only 0.95 s of the bootstrap distribution. 0.9 keeps that above 85%; fewer successes (43
# of 50 replicates failing, as 3-run budgets resampled by runs give) report no interval.
MIN_REPLICATE_SHARE = 0.9


def interval_problem(draws, confidence: float = 0.95) -> str:
    """Why `percentile_ci` reports no interval for these draws; "" when it reports one.

    No interval when there are no replicates or fewer than `min_replicates` (20 for 95%), when
    fewer than MIN_REPLICATE_SHARE of them (or fewer than 2) are finite, or when the interval has
    zero width: every replicate in its central `confidence` gives the same value, because the
    design fixes the quantity (one model size per budget fixes Approach 1's N_opt), not because
    it is known exactly.

    Args:
        draws: (R,) bootstrap replicates of one quantity; non-finite ones failed.
        confidence: the interval's coverage.
    """
    d = np.asarray(draws, dtype=float).ravel()
    if d.size == 0:
        return "no bootstrap replicates"
    if d.size < min_replicates(confidence):
        return (f"{d.size} bootstrap replicate{'s' if d.size > 1 else ''}: a {confidence:.0%} percentile interval needs "
                f">= {min_replicates(confidence)} (--bootstrap)")
    ok = d[np.isfinite(d)]
    if ok.size < max(2, MIN_REPLICATE_SHARE * d.size):
        return (f"{d.size - ok.size} of {d.size} bootstrap replicates could not be fitted; "
                f"an interval needs {MIN_REPLICATE_SHARE:.0%} of them")
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(ok, [tail, 100 - tail])
    if np.isclose(lo, hi, rtol=1e-6, atol=1e-12):  # (an optimizer's float noise left [1.824217695e9, 1.824217697e9])
        return (f"zero width: every replicate gives {lo:.3g}, so the design fixes it (e.g. one model size per budget) "
                "or the losses carry no noise to resample (exact synthetic losses), and the bootstrap cannot measure its "
                "uncertainty")
    return ""


def percentile_ci(draws, confidence: float = 0.95) -> list[float]:
    """Percentile bootstrap interval [lo, hi] over the finite draws; [nan, nan] when not available.

    Not available (`interval_problem` says why): no replicates, fewer than `min_replicates`,
    fewer than MIN_REPLICATE_SHARE of them finite, or zero width. Efron & Tibshirani 1993, ch. 13.

    Args:
        draws: (R,) bootstrap replicates of one quantity; non-finite ones are ignored.
        confidence: the interval's coverage, e.g. 0.95 for the 2.5th and 97.5th percentiles.
    """
    if interval_problem(draws, confidence):
        return [float("nan"), float("nan")]
    d = np.asarray(draws, dtype=float).ravel()
    d = d[np.isfinite(d)]
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(d, [tail, 100 - tail])
    return [float(lo), float(hi)]


def effective_tokens(tokens, unique_tokens, r_star: float = R_STAR_DATA):
    """Effective data of repeated tokens (Muennighoff et al. 2023, "Scaling Data-Constrained LMs").

    D' = U + U R* (1 - exp(-R / R*)), where U is the unique tokens seen and R = D / U - 1 the
    repetitions beyond the first epoch. D' = D for one epoch or less, and D' -> U (1 + R*) as
    epochs -> infinity.

    Args:
        tokens: D, tokens trained (array-like).
        unique_tokens: U, unique tokens available (broadcast with tokens; capped at D).
        r_star: R*, the repetitions after which extra epochs add little (R_STAR_DATA).

    Returns:
        D' in tokens, the shape of the broadcast inputs.
    """
    d = np.asarray(tokens, dtype=float)
    u = np.minimum(np.asarray(unique_tokens, dtype=float), d)
    repeats = d / u - 1.0
    return u + u * r_star * (1.0 - np.exp(-repeats / r_star))


def auroc_from_law(coef, exponent, c):
    """AUROC predicted by the utility law 1 - AUROC = coef * C^exponent, kept in [0.5, 1].

    0.5 is chance: a law whose AUROC falls with compute (exponent > 0, seen on noisy small sweeps)
    must not extrapolate to a classifier worse than a coin, and none beats a perfect one.
    """
    with np.errstate(all="ignore"):
        return np.clip(1.0 - np.asarray(coef, dtype=float) * np.asarray(c, dtype=float) ** np.asarray(exponent, dtype=float), 0.5, 1.0)


def format_interval(x, ci, fmt: str = "{:.3g}", expected: bool = True) -> str:
    """A value with its interval: '0.812 [0.771, 0.850]', as ehrfm.io.format_ci.

    '0.812 [n/a]' where an interval was expected (the fit was bootstrapped) but is not available
    (`interval_problem`); 'n/a' for a missing value.
    """
    from ehrfm.io import format_ci

    s = format_ci(x, ci if expected else None, fmt)  # format_ci writes "[n/a]" for an interval of missing ends
    if expected and s != "n/a" and not s.endswith("]"):  # no interval at all, though one was expected
        s += " [n/a]"
    return s
