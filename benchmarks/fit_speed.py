"""Approach 3 grid fit: our batched L-BFGS over all 4,500 starts at once vs a straightforward loop
of scipy.optimize.minimize (L-BFGS-B, same objective and analytic gradient) over the same grid.

    python benchmarks/fit_speed.py [--points 250] [--noise 0.01] [--seed 0] [--every 1]

Data: an IsoFLOP table drawn from Besiroglu et al.'s law (10 budgets x 25 sizes = 250 points).
Prints both times, the ratio, and both answers (they must agree). --every K runs the scipy loop
on every K-th start only (and our fit on the same subset) for a quicker look.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.optimize import minimize

from analysis import parametric
from analysis.synthetic import BESIROGLU, synthetic_results


def scipy_loop(n, d, loss, starts):
    ln, ld, ll = np.log(n), np.log(d), np.log(loss)

    def fun(t):
        f, g = parametric.objective(t[None], ln, ld, ll)
        return f[0], g[0]

    best = None
    for s in starts:
        r = minimize(fun, s, jac=True, method="L-BFGS-B")
        if best is None or r.fun < best.fun:
            best = r
    return best.x, best.fun


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=250)
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every", type=int, default=1)
    args = p.parse_args()
    sizes = 25
    budgets = np.logspace(18, 22, max(2, args.points // sizes))
    t = synthetic_results(BESIROGLU, budgets=budgets, sizes=sizes, noise=args.noise, seed=args.seed)
    n, d, loss = (t[c].to_numpy().astype(float) for c in ("n_params", "tokens", "loss"))
    starts = parametric.init_grid()[:: args.every]
    print(f"{n.size} points, {len(starts)} starts (Huber delta {parametric.HUBER_DELTA}, L-BFGS)")

    t0 = time.perf_counter()
    ours = parametric.fit_parametric(n, d, loss, starts=starts)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    theta, f_scipy = scipy_loop(n, d, loss, starts)
    t_scipy = time.perf_counter() - t0

    names = ("E", "A", "B", "alpha", "beta")
    sp = parametric.theta_to_params(theta)
    print(f"{'':8s}{'batched (ours)':>16s}{'scipy loop':>16s}")
    for k in names:
        print(f"{k:8s}{getattr(ours, k):16.5g}{float(sp[k]):16.5g}")
    print(f"{'objective':8s}{ours.objective:16.8g}{f_scipy:16.8g}")
    same = abs(ours.objective - f_scipy) <= 1e-6 * max(1.0, abs(f_scipy)) and np.allclose(ours.theta, theta, atol=1e-3)
    print(f"same answer: {same}")
    print(f"time: batched {t_ours:.2f} s, scipy loop {t_scipy:.2f} s, ratio {t_scipy / t_ours:.1f}x")


if __name__ == "__main__":
    main()
