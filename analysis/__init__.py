"""analysis: scaling laws from a results table (DESIGN.md section 5). Reads only the table.

Public API (the CLI `ehrfm fit` / `ehrfm recommend` is a thin layer over it):
    analysis.table.load_results(path_or_frame) -> Results         checked runs, exclusions
    analysis.fit.fit_results(table, approaches, bootstrap, seed) -> FitResult
    analysis.fit.write_fits(fit, out, results)                     fits.json, fit_config.json, fits.md,
                                                                   bootstrap.parquet, runs.parquet, plots
    analysis.fit.format_fit_table(fit) -> str                      markdown summary
    analysis.plots.plot_isoflops / plot_optimal_scaling / plot_frontier / plot_utility (ax, fit, results, ...)
    analysis.plots.make_plots(fit, results, out_dir)               PNG + PDF
    analysis.recommend.recommend(fit_or_dir, flops, ...) -> Recommendation; format_recommendation(rec)
    analysis.parametric.fit_parametric(n, d, loss)                 Approach 3 alone (batched 4,500-start L-BFGS)
    analysis.synthetic.synthetic_results(law, budgets, ...)        tables drawn from a known law
"""
