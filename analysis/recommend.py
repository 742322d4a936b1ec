"""What a compute budget should buy, with intervals.

N_opt, D_opt, a concrete model shape, the predicted loss and clinical utility with intervals,
and the epochs that D_opt needs over the unique tokens available.

    rec = recommend("fit/", flops=1e18, unique_tokens=2e8)
    print(format_recommendation(rec))

EHR data is finite. When D_opt exceeds the unique tokens U, the tokens are repeated; following
Muennighoff et al. (2023, "Scaling Data-Constrained Language Models") a repeated token is worth
less: D' = U + U R* (1 - exp(-(epochs - 1) / R*)) with R* = 15.4 (their fitted R_D*). With the
parametric law (Approach 3) we then predict the loss at D' and also give the data-constrained
optimum: the N (and D = C / (k N)) minimising L(N', D') at the same compute, with their second
decay on the parameter side too: parameters past U_N, the compute-optimal size for U, are worth N' =
U_N + U_N R_N* (1 - exp(-(N / U_N - 1) / R_N*)), R_N* = 5.309 (their fitted value). (Until 2026-12-07
the search decayed repeated tokens only and grew the model past N_opt to spend the compute.)

Trust. A law whose exponent of N_opt or D_opt in C (a, b) is not positive, or whose bootstrap
interval reaches 0, recommends nonsense when extrapolated (a = -0.15 recommends a smaller model for
more compute); so does an Approach 3 law whose frontier coefficient G is not identified, an
Approach 1 law whose envelope runs sit at the end of their ladders (the optimum not bracketed), and
any law asked about a budget more than EXTRAPOLATION_UNTRUSTED (1000x) outside the fitted budgets
(at 1e-18 of the smallest, N_opt is a fraction of one parameter). Such a
law is never the default headline, and neither is one whose trust cannot be judged (no bootstrap
intervals): the headline is the first trusted approach of 3, 2, 1; when none is trusted, the
recommendation says so in its first line and shows each approach's numbers labelled untrusted
(see `trust`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from analysis.laws import (
    R_STAR_DATA,
    auroc_from_law,
    effective_tokens,
    format_interval,
    percentile_ci,
    power_law,
)
from ehrfm.errors import UserError
from ehrfm.io import format_ci, markdown_table
from ehrfm.law_checks import FRESH_EPOCHS, NO_INTERVALS, TOKENS_PER_PARAM_MARK, trust, utility_points_problem  # noqa: F401 (shared with the sweep planner; re-exported)
from ehrfm.law_checks import has_interval as _has_interval
from ehrfm.law_checks import is_number as _is_number

EXTRAPOLATION_WARN = 10.0  # warn past this factor beyond the largest fitted budget (or below the smallest)
# Past this factor beyond the fitted budgets (either way) no law is trusted: 3 decades outside the
# tested range, a power law's N_opt is the exponent's error times ln(factor) away (a 0.05 error in a
# is a factor 1.4 at 1000x) and below it the laws give models of under one parameter.
EXTRAPOLATION_UNTRUSTED = 1000.0
# Approaches 1-2's pure power-law loss against Approach 3's frontier (with its floor E): beyond this relative gap
# the recommendation says so (exact Chinchilla-law data at 100x: 2.47 against the law's 2.93, both "trusted")
LOSS_DISAGREE = 0.05
# A predicted AUROC above this (1 - AUROC under 0.001) is a power law run into its bound, not a forecast.
AUROC_SATURATED = 0.999
# The data-constrained optimum is searched on a log grid of N this dense (points per decade), with
# at most DC_GRID_MAX points (bootstrap draws x grid points are held at once).
DC_GRID_PER_DECADE = 200
DC_GRID_MAX = 4000
# Muennighoff et al. (2023)'s fitted R_N*: parameters beyond the compute-optimal size for the unique tokens
# decay like repeated tokens do (R_D* = R_STAR_DATA), but faster (module docstring).
R_STAR_PARAMS = 5.309


@dataclass
class ApproachPrediction:
    """One approach's prediction at the budget: N_opt, D_opt and loss with intervals, and whether to trust it."""
    approach: int
    n_opt: float
    n_opt_ci: list[float]
    d_opt: float
    d_opt_ci: list[float]
    loss: float  # predicted held-out loss (in the fit's loss unit, Recommendation.loss_unit) at (N_opt, D_opt)
    loss_ci: list[float]
    trusted: bool = True
    why_untrusted: str = ""  # "" when trusted
    one_sided: list[str] = field(default_factory=list)  # "n_opt", "d_opt", "loss": no interval, replicates on one side


@dataclass
class Recommendation:
    """What a compute budget `flops` (FLOPs) should buy, per `recommend`.

    Headline N_opt (parameters), D_opt (tokens) and loss (the fit's loss unit) come from `approach`;
    each approach's own prediction is in `per_approach`; intervals are the fit's confidence level.
    """
    flops: float
    approach: int  # the approach the headline numbers come from
    n_opt: float
    n_opt_ci: list[float]
    d_opt: float
    d_opt_ci: list[float]
    loss: float
    loss_ci: list[float]
    per_approach: list[ApproachPrediction]
    unique_tokens: float | None
    epochs: float | None  # D_opt / unique tokens
    data_constrained: dict | None  # the Muennighoff view when epochs > 1 and Approach 3 is there
    utility: dict[str, dict]  # task -> {"auroc", "auroc_ci"}
    # n_layer, d_model, n_head, context, vocab_size, n_params, n_params_total, flops_per_token, tokens, for:
    shape: dict | None  # the data-constrained optimum when the data must be repeated, else N_opt
    max_fitted_budget: float
    warnings: list[str] = field(default_factory=list)
    loss_unit: str = "nats/token"  # of the fitted loss column (fits.json inputs; nats/event for loss_per_event)
    trusted: bool = True  # the headline approach's law passes `trust`
    n_count: str = "non-embedding"  # the parameter count N_opt is in (fits.json n_count)
    bootstrapped: bool = False  # the fit has bootstrap draws: a missing interval prints "[n/a]"


NO_NUMBERS = "gives no N_opt or D_opt at this budget (null or non-finite parameters in fits.json)"




# The keys each approach's prediction reads from fits.json (null = NaN, as write_fits writes NaN).
NEEDED = {
    1: ("n_coef", "a", "d_coef", "b", "loss_coef", "loss_exponent"),
    2: ("n_coef", "a", "d_coef", "b", "loss_coef", "loss_exponent"),
    3: ("flops_per_param_token", "E", "A", "B", "alpha", "beta", "a", "b", "G"),
}
UTILITY_NEEDED = ("metric", "coef", "exponent")
# The numbers the recommendation reads from fits.json `inputs`.
INPUT_NUMBERS = ("min_budget", "max_budget", "unique_tokens", "vocab_size", "context", "bootstrap")
_REDO = "rerun `ehrfm fit` with --overwrite (a fits.json from an older ehrfm, or edited by hand?)"


def _usable(fit_json: dict) -> tuple[dict, dict]:
    """fits.json with each approach checked: (content with unusable approaches removed, {k: why not}).

    An approach lacking a key its prediction needs, or holding a non-number there, is removed with
    the reason naming the keys (an older fits.json, or one edited by hand); null, which
    write_fits writes for NaN, reads as NaN. Utility entries lacking keys are removed the same way.
    """
    out, why = dict(fit_json), {}
    for k, keys in NEEDED.items():
        f = fit_json.get(f"approach{k}")
        if f is None:  # not fitted: write_fits leaves the key out
            continue
        if not isinstance(f, dict) or not f:  # {} or [] is no fit but a damaged one, said like the others
            why[k] = f"approach{k} is {'empty' if isinstance(f, dict) else 'not a JSON object'}"
            out.pop(f"approach{k}")
            continue
        missing = [key for key in keys if key not in f]
        wrong = [key for key in keys if key in f and not _is_number(f[key])]
        if missing or wrong:
            parts = ([f"lacks {', '.join(missing)}"] if missing else []) + ([f"has non-numbers in {', '.join(wrong)}"] if wrong else [])
            why[k] = f"approach{k} {' and '.join(parts)}"
            out.pop(f"approach{k}")
            continue
        out[f"approach{k}"] = {**f, **{key: float("nan") if f[key] is None else f[key] for key in keys}}
    utility = fit_json.get("utility")
    out["utility"] = {}
    for task, u in (utility.items() if isinstance(utility, dict) else ()):
        if isinstance(u, dict) and all(key in u for key in UTILITY_NEEDED) and all(_is_number(u[key]) for key in UTILITY_NEEDED[1:]):
            out["utility"][task] = {**u, **{key: float("nan") if u[key] is None else u[key] for key in UTILITY_NEEDED[1:]}}
        else:
            why[f"utility/{task}"] = f"the utility law of {task} lacks one of {', '.join(UTILITY_NEEDED)} or holds non-numbers"
    inputs = out.get("inputs")
    # a non-number where `inputs` holds a number (budgets, sizes) is unknown, like a missing key: never a traceback
    # Counts and budgets are positive (bootstrap may be 0): a hand-edited -1 budget was a math domain traceback.
    def fits_input(key, v) -> bool:
        return key not in INPUT_NUMBERS or (_is_number(v) and v is not None and math.isfinite(v)
                                            and (v > 0 or (key == "bootstrap" and v == 0)))

    out["inputs"] = {key: v for key, v in inputs.items() if fits_input(key, v)} if isinstance(inputs, dict) else {}
    return out, why


def _interval(values: np.ndarray, estimate: float, conf: float) -> tuple[list[float], bool]:
    """(percentile interval of the bootstrap `values`, whether it is one-sided and so withheld as NaN).

    One-sided: fewer than the tail share (1 - conf) / 2 of the finite replicates lie below the estimate,
    or above it. The percentile interval then ends at the estimate (Approach 1's loss law at a fitted
    budget: 99.8% of replicates above it, "3.028 [3.028, 3.083]"), an end the bootstrap never tested:
    the replicates measure a bias of the statistic (a minimum over runs), not its uncertainty.
    """
    ci = percentile_ci(values, conf)
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    tail, tol = (1 - conf) / 2, 1e-9 * abs(estimate)  # replicates that reproduce the estimate are on neither side
    if _has_interval(ci) and math.isfinite(estimate) and min(np.mean(v < estimate - tol), np.mean(v > estimate + tol)) < tail:
        return [float("nan")] * 2, True
    return ci, False


def _predict_12(fits: dict, draws: dict, k: int, c: float, conf: float) -> ApproachPrediction | None:
    f = fits.get(f"approach{k}")
    if not f:
        return None
    n, d, loss = (f[coef] * c ** f[exp] for coef, exp in (("n_coef", "a"), ("d_coef", "b"), ("loss_coef", "loss_exponent")))
    cis, one_sided = {}, []
    for name, x, coef, exp in (("n_opt", n, "n_coef", "a"), ("d_opt", d, "d_coef", "b"), ("loss", loss, "loss_coef", "loss_exponent")):
        dc, de = draws.get(f"approach{k}/{coef}"), draws.get(f"approach{k}/{exp}")
        cis[name], biased = _interval(power_law(dc, de, c), x, conf) if dc is not None else ([float("nan")] * 2, False)
        if biased:
            one_sided.append(name)
    return ApproachPrediction(k, n, cis["n_opt"], d, cis["d_opt"], loss, cis["loss"], one_sided=one_sided)


def _a3_arrays(f: dict, draws: dict) -> dict[str, np.ndarray]:
    keys = ("E", "A", "B", "alpha", "beta", "a", "b", "G")
    return {k: np.asarray(draws[f"approach3/{k}"], dtype=float) for k in keys if f"approach3/{k}" in draws}


def _predict_3(fits: dict, draws: dict, c: float, conf: float) -> ApproachPrediction | None:
    f = fits.get("approach3")
    if not f:
        return None
    k = f["flops_per_param_token"]

    def frontier(p):
        n = p["G"] * (c / k) ** p["a"]
        d = (c / k) ** p["b"] / p["G"]
        return n, d, p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]

    n, d, loss = frontier({key: f[key] for key in ("E", "A", "B", "alpha", "beta", "a", "b", "G")})
    boot = _a3_arrays(f, draws)
    if len(boot) == 8:
        with np.errstate(all="ignore"):
            bn, bd, bl = frontier(boot)
        # One replicate, one law: a draw whose G is inf or 0 (a frontier coefficient at 0) gives N_opt inf and
        # D_opt 0 (or the reverse); the 0 is finite and was kept, so D_opt got an interval "[0, 4.6e+10]" from
        # the very replicates N_opt counted as failed. Such a draw fails for N_opt, D_opt and the loss alike.
        failed = ~(np.isfinite(bn) & np.isfinite(bd) & np.isfinite(bl) & (bn > 0) & (bd > 0))
        bn, bd, bl = (np.where(failed, np.nan, v) for v in (bn, bd, bl))
        cis = [percentile_ci(v, conf) for v in (bn, bd, bl)]
    else:
        cis = [[float("nan")] * 2] * 3
    return ApproachPrediction(3, float(n), cis[0], float(d), cis[1], float(loss), cis[2])


def _loss_law_misses(fits: dict) -> tuple[int, int] | None:
    """(budgets missed, budgets used) when Approach 2's loss law misses a used budget's L_min interval, else None.

    fits.json approach2.loss_law_misses records them. (Approach 1's loss law goes through each budget's lowest
    run, below its parabola's L_min by the runs' scatter, so the same minima cannot judge it.)
    """
    a2 = fits.get("approach2") or {}
    misses = a2.get("loss_law_misses")
    used = [b for b in a2.get("budgets") or [] if isinstance(b, dict) and b.get("used")]
    return (len(misses), len(used)) if isinstance(misses, list) and misses else None


def _data_constrained(fits: dict, draws: dict, c: float, unique: float, r_star: float, conf: float) -> dict:
    """Loss at the unconstrained optimum with repeated data, and the constrained optimum."""
    f = fits["approach3"]
    k = f["flops_per_param_token"]
    point = {key: np.array([f[key]]) for key in ("E", "A", "B", "alpha", "beta", "G", "a", "b")}
    boot = _a3_arrays(f, draws)
    # Candidate N, evaluated for all draws at once: from 2 decades below the unconstrained optimum
    # n0 to a decade past N = C / (k U), where D falls to the unique tokens U. With D < U nothing is
    # repeated and the loss is the unconstrained law's, which rises past n0 (< C / (k U) whenever
    # D_opt > U): the constrained optimum lies inside. A fixed 4 decades around n0 cut it off when
    # D_opt is thousands of epochs (1e25 FLOPs on 1e6 tokens: "optimum" = the grid's end, 100 n0).
    n0 = f["G"] * (c / k) ** f["a"]
    u_n0 = f["G"] * (unique * f["G"]) ** (f["a"] / f["b"])  # the compute-optimal size for the unique tokens
    lo = min(math.log10(n0) - 2.0, math.log10(u_n0) - 1.0) if u_n0 > 0 and math.isfinite(u_n0) else math.log10(n0) - 2.0
    hi = max(math.log10(n0) + 2.0, math.log10(c / (k * unique)) + 1.0)
    grid = np.logspace(lo, hi, int(min(DC_GRID_MAX, max(800, round(DC_GRID_PER_DECADE * (hi - lo))))) + 1)

    def solve(p):
        with np.errstate(all="ignore"):
            d = c / (k * grid)  # (G,)
            dp = effective_tokens(d, unique, r_star)
            # Muennighoff's second decay: parameters past U_N, the compute-optimal size for the unique tokens (the N
            # whose D_opt is U on the law's frontier, G (U G)^(a / b)), are worth N' = U_N + U_N R_N* (1 - exp(-(N / U_N
            # - 1) / R_N*)). Without it the search grew the model to spend the compute repeated data could not,
            # 1.5x past the unconstrained N_opt, and predicted a loss 0.11 nats too low (a helper, by their full law).
            u_n = (p["G"] * (unique * p["G"]) ** (p["a"] / p["b"]))[:, None]
            np_ = effective_tokens(grid[None, :], u_n, R_STAR_PARAMS)
            loss = p["E"][:, None] + p["A"][:, None] / np_ ** p["alpha"][:, None] + p["B"][:, None] / dp ** p["beta"][:, None]
            loss = np.where(np.isfinite(loss), loss, np.inf)
            j = loss.argmin(axis=1)
            n_unc = p["G"] * (c / k) ** p["a"]
            d_unc = c / (k * n_unc)
            n_unc_eff = effective_tokens(n_unc, u_n[:, 0], R_STAR_PARAMS)
            l_unc = p["E"] + p["A"] / n_unc_eff ** p["alpha"] + p["B"] / effective_tokens(d_unc, unique, r_star) ** p["beta"]
            return grid[j], d[j], loss[np.arange(len(j)), j], l_unc, np_[np.arange(len(j)), j]

    n, d, loss, l_unc, n_eff = (float(v[0]) for v in solve(point))
    out = dict(
        r_star=r_star, r_star_params=R_STAR_PARAMS, unique_tokens=unique,
        loss_at_unconstrained_optimum=l_unc, n_opt=n, d_opt=d, epochs=d / unique,
        effective_tokens=float(effective_tokens(d, unique, r_star)), effective_params=n_eff, loss=loss,
    )
    if len(boot) == 8:
        bn, bd, bl, bu, _ = solve(boot)
        out.update(loss_at_unconstrained_optimum_ci=percentile_ci(bu, conf), n_opt_ci=percentile_ci(bn, conf),
                   d_opt_ci=percentile_ci(bd, conf), loss_ci=percentile_ci(bl, conf))
    if n >= grid[-2] or n <= grid[1]:
        out["note"] = (f"constrained optimum at the edge of the searched range (N {grid[0]:.3g} to {grid[-1]:.3g}): "
                       "not a minimum, a bound")
    return out


def _constrained_beaten_by_runs(fits: dict, r_star: float, conf: float) -> str:
    """Where the fitted sweep's own runs beat the data-constrained law at their budget ("" when nowhere).

    The law (Approach 3 on effective tokens, plus Muennighoff's parameter decay, which the fit does not
    model) is evaluated at each budget Approach 2 used whose IsoFLOP minimum trains over one epoch of the
    table's unique tokens (below, the law is Approach 3's alone and the runs say nothing of repeats), and
    compared with that budget's L_min: a law above L_min's interval shows it wrong where it was fitted.
    It said 2.612 at 1e21 FLOPs, trusted, beside runs of 2.42 there (a helper's table of repeated data).
    """
    unique = (fits.get("inputs") or {}).get("unique_tokens")
    if not (_is_number(unique) and unique and unique > 0):
        return ""
    beaten = []
    for b in (fits.get("approach2") or {}).get("budgets") or []:
        if not (isinstance(b, dict) and b.get("used") is True and all(
                _is_number(b.get(k)) and b.get(k) is not None for k in ("budget", "loss_min", "d_opt"))):
            continue
        ci = b.get("loss_min_ci")
        if not (_has_interval(ci) and b["budget"] > 0 and b["d_opt"] > unique):
            continue
        law = _data_constrained(fits, {}, b["budget"], unique, r_star, conf)["loss"]
        if math.isfinite(law) and law > ci[1]:
            beaten.append(f"{law:.4g} predicted at {b['budget']:.3g} FLOPs, L_min {format_ci(b['loss_min'], ci)} measured")
    return "; ".join(beaten[:3]) + (f" and {len(beaten) - 3} more budgets" if len(beaten) > 3 else "")


# recommend warns when its model shape's tokens differ from D_opt by more than this factor.
SHAPE_TOKENS_OFF = 2.0


def _shape(n_opt: float, c: float, vocab_size: int | None, context: int | None, n_count: str = "non-embedding",
           convention: str | None = "flops") -> dict | None:
    """The family's shape nearest N_opt, in the count the fit used (total: embeddings included).

    Its tokens are C over its FLOPs per token in the convention the fit measured C in (fits.json
    inputs.compute_convention): "6ND" (a table without flops) 6 x n_params, as load_results computed
    each run's C; else ehrfm's own FLOPs/token (attention, output layer). Mixing them gave a shape
    that trains 79x fewer tokens than D_opt on a small model with a large vocabulary.
    """
    if not vocab_size or not context or not (n_opt > 0 and math.isfinite(n_opt)):
        return None
    from ehrfm import shapes

    cfg = shapes.shape_for_params(n_opt, vocab_size, context)
    if n_count == "total":
        # shape_for_params matches the non-embedding count: move its target until the total matches.
        target, best = n_opt, cfg
        for _ in range(12):
            total = shapes.n_params_total(cfg)
            if abs(math.log(total / n_opt)) < abs(math.log(shapes.n_params_total(best) / n_opt)):
                best = cfg
            target *= n_opt / total
            if not target > 0:
                break
            cfg = shapes.shape_for_params(target, vocab_size, context)
        cfg = best
    own = shapes.flops_per_token(cfg)
    fpt = 6.0 * shapes.n_params(cfg) if convention == "6ND" else own
    return dict(n_layer=cfg.n_layer, d_model=cfg.d_model, n_head=cfg.n_head, context=cfg.context, vocab_size=cfg.vocab_size,
                n_params=shapes.n_params(cfg), n_params_total=shapes.n_params_total(cfg), flops_per_token=fpt, tokens=int(c // fpt),
                compute_convention=convention or "unknown", ehrfm_flops_per_token=own)


def _load(fits) -> tuple[dict, dict, float, str]:
    """Load a fit's content, bootstrap draws and confidence level.

    (fits.json's content, its bootstrap draws, the confidence level of its intervals, where it came
    from) of a FIT directory, a fits.json path or an analysis.fit.FitResult.
    """
    from analysis.fit import FitResult, fit_files, load_fits

    if isinstance(fits, FitResult):
        return fits.to_json(), fits.draws, fits.config.confidence, "<FitResult>"
    fit_json, draws = load_fits(fits)
    path, home = fit_files(fits)
    source = str(path)
    cfg_path = home / "fit_config.json" if home is not None else None  # another fit's config is not this one's
    conf = 0.95
    if cfg_path is not None and cfg_path.is_file():
        import json

        conf = json.loads(cfg_path.read_text(encoding="utf-8")).get("confidence", 0.95)
    return fit_json, draws, conf, source


def _utility(fit_json: dict, draws: dict, flops: float, conf: float, notes: list[str]) -> dict:
    """Predicted AUROC per task at `flops`, from the utility laws.

    {task: {"auroc", "auroc_ci"}} at `flops` from each utility law whose AUROC rose with compute:
    its exponent's interval lies below 0 (issue 13's "rising"), or, for a fit made without a
    bootstrap, its exponent is below 0. No task is predicted at a budget no law is trusted at
    (`_outside_range`). A prediction at AUROC's bound (1, or chance 0.5) is the law saturating, not
    a measurement: its note says so. A note in `notes` for each task left out.
    """
    utility = {}
    outside = _outside_range(flops, fit_json.get("inputs") or {}, fit_json.get("approach2"))
    for task, u in fit_json.get("utility", {}).items():
        k, k_ci = u.get("exponent"), u.get("exponent_ci") or [None, None]
        hi = k_ci[1] if len(k_ci) == 2 else None
        if outside:
            notes.append(f"no AUROC prediction for {task}: {outside}")
            continue
        if not (k is not None and k < 0):
            notes.append(f"no AUROC prediction for {task}: its AUROC did not rise with compute in the fitted sweep")
            continue
        if untested := utility_points_problem(u):
            notes.append(f"no AUROC prediction for {task}: {untested}")
            continue
        if hi is not None and math.isfinite(hi) and not hi < 0:
            notes.append(f"no AUROC prediction for {task}: its utility exponent's interval [{k_ci[0]:.3g}, {hi:.3g}] "
                         "includes 0, so the sweep does not show its AUROC rising with compute")
            continue
        if (fit_json.get("inputs") or {}).get("bootstrap") and not (hi is not None and math.isfinite(hi)):
            # bootstrapped, but too few replicates fitted for an interval: "rising" cannot be told from noise
            why = (fit_json.get("intervals_not_available") or {}).get(f"utility/{u.get('metric')}/exponent", "")
            notes.append(f"no AUROC prediction for {task}: its utility exponent has no interval{f' ({why})' if why else ''}, "
                         "so the sweep does not show its AUROC rising with compute")
            continue
        dc, de = draws.get(f"utility/{u['metric']}/coef"), draws.get(f"utility/{u['metric']}/exponent")
        # AUROC is bounded: a law extrapolated past chance (0.5) or 1 is clipped there.
        entry = {"auroc": float(auroc_from_law(u["coef"], u["exponent"], flops))}
        entry["auroc_ci"] = percentile_ci(auroc_from_law(dc, de, flops), conf) if dc is not None else [float("nan")] * 2
        if entry["auroc"] > AUROC_SATURATED or entry["auroc"] <= 0.5:
            notes.append(f"the AUROC law of {task} reaches its bound at this budget (AUROC {entry['auroc']:.4f}): the "
                         "power law saturates there, which no measurement supports")
        utility[task] = entry
    return utility


def recommend(fits, flops: float, unique_tokens: float | None = None, approach: int | None = None,
              vocab_size: int | None = None, context: int | None = None, r_star: float = R_STAR_DATA) -> Recommendation:
    """Recommend a model and data size for compute budget `flops` from a fit.

    Each fitted approach predicts N_opt, D_opt and the loss at `flops` (Approach 3 from its
    compute-optimal frontier, Hoffmann et al. 2022 eq. 4; Approaches 1-2 from their power laws),
    with percentile-bootstrap intervals from the fit's draws. When D_opt exceeds the unique tokens,
    the data-constrained view of Muennighoff et al. (2023) is added when Approach 3 was fitted
    (effective data, R* = r_star).

    Args:
        fits: a FIT directory, a fits.json path, or an analysis.fit.FitResult.
        flops: the compute budget C in FLOPs (> 0).
        unique_tokens: unique training tokens available (default: the fitted table's).
        approach: the headline approach (1, 2 or 3); default: the first of 3, 2, 1 that passes
            `trust`, else 3 (else 2, else 1). A budget more than EXTRAPOLATION_UNTRUSTED times
            outside the fitted budgets leaves every approach untrusted.
        vocab_size: V for the concrete shape (default: the fitted table's).
        context: T for the concrete shape (default: the fitted table's).
        r_star: Muennighoff's R*_D, the repetitions after which repeated tokens add little.

    Returns:
        Recommendation: N_opt (parameters, in the fit's n_count), D_opt (tokens), loss (the fit's
        loss unit), epochs, utility predictions per task, a model shape, warnings.

    Raises:
        UserError: flops or unique_tokens not a finite number >= 1, a fit without approaches, an approach that was not
            fitted, or an unreadable fit.
    """
    fit_json, draws, conf, source = _load(fits)
    # Counts below 1 are no budget or dataset: --flops 1e-323 divided by zero, --unique-tokens 1e-300 overflowed
    # (tracebacks) and --unique-tokens 0.5 gave 1.8e11 epochs.
    def number(x) -> bool:  # numpy scalars too (a budget from an array), never a bool
        return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)

    if not (number(flops) and flops >= 1):
        raise UserError(f"--flops must be a finite number of FLOPs >= 1 (got {flops})")
    if unique_tokens is not None and not (number(unique_tokens) and unique_tokens >= 1):
        raise UserError(f"--unique-tokens must be a finite number >= 1 (got {unique_tokens})")
    if approach is not None and approach not in (1, 2, 3):
        raise UserError(f"--approach must be 1, 2 or 3 (got {approach!r})")
    if not (isinstance(r_star, (int, float)) and math.isfinite(r_star) and r_star > 0):
        raise UserError(f"r_star must be a finite number > 0 (got {r_star})")
    fit_json, unusable = _usable(fit_json)
    if approach in unusable:
        raise UserError(f"fits file {source}: {unusable[approach]}; {_REDO}")
    inputs = fit_json["inputs"]
    preds = [p for p in (_predict_3(fit_json, draws, flops, conf), _predict_12(fit_json, draws, 2, flops, conf),
                         _predict_12(fit_json, draws, 1, flops, conf)) if p is not None]
    if not preds:
        if unusable:
            raise UserError(f"fits file {source} has no usable approach: {'; '.join(unusable.values())}; {_REDO}")
        raise UserError("the fit holds no approach to recommend from (fits.json has no approach1/2/3)")
    by_k = {p.approach: p for p in preds}
    outside = _outside_range(flops, fit_json["inputs"], fit_json.get("approach2"))
    for p in preds:
        p.trusted, p.why_untrusted = trust(fit_json, p.approach)
        if not (p.n_opt > 0 and p.d_opt > 0 and math.isfinite(p.n_opt) and math.isfinite(p.d_opt)):
            # null parameters (an older or hand-edited fits.json) give NaN: never the headline over a law with numbers
            p.trusted, p.why_untrusted = False, "; ".join(filter(None, [p.why_untrusted, NO_NUMBERS]))
        if outside:
            p.trusted, p.why_untrusted = False, "; ".join(filter(None, [p.why_untrusted, outside]))
    if approach is None:
        # never a law that cannot stand behind its numbers, while a trusted one exists
        head = next((p for p in preds if p.trusted), preds[0])
    elif approach in by_k:
        head = by_k[approach]
    else:
        raise UserError(f"approach {approach} was not fitted (fits.json has {', '.join(str(k) for k in sorted(by_k))})")

    notes = [f"fits file {source}: {why}; not used ({_REDO})" for why in unusable.values()]
    # the fit's doubt about the table's units (analysis.fit._tokens_per_param_hints) moves every absolute number below
    notes += [w for w in fit_json.get("warnings") or [] if isinstance(w, str) and TOKENS_PER_PARAM_MARK in w]
    for p in preds:
        if p.one_sided:
            why = (" (its law goes through each budget's lowest loss, which resampling runs can only raise)"
                   if p.approach == 1 and "loss" in p.one_sided else "")
            notes.append(f"Approach {p.approach}: no interval for {', '.join(p.one_sided)}: its bootstrap replicates lie on one "
                         f"side of the estimate{why}, so a percentile interval would end at the estimate itself")
    a3 = fit_json.get("approach3") or {}
    identified = a3.get("identified")
    floor = a3.get("E") if isinstance(identified, dict) and identified.get("E") is True else None
    if floor is not None and _has_interval(a3.get("E_ci")):
        floor = a3["E_ci"][0]  # clearly below the floor: under its interval, not within its noise
    for p in preds:
        # Approaches 1-2 predict the loss by a pure power law L_min = k C^g, which has no irreducible term and
        # falls below any floor: past the fitted budgets it is biased low (1.43 at 1000x past Chinchilla-law data
        # whose E is 1.69; the law's own frontier says 1.85). Say so where it crosses the floor Approach 3 found.
        if p.approach != 3 and floor is not None and p.loss < floor:
            notes.append(f"Approach {p.approach}'s predicted loss {p.loss:.4g} is below Approach 3's irreducible loss "
                         f"E = {format_ci(a3['E'], a3.get('E_ci') if _has_interval(a3.get('E_ci')) else None)}: its "
                         "L_min ~ C^k power law has no floor and falls too fast outside the fitted budgets")
        elif p.approach != 3 and 3 in by_k and by_k[3].trusted and floor is not None \
                and abs(p.loss - by_k[3].loss) > LOSS_DISAGREE * by_k[3].loss:
            notes.append(f"Approach {p.approach}'s predicted loss {p.loss:.4g} is {abs(p.loss / by_k[3].loss - 1):.0%} "
                         f"{'below' if p.loss < by_k[3].loss else 'above'} Approach 3's frontier ({by_k[3].loss:.4g}, with its "
                         "irreducible loss E): its L_min ~ C^k power law has no floor; take its loss as rough here")
    for p in preds:
        if p.approach == 2 and "loss_law_misses" not in (fit_json.get("approach2") or {}):
            # an older fit (before the key, 2026-12-05): whether its loss law misses the minima is unknown, and read as
            # "none" it printed a loss interval the current fit withholds (the truth outside it)
            p.loss_ci = [float("nan"), float("nan")]
            notes.append(f"Approach {p.approach}: fits.json does not record whether its loss law L_min ~ C^k misses the "
                         "fitted budgets' minima (approach2 loss_law_misses: an older fit), so no loss interval is given; "
                         "refit with `ehrfm fit` for one")
        elif p.approach == 2 and (misses := _loss_law_misses(fit_json)):
            # its loss interval comes from replicates of the same misfitting law: narrower than the law's own miss (it held
            # the true loss 0 times in 12 draws of a known law at 100x, a helper), so none is given, and the loss is rough
            p.loss_ci = [float("nan"), float("nan")]
            notes.append(f"Approach {p.approach}'s loss law L_min ~ C^k lies outside the L_min interval of {misses[0]} of the "
                         f"{misses[1]} fitted budgets: a power law without a floor bends away from the minima, so its "
                         "bootstrap's loss interval is too narrow and none is given; take its loss as rough")
    for p in preds:  # (the headline says why; elsewhere the table's [n/a] is enough)
        if p.approach == 1 and _has_interval(p.loss_ci):
            # its loss law goes through each budget's lowest run, a minimum over noisy runs: biased below the budget's
            # L_min by their scatter, and its replicates with it (the truth inside it 0 times in 15 draws at a fitted budget)
            p.loss_ci = [float("nan"), float("nan")]
            if p is head:
                notes.append("Approach 1's loss law goes through each budget's lowest run, below the budget's true minimum "
                             "by the runs' scatter: no interval is given for its loss (its bootstrap shares that bias)")
    if not head.trusted:
        notes.append(f"Approach {head.approach} is not trusted: {head.why_untrusted}")
    max_budget = float(inputs.get("max_budget") or "nan")
    from analysis.fit import holdout_failed  # (analysis.fit is loaded by _load already)

    if flops > max_budget and (failed := holdout_failed(fit_json.get("holdout") if isinstance(fit_json.get("holdout"), dict) else None)):
        notes.append(failed)
    if flops > EXTRAPOLATION_WARN * max_budget:
        notes.append(f"extrapolating {_factor(flops, max_budget)} past the largest fitted budget ({max_budget:.3g} FLOPs): treat the numbers as rough")
    min_budget = inputs.get("min_budget")
    if min_budget and flops < min_budget / EXTRAPOLATION_WARN:
        notes.append(f"budget is {_factor(min_budget, flops)} below the smallest fitted budget ({min_budget:.3g} FLOPs)")

    unique = unique_tokens if unique_tokens is not None else inputs.get("unique_tokens")
    if unique is not None and not unique > 0:
        raise UserError(f"--unique-tokens must be > 0 (got {unique})")
    sizes = inputs.get("unique_tokens_values")
    if unique_tokens is None and unique is not None and isinstance(sizes, int) and sizes > 1:
        # the largest was taken without a word, though half the runs may have trained on 1000x less data
        notes.append(f"unique tokens {unique:.3g}: the largest of the {sizes} data-set sizes (unique_tokens) the fitted runs "
                     "had; pass --unique-tokens for the data the model will train on")
    epochs = head.d_opt / unique if unique else None
    constrained = None
    if epochs is not None and epochs > 1:
        notes.append(f"D_opt needs {_num(epochs, '{:.1f}')} epochs over the {unique:.3g} unique tokens available")
        if "approach3" in fit_json and NO_NUMBERS in by_k[3].why_untrusted:
            notes.append(f"no data-constrained prediction: Approach 3 {NO_NUMBERS}")
        elif "approach3" in fit_json:
            constrained = _data_constrained(fit_json, draws, flops, unique, r_star, conf)
            # The constrained optimum is Approach 3's law at work: no more trusted than that law here. An
            # untrusted one is shown, labelled, but the model shape stays at the headline's N_opt.
            constrained["trusted"] = by_k[3].trusted
            if constrained.get("note"):  # "at the edge of the searched range": printed, not only in --json
                notes.append(f"data-constrained optimum: {constrained['note']}")
            if not by_k[3].trusted:
                notes.append(f"the data-constrained optimum comes from Approach 3, which is not trusted here "
                             f"({by_k[3].why_untrusted}): do not size a model from it")
            elif contradicted := _constrained_beaten_by_runs(fit_json, r_star, conf):
                constrained["trusted"] = False
                notes.append(f"the data-constrained law is contradicted by the fitted sweep: {contradicted}; its parameter "
                             f"decay (Muennighoff et al. 2023's R_N* = {R_STAR_PARAMS}) is assumed, not fitted, and these runs "
                             "do not show it: do not size a model from it")
            if not inputs.get("multi_epoch"):
                notes.append("the fitted runs were all single-epoch: the repeated-data correction (Muennighoff et al. 2023, R*=15.4) is assumed, not fitted")
        else:
            notes.append("fit Approach 3 to get the data-constrained (repeated tokens) prediction")

    utility = _utility(fit_json, draws, flops, conf, notes)

    # `is None`, not `or`: 0 is a wrong value, refused, not "not given" (the table's used instead, silently)
    for name, v in (("vocab_size", vocab_size), ("context", context)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise UserError(f"--{name.replace('_', '-')} must be a whole number >= 1 (got {v!r})")
    vocab_size = vocab_size if vocab_size is not None else inputs.get("vocab_size")
    context = context if context is not None else inputs.get("context")
    shape_n = constrained["n_opt"] if constrained and constrained["trusted"] else head.n_opt
    n_count = fit_json.get("n_count") or "non-embedding"
    shape = _shape(shape_n, flops, vocab_size, context, n_count, inputs.get("compute_convention"))
    shape_d = constrained["d_opt"] if constrained and constrained["trusted"] else head.d_opt
    if shape is not None and shape["compute_convention"] == "6ND":
        notes.append(f"the fit measured compute as C = 6 N D (no flops column): the shape's tokens are C / (6 N); by ehrfm's "
                     f"FLOPs/token for this shape ({shape['ehrfm_flops_per_token']:.3g}, attention and output layer included) "
                     f"training them costs {shape['tokens'] * shape['ehrfm_flops_per_token']:.3g} FLOPs")
    if shape is not None and shape_d > 0 and shape["tokens"] > 0 and abs(math.log(shape["tokens"] / shape_d)) > math.log(SHAPE_TOKENS_OFF):
        # the nearest shape in the family can sit far from N_opt (few widths at small N), or the fit's
        # compute convention is unknown (a fits.json from before compute_convention): say so, not silently
        notes.append(f"the model shape trains {_count(shape['tokens'])} tokens, {_factor(max(shape['tokens'], shape_d), min(shape['tokens'], shape_d))} "
                     f"{'fewer' if shape['tokens'] < shape_d else 'more'} than D_opt {shape_d:.3g} "
                     f"({shape['flops_per_token']:.3g} FLOPs/token, compute convention {shape['compute_convention']}): "
                     "size the run from N_opt and D_opt, not from the shape line")
    have = None if shape is None else shape["n_params_total" if n_count == "total" else "n_params"]
    if have and shape_n > 0 and abs(math.log(have / shape_n)) > math.log(SHAPE_TOKENS_OFF):
        # the family's smallest shapes are far from a small N_opt, and with a large vocabulary the embeddings
        # alone outweigh it: a 100,000-code vocabulary gave a 3.2e6-parameter shape for N_opt 1.65e5, unsaid
        emb = shape["n_params_total"] - shape["n_params"]
        why = (f": with a vocabulary of {shape['vocab_size']:,} its embeddings alone are {_count(emb)} parameters"
               if n_count == "total" and have > shape_n and emb > shape_n / 2 else "")
        notes.append(f"the family's nearest shape has {_count(have)} {'total' if n_count == 'total' else 'non-embedding'} "
                     f"parameters, {_factor(max(have, shape_n), min(have, shape_n))} {'more' if have > shape_n else 'fewer'} "
                     f"than N_opt {shape_n:.3g}{why}; size the run from N_opt and D_opt, not from the shape line")
    if shape is None:
        # name what is missing: a table with vocab_size but no context was told it had neither
        lacking = [k for k, v in (("vocab_size", vocab_size), ("context", context)) if not v]
        notes.append(f"no model shape: pass {' and '.join('--' + k.replace('_', '-') for k in lacking)} (the results table had no "
                     f"{' or '.join(lacking)} column)" if lacking else f"no model shape: N_opt {shape_n:.3g} is not a model size")
    return Recommendation(
        flops=float(flops), approach=head.approach, n_opt=head.n_opt, n_opt_ci=head.n_opt_ci, d_opt=head.d_opt,
        d_opt_ci=head.d_opt_ci, loss=head.loss, loss_ci=head.loss_ci, per_approach=preds,
        unique_tokens=float(unique) if unique else None, epochs=epochs, data_constrained=constrained, utility=utility,
        shape=shape, max_fitted_budget=max_budget, warnings=notes, loss_unit=inputs.get("loss_unit", "nats/token"),
        trusted=head.trusted, n_count=n_count,
        bootstrapped=bool(inputs.get("bootstrap", any(len(v) for v in draws.values()))),
    )


def _outside_range(flops: float, inputs: dict, approach2: dict | None = None) -> str:
    """Why a budget this far outside the fitted budgets gets no trusted law ("" when it is close enough).

    More than EXTRAPOLATION_UNTRUSTED times the largest fitted budget, or less than the smallest
    divided by it (fits.json inputs max_budget / min_budget, FLOPs, else the ends of inputs.budgets);
    a fits.json that records neither gets a reason too: its range cannot be judged. Where Approach 2
    records which budgets' IsoFLOP parabolas it used (`approach2.budgets[].used`), only those count:
    a stray run at 1e12 beside budgets of 1e17-1e19 (one size, left out of every parabola) made
    every law "trusted" at 1e12, five decades below where any was fitted.
    """
    def positive(v):
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 else None

    hi, lo = positive(inputs.get("max_budget")), positive(inputs.get("min_budget"))
    listed = inputs.get("budgets")
    fitted = [b for b in map(positive, listed) if b is not None] if isinstance(listed, list) else []
    if fitted:  # an older fits.json has the budgets but not their ends
        hi, lo = hi if hi is not None else max(fitted), lo if lo is not None else min(fitted)
    groups = (approach2 or {}).get("budgets") if isinstance(approach2, dict) else None
    used = [b for g in groups if isinstance(g, dict) and g.get("used") is True
            and (b := positive(g.get("budget"))) is not None] if isinstance(groups, list) else []
    if used and hi is not None and lo is not None:
        hi, lo = min(hi, max(used)), max(lo, min(used))
    if hi is None or lo is None:  # before: no range, no check, every law trusted at 1e40 FLOPs
        return ("fits.json does not record the fitted budgets (inputs min_budget, max_budget, budgets: an older or "
                "edited fit), so how far this budget lies outside them cannot be judged; refit with `ehrfm fit`")
    if flops > EXTRAPOLATION_UNTRUSTED * hi:
        return (f"the budget is {_factor(flops, hi)} past the largest fitted budget ({hi:.3g} FLOPs): no law fitted there "
                f"is trusted beyond {_factor(EXTRAPOLATION_UNTRUSTED)}")
    if flops < lo / EXTRAPOLATION_UNTRUSTED:
        return (f"the budget is {_factor(lo, flops)} below the smallest fitted budget ({lo:.3g} FLOPs): no law fitted there "
                f"is trusted beyond {_factor(EXTRAPOLATION_UNTRUSTED)}")
    return ""


def _num(x: float, fmt: str) -> str:
    """A number in `fmt` ("{:.1f}") while that stays short and non-zero, else compact scientific.

    Compact scientific above 1e4 ("8.64e+17") and where `fmt` would round a non-zero value to 0
    (D_opt 2.4e+10 over 1e+13 unique tokens is "0.00243 epochs", never "0.00 epochs").
    """
    text = fmt.format(x)
    return text if abs(x) < 1e4 and (x == 0 or float(text) != 0) else f"{x:.3g}"


def _count(n: int) -> str:
    """A count with thousands separators ("1,253,132") below 1e9, compact scientific ("1.93e+22") above."""
    return f"{n:,}" if abs(n) < 1e9 else f"{n:.3g}"


def _factor(x: float, den: float = 1.0) -> str:
    """The ratio x / den of budgets: "25x", or "2.5e+19x" when it is too large to read.

    Taken in logs: 1e-20 / 1e-300 and 1e18 / 1e-300 overflow a float ("infx below"), the ratio does not.
    """
    log10 = math.log10(x) - math.log10(den)
    if log10 < 4:
        return f"{10 ** log10:.0f}x"
    exp = math.floor(log10)
    mant = 10 ** (log10 - exp)
    return f"{mant:.3g}e+{exp:02d}x" if round(mant, 2) < 10 else f"1e+{exp + 1:02d}x"


def format_recommendation(rec: Recommendation) -> str:
    """Markdown: the headline, one row per approach, the shape, repeated-data and utility notes."""
    count = "total" if rec.n_count == "total" else "non-embedding"

    def ci_text(x, ci, fmt="{:.3g}"):  # "[n/a]" where the fit was bootstrapped but gave no interval
        return format_interval(x, ci, fmt, expected=rec.bootstrapped)

    lines = []
    if not any(p.trusted for p in rec.per_approach):
        lines += [f"**No trustworthy scaling law in this fit** for this budget: no approach passes the checks a recommendation "
                  "needs (exponents a, b > 0 with intervals excluding 0, an L_min that falls with compute, a bracketed optimum, "
                  "an identified frontier, a budget "
                  f"within {_factor(EXTRAPOLATION_UNTRUSTED)} of the fitted ones) "
                  f"({'; '.join(f'Approach {p.approach}: {p.why_untrusted}' for p in rec.per_approach)}). "
                  "The numbers below are what each approach would say, untrusted: do not size a model from them.", ""]
    elif not rec.trusted:
        head = next(p for p in rec.per_approach if p.approach == rec.approach)
        lines += [f"**Approach {rec.approach}, as asked, is not trusted**: {head.why_untrusted}. Trusted: "
                  f"{', '.join(f'Approach {p.approach}' for p in rec.per_approach if p.trusted)}.", ""]
    else:
        # the headline is the first trusted approach of 3, 2, 1: say which ones it passed over, and why,
        # before its numbers (a fit whose Approach 2 had b's interval through 0 headlined Approach 1 silently)
        order = [p.approach for p in rec.per_approach]
        passed_over = [p for p in rec.per_approach[: order.index(rec.approach)] if not p.trusted]
        if passed_over:
            lines += [f"**Headline from Approach {rec.approach}**: "
                      + "; ".join(f"Approach {p.approach} is not trusted ({p.why_untrusted})" for p in passed_over) + ".", ""]
    if rec.epochs is not None and rec.epochs > FRESH_EPOCHS:
        # Up to FRESH_EPOCHS repeats are worth about as much as fresh tokens (a note says the epochs); beyond, the headline's N_opt, D_opt and loss assume fresh tokens; said before them, not in a note after the table
        # (the first line gave D_opt at 53 epochs and its loss, 0.09 nats better than the truth at that N).
        dc = rec.data_constrained
        then = (f"size the model from the data-constrained optimum below (Approach 3 with repeated data, Muennighoff et al. "
                f"2023): N {ci_text(dc['n_opt'], dc.get('n_opt_ci'))}, loss {ci_text(dc['loss'], dc.get('loss_ci'), '{:.4g}')}"
                if dc and dc.get("trusted", True) else
                "no trusted data-constrained optimum sizes it here (Approach 3 is needed, and trusted, for one): "
                "more unique data, or a smaller budget, is the sound choice")
        lines += [f"**The data is the limit**: D_opt {rec.d_opt:.3g} tokens is {_num(rec.epochs, '{:.1f}')} epochs of the "
                  f"{rec.unique_tokens:.3g} unique tokens available, more than the ~{FRESH_EPOCHS:g} that are worth about as "
                  "much as fresh ones (Muennighoff et al. 2023), and the compute-optimal law assumes fresh tokens, so "
                  f"its loss below is optimistic; {then}.", ""]
    lines += [
        f"Budget {rec.flops:.3g} FLOPs (Approach {rec.approach}{'' if rec.trusted else ', untrusted'}): "
        f"N_opt {ci_text(rec.n_opt, rec.n_opt_ci)} {count} parameters, "
        f"D_opt {ci_text(rec.d_opt, rec.d_opt_ci)} tokens, predicted loss {ci_text(rec.loss, rec.loss_ci, '{:.4g}')} {rec.loss_unit}.",
        "",
        f"| approach | N_opt | D_opt | loss ({rec.loss_unit}) | trusted |",
        "|---|---|---|---|---|",
    ]
    for p in rec.per_approach:
        ok = "yes" if p.trusted else f"no: {p.why_untrusted}"
        lines.append(f"| {p.approach} | {ci_text(p.n_opt, p.n_opt_ci)} | {ci_text(p.d_opt, p.d_opt_ci)} | "
                     f"{ci_text(p.loss, p.loss_ci, '{:.4g}')} | {ok} |")
    if rec.shape:
        s = rec.shape
        target = "the data-constrained optimum" if rec.data_constrained and rec.data_constrained.get("trusted", True) else "N_opt"
        lines += ["", f"Model shape for {target}: n_layer={s['n_layer']} d_model={s['d_model']} n_head={s['n_head']} context={s['context']} "
                  f"vocab={s['vocab_size']} ({_count(s['n_params'])} non-embedding / {_count(s['n_params_total'])} total parameters), "
                  f"train {_count(s['tokens'])} tokens at {s['flops_per_token']:.3g} FLOPs/token."]
    if rec.epochs is not None:
        lines += ["", f"Unique tokens available: {rec.unique_tokens:.3g}; D_opt is {_num(rec.epochs, '{:.2f}')} epochs."]
    if rec.data_constrained:
        dc = rec.data_constrained
        lines += [
            f"Repeated data (Muennighoff et al. 2023, R_D*={dc['r_star']}, excess parameters R_N*={dc.get('r_star_params', R_STAR_PARAMS)}"
            f"{'' if dc.get('trusted', True) else '; Approach 3, untrusted'}): "
            "at Approach 3's unconstrained N_opt the loss would be "
            f"{ci_text(dc['loss_at_unconstrained_optimum'], dc.get('loss_at_unconstrained_optimum_ci'), '{:.4g}')}; "
            f"the data-constrained optimum is N {ci_text(dc['n_opt'], dc.get('n_opt_ci'))}, D {ci_text(dc['d_opt'], dc.get('d_opt_ci'))} "
            f"({_num(dc['epochs'], '{:.1f}')} epochs, {dc['effective_tokens']:.3g} effective tokens"
            + (f", {dc['effective_params']:.3g} effective parameters" if dc.get("effective_params") else "")
            + f"), loss {ci_text(dc['loss'], dc.get('loss_ci'), '{:.4g}')}."
        ]
    if rec.utility:
        lines += ["", *markdown_table(["task", "predicted AUROC"],
                                      ([task, ci_text(u["auroc"], u["auroc_ci"])] for task, u in rec.utility.items()))]
    lines += [f"\nWarning: {w}" for w in rec.warnings]
    return "\n".join(lines)
