"""What the sweep planner, the scaling-law fit and the clinical heads share: budgets, a law's trust, replicates.

Stages meet only at files (DESIGN.md): `sweeps` plans budgets as `ehrfm fit` (analysis) groups
them, and `ehrfm sweep plan --centre-from` judges a fits.json as `ehrfm recommend` does, so both
read these from here rather than from each other. analysis.table, analysis.laws and
analysis.recommend re-export them under their old names. Pure Python: no numpy, no torch.
"""

from __future__ import annotations

import math

from ehrfm.io import format_ci

# Planned budgets closer than this (0.1%) are one budget written two ways (1e11 vs 1.0000001e11).
BUDGET_SAME_DECADES = 4.3e-4

NO_INTERVALS = "fitted without bootstrap intervals: trust cannot be judged"
# Epochs of repeated data that are worth about as much as fresh tokens (Muennighoff et al. 2023, "Scaling
# Data-Constrained Language Models": up to ~4 epochs the loss barely differs). An IsoFLOP minimum at more
# epochs than this sits where repetition, not compute, shapes the curve.
FRESH_EPOCHS = 4.0
# In each fit warning that the runs' tokens per parameter put n_params or tokens in another unit
# (analysis.fit._tokens_per_param_hints): `ehrfm recommend` repeats those, as they move its every number.
TOKENS_PER_PARAM_MARK = "tokens / n_params"


def min_replicates(confidence: float = 0.95) -> int:
    """The fewest bootstrap replicates from which a percentile interval of this coverage is reported.

    ceil(1 / (1 - confidence)) (20 for 95%): with fewer, fewer than half a replicate falls in each
    tail, so the interval's ends are interpolated between the few most extreme replicates (with 2
    replicates, a "95% interval" is most of the gap between them) and are narrower than the
    coverage claims, never a measurement of it.
    """
    return int(math.ceil(1.0 / (1.0 - confidence) - 1e-9))


def is_number(v) -> bool:
    """A JSON number or null (NaN is written as null), not a bool."""
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def has_interval(ci) -> bool:
    """A confidence interval [lo, hi] of two finite numbers (fits.json's *_ci)."""
    return isinstance(ci, (list, tuple)) and len(ci) == 2 and all(
        is_number(v) and v is not None and math.isfinite(v) for v in ci)


# A parameter whose bootstrap interval spans more than this many decades is reported as not identified.
IDENTIFIED_DECADES = 3.0


def identified(ci, decades: float = IDENTIFIED_DECADES) -> bool | None:
    """Is a positive parameter pinned down by its interval?

    False when the interval spans more than `decades` decades or reaches 0 (log-scale unbounded);
    None when there is no interval.
    """
    lo, hi = (float("nan") if v is None else float(v) for v in ci)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None if not (math.isinf(hi) or math.isinf(lo)) else False
    if lo <= 0:
        return False
    return bool(math.log10(hi / lo) <= decades)


def damaged_intervals(f: dict, names) -> list[str]:
    """Problems of the fits.json approach dict `f` whose parameter beside its interval cannot be a fit's.

    For each name in `names` with a number and an interval `<name>_ci`: the interval reversed, or the
    number farther outside it than the interval is wide (a percentile interval may miss its point
    estimate a little, a skewed bootstrap, never by more than its own width). A hand-edited G = 1e6
    beside [0.71, 2.75] was trusted: N_opt 4.2e14 printed beside its interval [6.1e8, 6.7e8].
    """
    out = []
    for name in names:
        x, ci = f.get(name), f.get(f"{name}_ci")
        if f"{name}_ci" in f and not _interval_shaped(ci):
            # [0.3] or [NaN, 0.4] (NaN is written null): no fit writes it (an interval not available is [null, null])
            out.append(f"the interval of {name} in fits.json is not a pair [lo, hi] (nor [null, null]): the file is damaged")
            continue
        if not (is_number(x) and x is not None and math.isfinite(x) and has_interval(ci)):
            continue
        if ci[0] > ci[1]:
            out.append(f"the interval of {name} in fits.json is reversed ({ci[0]:.3g} > {ci[1]:.3g}): the file is damaged")
        elif max(ci[0] - x, x - ci[1]) > max(ci[1] - ci[0], 1e-9 * abs(x)):
            out.append(f"{name} = {x:.3g} lies far outside its own interval [{ci[0]:.3g}, {ci[1]:.3g}] in fits.json: "
                       "the file is damaged")
    return out


# An Approach 1 or 2 law's N_opt(C) x D_opt(C) against a fitted budget's own minimum's N x D (fits.json approach2
# budgets n_opt, d_opt): a fit's line through the minima stays within their scatter, far inside this factor.
BUDGET_IDENTITY_FACTOR = 4.0


def _budget_identity_problems(f: dict, fits: dict) -> list[str]:
    """An Approach 1 or 2 law whose N_opt(C) x D_opt(C) is not the fitted budgets' N x D: a damaged fits.json.

    Both laws come from runs on D = C / (k N) (k: the runs' FLOPs per parameter per token, 6 plus attention and
    embeddings), so at each used budget N_opt(C) x D_opt(C) is that budget's minimum's n_opt x d_opt, whatever k
    is. A hand-edited n_coef = 1e6 (interval edited alike) recommended N_opt 7.9e15 beside D_opt 3.2e11 (6ND =
    1.5e28 FLOPs for 1e22), trusted.
    """
    names = ("a", "b", "n_coef", "d_coef")
    if not all(is_number(f.get(n)) and f.get(n) is not None and math.isfinite(f[n]) for n in names):
        return []

    def finite(b: dict, key: str) -> bool:
        return is_number(b.get(key)) and b.get(key) is not None and math.isfinite(b[key]) and b[key] > 0

    for b in (fits.get("approach2") or {}).get("budgets") or []:
        if not (isinstance(b, dict) and b.get("used") is True and all(finite(b, k) for k in ("budget", "n_opt", "d_opt"))):
            continue
        c = b["budget"]
        try:
            ratio = f["n_coef"] * c ** f["a"] * f["d_coef"] * c ** f["b"] / (b["n_opt"] * b["d_opt"])
        except (OverflowError, ZeroDivisionError):
            ratio = math.inf
        if not (1 / BUDGET_IDENTITY_FACTOR <= ratio <= BUDGET_IDENTITY_FACTOR):
            return [f"its N_opt x D_opt at the fitted budget {c:.3g} FLOPs is {ratio:.3g} times that budget's minimum's "
                    f"N x D (n_coef {f['n_coef']:.3g}, d_coef {f['d_coef']:.3g}): no fit gives that; fits.json is damaged"]
    return []


def _floor_above_minima(f: dict, fits: dict) -> str:
    """Approach 3's E above every fitted budget's L_min (fits.json approach2 budgets): no fit gives that, "" else.

    E + A/N^alpha + B/D^beta >= E, so a law whose floor is above the measured minima by more than their scatter
    (5%) is not a fit of them: a hand-edited E = 1e9 predicted a trusted "loss 1e+09".
    """
    lows = [b.get("loss_min") for b in (fits.get("approach2") or {}).get("budgets") or [] if isinstance(b, dict)]
    lows = [x for x in lows if is_number(x) and x is not None and math.isfinite(x)]
    if lows and is_number(f.get("E")) and f.get("E") is not None and f["E"] > 1.05 * max(lows):
        return (f"its irreducible loss E = {f['E']:.4g} is above every fitted budget's L_min (at most {max(lows):.4g}): "
                "no fit gives that; fits.json is damaged")
    return ""


def _interval_shaped(ci) -> bool:
    """What a fit writes for an interval: two finite numbers, or [null, null] (not available)."""
    def missing(v) -> bool:
        return v is None or (isinstance(v, float) and math.isnan(v))

    return has_interval(ci) or (isinstance(ci, (list, tuple)) and len(ci) == 2 and missing(ci[0]) and missing(ci[1]))


def edge_note(budgets) -> str:
    """Why an Approach 1 law whose envelope runs sit at their ladders' ends is not an estimate of N_opt.

    Args:
        budgets: the IsoFLOP budgets (FLOPs) whose lowest-loss run is the smallest or largest
            size sampled there (Approach1.edge_budgets).

    Returns:
        One clause naming up to 8 budgets; "" when there are none.
    """
    if not budgets:
        return ""
    shown = ", ".join(f"{b:.3g}" for b in budgets[:8]) + (f" and {len(budgets) - 8} more" if len(budgets) > 8 else "")
    return (f"the envelope run of budget{'s' if len(budgets) > 1 else ''} {shown} FLOPs is the smallest or largest size "
            "its ladder sampled (or its only size): the optimum is not bracketed there")


def loss_direction_problems(law: dict) -> list[str]:
    """Why an Approach 1 or 2 law's L_min ~ C^k (fits.json loss_exponent, loss_exponent_ci) is no scaling law.

    Its exponent must be below 0 and, where it has an interval, so must the interval's upper end: a
    larger budget whose best run is no better than a smaller one's is a sweep that did not measure
    scaling (runs undertrained, diverged or mislabelled at the larger budgets), whatever its N_opt
    does; a law with L_min ~ C^+0.06 [0.061, 0.062] predicted a loss above every measured one,
    trusted. A law without the key (an older fit) gives no problem here. Returns [] when it falls.
    """
    if "loss_exponent" not in law:
        return []
    x, ci = law.get("loss_exponent"), law.get("loss_exponent_ci")
    if x is None or not is_number(x) or not math.isfinite(x) or x >= 0:
        shown = format_ci(x if is_number(x) else None, ci if has_interval(ci) else None)
        return [f"L_min ~ C^k with k = {shown} does not fall with compute (the larger "
                "budgets' best runs are no better: undertrained, diverged or mislabelled runs?)"]
    if has_interval(ci) and ci[1] >= 0:
        return [f"the interval of L_min's exponent k = {format_ci(x, ci)} reaches 0: the loss may not fall with compute"]
    return []


def approach3_problems(fits: dict) -> list[str]:
    """Why an Approach 3 law of a fits.json dict that is in range may still not be located: [] when none.

    - An exponent at the searched range's edge (`approach3.at_bound`): the optimum is the bound, not the data's.
    - Its a or b interval disjoint from Approach 2's (both with intervals). L = E + A/N^alpha + B/D^beta
      forces a = beta/(alpha+beta) and b = alpha/(alpha+beta) into (0, 1) whatever the runs say; Approach 2
      reads the IsoFLOP minima directly. On IsoFLOP minima shrinking as C^-0.2 (Approach 2: a = -0.200
      [-0.203, -0.197]), Approach 3 gave a = 0.074 [0.027, 0.19], trusted, and the recommended N_opt was 8x
      the minima's trend.
    """
    f, f2 = fits.get("approach3") or {}, fits.get("approach2") or {}
    problems = []
    if data_limited_minima(fits):
        # Approach 2's minima are shaped by repeated data there, Approach 3 models it (effective tokens): Approach 2 is
        # no reference for it (a fit on 1e9 unique tokens untrusted the right law, N_opt within 4% of the truth, for
        # disagreeing with minima at up to 38 epochs, and headlined those)
        f2 = {}
    at_bound = f.get("at_bound")
    if isinstance(at_bound, list) and at_bound:
        problems.append(f"its {' and '.join(map(str, at_bound))} sits at the searched range's edge: the optimum is the "
                        "bound, not located by the runs")
    ours, theirs = [], []
    for name in ("a", "b"):
        ci3, ci2 = f.get(f"{name}_ci"), f2.get(f"{name}_ci")
        if has_interval(ci3) and has_interval(ci2) and (ci3[1] < ci2[0] or ci2[1] < ci3[0]):
            ours.append(f"{name} = {format_ci(f.get(name), ci3)}")
            theirs.append(f"{name} = {format_ci(f2.get(name), ci2)}")
    if ours:
        problems.append(f"its {' and '.join(ours)} disagree{'s' if len(ours) == 1 else ''} with Approach 2's "
                        f"{' and '.join(theirs)} (the intervals do not overlap): Approach 3's form keeps a and b in "
                        "(0, 1) whatever the runs say, while Approach 2 reads the IsoFLOP minima")
    return problems


def _over_fresh_epochs(fits: dict, rows, tokens_key: str) -> list[str]:
    """"budget (epochs)" of each row (a fits.json dict) whose `tokens_key` trains over FRESH_EPOCHS epochs of the unique tokens."""
    unique = (fits.get("inputs") or {}).get("unique_tokens")
    if not (is_number(unique) and unique is not None and unique > 0):
        return []
    out = []
    for row in rows:
        d = row.get(tokens_key) if isinstance(row, dict) else None
        if is_number(d) and d is not None and math.isfinite(d) and d / unique > FRESH_EPOCHS:
            budget = row.get("budget")
            out.append(f"{budget:.3g} ({d / unique:.3g} epochs)" if is_number(budget) and budget is not None else f"{d / unique:.3g} epochs")
    return out


def data_limited_minima(fits: dict) -> list[str]:
    """Approach 2's used budgets whose IsoFLOP minimum trains over FRESH_EPOCHS epochs of the unique tokens.

    As "1e+21 (38 epochs)"; [] when none, or when the unique tokens or D_opt are not in the fits.json dict.
    """
    used = [b for b in (fits.get("approach2") or {}).get("budgets") or [] if isinstance(b, dict) and b.get("used") is True]
    return _over_fresh_epochs(fits, used, "d_opt")


def data_limited_envelope(fits: dict) -> list[str]:
    """Approach 1's envelope runs that train over FRESH_EPOCHS epochs of the unique tokens, as data_limited_minima."""
    return _over_fresh_epochs(fits, (fits.get("approach1") or {}).get("points") or [], "tokens")


# Approach 3's runs must sample tokens per parameter (D / N) over at least this factor: along one ratio the
# loss cannot tell A / N^alpha from B / D^beta, so the trade-off that places N_opt is not measured. Every run at
# 20 tokens per parameter (exact Chinchilla losses) gave a trusted N_opt 65x below the truth. An IsoFLOP grid
# of 4 sizes over 8x in N samples 64x.
MIN_TOKENS_PER_PARAM_SPAN = 4.0


def tokens_per_param_problems(f: dict) -> list[str]:
    """Why Approach 3's runs (fits.json approach3 tokens_per_param [min, max]) do not measure the N-D trade-off.

    [] when they span at least MIN_TOKENS_PER_PARAM_SPAN, or the key is absent (a fit from before 2026-12-07);
    a damaged value is a problem.
    """
    if "tokens_per_param" not in f:
        return []
    span = f["tokens_per_param"]
    if not (has_interval(span) and 0 < span[0] <= span[1]):
        return ["its tokens_per_param in fits.json is not a [min, max] pair of positive numbers: the file is damaged"]
    if span[1] / span[0] < MIN_TOKENS_PER_PARAM_SPAN:
        return [f"its runs sample tokens per parameter (D/N) over only {span[1] / span[0]:.3g}x ({span[0]:.3g} to "
                f"{span[1]:.3g}): along one ratio the loss cannot tell A/N^alpha from B/D^beta, so the trade-off that places "
                f"N_opt is not measured (sample several sizes per budget, an IsoFLOP grid; >= {MIN_TOKENS_PER_PARAM_SPAN:g}x)"]
    return []


def utility_points_problem(law: dict) -> str | None:
    """Why a utility law (fits.json `utility.<task>`) is untested by its points, or None.

    Through 2 budgets a power law fits them exactly (r2 1, no degrees of freedom): `ehrfm recommend` predicted an
    AUROC of 0.992 [0.774, 1] from such a law beside an Approach 2 it refused for the same reason. A law without
    `n_points` (an older fit) is not judged here.
    """
    n = law.get("n_points")
    if isinstance(n, int) and not isinstance(n, bool) and n < 3:
        return (f"its utility law goes through {n} budget(s), which a power law fits exactly, so nothing tests it "
                "(>= 3 budgets with an AUROC are needed)")
    return None


def trust(fits: dict, k: int, exponents_only: bool = False) -> tuple[bool, str]:
    """Can approach k's law of a fits.json dict be the default recommendation? Returns (ok, why not).

    exponents_only: judge Approach 3's exponents a, b alone, not its N_opt coefficient G (whose
    identification a recommended N_opt needs, a comparison of exponents does not).

    Not when an exponent of N_opt or D_opt in C (a, b) is non-positive or its interval reaches 0,
    nor, for Approaches 1-2, when L_min ~ C^k does not fall with compute (loss_direction_problems),
    nor, for Approach 1, when an envelope run is the smallest or largest size of its budget's ladder
    (`edge_budgets`: that budget's optimum is not bracketed) or its envelope holds fewer than 3 runs
    (`n_points`: a power law through 2 points is untested), nor, for Approach 2, when fewer than 3 of its
    budgets are used (`budgets[].used`: the same) or a used budget's minimum trains over FRESH_EPOCHS epochs
    (`data_limited_minima`; nor is such an Approach 2 a reference that Approach 3 must agree with), nor, for Approach 1,
    when an envelope run does (`data_limited_envelope`), nor, for Approach 3, when its frontier
    coefficient G is not identified or its E, A, B, alpha or beta is out of range (E < 0, others <= 0),
    nor when an interval of a or b is reversed or misses its point estimate by more than its own width,
    nor an Approach 3 whose a, b are not beta/(alpha+beta), alpha/(alpha+beta), nor one with an exponent at its searched
    range's edge or an a or b interval disjoint from Approach 2's (approach3_problems), nor an Approach 1 without `edge_budgets` (an older
    fit: whether its optimum is bracketed is unknown). Unknown never passes: a
    law without intervals (`ehrfm fit --bootstrap 0`: NO_INTERVALS), or whose interval of a or b, or
    Approach 3's identification of G, is not available (too few bootstrap replicates succeeded,
    zero width: fits.json `intervals_not_available`), is not trusted either.
    """
    f = fits.get(f"approach{k}") or {}
    notes = fits.get("intervals_not_available") or {}
    boot = (fits.get("inputs") or {}).get("bootstrap")
    problems, unknown = [], []
    for name, what in (("a", "N_opt"), ("b", "D_opt")):
        x, ci = f.get(name), f.get(f"{name}_ci")
        if x is None or not is_number(x) or not math.isfinite(x) or x <= 0:
            problems.append(f"{what} ~ C^{name} with {name} = {format_ci(x, ci if has_interval(ci) else None)} does not grow with compute")
        elif not has_interval(ci):
            unknown.append(name)
        elif damaged := damaged_intervals(f, (name,)):  # a hand-edited a = 5 beside [0.42, 0.47]: N_opt 1.9e96
            problems += damaged
        elif ci[0] <= 0:
            problems.append(f"the interval of {name} = {format_ci(x, ci)} includes 0")
    # Every other fitted number beside its interval (Approach 1's loss law is a minimum over runs, biased below
    # its replicates by their scatter: only its a and b are judged so)
    others = {2: ("n_coef", "d_coef", "loss_coef", "loss_exponent"),
              3: ("E", "A", "B", "alpha", "beta") + (() if exponents_only else ("G",))}
    problems += damaged_intervals(f, others.get(k, ()))
    for name in ("alpha", "beta") if k == 3 else ():
        ci = f.get(f"{name}_ci")
        if has_interval(ci) and ci[0] <= 0 < ci[1]:  # a or b follow from them: a loss term with no exponent is no law
            problems.append(f"the interval of {name} = {format_ci(f.get(name), ci)} includes 0")
    if k in (1, 2) and f:
        problems += loss_direction_problems(f) + _budget_identity_problems(f, fits)
    points = f.get("n_points")
    if k == 1 and isinstance(points, int) and points < 3:
        # A line through 2 envelope runs fits them exactly; on losses of pure noise the envelope kept 2 of 4
        # budgets (the others' best runs no better than a cheaper one's) and its a, following the ladders'
        # centres, was the trusted headline, N_opt 2.2e+09 [2e+09, 6.8e+09].
        problems.append(f"its envelope holds {points} run(s): a power law through 2 points fits them exactly, so "
                        "nothing tests it (Approach 1 needs >= 3 budgets whose best run beats every cheaper budget's)")
    if k == 2 and (limited := data_limited_minima(fits)):
        problems.append(f"the IsoFLOP minima of budget(s) {', '.join(limited)} train over {FRESH_EPOCHS:g} epochs of the "
                        "unique tokens: repeated data, not compute alone, places them, so their trend is no compute-optimal "
                        "law (Approach 3, fitted on effective tokens, models the repeats)")
    if k == 1 and (limited := data_limited_envelope(fits)):  # it stayed trusted (a = 0.62) beside runs of 18 epochs
        problems.append(f"the envelope runs of budget(s) {', '.join(limited)} train over {FRESH_EPOCHS:g} epochs of the "
                        "unique tokens: repeated data, not compute alone, picks them, so their trend is no compute-optimal "
                        "law (Approach 3, fitted on effective tokens, models the repeats)")
    budgets = f.get("budgets")
    if k == 2 and isinstance(budgets, list):
        used = sum(1 for b in budgets if isinstance(b, dict) and b.get("used") is True)
        if used < 3:
            # Its N_opt law is a line through the used budgets' minima: through 2 it fits them exactly, and its
            # bootstrap interval is only the parabolas' scatter. A 2-budget Approach 2 was trusted while the same
            # fit's 2-point Approach 1 was not; its loss at 100x the largest budget fell below the true E.
            problems.append(f"it uses {used} budget(s): a power law through {used} IsoFLOP minima fits them exactly, so "
                            "nothing tests it (Approach 2 needs >= 3 budgets with a usable parabola)")
    edges = f.get("edge_budgets")
    if k == 1 and f and edges is None:  # written by every fit since the key exists: unknown, never trusted
        problems.append("fits.json has no approach1 edge_budgets list (an older fit, or null): whether its optimum is "
                        "bracketed is unknown; refit with `ehrfm fit`")
    if k == 3 and f:
        # A loss floor below 0, a non-positive term or a missing number is no loss law: a damaged (hand-edited)
        # fits.json predicted "loss -3.514 nats/token", trusted.
        def out_of_range(name: str) -> str:  # (a key missing altogether: recommend's _usable names it)
            if name not in f:
                return ""
            v = f[name]
            if not (is_number(v) and v is not None and math.isfinite(v)):
                return f"{name} is not a number"
            return f"{name} = {v:.3g}" if (v < 0 if name == "E" else v <= 0) else ""
        bad = [x for x in map(out_of_range, ("E", "A", "B", "alpha", "beta")) if x]
        if bad:
            problems.append(f"its {', '.join(bad)}: no loss law (E >= 0, A, B, alpha, beta > 0 and finite); fits.json is damaged")
        elif (floor_above := _floor_above_minima(f, fits)):
            problems.append(floor_above)
        elif all(is_number(f.get(n)) and f.get(n) is not None for n in ("alpha", "beta", "A", "B", "G")) and not math.isclose(
                f["G"], g_law := (f["alpha"] * f["A"] / (f["beta"] * f["B"])) ** (1 / (f["alpha"] + f["beta"])), rel_tol=1e-6):
            # (Hoffmann et al. 2022, eq. 4) a hand-edited G = 100 beside [90, 110] sized a model 74x the law's N_opt, trusted
            problems.append(f"its G = {f['G']:.4g} is not that of its A, B, alpha and beta ({g_law:.4g}): fits.json is damaged")
        elif all(is_number(f.get(n)) and f.get(n) is not None for n in ("alpha", "beta", "a", "b")):
            # Its exponents follow from the loss law (Hoffmann et al. 2022, eq. 4): a = beta/(alpha+beta), b = alpha/(alpha+beta).
            a_law, b_law = f["beta"] / (f["alpha"] + f["beta"]), f["alpha"] / (f["alpha"] + f["beta"])
            if not (math.isclose(f["a"], a_law, rel_tol=1e-6) and math.isclose(f["b"], b_law, rel_tol=1e-6)):
                problems.append(f"its a = {f['a']:.4g}, b = {f['b']:.4g} are not those of its alpha and beta "
                                f"({a_law:.4g}, {b_law:.4g}): fits.json is damaged")
    if k == 3 and f:
        problems += tokens_per_param_problems(f)
    if k == 3 and f and not problems:
        problems += approach3_problems(fits)
    if k == 1 and edges is not None and edges != []:  # Approach1.edge_budgets: envelope runs at their ladder's end
        numbers = isinstance(edges, list) and all(is_number(b) and b is not None for b in edges)
        problems.append(edge_note(edges) if numbers else "its edge_budgets in fits.json are not budgets: whether its "
                        "optimum is bracketed is unknown")
    if k == 3 and not problems and not unknown and not exponents_only:
        recorded = f.get("identified")
        g = recorded.get("G") if isinstance(recorded, dict) else None  # anything else: unknown, never trusted
        if has_interval(f.get("G_ci")) and identified(f["G_ci"]) is False:
            g = False  # the interval says so, whatever the flag beside it (a hand-edited G_ci [0, 5] with G: true was trusted)
        if g is False:
            problems.append("its N_opt coefficient G is not identified")
        elif g is not True and has_interval(f.get("G_ci")):  # an interval, but no record of whether it is narrow enough
            problems.append("fits.json does not record whether its N_opt coefficient G is identified (approach3 "
                            "identified: an older or edited fit): trust cannot be judged; refit with `ehrfm fit`")
        elif g is not True:
            unknown.append("G")
    if unknown:
        if boot == 0 or (boot is None and not any(has_interval(f.get(f"{n}_ci")) for n in ("a", "b"))):
            problems.append(NO_INTERVALS)
        else:
            why = "; ".join(dict.fromkeys(notes.get(f"approach{k}/{n}", "") for n in unknown if notes.get(f"approach{k}/{n}")))
            problems.append(f"no interval of {', '.join(unknown)}{f' ({why})' if why else ''}: trust cannot be judged")
    return not problems, "; ".join(problems)
