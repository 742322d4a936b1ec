"""analysis: scaling laws from a results table (DESIGN.md section 5). Reads only the table.

Public API (the CLI `ehrfm fit` / `ehrfm recommend` is a thin layer over it):
    analysis.load_results(path_or_frame) -> Results               checked runs, exclusions (analysis.table)
    analysis.load_fit(fit_dir) -> FitResult                       a saved fit, typed (analysis.fit)
    analysis.fit.fit_results(table, approaches, bootstrap, seed) -> FitResult
    analysis.fit.write_fits(fit, out, results)                     fits.json, fit_config.json, fits.md,
                                                                   bootstrap.parquet, runs.parquet, plots
    analysis.fit.format_fit_table(fit) -> str                      markdown summary (names the parameter count,
                                                                   flags runs over 1 epoch and unidentified parameters)
    analysis.fit.format_holdout(fit) -> str                        the held-out-budget validation (fits.json `holdout`)
    analysis.plots.plot_isoflops / plot_optimal_scaling / plot_frontier / plot_utility (ax, fit, results, ...,
                                                                   label=, color=)  overlays of several sweeps
    analysis.plots.make_plots(fit, results, out_dir)               PNG + PDF
    analysis.recommend.recommend(fit_or_dir, flops, ...) -> Recommendation; format_recommendation(rec)
    analysis.parametric.fit_parametric(n, d, loss)                 Approach 3 alone (batched 4,500-start L-BFGS)
    analysis.parametric.fit_varpro(n, d, loss)                     Approach 3 by variable projection (the default)
    analysis.plots.plot_loss_link(ax, fit, results, task)          AUROC against loss with the fitted linear link
    analysis.recommend.trust(fits_json, k) -> (ok, why)            can approach k's law be the default recommendation
    analysis.synthetic.synthetic_results(law, budgets, ...)        tables drawn from a known law
"""


def load_results(table):
    """analysis.table.load_results: a results table (parquet/CSV path or polars frame) -> Results."""
    from analysis.table import load_results as _load_results

    return _load_results(table)


def load_fit(fit_dir):
    """analysis.fit.load_fit: a saved fit dir (fits.json, fit_config.json, bootstrap.parquet) -> FitResult."""
    from analysis.fit import load_fit as _load_fit

    return _load_fit(fit_dir)
