"""Plot functions draw what they claim on a given Axes; make_plots writes PNG and PDF."""

import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from analysis.fit import FitConfig, FitWarning, fit_results  # noqa: E402
from analysis.plots import make_plots, plot_isoflops, plot_optimal_scaling, plot_utility  # noqa: E402
from analysis.synthetic import BESIROGLU, synthetic_results  # noqa: E402
from analysis.table import load_results  # noqa: E402
from ehrfm.law_checks import trust  # noqa: E402


@pytest.fixture(scope="module")
def fitted():
    t = synthetic_results(BESIROGLU, budgets=np.logspace(18, 20, 4), sizes=7, noise=0.005, seed=0, tasks={"icu": (2.0, -0.05)})
    res = load_results(t)
    return fit_results(res, approaches=(1, 2), bootstrap=50, seed=0), res


def test_isoflops_draws_a_parabola_and_minimum_per_budget(fitted):
    fit, res = fitted
    fig, ax = plt.subplots()
    plot_isoflops(ax, fit, res)
    assert len([ln for ln in ax.lines if len(ln.get_xdata()) == 100]) == 4  # one parabola per budget
    assert ax.get_xscale() == "log" and "Parameters" in ax.get_xlabel() and "nats/token" in ax.get_ylabel()
    # a legend entry per budget, and the held-out budget's predicted minimum
    assert len(ax.get_legend().get_texts()) == 5 and "predicted from smaller budgets" in ax.get_legend().get_texts()[-1].get_text()
    # beside the axes, never over the runs (inside, "best" covered the default demo's smallest budget)
    fig.canvas.draw()
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1
    plt.close(fig)


def test_optimal_scaling_has_laws_with_bands(fitted):
    fit, res = fitted
    fig, ax = plt.subplots()
    plot_optimal_scaling(ax, fit, res, "d")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(f"b={fit.approach2.b:.2f}" in s for s in labels)
    # a law the recommender would not trust is labelled so and drawn faint; a trusted one is not
    fits_json = fit.to_json()
    for k, name in ((1, "Approach 1"), (2, "Approach 2")):
        line = next(ln for ln in ax.lines if ln.get_label().startswith(name))
        trusted = trust(fits_json, k)[0]
        assert line.get_label().endswith("(not trusted)") is not trusted
        assert (line.get_alpha() is None) is trusted
    plt.close(fig)
    # two budgets: Approach 1's envelope is 2 runs, and Approach 2's law 2 minima: lines that nothing tests (trust
    # refuses both), drawn faint
    two = load_results(synthetic_results(BESIROGLU, budgets=(1e18, 1e19), sizes=7, noise=0.005, seed=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        fit2 = fit_results(two, config=FitConfig(approaches=(1, 2), bootstrap=50, seed=0, holdout=False))
    assert not trust(fit2.to_json(), 1)[0] and not trust(fit2.to_json(), 2)[0]
    fig, ax = plt.subplots()
    plot_optimal_scaling(ax, fit2, two, "n")
    a1 = next(ln for ln in ax.lines if ln.get_label().startswith("Approach 1"))
    a2 = next(ln for ln in ax.lines if ln.get_label().startswith("Approach 2"))
    assert a1.get_label().endswith("(not trusted)") and a1.get_alpha() == 0.45
    assert a2.get_label().endswith("(not trusted)") and a2.get_alpha() == 0.45
    assert len(ax.collections) >= 2  # bootstrap bands
    assert ax.get_yscale() == "log" and "FLOPs" in ax.get_xlabel()
    # the axis keeps to the minima and their intervals: an untrusted law's band (to 1e18 on a quick demo's table)
    # squashed every point into one line
    minima = [v for bf in fit2.approach2.budgets for v in (bf.n_opt, *(bf.n_opt_ci or ())) if v and np.isfinite(v)]
    lo, hi = ax.get_ylim()
    assert min(minima) / 3.01 <= lo and hi <= max(minima) * 3.01, (lo, hi, minima)
    plt.close(fig)


def test_make_plots_writes_png_and_pdf(fitted, tmp_path):
    fit, res = fitted
    paths = make_plots(fit, res, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{n}.{e}" for n in ("isoflops", "optimal_scaling", "frontier", "utility", "loss_auroc")
                                  for e in ("png", "pdf"))
    for p in paths:
        head = p.read_bytes()[:8]
        assert head.startswith(b"\x89PNG") if p.suffix == ".png" else head.startswith(b"%PDF")
    again = make_plots(fit, res, tmp_path / "again")  # the same bytes (a PDF held its creation date: a helper)
    assert [q.read_bytes() for q in again] == [q.read_bytes() for q in paths]
    fig, ax = plt.subplots()
    plot_utility(ax, fit, res, "icu")
    assert "AUROC" in ax.get_ylabel()
    plt.close(fig)


def test_plots_without_approach2_still_show_the_isoflop_runs(tmp_path):
    t = synthetic_results(BESIROGLU, budgets=(1e18, 1e19), sizes=3, noise=0.005, seed=0)
    res = load_results(t)
    fit = fit_results(res, approaches=(1, 3), bootstrap=20, seed=0)
    names = {p.name for p in make_plots(fit, res, tmp_path)}
    assert {"isoflops.png", "optimal_scaling.png", "frontier.png"} <= names and "utility.png" not in names
    fig, ax = plt.subplots()
    plot_isoflops(ax, fit, res)
    assert len(ax.lines) == 0 and sum(len(c.get_offsets()) for c in ax.collections) == 6
    plt.close(fig)


def _drawn(ax) -> list:
    """Everything an Axes shows, as numbers and strings: lines, scatter/band paths, legend, limits."""
    out = [tuple(np.round(line.get_xydata(), 10).ravel()) for line in ax.lines]
    for coll in ax.collections:
        out.append(tuple(np.round(np.asarray(coll.get_offsets(), dtype=float), 10).ravel()))
        out += [tuple(np.round(p.vertices, 10).ravel()) for p in coll.get_paths()]
    legend = ax.get_legend()
    out.append(tuple(t.get_text() for t in legend.get_texts()) if legend else ())
    out.append((ax.get_title(), tuple(np.round(ax.get_ylim(), 10))))
    return out


def test_figure_from_a_loaded_fit_has_the_same_data(fitted, tmp_path):
    """analysis.load_fit round-trips fits.json + bootstrap.parquet: every plot draws the same data."""
    import analysis
    from analysis.fit import write_fits
    from analysis.plots import plot_frontier

    fit, res = fitted
    write_fits(fit, tmp_path / "fit", res, plots=False)
    loaded = analysis.load_fit(tmp_path / "fit")
    assert type(loaded) is type(fit) and loaded.config == fit.config and sorted(loaded.draws) == sorted(fit.draws)
    table = tmp_path / "results.parquet"
    from analysis.fit import runs_frame

    runs_frame(res).write_parquet(table)
    for draw in (plot_isoflops, lambda ax, f, r: plot_optimal_scaling(ax, f, r, "n"), plot_frontier,
                 lambda ax, f, r: plot_utility(ax, f, r, "icu")):
        fig, (a, b) = plt.subplots(1, 2)
        draw(a, fit, res)
        draw(b, loaded, res)
        da, db = _drawn(a), _drawn(b)
        assert len(da) > 3 and da == db
        plt.close(fig)
    # the old failure: a dict from load_fits is refused with a pointer to load_fit, not an AttributeError
    fig, ax = plt.subplots()
    with pytest.raises(TypeError, match="analysis.load_fit"):
        plot_isoflops(ax, {"approach2": {}}, res)
    plt.close(fig)
    # a fit dir path works directly
    fig, (a, b) = plt.subplots(1, 2)
    plot_isoflops(a, fit, res)
    plot_isoflops(b, tmp_path / "fit", analysis.load_results(table))
    assert _drawn(a) == _drawn(b)
    plt.close(fig)


def test_two_sweeps_overlay_with_labels_and_colours(fitted):
    """label and color put two sweeps (say flat vs hierarchical codes) on one Axes, told apart."""
    import dataclasses

    from matplotlib.colors import to_rgba

    from analysis.plots import plot_frontier

    fit, res = fitted
    other = load_results(synthetic_results(dataclasses.replace(BESIROGLU, E=BESIROGLU.E + 0.3), budgets=np.logspace(18, 20, 4),
                                           sizes=7, noise=0.005, seed=1))
    fit_b = fit_results(other, approaches=(1, 2), bootstrap=20, seed=0)
    for draw in (plot_isoflops, plot_optimal_scaling, plot_frontier):
        fig, ax = plt.subplots()
        draw(ax, fit, res, label="flat", color="tab:orange")
        n_first = len(ax.lines)
        draw(ax, fit_b, other, label="hierarchical", color="tab:purple")
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any(s.startswith("flat: ") for s in texts) and any(s.startswith("hierarchical: ") for s in texts), texts
        assert {to_rgba(line.get_color()) for line in ax.lines[:n_first]} == {to_rgba("tab:orange")}
        assert {to_rgba(line.get_color()) for line in ax.lines[n_first:]} == {to_rgba("tab:purple")}
        if draw is plot_frontier:  # both sweeps' losses stay in view
            lo, hi = ax.get_ylim()
            assert lo < min(res.loss.min(), other.loss.min()) and hi > max(res.loss.max(), other.loss.max())
        plt.close(fig)
