"""The config of a scaling-law fit (saved as fit_config.json beside fits.json) and the constants it defaults to.

Light (no numpy or scipy): `ehrfm fit` derives its options from FitConfig (ehrfm.cli_args), and a
field's docstring is its help. FitConfig is also importable from analysis.fit.
"""

from __future__ import annotations

from dataclasses import dataclass

# Huber loss threshold of the parametric fit L(N, D) in log space (Hoffmann et al. 2022, Approach 3:
# delta = 1e-3); analysis.parametric's default.
HUBER_DELTA = 1e-3

# Muennighoff et al. 2023, "Scaling Data-Constrained Language Models", eq. 5 and table/fig. 3:
# the fitted decay constant of the value of repeated tokens, R_D* = 15.4 (repeating more than
# ~R_D* epochs adds little effective data). Used for multi-epoch runs and the recommender.
R_STAR_DATA = 15.4


@dataclass
class FitConfig:
    """Everything that decides a fit; saved as fit_config.json beside fits.json.

    A field's docstring is its `ehrfm fit` help.
    """

    approaches: tuple[int, ...] = (1, 2, 3)
    """Approaches to fit, e.g. 2,3."""
    bootstrap: int = 1000
    """Bootstrap replicates for the intervals, at most 100,000; a 95% interval is reported from >= 20 (fewer: none); 0: none
    (intervals are then null in fits.json, n/a in the tables)."""
    seed: int = 0
    """Seed of the bootstrap."""
    confidence: float = 0.95
    """Coverage of the percentile bootstrap intervals."""
    huber_delta: float = HUBER_DELTA
    """Huber threshold of the parametric fit (Approach 3)."""
    # Approach 3 bootstrap refits start from the full-grid optimum and the next best distinct grid
    # optima (not the whole 4,500-point grid again): replicates are small perturbations of the data.
    bootstrap_starts: int = 4
    """Starts of each Approach 3 bootstrap refit."""
    min_points_per_budget: int = 3
    """IsoFLOP budgets with fewer runs are not fitted (Approach 2)."""
    # A parabola whose minimum lies outside the sampled N range is an extrapolation: report it,
    # leave it out of the power laws (set False to keep it).
    require_interior: bool = True
    """IsoFLOP minima outside their budget's sampled sizes are left out of the power laws by default;
    --keep-exterior keeps them."""
    r_star: float = R_STAR_DATA
    """Decay constant of the value of repeated tokens (Muennighoff et al. 2023)."""
    n_count: str = "total"
    """Which parameter count N the fits use: "total" (all parameters, the table's n_params_total) or
    "non-embedding" (n_params). Total by default: Pearce & Song 2024 ("Reconciling Kaplan and
    Chinchilla Scaling Laws", arXiv 2406.12907) show that counting non-embedding parameters at small
    scale, where embeddings are a large share of the model, biases the fitted exponent (Kaplan's
    0.73 vs Chinchilla's 0.50). A table without n_params_total (DESIGN.md section 5's minimal
    table) is fitted on n_params; fits.json's `n_count` and `inputs.n_count_note` say so."""
    approach3_method: str = "varpro"
    """How Approach 3 is fitted: "varpro" (variable projection: (alpha, beta) searched, (E, A, B) by
    non-negative least squares on the loss; analysis.parametric.fit_varpro) or "huber-lbfgs" (Hoffmann
    et al. 2022's Huber loss on ln L from 4,500 L-BFGS starts, to reproduce published fits).
    varpro is the default: it is better conditioned (2 searched parameters instead of 5, no start
    grid over ln A, ln B, ln E; Open-Athena's scaling-law-analysis)."""
    approach3_weights: str = "inverse-variance"
    """How varpro weighs the runs in Approach 3's least squares: "inverse-variance" (default) or "equal".
    "inverse-variance": when Bartlett's test rejects equal residual variances across the IsoFLOP budgets
    (at residual_scaling_level; `analysis.fit.residual_scales`, the scales Approach 2's residual bootstrap
    draws at, whether or not it runs), each run is weighted by 1 / its budget's scale squared: weighted least squares, the efficient
    estimator under heteroscedastic noise (Carroll & Ruppert 1988, ch. 2). Unweighted, the shortest runs,
    which scatter most between seeds, pull the law as hard as the longest (`analysis.fit.approach3_weights`).
    Equal weights otherwise, and always for "huber-lbfgs" (Hoffmann et al.'s method, as published)."""
    approach2_bootstrap: str = "residuals"
    """How Approach 2's intervals are drawn: "residuals" (default; each IsoFLOP parabola plus
    leverage-adjusted residuals resampled from all budgets' parabolas: the fixed-design bootstrap,
    Efron & Tibshirani 1993 sec. 9.5, Davison & Hinkley 1997 sec. 6.2.3) or "runs" (the runs of each
    budget resampled). The planner fixes the sizes of a ladder, so the design is fixed; with 4-5
    runs per budget, resampling runs makes about half the replicates pass exactly through 3 points."""
    residual_scaling_level: float = 0.05
    """"residuals": Bartlett's test level for unequal residual variances across budgets; when it rejects, each
    budget's residuals are drawn at its own (log-linear in C) scale instead of from one pool (`analysis.fit.
    residual_scales`: short runs scatter most). 0: always one pool."""
    holdout: bool = True
    """Held-out-budget validation, on by default (--no-holdout turns it off): refit without the
    largest usable budget and predict its L_min (Approach 3's compute-optimal curve, else Approach
    2's L_min law) and N_opt (Approach 2) before looking at it (fits.json `holdout`). The main fit
    still uses every budget."""
    max_epochs: float | None = None
    """Leave out runs trained for more than this many epochs over their unique tokens (listed in
    `excluded`). None (default) keeps them: dropping the most-repeated runs (the smallest models of
    each budget) would cut one side off the IsoFLOP parabolas and bias their minima; they are flagged
    in fits.md instead, and Approach 3 fits them on Muennighoff effective tokens."""
