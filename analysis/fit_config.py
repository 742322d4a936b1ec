"""The config of a scaling-law fit (saved as fit_config.json beside fits.json) and the constants
it defaults to.

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
    """Everything that decides a fit; saved as fit_config.json beside fits.json. A field's
    docstring is its `ehrfm fit` help."""

    approaches: tuple[int, ...] = (1, 2, 3)
    """Approaches to fit, e.g. 2,3."""
    bootstrap: int = 1000
    """Bootstrap replicates for the intervals; 0: none (intervals are then [nan, nan])."""
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
    """Leave IsoFLOP minima outside the sampled sizes out of the power laws (--keep-exterior keeps them)."""
    r_star: float = R_STAR_DATA
    """Decay constant of the value of repeated tokens (Muennighoff et al. 2023)."""
