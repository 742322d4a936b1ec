"""Results tables drawn from a known law, for tests, benchmarks and trying the analysis out.

Example:
    table = synthetic_results(BESIROGLU, budgets=np.logspace(18, 22, 10), sizes=25, noise=0.01, seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from ehrfm.results import Status


@dataclass(frozen=True)
class Law:
    """A parametric law L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, Approach 3 form)."""
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n, d):
        """Loss of the law at parameters n and tokens d (broadcast arrays)."""
        return self.E + self.A / np.asarray(n, dtype=float) ** self.alpha + self.B / np.asarray(d, dtype=float) ** self.beta

    def n_opt(self, c, flops_per_param_token: float = 6.0):
        """Compute-optimal parameters at compute c (FLOPs) under C = k N D, k = flops_per_param_token.

        N_opt = G (C / k)^(beta / (alpha + beta)), G = (alpha A / (beta B))^(1 / (alpha + beta))
        (Hoffmann et al. 2022, eq. 4); k = 6 is the 6 N FLOPs per token of Kaplan et al. (2020).
        """
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        return G * (np.asarray(c, dtype=float) / flops_per_param_token) ** (self.beta / (self.alpha + self.beta))


# Besiroglu et al. 2024 (their replication of Chinchilla's Approach 3) and Hoffmann et al. 2022.
BESIROGLU = Law(E=1.82, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)
HOFFMANN = Law(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def synthetic_results(law: Law = BESIROGLU, budgets=(1e18, 1e19, 1e20, 1e21), sizes: int = 9, span_decades: float = 2.0,
                      noise: float = 0.01, seed: int = 0, center_jitter_decades: float = 0.1,
                      tasks: dict[str, tuple[float, float]] | None = None, auroc_se: float | None = None) -> pl.DataFrame:
    """Draw a synthetic IsoFLOP sweep's results table from a known law.

    An IsoFLOP sweep: per budget C, `sizes` model sizes log-spaced over `span_decades` around
    the law's optimum (shifted by a random jitter), D = C / (6 N), loss multiplied by
    exp(N(0, noise)) (noise is the standard deviation of ln L). `tasks` maps a task name to
    (coef, exponent): the compute-optimal run's 1 - AUROC is coef * C^exponent, worse off the
    optimum by the factor (L / L_opt)^4, times exp(N(0, noise)); written as `auroc/<task>`. With
    `auroc_se`, each AUROC also gets measurement noise N(0, auroc_se^2), as a probe scored on a
    finite held-out sample has, and the column `auroc_se/<task>` says so.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        center = law.n_opt(c) * 10 ** rng.uniform(-center_jitter_decades, center_jitter_decades)
        for n in center * np.logspace(-span_decades / 2, span_decades / 2, sizes):
            n = int(round(n))
            d = int(round(c / (6 * n)))
            loss = float(law.loss(n, d) * np.exp(rng.normal(0.0, noise)))
            row = dict(run_id=f"c{c:.2g}-n{n}", budget=float(c), n_params=n, n_params_total=n, tokens=d,
                       flops=6.0 * n * d, loss=loss, status=str(Status.COMPLETED))
            l_opt = law.loss(law.n_opt(c), c / (6 * law.n_opt(c)))
            for task, (coef, exponent) in (tasks or {}).items():
                err = coef * c**exponent * (loss / l_opt) ** 4 * np.exp(rng.normal(0.0, noise))
                auroc = 1.0 - min(err, 0.5)
                if auroc_se:
                    auroc = float(np.clip(auroc + rng.normal(0.0, auroc_se), 0.5, 1.0 - 1e-6))
                    row[f"auroc_se/{task}"] = float(auroc_se)
                row[f"auroc/{task}"] = float(auroc)
            rows.append(row)
    return pl.DataFrame(rows)
