"""Scaling-law fits of a results table, with bootstrap intervals for every fitted quantity.

Approaches 1, 2 and 3 of Hoffmann et al. (2022, "Training Compute-Optimal Large Language Models"),
clinical utility against compute, and bootstrap intervals for every fitted quantity.

    fit = fit_results("sweep/results.parquet", approaches=(1, 2, 3), bootstrap=1000, seed=0)
    fit.approach2.a, fit.approach2.a_ci        # exponent of N_opt in C and its 95% interval
    write_fits(fit, "fit/")                    # fits.json, fit_config.json, bootstrap.parquet, runs.parquet
    print(format_fit_table(fit))               # markdown

Conventions: C is the table's `flops` (6 N D when absent); N is the parameter count FitConfig.n_count
names (all parameters by default, the table's n_params_total; non-embedding n_params when absent);
D is training tokens; losses are held-out nats/token (the table's `loss`, the default) or nats/event
(`loss_per_event`, load_results(..., loss_column=)): fits.json's inputs name the column and its
unit, and fits.md says which it fits. Intervals are percentile bootstrap intervals
over replicates that resample runs (Approach 2: runs within each IsoFLOP budget).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

from analysis import parametric
from analysis.fit_config import FitConfig
from analysis.laws import (
    auroc_from_law,
    edge_note,
    effective_tokens,
    fit_power_law,
    format_interval,
    interval_problem,
    min_replicates,
    percentile_ci,
    power_law,
)
from analysis.table import BUDGET_GROUP_DECADES, Results, load_results
from ehrfm.errors import UserError
from ehrfm.io import format_ci
from ehrfm.law_checks import (
    IDENTIFIED_DECADES,
    TOKENS_PER_PARAM_MARK,
    has_interval,
    identified,
    loss_direction_problems,
    trust,
)

N_COUNT_LABEL = {"total": "total parameters (embeddings included)", "non-embedding": "non-embedding parameters"}
APPROACH3_METHODS = ("varpro", "huber-lbfgs")
APPROACH3_WEIGHTS = ("inverse-variance", "equal")  # FitConfig.approach3_weights
# The most bootstrap replicates a fit accepts (FitConfig.bootstrap): Efron & Tibshirani (1993, ch.
# 13) advise 1,000-2,000 for percentile intervals; 1e9 would ask for 200 GiB of run weights.
MAX_BOOTSTRAP = 100_000
# A group of runs made from their FLOPs (no budget column) whose FLOPs span more than this many decades
# (2x) is not one IsoFLOP budget: grouping joins runs within 12% of a neighbour, and a dense spread of
# FLOPs (Chinchilla's extracted runs: 1.6e19 to 1.5e20 in one chain of 92) chains several budgets.
MAX_FLOPS_GROUP_SPAN_DECADES = 0.3
# A run whose ln-loss residual from Approach 3's law is this many robust SDs (1.4826 MAD) from the median
# residual is named as an outlier: the default fit is least squares, which such runs pull (Chinchilla's
# extracted runs: 4 of 245, a = 0.64 against the published 0.51 that a Huber fit or leaving 5 out gives).
OUTLIER_SDS = 5.0
# Approach 3's frontier assumes one FLOPs per parameter and token, k; beyond this spread of the runs' own k
# (max / min) its N_opt and D_opt at a budget are flagged as approximate (the demo's total counts: 1.35)
K_SPREAD = 1.1
# An IsoFLOP parabola whose residuals are this unlikely under the runs' eval SEs (chi-square test)
# does not describe its budget: the budget is left out of Approach 2's power laws.
LACK_OF_FIT_P = 0.01


class FitWarning(UserWarning):
    """A budget or task left out of a fit, or another result the user should look at."""


@dataclass
class BudgetFit:
    """Approach 2 for one IsoFLOP budget: loss = c0 + c1 x + c2 x^2 with x = ln N."""

    budget: float
    n_points: int
    used: bool
    reason: str  # why it was left out ("" when used)
    n_opt: float = float("nan")
    n_opt_ci: list[float] = field(default_factory=lambda: [float("nan")] * 2)
    d_opt: float = float("nan")
    d_opt_ci: list[float] = field(default_factory=lambda: [float("nan")] * 2)
    loss_min: float = float("nan")
    loss_min_ci: list[float] = field(default_factory=lambda: [float("nan")] * 2)
    curvature: float = float("nan")  # d^2 loss / d(ln N)^2, nats per (ln N)^2
    curvature_ci: list[float] = field(default_factory=lambda: [float("nan")] * 2)
    r2: float = float("nan")
    interior: bool = False
    coef: list[float] = field(default_factory=list)  # c0, c1, c2
    log_n_range: list[float] = field(default_factory=list)  # sampled [min, max] of ln N
    d_line: list[float] = field(default_factory=list)  # ln D = d_line[0] + d_line[1] ln N within the budget
    # Leverage-adjusted, centred residuals of a used budget's parabola (pooled by the residual bootstrap).
    residuals: list[float] = field(default_factory=list, repr=False)
    lack_of_fit_p: float = float("nan")  # p of the lack-of-fit test named in lack_of_fit_test (NaN: not tested)
    lack_of_fit_test: str = ""  # "pure error" (replicate runs of a size) or "eval SE" (chi-square); "" when not tested
    interval_note: str = ""  # why its intervals are not available (laws.interval_problem), "" when they are


@dataclass
class Approach1:
    """Lower envelope: per budget the lowest-loss run, kept when it beats every cheaper budget."""

    a: float
    a_ci: list[float]
    b: float
    b_ci: list[float]
    n_coef: float  # N_opt = n_coef * C^a
    n_coef_ci: list[float]
    d_coef: float  # D_opt = d_coef * C^b
    d_coef_ci: list[float]
    loss_coef: float  # envelope loss = loss_coef * C^loss_exponent
    loss_coef_ci: list[float]
    loss_exponent: float
    loss_exponent_ci: list[float]
    n_points: int
    # run_id (one run of the shape), budget, flops, n_params, tokens, loss (the shape's mean over its
    # n_runs replicate runs: seeds), at_edge, n_runs (absent in older fits.json)
    points: list[dict]
    # Budgets whose envelope run is the smallest or largest model size sampled in that budget (or
    # its only size): its optimum is not bracketed, so the envelope there follows the ladder's
    # end, not N_opt, and the law is not trusted (analysis.recommend.trust). [] in older fits.json.
    edge_budgets: list[float] = field(default_factory=list)

    def n_opt(self, c):
        """Compute-optimal parameters N_opt = n_coef * C^a at compute c (FLOPs; scalar or array)."""
        return self.n_coef * np.asarray(c, dtype=float) ** self.a

    def d_opt(self, c):
        """Compute-optimal tokens D_opt = d_coef * C^b at compute c (FLOPs; scalar or array)."""
        return self.d_coef * np.asarray(c, dtype=float) ** self.b

    def loss(self, c):
        """Loss of the law at compute c (FLOPs): loss_coef * C^loss_exponent, in the fit's loss unit."""
        return self.loss_coef * np.asarray(c, dtype=float) ** self.loss_exponent


@dataclass
class Approach2:
    """IsoFLOP parabolas and the power laws through their minima."""

    a: float
    a_ci: list[float]
    b: float
    b_ci: list[float]
    n_coef: float
    n_coef_ci: list[float]
    d_coef: float
    d_coef_ci: list[float]
    loss_coef: float  # L_min = loss_coef * C^loss_exponent
    loss_coef_ci: list[float]
    loss_exponent: float
    loss_exponent_ci: list[float]
    r2_n: float
    r2_d: float
    n_budgets_used: int
    budgets: list[BudgetFit]
    bootstrap_method: str | None = None  # "residuals" or "runs" (None: no bootstrap)
    # "residuals": Bartlett's test of equal residual variances across budgets, and the per-budget scales drawn at
    # when it rejected (residual_scales); {} when not tested (fewer than 3 budgets with residuals, or "runs").
    residual_scaling: dict = field(default_factory=dict)
    # Used budgets whose L_min interval excludes the loss law's L_min (loss_law_misses): a power law without a
    # floor bends away from the minima, and its loss intervals (from the same replicates) are then too narrow.
    loss_law_misses: list[float] = field(default_factory=list)

    n_opt = Approach1.n_opt
    d_opt = Approach1.d_opt
    loss = Approach1.loss


@dataclass
class Approach3:
    """L(N, D) = E + A / N^alpha + B / D^beta, and its compute-optimal frontier for C = k N D."""

    E: float
    E_ci: list[float]
    A: float
    A_ci: list[float]
    B: float
    B_ci: list[float]
    alpha: float
    alpha_ci: list[float]
    beta: float
    beta_ci: list[float]
    a: float  # beta / (alpha + beta)
    a_ci: list[float]
    b: float  # alpha / (alpha + beta)
    b_ci: list[float]
    G: float  # N_opt = G (C / k)^a, D_opt = (C / k)^b / G
    G_ci: list[float]
    flops_per_param_token: float  # k: the table's median flops / (N D); 6 when flops were absent
    huber_delta: float
    objective: float  # huber-lbfgs: sum of Huber / delta at the optimum; varpro: the (weighted) sum of squared residuals
    rmse_log_loss: float  # root mean squared residual of ln L
    n_points: int
    n_starts: int
    effective_data: bool  # fitted on Muennighoff effective tokens D' (multi-epoch runs present)
    r_star: float | None
    method: str = "huber-lbfgs"  # FitConfig.approach3_method: "varpro" or "huber-lbfgs"
    # Per parameter (E, A, B, alpha, beta, G): False when its interval spans more than
    # IDENTIFIED_DECADES decades (or reaches 0): the data do not pin it down. None: no interval.
    identified: dict = field(default_factory=dict)
    at_bound: list = field(default_factory=list)  # varpro: exponents at the searched range's edge
    outliers: list = field(default_factory=list)  # run ids OUTLIER_SDS robust SDs off the law in ln L
    # How the runs were weighted (approach3_weights): {"weights": "inverse-variance" or "equal", "why"} and, when
    # weighted, "bartlett_p", "scales" {budget: nats/token} (each run weighs 1 / its budget's scale^2, mean 1)
    weighting: dict = field(default_factory=dict)
    # [min, max] of the runs' tokens per parameter (D / N, effective D when multi-epoch): the N-D trade-off
    # that locates the optimum is measured only across a spread of them (law_checks.MIN_TOKENS_PER_PARAM_SPAN)
    tokens_per_param: list = field(default_factory=list)

    def loss(self, n, d):
        """Predicted loss E + A / N^alpha + B / D^beta at parameters n and tokens d (broadcast arrays)."""
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def n_opt(self, c):
        """Compute-optimal parameters N_opt = G (C / k)^a at compute c (FLOPs), k = flops_per_param_token.

        The minimiser of L(N, D) under C = k N D (Hoffmann et al. 2022, eq. 4).
        """
        return self.G * (np.asarray(c, dtype=float) / self.flops_per_param_token) ** self.a

    def d_opt(self, c):
        """Compute-optimal tokens D_opt = (C / k)^b / G at compute c (FLOPs), k = flops_per_param_token."""
        return (np.asarray(c, dtype=float) / self.flops_per_param_token) ** self.b / self.G


@dataclass
class UtilityFit:
    """Power law of clinical utility (1 - metric) in compute C.

    (1 - metric) = coef * C^exponent through the loss-optimal run of each budget (the model the
    laws recommend); see fit_utility for the intervals.
    """

    metric: str  # the column, e.g. "auroc/mortality"
    coef: float
    coef_ci: list[float]
    exponent: float
    exponent_ci: list[float]
    r2: float
    n_points: int
    # budget, flops, run_id (one run of the shape), value and se (None when unknown): the shape's mean over its
    # n_runs replicate runs with a value (seeds; n_runs absent in older fits.json)
    points: list[dict]
    measurement_noise: bool = False  # weighted by, and intervals from, each point's AUROC standard error
    paired: bool = False  # intervals from shared held-out resamples (auroc_boot/<task>), not independent draws
    # AUROC = intercept + slope * loss over every run with an AUROC (see fit_loss_link), or None
    loss_link: dict | None = None
    # with SEs: {"q": the weighted residual sum of squares, "dof": n - 2, "ratio": sqrt(q / dof), the Birge ratio
    # (> 1: the points scatter beyond their SEs, and k's interval widens for it), "p": P(chi2_dof >= q)}; else None
    scatter: dict | None = None

    def predict(self, c):
        """AUROC predicted at compute c (FLOPs): 1 - coef * C^exponent, kept in [0.5, 1] (laws.auroc_from_law)."""
        return auroc_from_law(self.coef, self.exponent, c)


@dataclass
class FitResult:
    """Everything a fit of a results table produced: the approaches, utility laws, hold-out, bootstrap draws.

    Saved by write_fits as fits.json (to_json), fit_config.json and bootstrap.parquet; read back by
    load_fit. An approach that could not be fitted is None, with the reason in `not_fitted`.
    """
    approach1: Approach1 | None
    approach2: Approach2 | None
    approach3: Approach3 | None
    utility: dict[str, UtilityFit]
    n_runs: int  # rows in the table
    n_fitted: int  # completed runs used
    excluded: list[dict]  # {"run_id", "reason"}: runs not fitted
    warnings: list[str]
    inputs: dict  # source, budgets, unique tokens, vocab_size, context, ...
    config: FitConfig
    not_fitted: dict[str, str] = field(default_factory=dict)  # "approachK" / "holdout" -> why it could not be fitted
    holdout: dict | None = None  # the held-out-budget validation (fit_holdout), None when not made
    # "approach2/a" -> why its interval is not reported (laws.interval_problem): fits.json
    # `intervals_not_available`; the interval itself is null there and "n/a" in fits.md.
    interval_notes: dict[str, str] = field(default_factory=dict)
    n_count: str = "non-embedding"  # the parameter count fitted (FitConfig.n_count, or its fallback)
    # Bootstrap draws per quantity ("approach3/alpha" -> (R,)), for intervals of predictions.
    draws: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        """The content of fits.json: every fitted part as plain JSON values, NaN written as null.

        Utility laws are keyed by task ("auroc/mortality" -> "mortality"); other metric columns keep
        their name.
        """
        out = {}
        for name in ("approach1", "approach2", "approach3"):
            part = getattr(self, name)
            if part is not None:
                out[name] = dataclasses.asdict(part)
        out["utility"] = {k.split("/", 1)[1] if k.startswith("auroc/") else k: dataclasses.asdict(v) for k, v in self.utility.items()}
        out.update(holdout=self.holdout, n_count=self.n_count, n_runs=self.n_runs, n_fitted=self.n_fitted,
                   excluded=self.excluded, not_fitted=self.not_fitted, warnings=self.warnings, inputs=self.inputs,
                   intervals_not_available=self.interval_notes)
        return _finite_json(out)


def _finite_json(obj):
    """NaN is not JSON: write null instead."""
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_json(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# ---------------------------------------------------------------------------------------------
# Approach 1


def shape_groups(res: Results) -> np.ndarray:
    """The shape of each run: runs of one budget with the same N and D (to 1e-6) share a group id.

    Runs of one shape are replicates (seeds): the same model trained on the same tokens.
    """
    key = np.stack([res.budget, np.round(np.log(res.n_params), 6), np.round(np.log(res.tokens), 6)], 1)
    return np.unique(key, axis=0, return_inverse=True)[1].ravel()


def bootstrap_counts(res: Results, replicates: int, rng: np.random.Generator) -> np.ndarray | None:
    """(replicates, n) multiplicities of the runs in each bootstrap replicate; None for 0 replicates.

    The sampling unit is the point (`shape_groups`: one budget and shape), drawn with all its runs
    (a cluster bootstrap, Davison & Hinkley 1997, section 3.8): replicate seeds of one point share its
    data, tokens and shape, so drawing them one by one as if independent made intervals too narrow
    (seeds of one shape with a shared 1% offset: Approach 3's interval held the true alpha in 2 of 8
    draws, 8 of 8 with the point as unit). A table of one run per point draws runs exactly as before.
    """
    if not replicates:
        return None
    groups = shape_groups(res)
    k = int(groups.max()) + 1 if res.n else 0
    if k == res.n:  # one run per point: the same stream of draws as the run bootstrap
        return rng.multinomial(res.n, np.full(res.n, 1.0 / res.n), size=replicates).astype(float)
    return rng.multinomial(k, np.full(k, 1.0 / k), size=replicates)[:, groups].astype(float)


def replicate_summary(res: Results) -> dict | None:
    """How many shapes were run more than once (seeds), or None when every shape has one run.

    {"shapes": shapes with >= 2 runs, "runs": the runs of those shapes, "max": the most runs of one shape}.
    """
    _, counts = np.unique(shape_groups(res), return_counts=True)
    rep = counts[counts > 1]
    return dict(shapes=int(rep.size), runs=int(rep.sum()), max=int(rep.max())) if rep.size else None


def _envelope(res: Results, counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The lower-envelope shapes (Approach 1): (a run of each, its shape's mean loss).

    Per budget the shape (N, D) of lowest mean loss over its replicate runs (seeds; one run per
    shape is the usual case, and its loss is its own), kept when that loss is below every cheaper
    budget's. The lowest single seed would be the minimum of noisy draws: biased low, and picking
    the shape by its luckiest seed. counts: (n,) a bootstrap replicate's multiplicity of each run;
    the shape's mean is then weighted by them (a seed drawn twice counts twice, as the bootstrap of a
    mean has it: an unweighted mean of the seeds drawn gave the plain mean in most replicates).
    """
    w = np.ones(res.n) if counts is None else np.asarray(counts, dtype=float)
    idx = np.flatnonzero(w > 0)
    group = shape_groups(res)[idx]
    gids, first, inv = np.unique(group, return_index=True, return_inverse=True)
    inv, wi = inv.ravel(), w[idx]
    mean = np.bincount(inv, weights=res.loss[idx] * wi, minlength=gids.size) / np.bincount(inv, weights=wi, minlength=gids.size)
    alone = np.bincount(inv, minlength=gids.size) == 1
    mean[alone] = res.loss[idx[first[alone]]]  # a shape's only run: its own loss, exactly (x * 3 / 3 can move the last bit)
    rep = idx[first]  # one run of each shape
    best = []
    for bud in np.unique(res.budget[rep]):
        members = np.flatnonzero(res.budget[rep] == bud)
        best.append(members[np.argmin(mean[members])])
    best.sort(key=lambda j: res.budget[rep[j]])
    kept, lowest = [], np.inf
    for j in best:
        if mean[j] < lowest:
            kept.append(j)
            lowest = mean[j]
    kept = np.array(kept, dtype=int)
    return rep[kept], mean[kept]


def _at_ladder_edge(res: Results, i: int) -> bool:
    """Is run i the smallest or largest model size of its budget (or its budget's only size)?

    Such a run is the lowest loss its ladder found, but the ladder did not go past it: the
    budget's optimum may lie beyond, so the run is a bound on N_opt, not an estimate of it.
    """
    x = np.log(res.n_params[res.budget == res.budget[i]])
    xi, tol = math.log(res.n_params[i]), 1e-9
    return bool(np.unique(np.round(x, 9)).size < 3 or xi <= x.min() + tol or xi >= x.max() - tol)


def _approach1_laws(res: Results, env: np.ndarray, loss: np.ndarray) -> np.ndarray:
    c = res.flops[env]
    n_coef, a, _ = fit_power_law(c, res.n_params[env])
    d_coef, b, _ = fit_power_law(c, res.tokens[env])
    l_coef, l_exp, _ = fit_power_law(c, loss)
    return np.array([a, b, n_coef, d_coef, l_coef, l_exp])


A12_KEYS = ("a", "b", "n_coef", "d_coef", "loss_coef", "loss_exponent")


def fit_approach1(res: Results, counts: np.ndarray | None, cfg: FitConfig):
    """Fit Approach 1 (Hoffmann et al. 2022, section 3.1): power laws through the lower envelope of runs.

    N_opt = n_coef C^a, D_opt = d_coef C^b and the envelope loss = loss_coef C^loss_exponent, fitted
    through the lowest-loss run of each budget that beats every cheaper budget's best run. An
    envelope run that is the smallest or largest size of its budget's ladder (or its only size) is
    listed in `edge_budgets`: there the envelope follows the ladder's end, not the optimum, and
    analysis.recommend.trust does not trust the law.

    Args:
        res: the checked runs (n runs).
        counts: (R, n) bootstrap multiplicities of each run, or None for no intervals.
        cfg: the fit config (its confidence level).

    Returns:
        (Approach1, {"approach1/<key>": (R,) draws}) for the keys of A12_KEYS.

    Raises:
        UserError: the envelope spans fewer than 2 budgets.
    """
    env, env_loss = _envelope(res)
    if env.size < 2:
        raise UserError(
            f"Approach 1 needs the lower envelope to span >= 2 budgets; {res.source} gives {env.size} "
            f"(losses do not fall with compute across budgets); drop it with --approach 2,3"
        )
    point = _approach1_laws(res, env, env_loss)
    at_edge = [_at_ladder_edge(res, i) for i in env]
    draws = np.full((0 if counts is None else len(counts), 6), np.nan)
    for r in range(len(draws)):
        e, el = _envelope(res, counts[r])
        if e.size >= 2 and np.unique(res.flops[e]).size >= 2:
            draws[r] = _approach1_laws(res, e, el)
    ci = {k: percentile_ci(draws[:, j], cfg.confidence) for j, k in enumerate(A12_KEYS)}
    group = shape_groups(res)
    points = [
        dict(run_id=str(res.run_id[i]), budget=float(res.budget[i]), flops=float(res.flops[i]),
             n_params=float(res.n_params[i]), tokens=float(res.tokens[i]), loss=float(loss), at_edge=edge,
             n_runs=int((group == group[i]).sum()))
        for i, loss, edge in zip(env, env_loss, at_edge, strict=True)
    ]
    fit = Approach1(
        **{k: float(point[j]) for j, k in enumerate(A12_KEYS)}, **{f"{k}_ci": ci[k] for k in A12_KEYS},
        n_points=int(env.size), points=points,
        edge_budgets=[float(res.budget[i]) for i, edge in zip(env, at_edge, strict=True) if edge],
    )
    return fit, {f"approach1/{k}": draws[:, j] for j, k in enumerate(A12_KEYS)}


# ---------------------------------------------------------------------------------------------
# Approach 2


def _parabolas(x, y, w):
    """Weighted least-squares parabolas y = c0 + c1 x + c2 x^2 for each row of weights w (R, P).

    y is (P,) (the same losses for every row) or (R, P) (one set of losses per row). Returns (R, 3);
    NaN rows where the weighted design has rank < 3.
    """
    X = np.stack([np.ones_like(x), x, x * x], axis=1)
    xtwx = np.einsum("rp,pi,pj->rij", w, X, X)
    xtwy = np.einsum("rp,pi,rp->ri", w, X, np.broadcast_to(y, w.shape))
    ok = np.linalg.matrix_rank(xtwx) == 3
    coef = np.full((w.shape[0], 3), np.nan)
    if ok.any():
        coef[ok] = np.linalg.solve(xtwx[ok], xtwy[ok][..., None])[..., 0]
    return coef


def _adjusted_residuals(x: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """Leverage-adjusted, centred residuals r_i / sqrt(1 - h_ii) of one budget's parabola.

    Davison & Hinkley 1997, eq. 6.9. `residuals` = y - fitted at the sizes x (ln N, repeated for
    replicate seeds); call it only with > 3 runs. A run alone at its size among 3 sizes is
    interpolated (h_ii = 1) and left out; replicates of a size keep their scatter (h_ii < 1).
    """
    X = np.stack([np.ones_like(x), x, x * x], axis=1)
    h = np.einsum("pi,ij,pj->p", X, np.linalg.pinv(X.T @ X), X)
    keep = h < 1 - 1e-9
    r = residuals[keep] / np.sqrt(1 - h[keep])
    return r - r.mean() if r.size else r


def _budget_points(res: Results, members: np.ndarray, coef: np.ndarray, w: np.ndarray):
    """Vertex of each parabola: (n_opt, d_opt, loss_min, curvature); NaN where not convex."""
    c0, c1, c2 = coef.T
    convex = c2 > 0
    x_opt = np.where(convex, -c1 / np.where(convex, 2 * c2, 1.0), np.nan)
    # D at the optimum from the budget's own ln D ~ ln N line (exactly C / (6 N) when C = 6 N D,
    # and right too when flops also count embeddings and attention).
    x, ld = np.log(res.n_params[members]), np.log(res.tokens[members])
    wm = w / w.sum(axis=1, keepdims=True)
    xm, lm = wm @ x, wm @ ld
    slope = (wm * (x - xm[:, None]) * (ld - lm[:, None])).sum(1) / np.maximum((wm * (x - xm[:, None]) ** 2).sum(1), 1e-300)
    ld_opt = lm + slope * (x_opt - xm)
    loss_min = c0 + c1 * x_opt + c2 * x_opt**2
    with np.errstate(over="ignore", under="ignore"):  # a vertex at ln N = 1e3 (nearly flat parabola): inf / 0
        n_opt, d_opt = np.exp(x_opt), np.exp(ld_opt)
    return n_opt, d_opt, loss_min, np.where(convex, 2 * c2, np.nan), np.stack([lm - slope * xm, slope], 1)


def fit_approach2(res: Results, rng: np.random.Generator, cfg: FitConfig, warn):
    """Fit Approach 2: IsoFLOP parabolas, then power laws of their minima in C.

    Approach 2 (Hoffmann et al. 2022, section 3.2): a parabola of loss in ln N per IsoFLOP budget,
    then power laws of its minimum (N_opt, D_opt, L_min) in C. Bootstrap (cfg.approach2_bootstrap):
    "residuals" (default) adds leverage-adjusted residuals, pooled over the used budgets'
    parabolas and resampled, to each parabola (the fixed-design bootstrap; each budget at its own
    scale when their variances differ, `residual_scales`); "runs" resamples the
    runs within each budget. The power laws are refitted per draw.

    Args:
        res: the checked runs.
        rng: the generator of the bootstrap resamples.
        cfg: bootstrap replicates R and method, confidence level and the parabola checks.
        warn: called with a message for each budget left out (and a fallback to "runs").

    Returns:
        (Approach2, {"approach2/<key>": (R,) draws}) for the keys of A12_KEYS: N_opt = n_coef C^a
        (parameters), D_opt = d_coef C^b (tokens), L_min = loss_coef C^loss_exponent (C in FLOPs).

    Raises:
        UserError: fewer than 2 budgets give a usable parabola minimum.
    """
    R = cfg.bootstrap
    per_budget_draws = []  # (R, 3): n_opt, d_opt, loss_min per budget
    members = [np.flatnonzero(res.budget == bud) for bud in np.unique(res.budget)]
    fits = [_fit_budget_parabola(res, m, float(bud), cfg) for m, bud in zip(members, np.unique(res.budget), strict=True)]
    # The sizes of an IsoFLOP ladder are fixed by design, not sampled: the fixed-design (residual)
    # bootstrap fits them (Efron & Tibshirani 1993, sec. 9.5). Resampling 4-5 runs instead makes
    # about half the replicates interpolate 3 points exactly, whose vertex can fall anywhere.
    pool = np.array([r for bf in fits for r in bf.residuals])
    method = cfg.approach2_bootstrap
    if R and method == "residuals" and pool.size < 3:
        why = ("no used budget has more runs than its parabola has coefficients, 3" if any(bf.used for bf in fits)
               else "no budget's parabola is used")  # it named the coefficients when every budget was left out
        if sum(bf.used for bf in fits) >= 2:  # else Approach 2 is not fitted at all, and says why below
            warn(f"Approach 2: {pool.size} residual(s) to resample ({why}); its intervals resample runs instead")
        method = "runs"
    scales, scaling = (residual_scales(fits, cfg.residual_scaling_level) if R and method == "residuals"
                       else (np.ones(len(fits)), {}))
    factors = np.ones((len(fits), R))
    if "scales" in scaling:  # one pool of standardized residuals, each budget drawing them back at its own scale
        pool = np.concatenate([np.asarray(bf.residuals) / sc for bf, sc in zip(fits, scales, strict=True) if bf.residuals])
        factors = scale_uncertainty(fits, R, rng)  # the trend's scales are estimates: each replicate draws its own
    for m, bf, sc, fac in zip(members, fits, scales, factors, strict=True):
        per_budget_draws.append(_bootstrap_budget(res, m, bf, pool, method, rng, cfg, sc * fac)
                                if R and bf.coef and bf.coef[2] > 0 else None)

    for bf in fits:
        if not bf.used:
            warn(f"Approach 2: budget {bf.budget:.3g} FLOPs left out of the power laws: {bf.reason}")
    used = [i for i, bf in enumerate(fits) if bf.used]
    if len(used) < 2:
        reasons = "; ".join(f"{bf.budget:.3g}: {bf.reason}" for bf in fits if not bf.used)
        raise UserError(
            f"Approach 2 needs >= 2 usable IsoFLOP budgets; {res.source} has {len(used)} of {len(fits)}"
            + (f" ({reasons})" if reasons else "")
        )
    c = np.array([fits[i].budget for i in used])
    n = np.array([fits[i].n_opt for i in used])
    d = np.array([fits[i].d_opt for i in used])
    lmin = np.array([fits[i].loss_min for i in used])
    n_coef, a, r2_n = fit_power_law(c, n)
    d_coef, b, r2_d = fit_power_law(c, d)
    l_coef, l_exp, _ = fit_power_law(c, lmin)
    point = np.array([a, b, n_coef, d_coef, l_coef, l_exp])

    draws = _power_law_draws(c, np.stack([per_budget_draws[i] for i in used], 1)) if R else np.full((0, 6), np.nan)
    ci = {k: percentile_ci(draws[:, j], cfg.confidence) for j, k in enumerate(A12_KEYS)}
    fit = Approach2(
        **{k: float(point[j]) for j, k in enumerate(A12_KEYS)}, **{f"{k}_ci": ci[k] for k in A12_KEYS},
        r2_n=r2_n, r2_d=r2_d, n_budgets_used=len(used), budgets=fits, bootstrap_method=method if R else None,
        residual_scaling=scaling,
        loss_law_misses=loss_law_misses(fits, l_coef, l_exp),
    )
    if fit.loss_law_misses:
        gap = max(abs(l_coef * bf.budget**l_exp / bf.loss_min - 1) for bf in fits if bf.budget in fit.loss_law_misses)
        warn(f"Approach 2: its loss law L_min = {l_coef:.3g} C^{l_exp:.3g} lies outside the L_min interval of "
             f"{len(fit.loss_law_misses)} of its {len(used)} budgets (by up to {gap:.2%}): a power law without a floor "
             "bends away from the minima, so its predicted losses' intervals are too narrow (Approach 3 has a floor, E)")
    return fit, {f"approach2/{k}": draws[:, j] for j, k in enumerate(A12_KEYS)}


def loss_law_misses(budgets: list[BudgetFit], coef: float, exponent: float) -> list[float]:
    """The used budgets (FLOPs) whose L_min interval excludes coef * C^exponent, the loss law's L_min there.

    Budgets without an interval (no bootstrap, or none available) are not judged.
    """
    out = []
    for bf in budgets:
        lo, hi = bf.loss_min_ci
        if bf.used and np.isfinite([lo, hi]).all() and not lo <= coef * bf.budget**exponent <= hi:
            out.append(float(bf.budget))
    return out


def _fit_budget_parabola(res: Results, members: np.ndarray, budget: float, cfg: FitConfig) -> BudgetFit:
    """One IsoFLOP budget's parabola L = c0 + c1 ln N + c2 (ln N)^2 and its minimum.

    The budget is used in the power laws when the parabola is convex, its vertex lies within the
    sampled sizes (cfg.require_interior) and it fits its runs: with >= 4 sizes, a lack-of-fit test
    must give p >= LACK_OF_FIT_P. A ladder far off its budget's optimum samples the steep,
    exponential side of the IsoFLOP curve, which a parabola cannot follow. The test
    (`_lack_of_fit`) is the classical F-test against pure error when some size was trained more
    than once (replicate seeds: their scatter is all the noise a run's loss has, training noise
    included), else a chi-square test of the residuals against the runs' eval standard errors.
    Nor is a budget used whose minimum is not credible (`_incredible_minimum`), nor one whose runs
    all have the same loss (no curvature to fit: the sign of c2 is rounding).
    """
    x, y = np.log(res.n_params[members]), res.loss[members]
    n_distinct = np.unique(np.round(x, 9)).size
    bf = BudgetFit(budget=budget, n_points=int(members.size), used=False, reason="")
    lo, hi = res.flops[members].min(), res.flops[members].max()
    if res.budget_from != "budget" and math.log10(hi / lo) > MAX_FLOPS_GROUP_SPAN_DECADES:
        # a parabola through runs of several budgets mixes their IsoFLOP curves (R^2 0.32 on Chinchilla's)
        bf.reason = (f"its {members.size} runs, grouped by FLOPs, span {lo:.3g} to {hi:.3g} FLOPs ({hi / lo:.3g}x): "
                     "several IsoFLOP budgets chained together, not one (add a budget column: each run's planned FLOPs)")
        return bf
    if n_distinct < cfg.min_points_per_budget:
        bf.reason = f"{n_distinct} distinct model size(s) (a parabola needs >= {cfg.min_points_per_budget})"
        return bf
    if np.ptp(y) <= 1e-12 * np.abs(y).max():
        # rounding then decides the sign of the curvature: any "minimum" would be noise
        bf.reason = (f"its {members.size} runs have the same loss ({y[0]:.6g}) at every size: no curvature to fit "
                     "(losses copied, or written for runs that did not train?)")
        return bf
    coef = _parabolas(x, y, np.ones((1, members.size)))[0]
    n_opt, d_opt, loss_min, curv, dline = (v[0] for v in _budget_points(res, members, coef[None], np.ones((1, members.size))))
    pred = coef[0] + coef[1] * x + coef[2] * x * x
    ss_tot = np.sum((y - y.mean()) ** 2)
    bf.r2 = float(1 - np.sum((y - pred) ** 2) / ss_tot) if ss_tot > 0 else 1.0
    bf.coef = [float(c) for c in coef]
    bf.log_n_range = [float(x.min()), float(x.max())]
    bf.d_line = [float(v) for v in dline]
    if not coef[2] > 0:
        bf.reason = "concave parabola (no minimum: loss does not turn up at either end)"
        return bf
    bf.curvature = float(curv)
    if not (0 < n_opt < np.inf and 0 < d_opt < np.inf):
        # exp() of a vertex hundreds of e-folds away: N_opt inf and D_opt 0 tokens would be printed as numbers
        bf.reason = (f"the parabola is nearly flat: its vertex, ln N = {-coef[1] / (2 * coef[2]):.3g}, lies far outside the "
                     f"sampled sizes (ln N {x.min():.3g} to {x.max():.3g}): no minimum")
        return bf
    bf.n_opt, bf.d_opt, bf.loss_min = float(n_opt), float(d_opt), float(loss_min)
    bf.interior = bool(x.min() <= math.log(n_opt) <= x.max())
    se = res.loss_se[members] if res.loss_se is not None else np.full(members.size, np.nan)
    bf.lack_of_fit_p, bf.lack_of_fit_test, noise = _lack_of_fit(x, y, pred, se)
    incredible = _incredible_minimum(res, members, bf.loss_min)
    if incredible:
        bf.reason = incredible
    elif not bf.interior and cfg.require_interior:
        bf.reason = "minimum outside the sampled model sizes (extrapolated)"
    elif bf.lack_of_fit_p < LACK_OF_FIT_P:
        bf.reason = (f"the parabola does not fit its runs (residual SD {np.std(y - pred):.3g} vs {noise}; "
                     f"lack-of-fit p = {bf.lack_of_fit_p:.2g}): its sizes span too far from the optimum for a parabola "
                     "in ln N, or its runs differ by more than "
                     + ("their seed replicates do (runs of one shape that differ in more than the seed?)"
                        if bf.lack_of_fit_test == "pure error" else "their eval SE (training noise: seed replicates measure it)"))
    else:
        bf.used = True
        # Replicate seeds leave residual degrees of freedom even at 3 sizes (n - 3 > 0): the seeds' scatter
        # around each size's mean (leverage < 1). Counting sizes instead sent 3 sizes x 2 seeds to "runs".
        bf.residuals = [float(r) for r in _adjusted_residuals(x, y - pred)] if members.size > 3 else []
    return bf


def _lack_of_fit(x: np.ndarray, y: np.ndarray, pred: np.ndarray, se: np.ndarray) -> tuple[float, str, str]:
    """(p, test name, the noise it compares with, in words) of a budget's parabola; (NaN, "", "") when untestable.

    x: (n,) ln N of the runs; y: (n,) their losses; pred: (n,) the parabola's; se: (n,) eval SEs.

    Pure error (Draper & Smith 1998, "Applied Regression Analysis", section 2.1), when some size
    has replicate runs: SS_res = SS_pure + SS_lack, where SS_pure sums each run's squared distance
    from its size's mean loss (n - m degrees of freedom for m distinct sizes) and SS_lack the rest
    (m - 3); F = (SS_lack / (m - 3)) / (SS_pure / (n - m)). Replicate seeds of one shape scatter by
    training noise (3% between seeds at the demo's scale, README), which the eval SE does not
    contain: against the eval SE alone a parabola through seeds would fail for their scatter, not
    for its shape. Without replicates: chi-square of the residuals over the eval SEs, n - 3
    degrees of freedom (each run's SE known and positive). Either needs m >= 4 sizes.
    """
    level, inv = np.unique(np.round(x, 9), return_inverse=True)
    m, n = level.size, y.size
    if m <= 3:
        return float("nan"), "", ""
    resid = y - pred
    if n > m:
        inv = inv.ravel()
        means = np.bincount(inv, weights=y, minlength=m) / np.bincount(inv, minlength=m)
        ss_pure = float(np.sum((y - means[inv]) ** 2))
        if ss_pure > 0:
            ss_lack = max(float(np.sum(resid**2)) - ss_pure, 0.0)
            f_stat = (ss_lack / (m - 3)) / (ss_pure / (n - m))
            return (float(scipy_stats.f.sf(f_stat, m - 3, n - m)), "pure error",
                    f"replicate SD {math.sqrt(ss_pure / (n - m)):.3g} ({n - m} df)")
    if np.all(np.isfinite(se) & (se > 0)):
        chi2 = float(np.sum((resid / se) ** 2))
        return float(scipy_stats.chi2.sf(chi2, n - 3)), "eval SE", f"eval SE {np.median(se):.3g}"
    return float("nan"), "", ""


def _incredible_minimum(res: Results, members: np.ndarray, loss_min: float) -> str:
    """Why a budget's parabola minimum L_min cannot be a loss ("" when it can).

    A loss is positive, so L_min <= 0 is refused. So is an L_min below the budget's lowest observed
    loss by more than the whole spread (max - min) of its observed losses: a convex parabola that
    follows its runs dips below the best of them by its curvature times the squared distance from
    the vertex to the nearest sampled size, a fraction of the rise across the ladder; a dip larger
    than that whole rise comes from a run the parabola should not follow (a loss recorded wrong, a
    blow-up). The run farthest from the budget's median loss is named as the likely outlier when it
    stands clearly apart (more than 3 times the spread of the other runs from the median). With 3
    sizes the parabola interpolates its runs, so a milder wrong loss (20 among losses near 2.6)
    moves the vertex without failing this test; the lack-of-fit test needs >= 4 sizes.
    """
    y = res.loss[members]
    lowest, spread = float(y.min()), float(np.ptp(y))
    if loss_min > 0 and loss_min >= lowest - spread:
        return ""
    what = (f"L_min = {loss_min:.4g} is not positive" if not loss_min > 0 else
            f"L_min = {loss_min:.4g} is below the lowest observed loss {lowest:.4g} by more than the spread of the budget's "
            f"losses ({spread:.3g})")
    what += ": not a credible minimum"
    med = float(np.median(y))
    i = int(np.argmax(np.abs(y - med)))
    others = np.delete(y, i)
    if others.size >= 2 and abs(y[i] - med) > 3 * float(np.ptp(others)):
        what += f" (run {res.run_id[members[i]]}, loss {y[i]:.4g} against the budget's median {med:.4g}, is the likely outlier: check its loss)"
    return what


def bartlett_p(variances, dfs) -> float:
    """P-value of Bartlett's test that k variance estimates share one variance.

    variances: (k,) estimates s_i^2, each with dfs[i] >= 1 degrees of freedom (a fitted curve's
    residuals: runs minus its coefficients). T = [nu ln s_p^2 - sum nu_i ln s_i^2] / (1 + (sum 1/nu_i
    - 1/nu) / (3 (k - 1))), nu = sum nu_i, s_p^2 = sum nu_i s_i^2 / nu, is chi-square with k - 1 degrees
    of freedom under equal variances (Bartlett 1937; Snedecor & Cochran 1989, sec. 13.10).
    scipy.stats.bartlett computes it for samples about their means (nu_i = n_i - 1) only.
    """
    from scipy.stats import chi2

    s2, nu = np.asarray(variances, dtype=float), np.asarray(dfs, dtype=float)
    k, total = s2.size, nu.sum()
    pooled = float(np.sum(nu * s2) / total)
    t = (total * math.log(pooled) - float(np.sum(nu * np.log(s2)))) / (1 + (np.sum(1 / nu) - 1 / total) / (3 * (k - 1)))
    return float(chi2.sf(t, k - 1))


def _has_residual_df(bf: BudgetFit) -> bool:
    """Whether a budget's parabola leaves residuals to compare variances by (> 3 runs, >= 2 residuals)."""
    return len(bf.residuals) >= 2 and bf.n_points > 3


def residual_scales(fits: list[BudgetFit], level: float = 0.05) -> tuple[np.ndarray, dict]:
    """Per-budget scales of the Approach 2 residual bootstrap, and what fits.json records of them.

    A training run's final loss scatters between seeds far more when it is short: in the default demo
    three seeds of a 280-step run ended 0.075 nats apart, four of a 1,800-step run 0.009 apart (README).
    One pool of residuals then puts the smallest budget's scatter on the largest budget's parabola
    and widens every interval (benchmarks/bootstrap_coverage.py: 4 budgets x 5 sizes, noise SD 0.03,
    0.006, 0.004, 0.004 nats: a's 95% interval covered the true exponent in 99% of 200 draws, median
    width 0.231).
    So when Bartlett's test rejects equal variances of the budgets' leverage-adjusted residuals at
    `level` (with >= 3 budgets that have residuals), each budget gets the scale of a log-linear
    trend of their RMS in ln C (a trend, not each budget's own RMS: 2-4 residual degrees of freedom
    estimate a scale poorly, and intervals drawn at it cover too little), the residuals are pooled
    standardized, and each budget draws them back at its scale (Davison & Hinkley 1997, sec. 6.2.6,
    heteroscedastic errors). In the simulation above: 94% covered, median width 0.069; with equal
    noise (SD 0.005 everywhere) 92% at 0.062 against one pool's 92% at 0.063 (the test, `bartlett_p`
    with each parabola's n - 3 degrees of freedom, rejects in ~5% of such draws). The scales are
    estimates, and drawing at them as if known covered 85% of 400 draws of 4 budgets x 7 sizes with
    ln-L noise 0.03, 0.01, 0.005, 0.003 (a helper, 2026-12-07): each replicate now also draws its own
    scales (`scale_uncertainty`): 90% there (the rest is the percentile interval's: 91% with the
    true scales), 97.5% at width 0.096 in the simulation above, equal noise unchanged.

    Args:
        fits: every budget's parabola (`residuals`: leverage-adjusted, centred; [] for a 3-size ladder).
        level: the test's level; 0 keeps one pool.

    Returns:
        (scales (len(fits),), ones when pooled; {"bartlett_p"} and, when scaled, {"scales": {budget: s}} in
        nats/token, "slope" of ln RMS in ln C}), or ones and {} when not tested.
    """
    have = [i for i, bf in enumerate(fits) if _has_residual_df(bf)]
    ones = np.ones(len(fits))
    if len(have) < 3 or not level > 0:
        return ones, {}
    groups = [np.asarray(fits[i].residuals) for i in have]
    if min(float(np.mean(g**2)) for g in groups) <= 0.0:  # residuals all 0 (an exact parabola): nothing to compare
        return ones, {}
    # A parabola's residuals have n - 3 degrees of freedom, not the n - 1 of a sample about its mean (what
    # scipy.stats.bartlett assumes): with 5 sizes, 2 against 4, and that test rejected equal variances in ~32% of
    # draws of equal noise (4 budgets x 5 sizes); with n - 3, ~4%.
    p = bartlett_p([float(np.mean(g**2)) for g in groups], [fits[i].n_points - 3 for i in have])
    if not p < level:
        return ones, {"bartlett_p": p}
    ln_c = np.log([fits[i].budget for i in have])
    ln_rms = np.log([np.sqrt(np.mean(g**2)) for g in groups])
    slope, icept = np.polyfit(ln_c, ln_rms, 1)
    trend = np.exp(icept + slope * ln_c)
    # a budget without residuals (a 3-size ladder) or outside them is not extrapolated past the trend's ends
    scale = np.clip(np.exp(icept + slope * np.log([bf.budget for bf in fits])), trend.min(), trend.max())
    if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        return ones, {"bartlett_p": p}
    return scale, {"bartlett_p": p, "slope": float(slope), "scales": {f"{bf.budget:.6g}": float(v) for bf, v in zip(fits, scale, strict=True)}}


def scale_uncertainty(fits: list[BudgetFit], replicates: int, rng: np.random.Generator) -> np.ndarray:
    """(len(fits), replicates) factors sigma / s of residual_scales' trend, drawn from the trend's sampling law.

    The trend is fitted to 3-5 budgets' ln RMS, each from n - 3 residual degrees of freedom (4 with 7 sizes):
    at the ends of the trend, where the smallest budget's noise sets most of a's variance, its scale is about
    as uncertain as a 5-df estimate, and drawing at it as if known gave intervals that covered 85% of 400
    draws (4 budgets x 7 sizes, ln-L noise 0.03, 0.01, 0.005, 0.003). Each replicate instead draws
    ln(s_j^2 / sigma_j^2) = ln(chi2_nu / nu) - E[.] per budget, refits the same line in ln C and divides
    the scales by exp of half its value: with one budget this makes the bootstrap's spread Student's t
    with nu degrees of freedom instead of normal (Davison & Hinkley 1997, sec. 5.2: a scale's uncertainty).
    """
    from scipy.special import digamma

    have = [i for i, bf in enumerate(fits) if _has_residual_df(bf)]
    nu = np.array([fits[i].n_points - 3.0 for i in have])
    u = np.log(rng.chisquare(nu, size=(replicates, nu.size)) / nu) - (digamma(nu / 2) - np.log(nu / 2))
    ln_c = np.log([fits[i].budget for i in have])
    slope, icept = np.polyfit(ln_c, u.T, 1)  # (replicates,) each: the trend of residual_scales refitted
    at = np.clip(np.log([bf.budget for bf in fits]), ln_c.min(), ln_c.max())
    return np.exp(-(icept[None, :] + slope[None, :] * at[:, None]) / 2)


def _bootstrap_budget(res: Results, members: np.ndarray, bf: BudgetFit, pool: np.ndarray, method: str, rng, cfg: FitConfig,
                      scale=1.0):
    """Bootstrap draws (R, 3) of one budget's (n_opt, d_opt, loss_min), and its intervals set on `bf`.

    method "residuals": losses = the fitted parabola + residuals drawn from `pool` (fixed design), times
    `scale` (a number, or (R,): one per replicate);
    "runs": the budget's runs resampled with replacement (a draw with < 3 distinct runs is NaN).
    """
    x, y = np.log(res.n_params[members]), res.loss[members]
    if method == "residuals":
        w = np.ones((cfg.bootstrap, members.size))
        fitted = bf.coef[0] + bf.coef[1] * x + bf.coef[2] * x * x
        bcoef = _parabolas(x, fitted + rng.choice(pool, size=w.shape) * np.reshape(scale, (-1, 1)), w)
    else:
        w = rng.multinomial(members.size, np.full(members.size, 1.0 / members.size), size=cfg.bootstrap).astype(float)
        bcoef = _parabolas(x, y, w)
        bcoef[(w > 0).sum(1) < 3] = np.nan
    bn, bd, bl, bc, _ = _budget_points(res, members, bcoef, w)
    bf.n_opt_ci, bf.d_opt_ci = percentile_ci(bn, cfg.confidence), percentile_ci(bd, cfg.confidence)
    bf.loss_min_ci, bf.curvature_ci = percentile_ci(bl, cfg.confidence), percentile_ci(bc, cfg.confidence)
    bf.interval_note = interval_problem(bn, cfg.confidence)
    return np.stack([bn, bd, bl], 1)


def _power_law_draws(c: np.ndarray, stack: np.ndarray) -> np.ndarray:
    """Power laws of N_opt, D_opt and L_min in C, per bootstrap draw.

    Per bootstrap draw, the power laws of N_opt, D_opt and L_min in C over the budgets whose draw
    has a finite, positive minimum. stack: (R, budgets, 3). Returns (R, 6) in A12_KEYS order (NaN
    where fewer than 2 budgets remain).
    """
    draws = np.full((stack.shape[0], 6), np.nan)
    for r in range(stack.shape[0]):
        ok = np.all(np.isfinite(stack[r]) & (stack[r] > 0), axis=1)
        if ok.sum() >= 2:
            nc, aa, _ = fit_power_law(c[ok], stack[r, ok, 0])
            dc, bb, _ = fit_power_law(c[ok], stack[r, ok, 1])
            lc, le, _ = fit_power_law(c[ok], stack[r, ok, 2])
            draws[r] = [aa, bb, nc, dc, lc, le]
    return draws


# ---------------------------------------------------------------------------------------------
# Approach 3

A3_KEYS = ("E", "A", "B", "alpha", "beta", "a", "b", "G")


def _a3_derived(theta: np.ndarray) -> np.ndarray:
    """(R, 5) thetas (ln A, ln B, ln E, alpha, beta) -> (R, 8) in A3_KEYS order."""
    p = parametric.theta_to_params(np.atleast_2d(theta))
    return _a3_from_params(np.column_stack([p["E"], p["A"], p["B"], p["alpha"], p["beta"]]))


def _a3_from_params(params: np.ndarray) -> np.ndarray:
    """(R, 5) rows of E, A, B, alpha, beta -> (R, 8) in A3_KEYS order (a, b and G derived)."""
    E, A, B, al, be = np.atleast_2d(params).T
    with np.errstate(all="ignore"):
        G = (al * A / (be * B)) ** (1.0 / (al + be))
        return np.stack([E, A, B, al, be, be / (al + be), al / (al + be), G], 1)


def approach3_weights(res: Results, cfg: FitConfig) -> tuple[np.ndarray, dict]:
    """Per-run weights of Approach 3's least squares (varpro), and what fits.json records of them.

    A run's final loss scatters between seeds far more when it is short (`residual_scales`): in the
    default demo the 3.7e11 budget's parabola residuals had an RMS ~8x the 6e12 budget's. Unweighted
    least squares lets those runs pull the law as hard as the precise ones; weighted least squares
    with weights 1 / variance is the efficient estimator under such noise (Carroll & Ruppert 1988,
    ch. 2). The variances are estimated as Approach 2's residual bootstrap estimates them
    (`residual_scales`, whether or not that bootstrap runs): each budget's IsoFLOP parabola is
    fitted, and when Bartlett's test rejects equal variances of their residuals (at
    cfg.residual_scaling_level), every run weighs 1 / s_C^2, s_C its budget's trend scale
    (normalized to mean 1). Otherwise, and for "huber-lbfgs" or approach3_weights "equal", all weigh 1.
    `benchmarks/approach3_weights.py` measures the estimate of a with and without on a known law.

    Returns:
        ((n,) weights, {"weights": "inverse-variance" | "equal", "why": str, "bartlett_p"?, "scales"?}).
    """
    ones = np.ones(res.n)
    if cfg.approach3_method != "varpro":
        return ones, {"weights": "equal", "why": "huber-lbfgs: Hoffmann et al.'s robust loss, unweighted as published"}
    if cfg.approach3_weights == "equal":
        return ones, {"weights": "equal", "why": "approach3_weights equal"}
    budgets = np.unique(res.budget)
    fits = [_fit_budget_parabola(res, np.flatnonzero(res.budget == b), float(b), cfg) for b in budgets]
    scales, scaling = residual_scales(fits, cfg.residual_scaling_level)
    if "scales" not in scaling:
        p = scaling.get("bartlett_p")
        if not cfg.residual_scaling_level > 0:
            why = "residual_scaling_level 0: variances not compared"
        elif p is None:
            why = ("fewer than 3 IsoFLOP budgets with parabola residuals to compare"
                   if sum(map(_has_residual_df, fits)) < 3
                   else "a budget's parabola residuals are all 0: variances not compared")
        elif p < cfg.residual_scaling_level:
            why = f"the residual variances differ (Bartlett p = {p:.2g}) but their trend in C gave no usable scales"
        else:
            why = f"the budgets' residual variances do not differ (Bartlett p = {p:.2g})"
        return ones, {"weights": "equal", "why": why, **scaling}
    w = 1.0 / scales[np.searchsorted(budgets, res.budget)] ** 2
    return w / w.mean(), {"weights": "inverse-variance", "why": "the budgets' residual variances differ",
                          "bartlett_p": scaling["bartlett_p"], "scales": scaling["scales"]}


def fit_approach3(res: Results, counts: np.ndarray | None, cfg: FitConfig):
    """Fit Approach 3, the parametric law L(N, D), with bootstrap intervals.

    Approach 3: L(N, D) = E + A / N^alpha + B / D^beta by cfg.approach3_method (variable
    projection by default, weighted least squares when the budgets' noise differs:
    `approach3_weights`; "huber-lbfgs" as Hoffmann et al. 2022), bootstrap intervals from
    resampling runs, and which parameters the data identify (IDENTIFIED_DECADES).

    Args:
        res: the checked runs (n runs); multi-epoch tables are fitted on Muennighoff effective tokens.
        counts: (R, n) bootstrap multiplicities of each run, or None for no intervals.
        cfg: approach3_method, approach3_weights (with residual_scaling_level), huber_delta,
            bootstrap_starts, confidence and r_star (effective data).

    Returns:
        (Approach3, {"approach3/<key>": (R,) draws}) for the keys of A3_KEYS.

    Raises:
        UserError: fewer than 5 completed runs, an unknown approach3_method, or a degenerate best
            fit (alpha, beta, A or B not positive: no compute-optimal frontier).
    """
    if res.n < 5:
        raise UserError(f"Approach 3 fits 5 parameters; {res.source} has {res.n} completed runs")
    if cfg.approach3_method not in APPROACH3_METHODS:
        raise UserError(f"approach3_method must be one of {', '.join(APPROACH3_METHODS)} (got {cfg.approach3_method!r})")
    data = res.tokens
    effective = res.multi_epoch and res.unique_tokens is not None
    if effective:
        data = np.where(np.isfinite(res.unique_tokens), effective_tokens(res.tokens, res.unique_tokens, cfg.r_star), res.tokens)
    R = 0 if counts is None else len(counts)
    draws = np.full((R, 8), np.nan)
    weights, weighting = approach3_weights(res, cfg)
    if cfg.approach3_method == "varpro":
        best = parametric.fit_varpro(res.n_params, data, res.loss, weights)
        point = _a3_from_params(np.array([[best.E, best.A, best.B, best.alpha, best.beta]]))[0]
        objective, n_starts, huber_delta, at_bound = best.rss, best.n_starts, float("nan"), best.at_bound
    else:
        best = parametric.fit_parametric(res.n_params, data, res.loss, delta=cfg.huber_delta)
        point = _a3_derived(np.array(best.theta))[0]
        objective, n_starts, huber_delta, at_bound = best.objective, best.n_starts, cfg.huber_delta, []
    E, A, B, alpha, beta, G = (point[A3_KEYS.index(k)] for k in ("E", "A", "B", "alpha", "beta", "G"))
    if not (alpha > 0 and beta > 0 and A > 0 and B > 0 and np.isfinite(G) and G > 0):
        # A law whose loss does not fall with N or with D has no compute-optimal frontier: report
        # it rather than hand the recommender a meaningless optimum.
        raise UserError(
            f"Approach 3: the best parametric fit is degenerate (alpha={alpha:.3g}, beta={beta:.3g}, A={A:.3g}, B={B:.3g}); "
            "the runs do not constrain L(N, D) = E + A/N^alpha + B/D^beta (too narrow a range of N and D, or too noisy)"
        )
    if R:
        if cfg.approach3_method == "varpro":
            draws = _a3_from_params(parametric.bootstrap_varpro(res.n_params, data, res.loss, counts * weights,
                                                                desc="fit: Approach 3 bootstrap"))
        else:
            starts = best.local_optima[: cfg.bootstrap_starts]
            draws = _a3_derived(parametric.bootstrap_parametric(res.n_params, data, res.loss, counts, starts, cfg.huber_delta))
    ci = {k: percentile_ci(draws[:, j], cfg.confidence) for j, k in enumerate(A3_KEYS)}
    resid = np.log(best.loss(res.n_params, data)) - np.log(res.loss)
    spread = 1.4826 * np.median(np.abs(resid - np.median(resid)))
    outliers = res.run_id[np.abs(resid - np.median(resid)) > OUTLIER_SDS * spread] if spread > 0 else res.run_id[:0]
    fit = Approach3(
        **{k: float(point[j]) for j, k in enumerate(A3_KEYS)}, **{f"{k}_ci": ci[k] for k in A3_KEYS},
        flops_per_param_token=float(np.median(res.flops / (res.n_params * res.tokens))),
        huber_delta=huber_delta, objective=float(objective), rmse_log_loss=float(np.sqrt(np.mean(resid**2))),
        n_points=res.n, n_starts=n_starts, effective_data=bool(effective), r_star=cfg.r_star if effective else None,
        method=cfg.approach3_method, identified={k: identified(ci[k]) for k in ("E", "A", "B", "alpha", "beta", "G")},
        at_bound=list(at_bound), outliers=[str(r) for r in outliers], weighting=weighting,
        tokens_per_param=[float(np.min(data / res.n_params)), float(np.max(data / res.n_params))],
    )
    return fit, {f"approach3/{k}": draws[:, j] for j, k in enumerate(A3_KEYS)}


# ---------------------------------------------------------------------------------------------
# Held-out budget


def fit_holdout(res: Results, a2: Approach2, cfg: FitConfig) -> tuple[dict | None, str]:
    """Predict the largest usable IsoFLOP budget from the others, compared with its own parabola's minimum.

    On the runs of every smaller budget, Approach 2 is refitted and its N_opt = k C^a law predicts
    N_opt; Approach 3 is refitted (cfg.approach3_method) and its compute-optimal frontier
    L(N_opt(C), D_opt(C)) predicts L_min (`loss_method` "approach3") when it is identified (no
    exponent at the searched range's edge; alpha, beta and E identified; else `note` says why). The frontier of L = E +
    A/N^alpha + B/D^beta is E + K C^(-alpha beta / (alpha + beta)): a pure power law of L_min in C
    has no irreducible term and on exact Chinchilla data mispredicts the next budget by ~5%; it is
    kept as `approach2_predicted_loss`, and used (loss_method "approach2") only when Approach 3
    cannot be fitted, is not identified or is not in cfg.approaches. The predicted loss's interval has min(bootstrap, 200) replicates.

    Returns (holdout, reason): holdout is None (and reason says why) with fewer than 3 usable
    budgets. Keys: budget, predicted_loss(_ci), observed_loss(_ci), rel_error = |predicted -
    observed| / observed, previous_budget, previous_loss (the observed L_min of the next-smaller
    usable budget: the "no change" forecast), no_change_rel_error, error_ratio = |predicted -
    observed| / |previous - observed| (below 1: the law beats "no change"), predicted_n_opt(_ci),
    observed_n_opt(_ci), n_opt_ratio = predicted / observed, method, fitted_budgets.

    Args:
        res: the checked runs.
        a2: the Approach 2 fit of all budgets (which budgets are usable).
        cfg: approach3_method, bootstrap, seed, confidence.
    """
    used = sorted((bf for bf in a2.budgets if bf.used), key=lambda bf: bf.budget)
    if len(used) < 3:
        return None, (f"{len(used)} usable IsoFLOP budget(s): a held-out prediction needs >= 3 "
                      "(>= 2 to fit the laws, 1 to predict)")
    held, prev = used[-1], used[-2]
    c = held.budget
    sub = res.subset(res.budget < c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        try:
            h, hd = fit_approach2(sub, np.random.default_rng([cfg.seed, 4]), cfg, lambda _msg: None)
        except UserError as e:
            return None, f"the fit without budget {c:.3g} failed: {e}"

    def ci(coef, exp):
        dc, de = hd.get(f"approach2/{coef}"), hd.get(f"approach2/{exp}")
        return percentile_ci(power_law(dc, de, c), cfg.confidence) if dc is not None and len(dc) else [float("nan")] * 2

    pred_n, a2_loss = float(h.n_opt(c)), float(h.loss(c))
    pred_loss, pred_loss_ci, loss_method = a2_loss, ci("loss_coef", "loss_exponent"), "approach2"
    a3 = None
    if 3 in cfg.approaches:  # `--approach 2`: no Approach 3 here either (it was fitted and reported as the holdout's)
        R = min(cfg.bootstrap, 200)
        rng = np.random.default_rng([cfg.seed, 5])
        counts = bootstrap_counts(sub, R, rng)
        try:
            a3, d3 = fit_approach3(sub, counts, cfg)
        except UserError:
            a3 = None
    # An Approach 3 law that the smaller budgets do not pin down (an exponent at the searched
    # range's edge, or alpha, beta or E not identified) predicts nothing: Approach 2's L_min law does.
    unidentified = [k for k in ("alpha", "beta", "E") if a3 is not None and a3.identified.get(k) is False]
    a3_note = ""
    if a3 is not None and (a3.at_bound or unidentified):
        a3_note = ("Approach 3 on the smaller budgets is not used for L_min: "
                   + "; ".join(filter(None, [f"{', '.join(a3.at_bound)} at the searched range's edge" if a3.at_bound else "",
                                             f"{', '.join(unidentified)} not identified" if unidentified else ""])))
        a3 = None
    a3_weights = (a3.weighting or {}).get("weights") if a3 is not None else None
    if a3 is not None:
        pred_loss, loss_method = float(a3.loss(a3.n_opt(c), a3.d_opt(c))), "approach3"
        p = {k: d3[f"approach3/{k}"] for k in A3_KEYS}
        with np.errstate(all="ignore"):
            x = c / a3.flops_per_param_token
            n, d = p["G"] * x ** p["a"], x ** p["b"] / p["G"]
            pred_loss_ci = percentile_ci(p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"], cfg.confidence)
    obs = held.loss_min
    out = dict(
        budget=c, loss_method=loss_method, n_opt_method="approach2", fitted_budgets=[bf.budget for bf in h.budgets if bf.used],
        predicted_loss=pred_loss, predicted_loss_ci=pred_loss_ci, approach2_predicted_loss=a2_loss,
        observed_loss=obs, observed_loss_ci=held.loss_min_ci,
        rel_error=abs(pred_loss - obs) / obs,
        previous_budget=prev.budget, previous_loss=prev.loss_min, no_change_rel_error=abs(prev.loss_min - obs) / obs,
        error_ratio=abs(pred_loss - obs) / abs(prev.loss_min - obs) if prev.loss_min != obs else float("inf"),
        predicted_n_opt=pred_n, predicted_n_opt_ci=ci("n_coef", "a"),
        # the smaller budgets' own Approach 3 weighting (approach3_weights: their residuals decide it, as the
        # full table's decide the main fit's), or None when Approach 3 was not fitted or not used
        approach3_weights=a3_weights,
        observed_n_opt=held.n_opt, observed_n_opt_ci=held.n_opt_ci, n_opt_ratio=pred_n / held.n_opt,
    )
    top = max(a2.budgets, key=lambda bf: bf.budget)
    notes = [a3_note] if a3_note else []
    if 3 not in cfg.approaches:
        notes.append("Approach 3 not requested (--approach): L_min from Approach 2's power law of the parabola minima")
    if top.budget > c:  # the largest budget gave no usable minimum to compare with
        notes.append(f"the largest budget {top.budget:.3g} was not usable ({top.reason}); the largest usable one was held out")
    if notes:
        out["note"] = "; ".join(notes)
    return out, ""


def ratio_text(x, digits: int = 2, percent: bool = False) -> str:
    """A ratio (or, with percent, a share as "1.74%") to `digits` decimals, never a false zero.

    A value that rounds to 0 at that precision but is not 0 keeps one significant digit (0.005 ->
    "0.005", not "0.00", which reads as an exact prediction); null or infinite (a ratio over a
    zero difference, NaN or inf written as null in fits.json) is "n/a".
    """
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    v = 100 * float(x) if percent else float(x)
    text = f"{v:.{digits}f}" if v == 0 or abs(v) >= 0.5 * 10.0**-digits else f"{v:.1g}"
    return text + ("%" if percent else "")


def holdout_failed(h: dict | None) -> str | None:
    """A warning when the held-out budget's L_min is predicted no closer than "no change"; None else.

    The prediction from the smaller budgets no closer than the next-smaller budget's L_min (error_ratio >= 1, or
    null: no change was exact): the laws' extrapolation failed the one test made of it.
    """
    if not h or h.get("error_ratio") is not None and h["error_ratio"] < 1:
        return None
    return (f"held-out budget {h['budget']:.3g} FLOPs: the laws fitted on the smaller budgets predicted its L_min "
            f"{ratio_text(h['rel_error'], percent=True)} off, no closer than \"no change\" ({ratio_text(h['no_change_rel_error'], percent=True)} "
            "off): their extrapolation failed the one test made of it; treat predictions beyond the fitted budgets with doubt")


def format_holdout(fit: FitResult) -> str:
    """One paragraph on the held-out-budget validation (or why there is none)."""
    h = fit.holdout

    def ci_text(x, ci, fmt="{:.3g}"):  # "[n/a]" where the bootstrap gave no interval
        return format_interval(x, ci, fmt, expected=fit.config.bootstrap > 0)
    if not h:
        why = fit.not_fitted.get("holdout")
        return f"Held-out budget: not made ({why})." if why else "Held-out budget: not made (FitConfig.holdout is off)."
    # the note (printed last) says why Approach 3 was not used: at a bound, or which parameters are not identified
    a3_in_note = "Approach 3" in (h.get("note") or "")
    how = ("Approach 3's compute-optimal frontier" if h.get("loss_method") == "approach3"
           else f"Approach 2's L_min power law ({'Approach 3 not used: see the note' if a3_in_note else 'Approach 3 not fitted'})")
    ratio = h["error_ratio"] if h.get("error_ratio") is not None else math.inf  # null: inf (no change was exact)
    verdict = ("beats" if ratio <= 0.5 else "is closer than" if ratio < 1 else "does not beat")
    return (
        f"Held-out budget {h['budget']:.3g} FLOPs (refitted on the runs of the {len(h['fitted_budgets'])} smaller budgets; "
        f"L_min from {how}, N_opt from Approach 2's power law): predicted L_min {ci_text(h['predicted_loss'], h['predicted_loss_ci'], '{:.4g}')} vs "
        f"observed {ci_text(h['observed_loss'], h['observed_loss_ci'], '{:.4g}')}, relative error {ratio_text(h['rel_error'], percent=True)}; "
        f"\"no change\" (the {h['previous_budget']:.3g} budget's L_min {h['previous_loss']:.4g}) is off by {ratio_text(h['no_change_rel_error'], percent=True)}, "
        f"so the law {verdict} it (error ratio {ratio_text(h['error_ratio'])}; <= 0.5 is the target). "
        f"Predicted N_opt {ci_text(h['predicted_n_opt'], h['predicted_n_opt_ci'])} vs observed "
        f"{ci_text(h['observed_n_opt'], h['observed_n_opt_ci'])} (ratio {ratio_text(h['n_opt_ratio'])})."
        + (f" Note: {h['note']}." if h.get("note") else "")
        + _holdout_trust_note(fit, [2, 3] if h.get("loss_method") == "approach3" else [2])
    )


def _holdout_trust_note(fit: FitResult, approaches: list[int]) -> str:
    """" Beside it: ..." when a main-fit approach the held-out test stands for is not trusted; "" else.

    approaches: those the test's predictions come from (Approach 2's N_opt always; L_min from Approach 3's frontier
    or Approach 2's law). A held-out loss that "beats no change" read as a verdict on the law, beside an Approach 2
    that `ehrfm recommend` refuses (an exponent whose interval reaches 0, L_min not falling): the test only says
    how a refit extrapolated.
    """
    fits = fit.to_json()
    untrusted = [(k, why) for k in approaches if getattr(fit, f"approach{k}") for ok, why in [trust(fits, k)] if not ok]
    return "".join(f" Beside it: the main fit's Approach {k} is not trusted ({why}), and `ehrfm recommend` does not stand "
                   "behind it; this test says only how the refit's law extrapolated one budget." for k, why in untrusted)


# ---------------------------------------------------------------------------------------------
# Utility


def _utility_points(res: Results, metric: np.ndarray) -> tuple[list[np.ndarray], list[tuple[float, str]]]:
    """The loss-optimal shape of each budget that has the metric (the model the laws recommend), by budget.

    Each entry holds the runs of that shape with the metric: its replicate seeds (one run per shape
    is the usual case). The shape is the one of lowest mean loss over all its seeds, as in Approach 1's
    envelope: the lowest single seed would pick the luckiest seed, and its AUROC with it.

    Returns (points, skipped): a budget whose loss-optimal shape has no value (its probe failed, a
    null auroc cell) is skipped, as (budget, run ids): taking the best run that has one put a worse
    model's lower AUROC on the law, silently. A missing point costs a budget; a substituted one bends
    the exponent, and no warning can undo that.
    """
    idx = np.flatnonzero(np.isfinite(metric))
    group = shape_groups(res)
    out, skipped = [], []
    for bud in np.unique(res.budget[idx]):
        runs = np.flatnonzero(res.budget == bud)
        shapes = [runs[group[runs] == g] for g in np.unique(group[runs])]
        best = shapes[int(np.argmin([res.loss[s].mean() for s in shapes]))]
        have = best[np.isfinite(metric[best])]
        if have.size:
            out.append(have)
        else:
            skipped.append((float(bud), ", ".join(str(r) for r in res.run_id[best])))
    return out, skipped


# A point's log-error standard error is floored here in the weighted fit: an AUROC measured with
# SE 0 (perfect separation on the sample) must not get infinite weight.
MIN_LOG_ERROR_SE = 1e-3


def fit_loss_link(res: Results, metric: np.ndarray, counts: np.ndarray | None, cfg: FitConfig):
    """Fit the linear loss -> AUROC link across the sweep, with a bootstrap interval.

    The loss -> AUROC link across the sweep: AUROC = intercept + slope * loss, ordinary least
    squares over every run with a value (all budgets and sizes: the seed, Zhang et al. 2025, reports
    this relation as linear). The interval resamples runs (the same replicates as Approach 1 and 3).

    Returns (link, draws): link = {slope, slope_ci, intercept, intercept_ci, r2, n_points,
    loss_column} or None with fewer than 3 runs or one loss value; draws (R, 2) of slope, intercept.
    """
    m = np.isfinite(metric)
    x, y = res.loss[m], metric[m]
    R = 0 if counts is None else len(counts)
    draws = np.full((R, 2), np.nan)
    if x.size < 3 or np.ptp(x) <= 0:
        return None, draws

    def ols(w):  # w: (R, P) weights -> slope, intercept (R,)
        sw = w.sum(1)
        with np.errstate(all="ignore"):
            xm, ym = (w @ x) / sw, (w @ y) / sw
            sxx = (w * (x - xm[:, None]) ** 2).sum(1)
            slope = np.where(sxx > 0, (w * (x - xm[:, None]) * (y - ym[:, None])).sum(1) / sxx, np.nan)
        return slope, ym - slope * xm

    slope, intercept = (float(v[0]) for v in ols(np.ones((1, x.size))))
    pred = intercept + slope * x
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((y - pred) ** 2)) / ss_tot if ss_tot > 0 else 1.0
    if R:
        bs, bi = ols(counts[:, m])
        draws = np.stack([bs, bi], 1)
    link = dict(slope=slope, slope_ci=percentile_ci(draws[:, 0], cfg.confidence), intercept=intercept,
                intercept_ci=percentile_ci(draws[:, 1], cfg.confidence), r2=r2, n_points=int(x.size),
                loss_column=res.loss_column)
    return link, draws


def _scatter_beyond_se(c_pts: np.ndarray, err: np.ndarray, log_sd: np.ndarray, coef: float, exponent: float) -> dict:
    """How far the points of a weighted power law scatter beyond their standard errors (Birge 1932).

    q = sum(((ln err - ln(coef C^exponent)) / log_sd)^2) is chi2 with n - 2 degrees of freedom when the SEs hold
    all the noise; a larger q says there is more (training seeds, which run is each budget's best). Returns
    {"q", "dof", "ratio": sqrt(q / dof) (None at dof 0), "p": P(chi2_dof >= q) (None at dof 0)}.
    """
    resid = (np.log(err) - (np.log(coef) + exponent * np.log(c_pts))) / log_sd
    q, dof = float(np.sum(resid**2)), int(len(err) - 2)
    if dof < 1:
        return {"q": q, "dof": dof, "ratio": None, "p": None}
    return {"q": q, "dof": dof, "ratio": math.sqrt(q / dof), "p": float(scipy_stats.chi2.sf(q, dof))}


def fit_utility(res: Results, counts: np.ndarray | None, cfg: FitConfig, warn):
    """1 - AUROC = coef * C^exponent per task, through the loss-optimal run of each budget.

    Intervals. When the table has paired replicates (auroc_boot/<task>: every run's AUROC on the
    same resamples of the same held-out labels, as `sweep collect --labels` writes them), replicate
    r of the law is fitted through replicate r of each budget's point (weighted as below when the
    SEs are there): the points' errors are correlated, because every run is scored on the same
    labels, and these draws keep that correlation instead of treating the points as independent.
    Replicates are reused cyclically when the fit asks for more than the table holds; a replicate
    with a NaN point is skipped. Otherwise, when the table has every point's AUROC standard error (auroc_se/<task>, DeLong, from
    the probe's held-out sample), the fit is weighted least squares in log-log with the delta-method
    SE of ln(1 - AUROC), se / (1 - AUROC), and the interval is a parametric bootstrap: each
    replicate redraws every point around the fitted law within its SE. With a handful of budgets
    this measurement noise, not the scatter between budgets, is what limits the exponent. The draws
    are independent per point although sweeps score every run on the same held-out labels (their
    errors are positively correlated), so the interval is conservative. Without standard errors:
    an unweighted fit and a case bootstrap of the per-budget points; but a table with the auroc_se/<task>
    column where a point's SE is missing (withheld by the heads: too few labels or subjects of a class)
    gets no law for that task (an AUROC on 1 positive is no measurement). (Resampling all runs instead
    would, whenever a replicate drops a budget's loss-optimal run, select a worse model and bias
    AUROC down.)

    Args:
        res: the checked runs, with auroc/<task> columns (and optionally auroc_se/<task>).
        counts: (R, n) bootstrap multiplicities of the runs (the loss link's replicates; R sets the
            number of utility-law replicates), or None for no intervals.
        cfg: seed and confidence level.
        warn: called with a message for each task not fitted or whose AUROC does not rise with C.

    Returns:
        ({"auroc/<task>": UtilityFit}, {"utility/auroc/<task>/<coef|exponent|link_slope|
        link_intercept>": (R,) draws}). C is in FLOPs.
    """
    fits, draws_out = {}, {}
    for col, metric in res.utility.items():
        if not col.startswith("auroc/"):
            continue  # AUPRC's floor is the prevalence, not 0: no clean power law; reported by the heads
        shapes, skipped = _utility_points(res, metric)
        for bud, runs in skipped:
            warn(f"utility {col}: budget {bud:.3g} FLOPs left out of the law: its loss-optimal run ({runs}) has no "
                 f"{col} (probe failed?); another run of the budget would be a worse model")
        pts = np.array([s[0] for s in shapes], dtype=int)  # one run of each point's shape (its budget, run_id)
        # A point is its shape's mean over replicate seeds; its SE the mean of theirs, which bounds the SE of
        # the mean from above (seeds scored on the same held-out labels are correlated, up to fully).
        value = np.array([metric[s].mean() for s in shapes])
        err = 1.0 - value
        if pts.size < 2 or not np.all(err > 0):
            warn(f"utility {col}: {pts.size} budget(s) with a value{' (AUROC of 1)' if np.any(err <= 0) else ''}; no law fitted")
            continue
        c_pts = res.budget[pts]
        se = res.utility_se.get(col)
        # (the seeds that have one: a seed's SE missing alone must not turn the whole law's weights off)
        se = np.full(pts.size, np.nan) if se is None else np.array([np.mean(v) if (v := se[s][np.isfinite(se[s])]).size else np.nan
                                                                    for s in shapes])
        se_col = res.utility_se.get(col)
        # every run of each point (its seeds): an AUROC beside a missing SE in a table that has the column
        unmeasured = 0 if se_col is None else sum(bool(np.any(np.isfinite(metric[s]) & ~np.isfinite(se_col[s]))) for s in shapes)
        if unmeasured:
            # The heads withhold an AUROC's SE when a class has too few labels or subjects (MIN_CLASS_FOR_INTERVAL):
            # such an AUROC is no measurement to fit. Read as "no SE given", the law fell back to a case bootstrap
            # of 3 points and drew an interval excluding 0 through AUROCs of 1 held-out positive (MIMIC-IV demo).
            warn(f"utility {col}: the AUROC of {unmeasured} of its {pts.size} budget(s) has no standard error in "
                 f"auroc_se/{col[len('auroc/'):]} (the heads withhold it below 10 held-out labels or subjects of a "
                 "class: too few for an interval); no law fitted")
            continue
        with_se = bool(np.all(np.isfinite(se)))
        log_sd = np.maximum(se / err, MIN_LOG_ERROR_SE) if with_se else None
        weights = 1.0 / log_sd**2 if with_se else None
        coef, exponent, r2 = fit_power_law(c_pts, err, weights)
        draws = np.full((0 if counts is None else len(counts), 2), np.nan)
        boot = res.utility_boot.get(col)
        # paired when at least one replicate holds every point (others are skipped below)
        paired = boot is not None and boot.shape[1] > 0 and bool(np.isfinite(boot[np.concatenate(shapes)]).all(axis=0).any())
        scatter = _scatter_beyond_se(c_pts, err, log_sd, coef, exponent) if with_se else None
        if len(draws):
            rng = np.random.default_rng([cfg.seed, 3])
            # The SEs scaled by the Birge ratio when the points scatter beyond them (the Particle Data Group's scale
            # factor; never below 1: the SEs are a lower bound). Drawing phi^2 ~ Q / chi2(n - 2) instead covered
            # more often where the scatter is real, but with 4 budgets widened k's interval 3-5x on points that lie
            # within their SEs (README, "Utility law").
            phi = np.full(len(draws), max(1.0, scatter["ratio"]) if scatter and scatter["ratio"] is not None else 1.0)
            if paired:
                reps = np.stack([boot[s].mean(0) for s in shapes])  # (points, B): paired, so seeds average per replicate
                extra = rng.standard_normal((len(draws), pts.size))
                for r in range(len(draws)):
                    v = reps[:, r % reps.shape[1]]
                    if np.all(np.isfinite(v)) and np.all(v < 1.0):
                        # the shared resamples carry the measurement noise; scatter beyond it is drawn per point
                        y = 1.0 - v if log_sd is None else (1.0 - v) * np.exp(log_sd * np.sqrt(phi[r] ** 2 - 1.0) * extra[r])
                        c, x, _ = fit_power_law(c_pts, y, weights)
                        draws[r] = [c, x]
            elif with_se:
                law = np.log(coef) + exponent * np.log(c_pts)
                noise = rng.standard_normal((len(draws), pts.size))
                for r in range(len(draws)):
                    c, x, _ = fit_power_law(c_pts, np.exp(law + log_sd * phi[r] * noise[r]), weights)
                    draws[r] = [c, x]
            else:
                picks = rng.integers(0, pts.size, size=(len(draws), pts.size))
                for r in range(len(draws)):
                    p = picks[r]
                    if np.unique(c_pts[p]).size >= 2:
                        c, x, _ = fit_power_law(c_pts[p], err[p])
                        draws[r] = [c, x]
        link, link_draws = fit_loss_link(res, metric, counts, cfg)
        draws_out[f"utility/{col}/link_slope"], draws_out[f"utility/{col}/link_intercept"] = link_draws[:, 0], link_draws[:, 1]
        if not exponent < 0:
            warn(f"utility {col}: AUROC does not rise with compute in this sweep (1 - AUROC ~ C^{exponent:.3g}); "
                 "its law is reported but not used for predictions")
        fits[col] = UtilityFit(
            metric=col, coef=coef, coef_ci=percentile_ci(draws[:, 0], cfg.confidence), exponent=exponent,
            exponent_ci=percentile_ci(draws[:, 1], cfg.confidence), r2=r2, n_points=int(pts.size),
            points=[dict(budget=float(res.budget[i]), flops=float(res.flops[i]), run_id=str(res.run_id[i]), value=float(v),
                         se=float(s) if np.isfinite(s) else None, n_runs=int(g.size)) for i, v, s, g in zip(pts, value, se, shapes, strict=True)],
            measurement_noise=with_se, paired=paired, loss_link=link, scatter=scatter,
        )
        draws_out[f"utility/{col}/coef"], draws_out[f"utility/{col}/exponent"] = draws[:, 0], draws[:, 1]
    return fits, draws_out


# ---------------------------------------------------------------------------------------------


def _flag(name: str) -> str:
    """`--seed` for a FitConfig field `ehrfm fit` has an option for; the field name for the API-only ones."""
    api_only = ("huber_delta", "bootstrap_starts", "min_points_per_budget", "r_star", "confidence")
    return name if name in api_only else "--" + name.replace("_", "-")


def _check_config(cfg: FitConfig) -> None:
    if not set(cfg.approaches) <= {1, 2, 3} or not cfg.approaches:
        raise UserError(f"approaches must be a subset of 1,2,3 (got {','.join(map(str, cfg.approaches))})")
    if isinstance(cfg.bootstrap, (int, np.integer)) and cfg.bootstrap > MAX_BOOTSTRAP:
        raise UserError(f"bootstrap must be <= {MAX_BOOTSTRAP:,} (got {cfg.bootstrap:,}): each replicate refits every law and "
                        f"holds a row of run weights in memory; percentile intervals settle within a few thousand replicates")
    if not 0.5 <= cfg.confidence < 1:
        raise UserError(f"confidence must be in [0.5, 1) (got {cfg.confidence})")
    # every numeric option, one line each: `--seed -1` was numpy's traceback from default_rng
    def whole(name: str, lo: int) -> None:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise UserError(f"{_flag(name)} must be a whole number of at least {lo} (got {v!r})")

    whole("bootstrap", 0)
    whole("seed", 0)
    whole("bootstrap_starts", 1)
    whole("min_points_per_budget", 3)  # a parabola needs 3 sizes
    for name in ("huber_delta", "r_star"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise UserError(f"{_flag(name)} must be a finite number > 0 (got {v!r})")
    # inf is "no limit" (written as null); NaN or <= 0 would leave out every run or none, silently
    if cfg.max_epochs is not None and not (isinstance(cfg.max_epochs, (int, float)) and cfg.max_epochs > 0):
        raise UserError(f"--max-epochs must be a number > 0 (got {cfg.max_epochs!r})")
    lvl = cfg.residual_scaling_level
    if isinstance(lvl, bool) or not isinstance(lvl, (int, float)) or not 0 <= lvl < 1:
        raise UserError(f"{_flag('residual_scaling_level')} must be a number in [0, 1) (got {lvl!r}): 0 keeps one residual pool")
    for name, allowed in (("n_count", ("total", "non-embedding")), ("approach3_method", ("varpro", "huber-lbfgs")),
                          ("approach2_bootstrap", ("residuals", "runs")), ("approach3_weights", APPROACH3_WEIGHTS)):
        if getattr(cfg, name) not in allowed:
            raise UserError(f"{_flag(name)} must be one of {', '.join(allowed)} (got {getattr(cfg, name)!r})")


def _no_scaling(law: Approach1 | Approach2) -> str:
    """Why an Approach 1 or 2 law shows no scaling ("" when it does).

    That is N_opt or D_opt that does not grow with compute, or an L_min that does not fall, by its
    estimate or its interval (law_checks.trust's rules: `ehrfm recommend` refuses such a law as its
    default, and fit said nothing of it).
    """
    bits = []
    for name, what, x, ci in (("a", "N_opt", law.a, law.a_ci), ("b", "D_opt", law.b, law.b_ci)):
        if not x > 0:
            bits.append(f"{what} ~ C^{name} with {name} = {format_ci(x, ci if has_interval(ci) else None)} does not grow "
                        "with compute")
        elif has_interval(ci) and ci[0] <= 0:
            bits.append(f"the interval of {name} = {format_ci(x, ci)} includes 0")
    bits += loss_direction_problems({"loss_exponent": law.loss_exponent, "loss_exponent_ci": law.loss_exponent_ci})
    return "; ".join(bits)


def _drop_over_max_epochs(res: Results, max_epochs: float | None) -> Results:
    """`res` without the runs trained for more than `max_epochs` epochs; each is listed in `excluded`.

    UserError: `max_epochs` set on a table without epochs or unique_tokens (it was silently not applied).
    """
    if max_epochs is None or math.isinf(max_epochs):  # --max-epochs inf: no limit
        return res
    if res.epochs is None:
        raise UserError(f"{res.source}: --max-epochs {max_epochs:g} needs each run's epochs: the table has no epochs or "
                        "unique_tokens column (`ehrfm sweep collect` writes both); add one, or fit without --max-epochs")
    over = np.isfinite(res.epochs) & (res.epochs > max_epochs)
    if not over.any():
        return res
    excluded = list(res.excluded) + [{"run_id": str(res.run_id[i]), "reason": f"{res.epochs[i]:.2f} epochs > max_epochs {max_epochs:g}"}
                                     for i in np.flatnonzero(over)]
    res = res.subset(~over)
    res.excluded = excluded
    if res.n == 0:
        raise UserError(f"{res.source}: every completed run is over max_epochs {max_epochs:g}")
    return res


def _interval_notes(draws: dict[str, np.ndarray], cfg: FitConfig, warn) -> dict[str, str]:
    """Which fitted quantities get no interval, and why; one warning per fit and reason.

    A quantity ("approach2/a") whose draws give no interval (laws.interval_problem: too few
    replicates succeeded, or zero width) maps to the reason; percentile_ci has already written its
    interval as NaN (null in fits.json, "n/a" in fits.md). A fit where more than 5% of replicates
    failed, but few enough to keep its intervals, is warned about too.
    """
    notes: dict[str, str] = {}
    failed: dict[str, int] = {}
    for key, v in draws.items():
        group = key.rsplit("/", 1)[0]
        failed[group] = max(failed.get(group, 0), int((~np.isfinite(v)).sum()))
        why = interval_problem(v, cfg.confidence)
        if why:
            notes[key] = why
    by_reason: dict[tuple[str, str], list[str]] = {}
    for key, why in notes.items():
        group, name = key.rsplit("/", 1)
        by_reason.setdefault((group, why), []).append(name)
    for (group, why), names in by_reason.items():
        warn(f"{group}: no interval for {', '.join(names)}: {why}")
    for group, bad in failed.items():
        if bad > 0.05 * cfg.bootstrap and not any(g == group for g, _ in by_reason):
            warn(f"{group}: {bad} of {cfg.bootstrap} bootstrap replicates could not be fitted; its intervals use the rest")
    return notes


def _excluded_tally(excluded: list[dict]) -> str:
    """The reasons rows were not fitted, counted: "status failed 3, above uniform guessing 2"."""
    reasons = [e["reason"].split(":")[0] for e in excluded]
    reasons = ["loss above uniform guessing" if r.startswith("status completed but loss") else r for r in reasons]
    values, counts = np.unique(reasons, return_counts=True)
    return ", ".join(f"{values[i]} {counts[i]}" for i in np.argsort(-counts, kind="stable")[:4])


def _grouping_hint(res: Results, cfg: FitConfig) -> str:
    """A hint when any IsoFLOP group made from FLOPs is too small for a parabola ("" otherwise).

    A table without a budget column is grouped by flops (or, without flops, by 6 N D, which is not
    what a planner spends: embeddings and attention are left out), and runs of one planned budget
    can then fall into groups of 1-2 runs. Said whenever one group is (it was only when most were:
    runs whose FLOPs scatter by +-25% made 10 groups of 5 budgets, 3 of them of 1-2 runs, and the
    others parabolas through 3 runs, silently).
    """
    if res.budget_from == "budget":
        return ""
    _, sizes = np.unique(res.budget, return_counts=True)
    small = int((sizes < cfg.min_points_per_budget).sum())
    if sizes.size < 2 or not small:
        return ""
    by = "its flops column" if res.budget_from == "flops" else "6 N D (it has neither a budget nor a flops column)"
    return (f"{res.source}: grouped by {by} into {sizes.size} IsoFLOP budgets, {small} of them with fewer than "
            f"{cfg.min_points_per_budget} runs: add a budget column (each run's planned FLOPs)"
            + (" or a flops column (the FLOPs each run spent)" if res.budget_from == "6ND" else "")
            + " so that the runs of one budget fit one parabola")


# Tokens per parameter beyond any real training run: Chinchilla-optimal ~20, over-trained small models ~1e4
# (Llama 3 8B: ~1,900). A median run beyond it is the signature of n_params in millions (Chinchilla's own
# tables: "Model Size (M)"), which analysis.table cannot refuse once the models are large (a median of
# 228 "parameters" passes its MIN_PARAMS) and synthetic laws legitimately produce; so it is said, not refused.
PLAUSIBLE_TOKENS_PER_PARAM = 1e5
# A run whose tokens per parameter is this far from the table's median: in a sweep's grid they span
# (budget range) x (size range)^2 end to end, ~1e4 for a wide one, so one run 1e6 off is in another unit.
STRAY_TOKENS_PER_PARAM = 1e4


def _tokens_per_param_hints(res: Results) -> list[str]:
    """Warnings when the runs' tokens / n_params say n_params (or tokens) is in another unit ([] otherwise).

    The absolute N_opt, D_opt and budgets of such a fit are off by the unit (1e6 for millions); its
    exponents are not. Only tables whose flops came from 6 N D: a flops column already checks each run's
    units (analysis.table._refuse_unit_mismatch), a budget column each run's against its budget.
    """
    if res.flops_from != "6ND" or res.budget_from == "budget" or res.n == 0:
        return []
    ratio = res.tokens / res.n_params
    median = float(np.median(ratio))
    hints = []
    if median > PLAUSIBLE_TOKENS_PER_PARAM:
        hints.append(f"{res.source}: {TOKENS_PER_PARAM_MARK} is {median:.3g} in the median run, beyond any real training run "
                     f"(compute-optimal ~20, over-trained small models ~1e4): is n_params in millions (or tokens in "
                     "thousands)? ehrfm reads plain counts; in another unit every absolute N_opt, D_opt and budget of "
                     "this fit is off by it (its exponents are not)")
    stray = np.flatnonzero((ratio > median * STRAY_TOKENS_PER_PARAM) | (ratio < median / STRAY_TOKENS_PER_PARAM))
    if stray.size:
        named = ", ".join(f"{res.run_id[i]} ({ratio[i]:.3g})" for i in stray[:5]) + (" ..." if stray.size > 5 else "")
        hints.append(f"{res.source}: {stray.size} run(s) have {TOKENS_PER_PARAM_MARK} more than {STRAY_TOKENS_PER_PARAM:g}x from "
                     f"the median run's {median:.3g}: {named}: n_params or tokens of those rows in another unit "
                     "(millions, billions)? Each becomes an IsoFLOP budget of its own at 6 N D and moves Approaches 1 and 3")
    return hints


def _fit_inputs(res: Results, cfg: FitConfig, n_count_note: str | None) -> dict:
    """fits.json `inputs`: what was fitted (budgets, unique tokens, epochs, units, N count)."""
    budgets = np.unique(res.budget)
    unique = res.unique_tokens[np.isfinite(res.unique_tokens)] if res.unique_tokens is not None else np.array([])
    return dict(
        source=res.source, bootstrap=cfg.bootstrap, budgets=[float(b) for b in budgets], min_budget=float(budgets.min()), max_budget=float(budgets.max()),
        unique_tokens=float(unique.max()) if unique.size else None,
        unique_tokens_values=int(np.unique(unique).size),  # > 1: runs on data sets of several sizes (recommend says so)
        multi_epoch=res.multi_epoch,
        max_epochs=float(np.nanmax(res.epochs)) if res.epochs is not None and np.isfinite(res.epochs).any() else None,
        vocab_size=res.vocab_size, context=res.context, utility_columns=sorted(res.utility),
        compute_convention=res.flops_from,  # "flops" (the table's column) or "6ND": how C was measured
        loss_column=res.loss_column, loss_unit=res.loss_unit, n_count=res.n_count, n_count_requested=cfg.n_count,
        n_count_note=n_count_note or None, multi_epoch_runs=multi_epoch_runs(res), replicates=replicate_summary(res),
    )


def fit_results(table, approaches=(1, 2, 3), bootstrap: int = 1000, seed: int = 0, config: FitConfig | None = None,
                name: str | None = None) -> FitResult:
    """Fit every requested approach, the held-out budget and the utility laws to a results table.

    Args:
        table: a results.parquet path, a polars frame of it, or a loaded `Results`.
        approaches: the approaches to fit (1, 2, 3); used only when `config` is None.
        bootstrap: bootstrap replicates (0: no intervals); used only when `config` is None.
        seed: fixes every random draw; used only when `config` is None.
        config: the full FitConfig (saved in fits.json).
        name: what messages call `table` when it is a DataFrame (e.g. the file it came from).

    Returns:
        FitResult; left-out budgets, tasks and approaches are listed in `warnings` / `not_fitted`
        and also emitted as FitWarning.

    Raises:
        UserError: a bad table, fewer than 2 budgets, no requested approach the data can support,
            bootstrap outside [0, MAX_BOOTSTRAP], or too little memory for the bootstrap.
    """
    cfg = config or FitConfig(approaches=tuple(approaches), bootstrap=int(bootstrap), seed=int(seed))
    _check_config(cfg)
    res = table if isinstance(table, Results) else load_results(table, name=name)
    try:
        return _fit_results(res, cfg)
    except MemoryError:
        raise UserError(f"not enough memory for {cfg.bootstrap:,} bootstrap replicates of {res.n:,} runs "
                        f"({res.source}): lower --bootstrap") from None


def _fit_results(res: Results, cfg: FitConfig) -> FitResult:
    """fit_results on checked runs and a checked config."""
    notes: list[str] = []

    def warn(msg: str):
        notes.append(msg)
        warnings.warn(msg, FitWarning, stacklevel=3)

    res, n_count_note = res.with_n_count(cfg.n_count)
    if n_count_note:
        warn(n_count_note)
    res = _drop_over_max_epochs(res, cfg.max_epochs)
    for hint in (_grouping_hint(res, cfg), *_tokens_per_param_hints(res)):
        if hint:
            warn(hint)
    if np.unique(res.budget).size < 2:
        left = f" ({len(res.excluded)} other rows not fitted: {_excluded_tally(res.excluded)})" if res.excluded else ""
        lo, hi = float(res.flops.min()), float(res.flops.max())
        if res.budget_from != "budget" and math.log10(hi / lo) > MAX_FLOPS_GROUP_SPAN_DECADES:
            # grouped by flops, a continuum of compute (100 budgets 7% apart) chains into one group: "one IsoFLOP
            # budget" was false for three decades of compute (the span by which `_budget_fit` leaves a chained
            # group out of Approach 2 in a table of several)
            apart = f"{10 ** BUDGET_GROUP_DECADES - 1:.0%}"
            raise UserError(f"{res.source}: the flops of all {res.n} completed runs chain from {lo:.3g} to {hi:.3g}, "
                            f"each within {BUDGET_GROUP_DECADES} decades ({apart}) of the next, so no IsoFLOP budgets "
                            f"can be told apart{left} (a sweep over continuous compute?); a scaling law needs >= 2 budgets "
                            f"more than {apart} apart: add (or fill) a budget column with each run's planned budget")
        raise UserError(f"{res.source}: all {res.n} completed runs are one IsoFLOP budget{left}; a scaling law needs >= 2 budgets")

    # One stream of random numbers, drawn in a fixed order: the seed fixes every interval.
    rng = np.random.default_rng(cfg.seed)
    counts = bootstrap_counts(res, cfg.bootstrap, rng)
    rng2 = np.random.default_rng([cfg.seed, 2])
    # An approach the data cannot support is reported (warning, `not_fitted` in fits.json) and the
    # others still fitted; only when no requested approach can be fitted is it an error.
    fitters = {1: lambda: fit_approach1(res, counts, cfg), 2: lambda: fit_approach2(res, rng2, cfg, warn),
               3: lambda: fit_approach3(res, counts, cfg)}
    fitted, not_fitted, draws = {}, {}, {}
    for k in cfg.approaches:
        try:
            fitted[k], d = fitters[k]()
        except UserError as e:
            not_fitted[f"approach{k}"] = str(e)
            continue
        draws.update(d)
    if not fitted:  # the rows left out may be why (a run above uniform guessing took a budget below 3 sizes)
        ids = [str(e.get("run_id")) for e in res.excluded]
        left = (f" ({len(ids)} row(s) not fitted: {_excluded_tally(res.excluded)}: {', '.join(ids[:4])}"
                f"{f' and {len(ids) - 4} more' if len(ids) > 4 else ''})" if ids else "")
        raise UserError("; ".join(not_fitted.values()) + left)
    for name, reason in not_fitted.items():
        warn(f"{name} not fitted: {reason}")
    if 1 in fitted and (skipped := sorted(set(np.unique(res.budget).tolist()) - {p["budget"] for p in fitted[1].points})):
        # its law then rests on fewer budgets than the table has, and which ones is not said anywhere else
        warn(f"Approach 1: its lower envelope leaves out {len(skipped)} of {np.unique(res.budget).size} budgets "
             f"({', '.join(f'{b:.3g}' for b in skipped)} FLOPs): no run there beats a cheaper budget's best (a low outlier "
             "in a cheaper budget, or a budget that learned less); its law rests on the others")
    if 1 in fitted and fitted[1].edge_budgets:
        warn(f"Approach 1 is not an estimate of N_opt: {edge_note(fitted[1].edge_budgets)} (add sizes beyond the ladder's "
             "end: `ehrfm sweep plan --bracket-from RESULTS`)")
    for k in (1, 2):
        if k in fitted and (why := _no_scaling(fitted[k])):
            warn(f"Approach {k} shows no scaling law here: {why}; `ehrfm recommend` does not take it as its default")
    a3 = fitted.get(3)
    if a3 is not None and a3.outliers:
        robust = " (or refit with --approach3-method huber-lbfgs, which down-weights them)" if a3.method == "varpro" else ""
        warn(f"Approach 3: {len(a3.outliers)} run(s) lie more than {OUTLIER_SDS:g} robust SDs off the fitted law in ln loss "
             f"({', '.join(a3.outliers[:8])}{' and more' if len(a3.outliers) > 8 else ''}): outliers pull its fit; check "
             f"their losses{robust}")
    if a3 is not None:
        k = res.flops / (res.n_params * res.tokens)
        if k.max() > K_SPREAD * k.min():
            warn(f"Approach 3: its N_opt and D_opt take C = k N D with one k ({a3.flops_per_param_token:.3g}, the runs' "
                 f"median), but the table's FLOPs per parameter and token range from {k.min():.3g} to {k.max():.3g} across its "
                 "runs (FLOPs that count attention or embeddings beside 6 N D, or another parameter count): at a given "
                 "budget they are approximate (N_opt moves as k^-a); its exponents and loss law do not depend on k, and "
                 "Approach 2's N_opt rests on each run's own FLOPs")
    a2 = fitted.get(2)
    holdout = None
    if cfg.holdout and a2 is None:
        not_fitted["holdout"] = "Approach 2 was not fitted (the held-out prediction uses its laws)"
    elif cfg.holdout:
        holdout, why = fit_holdout(res, a2, cfg)
        if holdout is None:
            not_fitted["holdout"] = why
            warn(f"held-out budget: not made: {why}")
        elif (failed := holdout_failed(holdout)) is not None:
            warn(failed)
    util, d = fit_utility(res, counts, cfg, warn)
    draws.update(d)
    interval_notes = _interval_notes(draws, cfg, warn) if cfg.bootstrap else {}
    if a2 is not None and cfg.bootstrap:
        for bf in a2.budgets:
            if bf.interval_note and bf.coef and bf.coef[2] > 0:
                warn(f"Approach 2: budget {bf.budget:.3g} FLOPs: no interval for its minimum: {bf.interval_note}")
    fit = FitResult(
        approach1=fitted.get(1), approach2=a2, approach3=fitted.get(3), utility=util, n_runs=res.n_rows, n_fitted=res.n,
        excluded=res.excluded, warnings=notes, inputs=_fit_inputs(res, cfg, n_count_note), config=cfg,
        not_fitted=not_fitted, draws=draws, holdout=holdout, n_count=res.n_count, interval_notes=interval_notes,
    )
    off = intervals_off_their_estimate(fit.to_json())
    if off:  # a percentile interval may exclude its estimate; said, as its reader takes it to bracket the fit
        warn(f"{len(off)} interval(s) exclude their own estimate ({', '.join(off[:6])}{' and more' if len(off) > 6 else ''}): "
             "the bootstrap replicates lie to one side of the fit (a law that misfits the runs systematically, or losses "
             "without noise, where the refits' numerical precision sets them); they do not measure its uncertainty")
    return fit


def intervals_off_their_estimate(fits: dict, where: str = "") -> list[str]:
    """The dotted names in fits.json content whose `<name>_ci` interval does not contain `<name>`.

    Args:
        fits: FitResult.to_json() (or any part of it); null intervals are skipped.
        where: the dotted prefix of `fits` within fits.json.
    """
    off = []
    if isinstance(fits, dict):
        for key, value in fits.items():
            ci, name = fits.get(f"{key}_ci"), f"{where}.{key}" if where else key
            if isinstance(value, (int, float)) and isinstance(ci, list) and len(ci) == 2 \
                    and all(isinstance(v, (int, float)) for v in ci) and not ci[0] <= value <= ci[1]:
                off.append(name)
            off += intervals_off_their_estimate(value, name)
    elif isinstance(fits, list):
        for i, value in enumerate(fits):
            off += intervals_off_their_estimate(value, f"{where}[{i}]")
    return off


def multi_epoch_runs(res: Results) -> list[dict]:
    """The fitted runs trained for more than one epoch over their unique tokens.

    {run_id, budget, epochs}, most repeated first (flagged in fits.md; FitConfig.max_epochs can
    leave them out).
    """
    if res.epochs is None:
        return []
    over = np.flatnonzero(np.isfinite(res.epochs) & (res.epochs > 1.0 + 1e-9))
    over = over[np.argsort(-res.epochs[over], kind="stable")]
    return [dict(run_id=str(res.run_id[i]), budget=float(res.budget[i]), epochs=float(res.epochs[i])) for i in over]


# ---------------------------------------------------------------------------------------------
# Output


def write_fits(fit: FitResult, out: str | Path, results: Results | None = None, overwrite: bool = False, plots: bool = True,
               inputs=()) -> Path:
    """Write a fit directory FIT/ atomically.

    Args:
        fit: what fit_results returned.
        out: the directory FIT to create.
        results: the checked runs; when given, runs.parquet (`runs_frame`) and, with `plots`,
            the PNG and PDF plots (analysis.plots.make_plots) are written too.
        overwrite: replace `out` when it exists.
        plots: draw the plots (needs `results`).
        inputs: the paths the fit read (the results table): `out` may not be, hold or lie in one.

    Returns:
        Path(out), holding fits.json, fit_config.json (FitConfig plus the Approach 3 start grid),
        fits.md, bootstrap.parquet (when there are draws), runs.parquet and the plots.

    Raises:
        UserError: `out` exists without overwrite, is a file, is, holds or lies inside one of
            `inputs`, or is a directory ehrfm did not write (ehrfm.io.atomic_dir).
    """
    import polars as pl

    from ehrfm.io import atomic_dir, atomic_file, write_json

    with atomic_dir(out, overwrite=overwrite, inputs=inputs, command="fit") as tmp:
        write_json(tmp / "fits.json", fit.to_json())
        # _finite_json: `--max-epochs inf` (no limit) is null, as None is; JSON has no Infinity token
        write_json(tmp / "fit_config.json", _finite_json(dataclasses.asdict(fit.config)) | {"grid": {
            "alpha": parametric.GRID_ALPHA, "beta": parametric.GRID_BETA, "e": parametric.GRID_E,
            "a": parametric.GRID_A, "b": parametric.GRID_B}, "interval": "percentile bootstrap"})
        with atomic_file(tmp / "fits.md") as f:
            f.write(format_fit_table(fit) + "\n")
        if fit.draws:
            import pyarrow.parquet as pq

            draws = pl.DataFrame({k: np.asarray(v, dtype=float) for k, v in fit.draws.items()}).to_arrow()
            # the fits.json these draws belong to: another fit's bootstrap.parquet copied in gave its intervals, trusted
            pq.write_table(draws.replace_schema_metadata({DRAWS_OF: _sha256(tmp / "fits.json")}), tmp / "bootstrap.parquet")
        if results is not None:
            results = results.with_n_count(fit.n_count)[0]  # the runs as fitted: N is the count the fit used
            runs_frame(results).write_parquet(tmp / "runs.parquet")
            if plots:
                from analysis.plots import make_plots

                make_plots(fit, results, tmp)
    return Path(out)


def runs_frame(res: Results):
    """The fitted runs as a polars frame: what write_fits saves as runs.parquet.

    Columns: run_id, budget, n_params (the count fitted), tokens, flops, the fitted loss column
    (loss in nats/token or loss_per_event in nats/event), and when known n_params_non_embedding,
    n_params_total, the utility columns, unique_tokens and epochs.
    """
    import polars as pl

    # The fitted loss keeps its column name, so the unit stays with it (loss or loss_per_event).
    # n_params is the count the fit used (Results.n_count); n_params_total / the non-embedding count beside it.
    cols = {"run_id": res.run_id, "budget": res.budget, "n_params": res.n_params, "tokens": res.tokens, "flops": res.flops,
            res.loss_column: res.loss}
    if res.n_params_non_embedding is not None:
        cols["n_params_non_embedding"] = res.n_params_non_embedding
    if res.n_params_total is not None:
        cols["n_params_total"] = res.n_params_total
    cols.update({k: v for k, v in res.utility.items()})
    if res.unique_tokens is not None:
        cols["unique_tokens"] = res.unique_tokens
    if res.epochs is not None:
        cols["epochs"] = res.epochs
    return pl.DataFrame(cols)


def _approach3_cell(f: Approach3, name: str, boot: bool = False) -> str:
    """A parameter with its interval ("[n/a]" when bootstrapped without one), or "not identified"."""
    value, ci = getattr(f, name), getattr(f, f"{name}_ci")
    ident = (f.identified or {}).get(name)
    if ident is False:
        return f"{name} not identified ({format_interval(value, ci, expected=boot)})"
    if ident is None and not boot:  # --bootstrap 0: no interval, so identification was never checked
        return f"{name}={format_interval(value, ci, expected=boot)} (unchecked)"
    return f"{name}={format_interval(value, ci, expected=boot)}"


def format_fit_table(fit: FitResult) -> str:
    """Render a fit as a compact markdown summary (fits.md).

    A compact markdown summary: one row per approach, the held-out budget, per-budget and utility
    rows, and the runs trained over more than one epoch.
    """
    pct = int(round(fit.config.confidence * 100))
    boot = fit.config.bootstrap > 0  # an interval is expected: a missing one prints "[n/a]"

    def ci_text(x, ci, fmt="{:.3g}"):
        return format_interval(x, ci, fmt, expected=boot and ci is not None)
    column, unit = fit.inputs.get("loss_column", "loss"), fit.inputs.get("loss_unit", "nats/token")
    n_count = fit.n_count
    count_text = f"N counts {N_COUNT_LABEL.get(n_count, n_count)}"
    if fit.inputs.get("n_count_note"):
        count_text += f" ({fit.config.n_count} was requested: {fit.inputs['n_count_note']})"
    elif n_count == "total":
        count_text += " (Pearce & Song 2024: non-embedding counts bias small-scale exponents)"
    lines = [
        f"Fitted {fit.n_fitted} of {fit.n_runs} runs ({len(fit.excluded)} excluded); "
        + ("no intervals (--bootstrap 0: nothing below has an uncertainty). " if not boot else
           f"no intervals: {fit.config.bootstrap} bootstrap replicate(s), too few for a {pct}% interval (>= "
           f"{min_replicates(fit.config.confidence)}; every interval below is n/a). "
           if fit.config.bootstrap < min_replicates(fit.config.confidence) else
           f"{pct}% bootstrap intervals, {fit.config.bootstrap} replicates, seed {fit.config.seed}. ")
        + f"Loss fitted: held-out {column} ({unit}). {count_text}.",
        "",
        "| approach | a (N_opt ~ C^a) | b (D_opt ~ C^b) | details |",
        "|---|---|---|---|",
    ]
    if fit.approach1:
        f = fit.approach1
        edge = f"; {len(f.edge_budgets)} at their ladder's end: not bracketed, not trusted" if f.edge_budgets else ""
        lines.append(f"| 1 envelope | {ci_text(f.a, f.a_ci)} | {ci_text(f.b, f.b_ci)} | {f.n_points} envelope runs{edge} |")
    if fit.approach2:
        f = fit.approach2
        scaled = f.residual_scaling.get("scales")
        how = (f"; residuals drawn at each budget's scale (their variances differ, Bartlett p = {f.residual_scaling['bartlett_p']:.2g}; "
               f"RMS ~ C^{f.residual_scaling['slope']:.2f})" if scaled else "")
        lines.append(f"| 2 IsoFLOP | {ci_text(f.a, f.a_ci)} | {ci_text(f.b, f.b_ci)} | {f.n_budgets_used} of {len(f.budgets)} budgets; "
                     f"L_min ~ C^{ci_text(f.loss_exponent, f.loss_exponent_ci)}{how} |")
    if fit.approach3:
        f = fit.approach3
        how = {"varpro": "variable projection", "huber-lbfgs": "Huber/L-BFGS"}.get(f.method, f.method)
        cells = ", ".join(_approach3_cell(f, k, boot) for k in ("E", "A", "B", "alpha", "beta"))
        bound = f"; {', '.join(f.at_bound)} at the searched range's edge" if f.at_bound else ""
        if (f.weighting or {}).get("weights") == "inverse-variance":
            bound += (f"; weighted least squares, each run by 1 / its budget's residual scale^2 (their variances differ, "
                      f"Bartlett p = {f.weighting['bartlett_p']:.2g})")
        lines.append(f"| 3 parametric ({how}) | {ci_text(f.a, f.a_ci)} | {ci_text(f.b, f.b_ci)} | {cells}{bound} |")
    if fit.approach3 and not boot:
        lines += ["", "Approach 3 without bootstrap intervals (--bootstrap 0): whether E, A, B, alpha and beta are identified "
                  "is unchecked (the check reads their intervals; A, B and G are often not pinned down by a sweep): refit with "
                  "--bootstrap 1000 before quoting them."]
    if fit.approach3 and any(v is False for v in (fit.approach3.identified or {}).values()):
        bad = [k for k, v in fit.approach3.identified.items() if v is False]
        # E with no verdict (None: no interval to judge it by) is not claimed as constrained either
        kept = [k for k in ("a", "b", "E") if (fit.approach3.identified or {}).get(k, True) is True]
        lines += ["", f"Approach 3: {', '.join(bad)} not identified (the {pct}% interval spans more than "
                  f"{IDENTIFIED_DECADES:g} decades or reaches 0)"
                  + (f"; what the runs constrain is {', '.join(kept)}, read from the derived exponents." if kept else ".")]
    if fit.config.holdout or fit.holdout:
        lines += ["", format_holdout(fit)]
    if fit.approach2:
        lines += ["", f"| budget (FLOPs) | runs | N_opt | D_opt | L_min ({unit}) | R^2 | used |", "|---|---|---|---|---|---|---|"]
        for bf in fit.approach2.budgets:
            used = "yes" if bf.used else f"no: {bf.reason}"
            held = " (held out)" if fit.holdout and bf.budget == fit.holdout["budget"] else ""
            lines.append(
                f"| {bf.budget:.3g}{held} | {bf.n_points} | {ci_text(bf.n_opt, bf.n_opt_ci)} | {ci_text(bf.d_opt, bf.d_opt_ci)} | "
                f"{ci_text(bf.loss_min, bf.loss_min_ci, '{:.4g}')} | {ci_text(bf.r2, None)} | {used} |"
            )
    if fit.utility:
        lines += ["", "| task | 1 - AUROC ~ C^k: k | budgets | AUROC = c0 + c1 loss: c1 | R^2 | runs |", "|---|---|---|---|---|---|"]
        for name, u in fit.utility.items():
            link = u.loss_link or {}
            task = name.split("/", 1)[1] if name.startswith("auroc/") else name  # as fits.json keys it
            lines.append(f"| {task} | {ci_text(u.exponent, u.exponent_ci)} | {u.n_points} | "
                         f"{ci_text(link.get('slope'), link.get('slope_ci'))} | {ci_text(link.get('r2'), None)} | {link.get('n_points', '-')} |")
        how = {(True, True): "paired: every run's AUROC on the same held-out resamples (auroc_boot/<task>)",
               (False, True): "each point redrawn within its DeLong standard error, independently",
               (False, False): "a case bootstrap of the budgets' points"}
        kinds = sorted({how[(bool(u.paired), bool(u.measurement_noise or u.paired))] for u in fit.utility.values()})
        wide = [f"{name.split('/', 1)[-1]} {u.scatter['ratio']:.2g}" for name, u in fit.utility.items()
                if isinstance(u.scatter, dict) and isinstance(u.scatter.get("ratio"), (int, float)) and u.scatter["ratio"] > 1]
        lines += ["", "k's interval: " + "; ".join(kinds)
                  + (f"; the AUROC standard errors scaled by the points' scatter beyond them (Birge ratio sqrt(Q / (n - 2)): "
                     f"{', '.join(wide)})" if wide else "") + "."]
    rep = fit.inputs.get("replicates")
    if rep:
        lines += ["", f"**{rep['shapes']} shape(s) (budget, N, D) were run more than once** ({rep['runs']} runs, up to {rep['max']} "
                  "per shape: seeds): every run is a point of its IsoFLOP parabola and of Approach 3; Approach 1's envelope "
                  "takes each shape's mean loss, not its luckiest seed" + (", and the utility laws that shape's mean AUROC"
                                                                           if fit.utility else "") + "."]
    multi = fit.inputs.get("multi_epoch_runs") or []
    if multi:
        shown = ", ".join(f"{m['run_id']} ({m['epochs']:.2f})" for m in multi[:8]) + (f" and {len(multi) - 8} more" if len(multi) > 8 else "")
        keep = ("kept in the fits (FitConfig.max_epochs / `--max-epochs` leaves them out; dropping them would cut one side off "
                "the IsoFLOP parabolas), Approach 3 on Muennighoff effective tokens") if fit.config.max_epochs is None else "kept (at most max_epochs)"
        lines += ["", f"**{len(multi)} fitted run(s) over 1 epoch** of their unique tokens, repeated data: {shown}; {keep}."]
    if fit.warnings:
        lines += ["", "Warnings:"] + [f"- {w}" for w in fit.warnings]
    return "\n".join(lines)


def fit_files(fit_dir: str | Path) -> tuple[Path, Path | None]:
    """(the fits.json to read, the directory whose bootstrap.parquet / fit_config.json belong to it, or None).

    A directory is read as DIR/fits.json with its siblings. A file is read as itself, never swapped
    for the fits.json beside it (a renamed or copied fits.json next to another fit read that other
    fit); its directory's bootstrap draws and config are used only when that directory's fits.json
    is the same bytes (the file is that fit's own), otherwise the fit is read without them.
    """
    fit_dir = Path(fit_dir)
    if not fit_dir.is_file():
        return fit_dir / "fits.json", fit_dir
    own = fit_dir.parent / "fits.json"
    try:
        same = own.is_file() and (fit_dir.name == "fits.json" or own.read_bytes() == fit_dir.read_bytes())
    except OSError:
        same = False
    return fit_dir, (fit_dir.parent if same else None)


def load_fits(fit_dir: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read FIT/fits.json (or the fits file given) and its bootstrap draws (for the recommender and plots of a saved fit)."""
    from ehrfm.io import check_not_temporary, read_json, warn

    check_not_temporary(fit_dir, "fit")
    path, home = fit_files(fit_dir)
    if not path.exists():
        where = "no such directory" if not path.parent.exists() else "the directory holds no fits.json"
        raise UserError(f"fits file {path} not found ({where}): pass the --out dir of `ehrfm fit`, "
                        "or make one with `ehrfm fit RESULTS --out FIT`")
    redo = "rerun `ehrfm fit` with --overwrite to rewrite it"
    if path.name.lower().endswith((".csv", ".tsv", ".parquet", ".csv.gz", ".tsv.gz")):  # was "damaged ... rerun ehrfm fit"
        raise UserError(f"fits file {path} is a table, not a fits.json (a results table?): fit it first with "
                        f"`ehrfm fit {path} --out FIT`, then pass FIT")
    fits = read_json(path, what="fits file", expect=dict, hint=redo)
    draws = {}
    if home is not None and (home / "bootstrap.parquet").is_file():
        from ehrfm.io import read_parquet

        table = read_parquet(home / "bootstrap.parquet", "bootstrap draws", hint=redo)
        if (other := _draws_of_another_fit(table, path, fits)):
            warn(f"{home / 'bootstrap.parquet'} {other}: read without its draws, so intervals are n/a; {redo}")
        else:
            draws = {c: table.column(c).to_numpy().astype(float) for c in table.column_names}
    elif home is None:
        warn(f"{path} is not the fits.json of its directory: read without bootstrap draws (intervals n/a) "
             "and with the default confidence; pass the fit directory for intervals")
    elif _bootstrapped(fits):  # was a silent "[n/a]" on every interval of the recommendation and the plots
        warn(f"{home / 'bootstrap.parquet'} is missing, though {path.name} was fitted with "
             f"{fits['inputs']['bootstrap']} bootstrap replicates: read without its draws, so its predictions' intervals "
             f"are n/a; {redo}")
    return fits, draws


# bootstrap.parquet's schema metadata key: the sha256 of the fits.json written beside it (write_fits): of its content
# (canonical JSON: sorted keys, no spaces) since 2026-12-07, of its bytes before.
DRAWS_OF = b"ehrfm.fits_json_sha256"


def _sha256(path: Path) -> bytes:
    """sha256 of a fits.json's content as canonical JSON (a file re-indented by hand is the same fit), else its bytes."""
    import contextlib
    import hashlib

    raw = path.read_bytes()
    with contextlib.suppress(ValueError, UnicodeDecodeError, RecursionError):  # not JSON: its bytes (refused elsewhere)
        raw = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest().encode()


def _bytes_sha256(path: Path) -> bytes:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest().encode()


def _draws_of_another_fit(table, path: Path, fits: dict) -> str:
    """Why bootstrap draws `table` (pyarrow) are not those of fits.json `path` ("" when they are, or cannot be told).

    write_fits records the sha256 of the fits.json it wrote in the draws' metadata: another fit's draws
    (copied in), or a fits.json edited since, no longer match. Files from before that record are
    checked by their replicate count against inputs.bootstrap.
    """
    recorded = (table.schema.metadata or {}).get(DRAWS_OF)
    if recorded is not None:
        return "" if recorded in (_sha256(path), _bytes_sha256(path)) else (  # (bytes: fits written before 2026-12-07)
            f"was not written with {path.name} as it is now (another fit's draws, or {path.name} edited since)")
    n = (fits.get("inputs") or {}).get("bootstrap") if isinstance(fits.get("inputs"), dict) else None
    if _bootstrapped(fits) and table.num_rows != n:
        return f"holds {table.num_rows} replicates where {path.name} records {n} (another fit's draws)"
    return ""


def _bootstrapped(fits: dict) -> bool:
    """Whether a fits.json records a bootstrap (inputs.bootstrap > 0): write_fits then wrote bootstrap.parquet beside it."""
    n = (fits.get("inputs") or {}).get("bootstrap") if isinstance(fits.get("inputs"), dict) else None
    return isinstance(n, int) and not isinstance(n, bool) and n > 0


def dump(obj) -> str:
    """JSON text of obj with NaN written as null."""
    return json.dumps(_finite_json(obj))


def _from_json(value):
    """JSON null (a NaN on the way out, see _finite_json) back to NaN, inside interval lists too."""
    if value is None:
        return float("nan")
    if isinstance(value, list) and all(v is None or isinstance(v, (int, float)) for v in value):
        return [float("nan") if v is None else v for v in value]
    return value


def _typed(cls, data: dict, keep: tuple[str, ...] = (), where: str = "fits.json"):
    """A fit dataclass from its fits.json dict: known fields only, nulls -> NaN (except `keep`).

    UserError naming `where` and the keys when `data` is not an object or lacks a required field
    (a fits.json from an older ehrfm, or edited by hand).
    """
    fields = dataclasses.fields(cls)
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in data] if isinstance(data, dict) else required
    if missing:
        raise UserError(f"{where}: {cls.__name__} lacks {', '.join(missing)}; rerun `ehrfm fit` with --overwrite "
                        "(a fits.json from an older ehrfm, or edited by hand?)")
    names = {f.name for f in fields}
    return cls(**{k: (v if k in keep else _from_json(v)) for k, v in data.items() if k in names})


def load_fit(fit_dir: str | Path) -> FitResult:
    """The typed FitResult of a saved fit, as fit_results returned it before write_fits.

    Reads FIT/fits.json, FIT/fit_config.json and FIT/bootstrap.parquet (bootstrap draws, for the
    plots' bands). Numbers that were NaN are written as null and come back as NaN.

    Args:
        fit_dir: the directory `ehrfm fit` / write_fits wrote, or a file inside it.

    Returns:
        FitResult: every plot function, recommend() and format_fit_table accept it.

    Raises:
        UserError: fits.json missing or not JSON.
    """
    from ehrfm.io import read_json

    fits, draws = load_fits(fit_dir)
    path, home = fit_files(fit_dir)
    cfg_path = home / "fit_config.json" if home is not None else None
    cfg_raw = read_json(cfg_path, what="fit config") if cfg_path is not None and cfg_path.is_file() else {}
    cfg_fields = {f.name for f in dataclasses.fields(FitConfig)}
    cfg = FitConfig(**{k: v for k, v in cfg_raw.items() if k in cfg_fields})
    cfg.approaches = tuple(cfg.approaches)
    src = str(path)
    a1 = _typed(Approach1, fits["approach1"], keep=("points",), where=f"{src} approach1") if fits.get("approach1") else None
    a2 = None
    if fits.get("approach2"):
        a2 = _typed(Approach2, fits["approach2"], keep=("budgets",), where=f"{src} approach2")
        a2.budgets = [_typed(BudgetFit, b, keep=("reason",), where=f"{src} approach2 budgets")
                      for b in fits["approach2"].get("budgets") or []]
    a3 = (_typed(Approach3, fits["approach3"], keep=("r_star", "method", "identified", "at_bound", "outliers"), where=f"{src} approach3")
          if fits.get("approach3") else None)
    # in memory, utility fits are keyed by their results column ("auroc/icu"); fits.json drops "auroc/"
    utility = {}
    for task, u in (fits.get("utility") or {}).items():
        u = _typed(UtilityFit, u, keep=("points", "loss_link", "scatter"), where=f"{src} utility {task}")
        utility[u.metric] = u
    return FitResult(
        approach1=a1, approach2=a2, approach3=a3, utility=utility, n_runs=fits.get("n_runs", 0),
        n_fitted=fits.get("n_fitted", 0), excluded=fits.get("excluded", []), warnings=fits.get("warnings", []),
        inputs=fits.get("inputs", {}), config=cfg, not_fitted=fits.get("not_fitted", {}), draws=draws,
        holdout=fits.get("holdout"), n_count=fits.get("n_count") or "non-embedding",
        interval_notes=fits.get("intervals_not_available") or {},
    )
