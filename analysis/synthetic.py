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
                      noise: float | tuple = 0.01, seed: int = 0, center_jitter_decades: float = 0.1,
                      tasks: dict[str, tuple[float, float]] | None = None, auroc_se: float | None = None) -> pl.DataFrame:
    """Draw a synthetic IsoFLOP sweep's results table from a known law.

    An IsoFLOP sweep: per budget C, `sizes` model sizes log-spaced over `span_decades` around
    the law's optimum (shifted by a random jitter), D = C / (6 N), loss multiplied by
    exp(N(0, noise)) (noise is the standard deviation of ln L; a sequence gives each budget its own,
    as short runs scatter more than long ones). `tasks` maps a task name to
    (coef, exponent): the compute-optimal run's 1 - AUROC is coef * C^exponent, worse off the
    optimum by the factor (L / L_opt)^4, times exp(N(0, noise)); written as `auroc/<task>`. With
    `auroc_se`, each AUROC also gets measurement noise N(0, auroc_se^2), as a probe scored on a
    finite held-out sample has, and the column `auroc_se/<task>` says so.
    """
    rng = np.random.default_rng(seed)
    rows = []
    noises = np.broadcast_to(np.asarray(noise, dtype=float), (len(budgets),))
    for c, noise in zip(budgets, noises, strict=True):
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


def isoflop_parabolas(sigma, rng: np.random.Generator, budgets=(3.7e11, 9.5e11, 2.4e12, 6e12),
                      curvature=(0.37, 0.085, 0.058, 0.05), a: float = 0.45, sizes: int = 5) -> pl.DataFrame:
    """A minimal results table whose Approach 2 truth is known exactly: N_opt = 0.15 C^a.

    Per budget C: `sizes` sizes spaced 0.3 decades around N_opt (the ladder's centre jittered by
    0.1 in ln N), loss = C^-0.03 (C in 1e12 FLOPs) + curvature/2 (ln N - ln N_opt)^2 + Normal(0, sigma_C)
    nats/token, D = C / (6 N). The defaults are the default demo's budgets and parabola curvatures
    (2026-12-06). For checking intervals' coverage (benchmarks/bootstrap_coverage.py); a parabola in
    ln N is exactly Approach 2's model, so its a is unbiased.

    Args:
        sigma: noise SD per budget (nats/token), one per budget (or one for all).
        rng: the generator of the jitter and the noise.
        budgets: compute budgets C (FLOPs).
        curvature: d^2 L / d(ln N)^2 of each budget's parabola.
        a: the N_opt exponent built in.
        sizes: runs per budget.
    """
    rows = []
    for budget, sd, curv in zip(budgets, np.broadcast_to(sigma, len(budgets)), curvature, strict=True):
        n_opt = 0.15 * budget**a
        for j, off in enumerate(np.linspace(-0.6, 0.6, sizes) * np.log(10) + rng.normal(0, 0.1)):
            n = n_opt * np.exp(off)
            loss = (budget / 1e12) ** -0.03 + curv / 2 * off**2 + rng.normal(0, sd)
            rows.append({"run_id": f"{budget:g}-{j}", "budget": budget, "n_params": n, "tokens": budget / (6 * n),
                         "flops": budget, "loss": loss})
    return pl.DataFrame(rows)
