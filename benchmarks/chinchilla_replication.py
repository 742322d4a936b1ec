"""Approach 3 on Chinchilla's own runs: ehrfm's two fitters against Besiroglu et al. (2024)'s published law.

    python benchmarks/chinchilla_replication.py --csv svg_extracted_data.csv [--trim 5]

Data: Epoch AI's extraction of Hoffmann et al. (2022)'s runs (github.com/epoch-research/analyzing-chinchilla,
data/svg_extracted_data.csv: columns "Model Size", "Training FLOP", "loss"; 245 runs), not shipped here.
Tokens are FLOPs / (6 N). `--trim K` leaves out the K runs of highest loss (outliers of the extraction).
Prints, per fitter (variable projection, the default; Huber/L-BFGS from 4,500 starts, as the paper),
E, A, B, alpha, beta, a = beta / (alpha + beta) and the fitting time, beside the published values
(Besiroglu et al. 2024, arXiv 2404.10102: E 1.82, A 482.01, B 2085.43, alpha 0.3478, beta 0.3658).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import polars as pl

from analysis import parametric

PUBLISHED = {"E": 1.82, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", required=True, help="Epoch AI's svg_extracted_data.csv")
    p.add_argument("--trim", type=int, default=5, help="leave out this many runs of highest loss")
    args = p.parse_args()
    runs = pl.read_csv(args.csv).sort("loss")
    runs = runs.head(runs.height - args.trim)
    n = runs["Model Size"].to_numpy().astype(float)
    d = runs["Training FLOP"].to_numpy().astype(float) / (6 * n)
    loss = runs["loss"].to_numpy().astype(float)
    print(f"{runs.height} runs (the {args.trim} of highest loss left out)")
    print(f"{'fitter':<14}{'E':>8}{'A':>9}{'B':>10}{'alpha':>8}{'beta':>8}{'a':>8}{'s':>7}")
    pub = PUBLISHED
    print(f"{'published':<14}{pub['E']:>8.3f}{pub['A']:>9.1f}{pub['B']:>10.1f}{pub['alpha']:>8.4f}{pub['beta']:>8.4f}"
          f"{pub['beta'] / (pub['alpha'] + pub['beta']):>8.3f}{'':>7}")
    for name, fitter in (("varpro", parametric.fit_varpro), ("huber-lbfgs", parametric.fit_parametric)):
        t0 = time.perf_counter()
        f = fitter(n, d, loss)
        took = time.perf_counter() - t0
        print(f"{name:<14}{f.E:>8.3f}{f.A:>9.1f}{f.B:>10.1f}{f.alpha:>8.4f}{f.beta:>8.4f}{f.a:>8.3f}{took:>7.1f}")
    ratio = np.array([f.alpha / pub["alpha"], f.beta / pub["beta"], f.E / pub["E"]])
    print(f"huber-lbfgs / published: alpha {ratio[0]:.3f}, beta {ratio[1]:.3f}, E {ratio[2]:.3f}")


if __name__ == "__main__":
    main()
