"""Coverage of Approach 2's 95% interval for a, with one residual pool and with per-budget scales.

Simulates IsoFLOP sweeps whose truth is known (`analysis.synthetic.isoflop_parabolas`: the default
demo's four budgets, 5 sizes each around N_opt = 0.15 C^0.45, losses exactly parabolic in ln N plus
Gaussian noise of SD sigma_C per budget). Each draw is fitted by `analysis.fit.fit_results` (Approach 2, 200 bootstrap replicates)
twice: `residual_scaling_level` 0 (one pool of residuals for every budget) and 0.05 (the default:
per-budget scales when Bartlett's test rejects equal variances, `analysis.fit.residual_scales`).
Prints, per noise pattern, how often the interval holds A_TRUE and its median width.

    python benchmarks/bootstrap_coverage.py --draws 200 --sigma 0.03,0.006,0.004,0.004 --sigma 0.005,0.005,0.005,0.005
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from analysis.fit import FitConfig, fit_results
from analysis.synthetic import isoflop_parabolas
from analysis.table import load_results

A_TRUE = 0.45  # the exponent analysis.synthetic.isoflop_parabolas builds in


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--sigma", action="append", help="noise SD per budget, comma-separated (repeatable)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # the fit's own warnings (loss law misses) are not what is measured
    for text in args.sigma or ["0.03,0.006,0.004,0.004", "0.005,0.005,0.005,0.005"]:
        sigma = np.array([float(x) for x in text.split(",")])
        rng = np.random.default_rng(1)
        hits, widths = {0.0: [], 0.05: []}, {0.0: [], 0.05: []}
        for i in range(args.draws):
            table = load_results(isoflop_parabolas(sigma, rng, a=A_TRUE))
            for level in hits:
                cfg = FitConfig(approaches=(2,), bootstrap=200, holdout=False, seed=i, residual_scaling_level=level)
                lo, hi = fit_results(table, config=cfg).approach2.a_ci
                hits[level].append(lo <= A_TRUE <= hi)
                widths[level].append(hi - lo)
        for level, name in ((0.0, "one pool"), (0.05, "scaled when unequal")):
            print(f"sigma {text}: {name:>19}: a's 95% interval covers {np.mean(hits[level]):.2f} of {args.draws} draws, "
                  f"median width {np.median(widths[level]):.3f}")


if __name__ == "__main__":
    main()
