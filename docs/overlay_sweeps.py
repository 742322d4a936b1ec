"""Overlay two scaling sweeps (say flat vs hierarchical codes, or cosine vs WSD) on one figure.

    python docs/overlay_sweeps.py FIT_A RESULTS_A FIT_B RESULTS_B --labels flat hierarchical --out overlay.png
    python docs/overlay_sweeps.py --synthetic --out overlay.png     # no sweeps at hand: two synthetic ones

FIT_*: directories written by `ehrfm fit` (fits.json, fit_config.json, bootstrap.parquet);
RESULTS_*: the results tables they were fitted on (`ehrfm sweep collect` output).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import analysis  # noqa: E402
from analysis.plots import plot_frontier, plot_isoflops, plot_optimal_scaling  # noqa: E402


def synthetic_sweeps(tmp: str) -> list[tuple[str, str]]:
    """Two synthetic sweeps fitted and saved the way `ehrfm fit` saves them."""
    from analysis.fit import fit_results, write_fits
    from analysis.synthetic import BESIROGLU, synthetic_results

    pairs = []
    for i, law in enumerate((BESIROGLU, dataclasses.replace(BESIROGLU, E=BESIROGLU.E + 0.2))):
        table = f"{tmp}/results_{i}.parquet"
        synthetic_results(law, budgets=np.logspace(18, 20, 4), sizes=7, noise=0.005, seed=i).write_parquet(table)
        results = analysis.load_results(table)
        write_fits(fit_results(results, approaches=(1, 2, 3), bootstrap=50, seed=0), f"{tmp}/fit_{i}", results, plots=False)
        pairs.append((f"{tmp}/fit_{i}", table))
    return pairs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", metavar="FIT RESULTS", help="FIT_A RESULTS_A FIT_B RESULTS_B")
    p.add_argument("--labels", nargs=2, default=["sweep A", "sweep B"])
    p.add_argument("--colors", nargs=2, default=["tab:orange", "tab:purple"])
    p.add_argument("--synthetic", action="store_true", help="draw two synthetic sweeps instead")
    p.add_argument("--out", default="overlay.png")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic:
            pairs = synthetic_sweeps(tmp)
        elif len(args.paths) == 4:
            pairs = [(args.paths[0], args.paths[1]), (args.paths[2], args.paths[3])]
        else:
            p.error("give FIT_A RESULTS_A FIT_B RESULTS_B, or --synthetic")
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for (fit_dir, table), label, color in zip(pairs, args.labels, args.colors, strict=True):
            fit, results = analysis.load_fit(fit_dir), analysis.load_results(table)
            plot_isoflops(axes[0], fit, results, label=label, color=color)
            plot_optimal_scaling(axes[1], fit, results, "n", label=label, color=color)
            plot_frontier(axes[2], fit, results, label=label, color=color)
        fig.tight_layout()
        fig.savefig(args.out, dpi=150)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
