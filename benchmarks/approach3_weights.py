"""Approach 3's a with equal weights and with inverse-variance weights, on sweeps drawn from a known law.

Each draw is an IsoFLOP sweep of the default demo's four budgets (3.7e11 to 6e12 FLOPs), 5 sizes per
budget over 0.8 decades around the law's optimum (`analysis.synthetic.synthetic_results`), with
per-budget noise in ln L like the demo's (its parabola residual scales over its losses: short runs
scatter most). Each is fitted by `analysis.fit.fit_results` (Approach 3, varpro, no bootstrap) with
`approach3_weights` "equal" and "inverse-variance" (the default). Prints, per true law and noise
pattern, the median and 90th percentile of |a_fit - a_true| and how often the weighted fit was the
closer one. The true laws are the demo's own two fits of its runs (weighted and unweighted), so
neither weighting is favoured by the choice of truth.

    python benchmarks/approach3_weights.py --draws 100
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from analysis.fit import FitConfig, fit_results
from analysis.synthetic import Law, synthetic_results

BUDGETS = (3.7e11, 9.5e11, 2.4e12, 6e12)
# The default demo's two Approach 3 fits of its 23 runs (README, 2026-12-06): weighted and equal.
LAWS = {"demo weighted fit": Law(E=0.9606, A=1.3066e4, B=1.0366e6, alpha=1.1686, beta=1.1520),
        "demo unweighted fit": Law(E=0.9496, A=402.3, B=4.7957e7, alpha=0.8046, beta=1.4353)}
NOISES = {"demo-like (SD of ln L 0.019, 0.010, 0.0054, 0.0028)": (0.019, 0.010, 0.0054, 0.0028),
          "equal (0.005 everywhere)": (0.005,) * 4}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draws", type=int, default=100)
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # the fit's own warnings are not what is measured
    for law_name, law in LAWS.items():
        a_true = law.beta / (law.alpha + law.beta)
        for noise_name, noise in NOISES.items():
            err = {"equal": [], "inverse-variance": []}
            for i in range(args.draws):
                table = synthetic_results(law, budgets=BUDGETS, sizes=5, span_decades=0.8, noise=noise, seed=i)
                for how in err:
                    cfg = FitConfig(approaches=(3,), bootstrap=0, holdout=False, approach3_weights=how)
                    err[how].append(abs(fit_results(table, config=cfg).approach3.a - a_true))
            e, w = np.array(err["equal"]), np.array(err["inverse-variance"])
            print(f"{law_name} (a = {a_true:.3f}), noise {noise_name}, {args.draws} draws: |a - a_true| median / 90th pct: "
                  f"equal {np.median(e):.3f} / {np.quantile(e, 0.9):.3f}, inverse-variance {np.median(w):.3f} / "
                  f"{np.quantile(w, 0.9):.3f}; weighted closer in {np.mean(w < e):.0%}")


if __name__ == "__main__":
    main()
