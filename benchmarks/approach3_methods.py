"""Approach 3's two fitters on the same small, noisy IsoFLOP sweeps: variable projection (the
default, analysis.parametric.fit_varpro) vs Hoffmann et al.'s Huber/L-BFGS from 4,500 starts
(analysis.parametric.fit_parametric).

    python benchmarks/approach3_methods.py [--seeds 8] [--noise 0.01] [--budgets 4] [--sizes 5]

Data: Hoffmann et al.'s law, budgets 1e17..1e19 FLOPs, `sizes` models per budget, loss times
exp(N(0, noise)), one table per seed. Prints each fitter's time and the median and interquartile
range over seeds of alpha, beta, E and a = beta / (alpha + beta), and the median |a - a_true|.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from analysis import parametric
from analysis.synthetic import HOFFMANN, synthetic_results


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--budgets", type=int, default=4)
    p.add_argument("--sizes", type=int, default=5)
    args = p.parse_args()
    a_true = HOFFMANN.beta / (HOFFMANN.alpha + HOFFMANN.beta)
    out = {"varpro": [], "huber-lbfgs": []}
    took = dict.fromkeys(out, 0.0)
    for seed in range(args.seeds):
        t = synthetic_results(HOFFMANN, budgets=np.logspace(17, 19, args.budgets), sizes=args.sizes, noise=args.noise, seed=seed)
        n, d, loss = (t[c].to_numpy().astype(float) for c in ("n_params", "tokens", "loss"))
        for name, fitter in (("varpro", parametric.fit_varpro), ("huber-lbfgs", parametric.fit_parametric)):
            t0 = time.perf_counter()
            f = fitter(n, d, loss)
            took[name] += time.perf_counter() - t0
            out[name].append((f.alpha, f.beta, f.E, f.a))
    print(f"{args.seeds} tables of {args.budgets} budgets x {args.sizes} sizes, noise {args.noise} (true alpha {HOFFMANN.alpha}, "
          f"beta {HOFFMANN.beta}, E {HOFFMANN.E}, a {a_true:.3f})")
    for name, rows in out.items():
        v = np.array(rows)
        med, iqr = np.median(v, 0), np.percentile(v, 75, 0) - np.percentile(v, 25, 0)
        print(f"{name:12s} {took[name]:7.1f} s  median alpha {med[0]:.3f} beta {med[1]:.3f} E {med[2]:.3f} a {med[3]:.3f}; "
              f"IQR {iqr[0]:.3f} {iqr[1]:.3f} {iqr[2]:.3f} {iqr[3]:.3f}; median |a - a_true| {np.median(np.abs(v[:, 3] - a_true)):.3f}")


if __name__ == "__main__":
    main()
