"""Publication plots of a fit.

Each `plot_*` draws on a given matplotlib Axes; `make_plots` writes them all as PNG and PDF.

    fig, ax = plt.subplots()
    plot_isoflops(ax, fit, results)      # fit: analysis.fit.FitResult, results: analysis.table.Results
    fit = analysis.load_fit("fit_dir")   # a saved fit draws the same figure (a fit dir path works too)

One colour per IsoFLOP budget (viridis, cheap to dear) across every figure; bands are the
bootstrap intervals of the fitted laws. Overlays: every plot_* takes `label` (prefixed to its
legend entries) and `color` (one colour for all its points, curves and bands instead of the
budget/approach colours), so several sweeps share one Axes (docs/overlay_sweeps.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from analysis.laws import auroc_from_law, percentile_ci, power_law
from ehrfm.law_checks import trust

APPROACH_STYLE = {1: dict(color="tab:gray", ls=":"), 2: dict(color="tab:red", ls="-"), 3: dict(color="tab:blue", ls="--")}
APPROACH_LABEL = {1: "Approach 1 (envelope)", 2: "Approach 2 (IsoFLOP)", 3: "Approach 3 (parametric)"}


def _results(results, fit=None):
    """Results as given or loaded, with the loss column and N the parameter count `fit` used.

    A table path is read with the fit's loss column (fits.json inputs.loss_column): a fit of
    loss_per_event was drawn over its runs read as `loss`, nats/event curves over nats/token points.
    Results loaded with another loss column than the fit's are refused, not drawn in mixed units.
    """
    from analysis.table import Results, load_results
    from ehrfm.errors import UserError

    column = (fit.inputs or {}).get("loss_column") if fit is not None else None
    if not isinstance(results, Results):
        results = load_results(results, loss_column=column or "loss")
    elif column and results.loss_column != column:
        raise UserError(f"results {results.source} were loaded with loss column {results.loss_column}, but the fit is of "
                        f"{column}: load them with load_results(..., loss_column={column!r}) or pass the table's path")
    return results if fit is None else results.with_n_count(fit.n_count)[0]


def _n_label(fit) -> str:
    return {"total": "Parameters N (total, embeddings included)"}.get(fit.n_count, "Non-embedding parameters N")


def _fit(fit):
    """A FitResult as given, or loaded from a fit dir / fits.json path (analysis.fit.load_fit)."""
    from analysis.fit import FitResult, load_fit

    if isinstance(fit, FitResult):
        return fit
    if isinstance(fit, (str, Path)):
        return load_fit(fit)
    raise TypeError(f"expected an analysis.fit.FitResult or a fit dir, got {type(fit).__name__}; "
                    "load a saved fit with analysis.load_fit(FIT_DIR)")


def _label(label: str | None, text: str) -> str:
    return f"{label}: {text}" if label else text


def _recolor(style: dict, color) -> dict:
    return style if color is None else {**style, "color": color}


def budget_colors(budgets, color=None) -> dict[float, tuple]:
    """Budget -> colour: viridis from cheap to dear, or `color` for every budget (overlays)."""
    import matplotlib

    budgets = sorted(set(float(b) for b in budgets))
    if color is not None:
        return dict.fromkeys(budgets, color)
    cmap = matplotlib.colormaps["viridis"]
    return {b: cmap(0.9 * i / max(1, len(budgets) - 1)) for i, b in enumerate(budgets)}


def _sci(x: float) -> str:
    exp = int(np.floor(np.log10(x) + 1e-9))  # 1e20 is 10^20, not 10 x 10^19
    mant = x / 10**exp
    return f"$10^{{{exp}}}$" if abs(mant - 1) < 0.05 else f"${mant:.2g}\\times10^{{{exp}}}$"


def _log_x(ax) -> None:
    """Log x axis with minor tick labels at 2 and 5 only.

    Log x axis whose minor ticks are labelled only at 2 and 5 (matplotlib labels every minor
    tick of a short axis, and on a paper-size panel 3x10^11 and 4x10^11 then overlap).
    """
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")

    def minor(v, _pos):
        lo, hi = ax.xaxis.get_view_interval()
        if not v > 0 or hi > 100 * lo:  # two decades or more: the decades alone are enough
            return ""
        exp = int(np.floor(np.log10(v) + 1e-9))
        mant = int(round(v / 10**exp))
        return f"${mant}\\times10^{{{exp}}}$" if mant in (2, 5) else ""

    ax.xaxis.set_minor_formatter(FuncFormatter(minor))


def _band(ax, c, draws, style, conf):
    """Shade the pointwise interval of a law evaluated per bootstrap draw (R, len(c))."""
    if draws is None or not np.isfinite(draws).any():
        return
    lo, hi = np.array([percentile_ci(draws[:, j], conf) for j in range(draws.shape[1])]).T
    ax.fill_between(c, lo, hi, color=style["color"], alpha=0.15, lw=0)


def _law_draws(fit, k: int, what: str, c: np.ndarray):
    """Bootstrap draws of N_opt ('n'), D_opt ('d') or loss ('loss') along c for approach k."""
    d = fit.draws
    if k in (1, 2):
        coef, exp = {"n": ("n_coef", "a"), "d": ("d_coef", "b"), "loss": ("loss_coef", "loss_exponent")}[what]
        dc, de = d.get(f"approach{k}/{coef}"), d.get(f"approach{k}/{exp}")
        return None if dc is None else power_law(dc[:, None], de[:, None], c[None, :])
    keys = ("E", "A", "B", "alpha", "beta", "a", "b", "G")
    if not all(f"approach3/{q}" in d for q in keys):
        return None
    p = {q: d[f"approach3/{q}"][:, None] for q in keys}
    kf = fit.approach3.flops_per_param_token
    with np.errstate(all="ignore"):
        n = p["G"] * (c / kf) ** p["a"]
        dd = (c / kf) ** p["b"] / p["G"]
        loss = p["E"] + p["A"] / n ** p["alpha"] + p["B"] / dd ** p["beta"]
    # a draw with G of inf or 0 has N_opt inf and D_opt 0 (or the reverse): failed for all three, as in recommend
    failed = ~(np.isfinite(n) & np.isfinite(dd) & np.isfinite(loss) & (n > 0) & (dd > 0))
    return np.where(failed, np.nan, {"n": n, "d": dd, "loss": loss}[what])


# A left-out budget's parabola minimum is drawn only within this many decades of its sampled sizes:
# a nearly flat parabola's vertex at 1e19 parameters would set the axes and squash every other budget.
MINIMUM_DRAW_DECADES = 1.0


def _drawable_minimum(bf) -> bool:
    """Draw this budget's minimum? A used budget's always; a left-out one's near its sampled sizes only."""
    if not (np.isfinite(bf.n_opt) and bf.n_opt > 0 and np.isfinite(bf.loss_min)):
        return False
    if bf.used or not bf.log_n_range:
        return True
    pad = MINIMUM_DRAW_DECADES * np.log(10)
    return bool(bf.log_n_range[0] - pad <= np.log(bf.n_opt) <= bf.log_n_range[1] + pad)


def _compute_grid(fit, results, pad: float = 2.0):
    lo, hi = results.flops.min() / pad, results.flops.max() * pad
    return np.logspace(np.log10(lo), np.log10(hi), 100)


# The isoflops legend (one entry per budget, beside the axes) takes one more column per this many budgets.
LEGEND_ROWS = 10


def legend_columns(n_budgets: int) -> int:
    """Columns of the isoflops legend for n_budgets budgets (LEGEND_ROWS per column, each budget ~2 entries)."""
    return max(1, -(-n_budgets // 2 // LEGEND_ROWS))


def plot_isoflops(ax, fit, results, label: str | None = None, color=None) -> None:
    """Loss against model size per budget, the fitted parabola and its minimum.

    Args:
        ax: matplotlib Axes.
        fit: FitResult (or a fit dir).
        results: Results or a results table path.
        label: prefix of the legend entries (which sweep).
        color: one colour for everything drawn.
    """
    from analysis.fit import ratio_text

    fit = _fit(fit)
    results = _results(results, fit)
    colors = budget_colors(results.budget, color)
    budget_fits = {bf.budget: bf for bf in (fit.approach2.budgets if fit.approach2 else [])}
    for bud, col in colors.items():
        m = results.budget == bud
        bf = budget_fits.get(bud)
        used = bf is None or bf.used
        ax.scatter(results.n_params[m], results.loss[m], s=22, color=col, edgecolor=col, zorder=3,
                   facecolor=col if used else "none", label=_label(label, f"{_sci(bud)} FLOPs" + ("" if used else " (left out)")))
        if bf is not None and bf.coef:
            x = np.linspace(bf.log_n_range[0] - 0.15, bf.log_n_range[1] + 0.15, 100)
            c0, c1, c2 = bf.coef
            ax.plot(np.exp(x), c0 + c1 * x + c2 * x * x, color=col, lw=1.3, ls="-" if used else ":")
            if _drawable_minimum(bf):
                ax.scatter([bf.n_opt], [bf.loss_min], marker="*", s=110, color=col, edgecolor="black", lw=0.6, zorder=4)
    h = fit.holdout
    if h and h.get("predicted_loss") is not None:
        # The held-out budget's minimum as predicted from the smaller budgets (open diamond, with
        # its interval) beside the star its own runs give.
        lo, hi = (h.get("predicted_loss_ci") or [None, None])
        # clipped at 0: an interval that excludes its estimate (said in the fit's warnings) must not stop the plots
        yerr = [[max(h["predicted_loss"] - lo, 0)], [max(hi - h["predicted_loss"], 0)]] if lo is not None and hi is not None and np.isfinite([lo, hi]).all() else None
        pc = "tab:red" if color is None else color
        ax.errorbar([h["predicted_n_opt"]], [h["predicted_loss"]], yerr=yerr, fmt="D", ms=7, mfc="none", color=pc,
                    mec=pc, ecolor=pc, mew=1.4, capsize=3, zorder=5,
                    label=_label(label, f"{_sci(h['budget'])} predicted from smaller budgets ({ratio_text(h['rel_error'], 1, percent=True)} off)"))
    _log_x(ax)
    ax.set_xlabel(_n_label(fit))
    ax.set_ylabel(f"Held-out loss ({results.loss_unit})")
    ax.set_title("IsoFLOP curves (stars: parabola minima)" if fit.approach2 else "IsoFLOP runs (Approach 2 not fitted)")
    # Beside the axes, never over them: inside ("best") it covered the smallest budget's runs and curve on the
    # default demo, and 21 entries (Chinchilla's runs grouped by FLOPs) ran off the figure.
    ax.legend(fontsize=7, title="budget", title_fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              ncols=legend_columns(len(colors)))
    ax.grid(True, which="major", alpha=0.3)


def plot_optimal_scaling(ax, fit, results, which: str = "n", label: str | None = None, color=None) -> None:
    """Plot N_opt or D_opt against compute, per approach, with bootstrap bands.

    N_opt (which='n') or D_opt ('d') against compute: IsoFLOP minima with intervals, and each
    approach's power law with its bootstrap band. label / color: as for plot_isoflops.
    """
    fit = _fit(fit)
    results = _results(results, fit)
    colors = budget_colors(results.budget, color)
    c = _compute_grid(fit, results)
    conf = fit.config.confidence
    earlier = ax.get_ylim() if ax.has_data() else None  # an overlay: keep the earlier sweeps in view
    # What the y axis must show: the minima with their intervals, the envelope runs and the trusted laws. An
    # untrusted law's band (a = 0.6 [-0.5, 1.5]) reached 1e18 and squashed every point into one line.
    shown: list[float] = []
    if fit.approach2:
        pct = int(round(100 * conf))
        ax.errorbar([], [], yerr=[], fmt="o", color="0.35" if color is None else color, ms=5, capsize=2,
                    label=_label(label, f"IsoFLOP minima ({pct}% CI; hollow: left out)"))
        for bf in fit.approach2.budgets:
            if not _drawable_minimum(bf) or not (np.isfinite(bf.d_opt) and bf.d_opt > 0):
                continue
            y, ci = (bf.n_opt, bf.n_opt_ci) if which == "n" else (bf.d_opt, bf.d_opt_ci)
            err = None
            if ci and all(v is not None and np.isfinite(v) for v in ci):
                err = [[max(y - ci[0], 0)], [max(ci[1] - y, 0)]]
                shown += [v for v in ci if v > 0]
            shown.append(y)
            ax.errorbar([bf.budget], [y], yerr=err, fmt="o", color=colors.get(bf.budget), mfc=colors.get(bf.budget) if bf.used else "none",
                        mec=colors.get(bf.budget), ecolor=colors.get(bf.budget), ms=6, capsize=2, zorder=4)
    if fit.approach1:
        pts = fit.approach1.points
        shown += [p["n_params" if which == "n" else "tokens"] for p in pts]
        ax.scatter([p["flops"] for p in pts], [p["n_params" if which == "n" else "tokens"] for p in pts],
                   marker="s", s=18, facecolor="none", edgecolor="tab:gray" if color is None else color, zorder=3,
                   label=_label(label, "envelope runs"))
    fits_json = fit.to_json()
    for k in (1, 2, 3):
        part = getattr(fit, f"approach{k}")
        if part is None:
            continue
        style = _recolor(APPROACH_STYLE[k], color)
        # a law `ehrfm recommend` would not stand behind (law_checks.trust) is drawn faint and labelled so,
        # not like a trusted one (an Approach 1 with a = 0.23 [-0.49, 0.74] looked as sure as the others)
        trusted = trust(fits_json, k)[0]
        if not trusted:
            style = {**style, "alpha": 0.45}
        y = part.n_opt(c) if which == "n" else part.d_opt(c)
        if trusted:
            shown += [v for v in np.asarray(y, float) if np.isfinite(v) and v > 0]
        exp, ci = (part.a, part.a_ci) if which == "n" else (part.b, part.b_ci)
        ci_txt = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and np.all(np.isfinite(ci)) else ""
        ax.plot(c, y, lw=1.6, label=_label(label, f"{APPROACH_LABEL[k]}: {'a' if which == 'n' else 'b'}={exp:.2f}{ci_txt}"
                                           f"{'' if trusted else ' (not trusted)'}"), **style)
        _band(ax, c, _law_draws(fit, k, which, c), style, conf)
    _log_x(ax)
    shown = [v for v in shown if np.isfinite(v) and v > 0]
    if shown:  # half a decade around what must be shown; untrusted laws and bands are cut at its edges
        flat = max(shown) <= min(shown) * (1 + 1e-6)  # every run one size (a = 0): a decade either side shows the line
        lo, hi = (min(shown) / 10, max(shown) * 10) if flat else (min(shown) / 3, max(shown) * 3)
        if earlier is not None and earlier[0] > 0:
            lo, hi = min(lo, earlier[0]), max(hi, earlier[1])
        ax.set_ylim(lo, hi)
    y0, y1 = ax.get_ylim() if shown else ax.dataLim.intervaly
    if y0 > 0 and y1 < np.inf and y1 <= y0 * (1 + 1e-6):
        # every run one size (a = 0): a flat line, whose autoscaled log axis matplotlib warns about on
        # stderr ("identical low and high ylims"); a decade either side shows it
        ax.set_ylim(y0 / 10, y0 * 10)
    ax.set_yscale("log")
    ax.set_xlabel("Training compute C (FLOPs)")
    ax.set_ylabel(("Optimal parameters $N_{opt}$" + (" (total)" if fit.n_count == "total" else " (non-embedding)"))
                  if which == "n" else "Optimal training tokens $D_{opt}$")
    ax.set_title(("$N_{opt}$" if which == "n" else "$D_{opt}$") + " against compute")
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    ax.grid(True, which="major", alpha=0.3)


def plot_frontier(ax, fit, results, label: str | None = None, color=None) -> None:
    """Every run's loss against compute, the lower envelope, and the fitted loss frontier.

    label / color: as for plot_isoflops. An overlay widens the loss axis to every sweep drawn.
    """
    fit = _fit(fit)
    results = _results(results, fit)
    earlier = ax.get_ylim() if ax.has_data() else None  # an overlay: keep the earlier sweeps in view
    colors = budget_colors(results.budget, color)
    for bud, col in colors.items():
        m = results.budget == bud
        ax.scatter(results.flops[m], results.loss[m], s=14, color=col, alpha=0.7, zorder=3)
    c = _compute_grid(fit, results)
    conf = fit.config.confidence
    if fit.approach1:
        pts = fit.approach1.points
        ax.plot([p["flops"] for p in pts], [p["loss"] for p in pts], "s", mfc="none", color="black" if color is None else color, ms=6,
                zorder=4, label=_label(label, "lower envelope"))
    for k, what in ((2, "L_min power law"), (3, "parametric frontier")):
        part = getattr(fit, f"approach{k}")
        if part is None:
            continue
        style = _recolor(APPROACH_STYLE[k], color)
        y = part.loss(c) if k == 2 else part.loss(part.n_opt(c), part.d_opt(c))
        ax.plot(c, y, lw=1.6, label=_label(label, f"{APPROACH_LABEL[k]}: {what}"), **style)
        _band(ax, c, _law_draws(fit, k, "loss", c), style, conf)
    # Keep the axis on the data (a fitted E of ~0 or a runaway band must not squash it).
    lo, hi = results.loss.min(), results.loss.max()
    if fit.approach3 and 0.5 * lo < fit.approach3.E:
        ax.axhline(fit.approach3.E, color="tab:blue" if color is None else color, lw=0.8, ls=":",
                   # an E its runs do not pin down reads as a floor the data show: the label says it is not
                   label=_label(label, f"irreducible loss E = {fit.approach3.E:.3g}"
                                + (" (not identified)" if fit.approach3.identified.get("E") is False else "")))
        lo = min(lo, fit.approach3.E)
    if earlier is not None:
        lo, hi = min(lo, earlier[0] * 1.1), max(hi, earlier[1] / 1.1)
    ax.set_ylim(lo / 1.1, hi * 1.1)
    _log_x(ax)
    ax.set_xlabel("Training compute C (FLOPs)")
    ax.set_ylabel(f"Held-out loss ({results.loss_unit})")
    if hi / lo > 3:  # a log loss axis only pays off over a wide range; a narrow one gets linear ticks
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_title("Loss frontier")
    ax.legend(fontsize=7, frameon=False, loc="upper right")
    ax.grid(True, which="major", alpha=0.3)


def _utility_data(fit, results, task: str, color):
    """(fit, results, the task's utility law, {budget: colour}, the task's AUROC per run) for the utility plots."""
    fit = _fit(fit)
    results = _results(results, fit)
    u = fit.utility[task] if task in fit.utility else fit.utility[f"auroc/{task}"]
    return fit, results, u, budget_colors(results.budget, color), results.utility[u.metric]


def plot_utility(ax, fit, results, task: str, label: str | None = None, color=None) -> None:
    """AUROC of one task against compute: every run, the loss-optimal run per budget, the law.

    label / color: as for plot_isoflops.
    """
    fit, results, u, colors, vals = _utility_data(fit, results, task, color)
    for bud, col in colors.items():
        m = (results.budget == bud) & np.isfinite(vals)
        ax.scatter(results.flops[m], vals[m], s=12, color=col, alpha=0.45, zorder=2)
    # with replicate seeds a point is the loss-optimal shape's mean AUROC over its seeds, not one run
    what = "loss-optimal shape per budget (mean of its seeds)" if any(p.get("n_runs", 1) > 1 for p in u.points) else "loss-optimal run per budget"
    ax.scatter([p["flops"] for p in u.points], [p["value"] for p in u.points], s=40, marker="D",
               color=[colors[p["budget"]] for p in u.points], edgecolor="black", lw=0.6, zorder=4, label=_label(label, what))
    c = _compute_grid(fit, results)
    law = "black" if color is None else color
    ax.plot(c, u.predict(c), color=law, lw=1.5,
            label=_label(label, f"1 - AUROC $\\propto C^{{{u.exponent:.3f}}}$" + (f" [{u.exponent_ci[0]:.3f}, {u.exponent_ci[1]:.3f}]" if np.all(np.isfinite(u.exponent_ci)) else "")))
    dc, de = fit.draws.get(f"utility/{u.metric}/coef"), fit.draws.get(f"utility/{u.metric}/exponent")
    if dc is not None:
        _band(ax, c, auroc_from_law(dc[:, None], de[:, None], c[None, :]), dict(color=law), fit.config.confidence)
    _log_x(ax)
    ax.set_xlabel("Training compute C (FLOPs)")
    ax.set_ylabel(f"AUROC, {u.metric.split('/', 1)[1]} (held-out)")
    ax.set_title(f"Clinical utility: {u.metric.split('/', 1)[1]}")
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    ax.grid(True, which="major", alpha=0.3)


def plot_loss_link(ax, fit, results, task: str, label: str | None = None, color=None) -> None:
    """Plot one task's AUROC against held-out loss, with the fitted linear link.

    AUROC of one task against held-out loss over every run, and the fitted linear link
    AUROC = c0 + c1 loss with its bootstrap band (fit.utility[task].loss_link).

    label / color: as for plot_isoflops.
    """
    fit, results, u, colors, vals = _utility_data(fit, results, task, color)
    for bud, col in colors.items():
        m = (results.budget == bud) & np.isfinite(vals)
        ax.scatter(results.loss[m], vals[m], s=16, color=col, zorder=3, label=_label(label, f"{_sci(bud)} FLOPs"))
    link = u.loss_link
    if link:
        m = np.isfinite(vals)
        x = np.linspace(results.loss[m].min(), results.loss[m].max(), 50)
        line = "black" if color is None else color
        ci = link.get("slope_ci") or [None, None]
        ci_txt = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if all(v is not None and np.isfinite(v) for v in ci) else ""
        ax.plot(x, link["intercept"] + link["slope"] * x, color=line, lw=1.5,
                label=_label(label, f"AUROC = {link['intercept']:.3f} + ({link['slope']:.3f}{ci_txt}) loss, $R^2$={link['r2']:.2f}"))
        ds, di = fit.draws.get(f"utility/{u.metric}/link_slope"), fit.draws.get(f"utility/{u.metric}/link_intercept")
        if ds is not None:
            _band(ax, x, di[:, None] + ds[:, None] * x[None, :], dict(color=line), fit.config.confidence)
    ax.set_xlabel(f"Held-out loss ({results.loss_unit})")
    ax.set_ylabel(f"AUROC, {u.metric.split('/', 1)[1]} (held-out)")
    ax.set_title(f"Loss -> AUROC: {u.metric.split('/', 1)[1]}")
    ax.legend(fontsize=7, frameon=False, loc="best")
    ax.grid(True, which="major", alpha=0.3)


def make_plots(fit, results, out_dir) -> list[Path]:
    """Write every plot of a fit as PNG and PDF.

    Write isoflops, optimal_scaling, frontier, and (when fitted) utility and loss_auroc (the
    loss -> AUROC link) as PNG and PDF; returns the paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fit = _fit(fit)
    results = _results(results, fit)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        fig.tight_layout()
        for ext in ("png", "pdf"):
            path = out_dir / f"{name}.{ext}"
            # no creation date in the PDF: the same fit writes the same bytes (fits.json, the PNGs and these alike)
            fig.savefig(path, dpi=200 if ext == "png" else None, metadata={"CreationDate": None} if ext == "pdf" else None)
            written.append(path)
        plt.close(fig)

    with plt.rc_context({"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9}):
        wide = 2.6 * legend_columns(np.unique(results.budget).size)  # the legend stands beside the axes
        fig, ax = plt.subplots(figsize=(5.5 + wide, 4))
        plot_isoflops(ax, fit, results)  # the runs alone when Approach 2 could not be fitted
        save(fig, "isoflops")
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        plot_optimal_scaling(axes[0], fit, results, "n")
        plot_optimal_scaling(axes[1], fit, results, "d")
        save(fig, "optimal_scaling")
        fig, ax = plt.subplots(figsize=(5.5, 4))
        plot_frontier(ax, fit, results)
        save(fig, "frontier")
        if fit.utility:
            n = len(fit.utility)
            ncols = min(n, 2)
            nrows = -(-n // ncols)
            fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.8 * nrows), squeeze=False)
            for ax, task in zip(axes.flat, fit.utility, strict=False):
                plot_utility(ax, fit, results, task)
            for ax in list(axes.flat)[n:]:
                ax.set_visible(False)
            save(fig, "utility")
            linked = [t for t, u in fit.utility.items() if u.loss_link]
            if linked:
                ncols = min(len(linked), 2)
                nrows = -(-len(linked) // ncols)
                fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.8 * nrows), squeeze=False)
                for ax, task in zip(axes.flat, linked, strict=False):
                    plot_loss_link(ax, fit, results, task)
                for ax in list(axes.flat)[len(linked):]:
                    ax.set_visible(False)
                save(fig, "loss_auroc")
    return written
