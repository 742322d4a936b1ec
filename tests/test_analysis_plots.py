"""Plot functions draw what they claim on a given Axes; make_plots writes PNG and PDF."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from analysis.fit import fit_results  # noqa: E402
from analysis.plots import make_plots, plot_isoflops, plot_optimal_scaling, plot_utility  # noqa: E402
from analysis.synthetic import BESIROGLU, synthetic_results  # noqa: E402
from analysis.table import load_results  # noqa: E402


@pytest.fixture(scope="module")
def fitted():
    t = synthetic_results(BESIROGLU, budgets=np.logspace(18, 20, 4), sizes=7, noise=0.005, seed=0, tasks={"icu": (2.0, -0.05)})
    res = load_results(t)
    return fit_results(res, approaches=(1, 2), bootstrap=50, seed=0), res


def test_isoflops_draws_a_parabola_and_minimum_per_budget(fitted):
    fit, res = fitted
    fig, ax = plt.subplots()
    plot_isoflops(ax, fit, res)
    assert len(ax.lines) == 4  # one parabola per budget
    assert ax.get_xscale() == "log" and "parameters" in ax.get_xlabel() and "nats/token" in ax.get_ylabel()
    assert len(ax.get_legend().get_texts()) == 4
    plt.close(fig)


def test_optimal_scaling_has_laws_with_bands(fitted):
    fit, res = fitted
    fig, ax = plt.subplots()
    plot_optimal_scaling(ax, fit, res, "d")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(f"b={fit.approach2.b:.2f}" in s for s in labels)
    assert len(ax.collections) >= 2  # bootstrap bands
    assert ax.get_yscale() == "log" and "FLOPs" in ax.get_xlabel()
    plt.close(fig)


def test_make_plots_writes_png_and_pdf(fitted, tmp_path):
    fit, res = fitted
    paths = make_plots(fit, res, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{n}.{e}" for n in ("isoflops", "optimal_scaling", "frontier", "utility") for e in ("png", "pdf"))
    for p in paths:
        head = p.read_bytes()[:8]
        assert head.startswith(b"\x89PNG") if p.suffix == ".png" else head.startswith(b"%PDF")
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
