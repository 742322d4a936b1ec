"""What a WSD sweep saves over a cosine sweep, and what it costs in loss and in the fitted laws.

On one grid (the demo's by default: its cohort, budgets, sizes and training options) the same
(budget, n_layer, d_model) points are planned twice, with `--schedule cosine` (every run on its
own) and `--schedule wsd` (one trunk per shape, branches decaying from its stable checkpoints;
Hägele et al. 2024, arXiv 2405.18392). Both sweeps are really trained on the local executor and
collected; the script prints

- planned FLOPs (sweep.json `planned_flops`) and measured wall time of each sweep, and the ratios;
- the held-out loss of every point under both schedules and the relative gap (target: within 2%);
- both sweeps' fitted exponents (analysis.fit, approaches 2 and 3) with bootstrap intervals, and
  whether each WSD exponent lies inside the cosine interval;
- with `--run-seeds K` (K >= 2), each sweep is trained K times (training seeds 0..K-1, one cohort):
  the per-point gap is then between the seed means, beside the cosine sweep's own seed-to-seed
  spread at that point (max - min over seeds, relative to the mean). A gap within that spread is
  one that training noise alone produces between two cosine runs of the same point.

    python benchmarks/sweep_cost.py --out /tmp/sweep_cost                 # the demo's grid
    python benchmarks/sweep_cost.py --out /tmp/sc --patients 3000 --budgets 1e11,2e11,4e11,8e11 --sizes 3
    python benchmarks/sweep_cost.py --out /tmp/sc --patients 3000 --budgets 1e11,2e11,4e11,8e11 --sizes 3 --run-seeds 2

Stages whose output exists are reused (a sweep relaunch trains nothing new), so an interrupted
benchmark resumes. Wall time is the sum of the runs' own training seconds (result.json wall_s),
which does not depend on how many ran at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("EHRFM_QUIET", "1")


def _prepare_tokens(out: Path, patients: int, seed: int) -> Path:
    from tokenization.etl import etl
    from tokenization.synth import synthesize
    from tokenization.tokenize import tokenize

    raw, meds, tok = out / "raw", out / "meds", out / "tokens"
    if not raw.exists():
        synthesize(raw, n_patients=patients, seed=seed)
    if not meds.exists():
        etl(raw, meds)
    if not tok.exists():
        tokenize(meds, tok)
    return tok


def run_sweep(tok: Path, sweep_dir: Path, schedule: str, args, seed: int = 0) -> dict:
    """Plan, launch (local) and collect one sweep, its runs trained with `seed`; returns its figures."""
    import pyarrow.parquet as pq

    from sweeps.collect import collect_sweep
    from sweeps.launch import LaunchConfig, launch_sweep
    from sweeps.plan import plan_sweep

    train = {"batch_size": args.batch_size, "lr": args.lr, "warmup_frac": args.warmup_frac, "eval_tokens": args.eval_tokens,
             "seed": seed}
    if schedule == "wsd":
        train.update(decay_shape=args.decay_shape, decay_fraction=args.decay_fraction)
    sweep, rows, _ = plan_sweep(tok, args.budgets, sweep_dir, sizes=args.sizes, span_dex=args.span_dex,
                                tokens_per_param=args.tokens_per_param, context=args.context, train=train, schedule=schedule,
                                lr_ref_width=args.lr_ref_width)
    t0 = time.time()
    launch_sweep(sweep_dir, LaunchConfig(executor="local", max_parallel=args.max_parallel, wait=True))
    elapsed = time.time() - t0
    results = pq.read_table(collect_sweep(sweep_dir)).to_pylist()
    wall = sum(r["wall_s"] or 0.0 for r in results)
    return {"planned_flops": sweep.planned_flops, "wall_s": wall, "launch_s": elapsed, "results": results,
            "results_path": sweep_dir / "results.parquet"}


def _point_losses(sweeps: list[dict]) -> dict:
    """(budget, n_layer, d_model) -> (row of the first sweep, losses over the sweeps' seeds)."""
    key = lambda r: (r["budget"], r["n_layer"], r["d_model"])  # noqa: E731
    points: dict = {}
    for sweep in sweeps:
        for r in sweep["results"]:
            points.setdefault(key(r), (r, []))[1].append(r["loss"])
    return points


def _print_point_gaps(by_seed: dict) -> None:
    """The per-point table: seed-mean losses, their relative gap, and cosine's own seed spread."""
    import statistics

    cos, wsd = _point_losses(by_seed["cosine"]), _point_losses(by_seed["wsd"])
    k_seeds = len(by_seed["cosine"])
    spread_col = " | cosine seed spread" if k_seeds > 1 else ""
    print(f"\n| budget | n_layer | d_model | tokens | cosine loss | wsd loss | gap{spread_col} | wsd role |")
    print("|---" * (8 + (k_seeds > 1)) + "|")
    gaps, within_noise = [], 0
    for k in sorted(wsd):
        r, wl = wsd[k]
        cl = cos.get(k, (None, []))[1]
        ok = all(v is not None for v in cl + wl) and cl and wl
        cm, wm = (statistics.fmean(cl), statistics.fmean(wl)) if ok else (None, None)
        gap = (wm - cm) / cm if ok else None
        spread = (max(cl) - min(cl)) / cm if ok and k_seeds > 1 else None
        if gap is not None:
            gaps.append(gap)
            within_noise += spread is not None and abs(gap) <= spread
        role = "trunk" if r["trunk_id"] == r["run_id"] else "branch"
        cells = [f"{k[0]:.3g}", str(k[1]), str(k[2]), f"{r['tokens']:,}", "-" if cm is None else f"{cm:.4f}",
                 "-" if wm is None else f"{wm:.4f}", "-" if gap is None else f"{100 * gap:+.2f}%"]
        if k_seeds > 1:
            cells.append("-" if spread is None else f"{100 * spread:.2f}%")
        print("| " + " | ".join(cells + [role]) + " |")
    if gaps:
        mean_of = f"means over {k_seeds} training seeds, " if k_seeds > 1 else ""
        line = (f"loss gap ({mean_of}wsd vs cosine): max |gap| {100 * max(abs(g) for g in gaps):.2f}%, "
                f"mean {100 * sum(gaps) / len(gaps):+.2f}% ({sum(abs(g) <= 0.02 for g in gaps)} of {len(gaps)} points within 2%")
        if k_seeds > 1:
            line += f"; {within_noise} of {len(gaps)} within cosine's own seed spread"
        print(line + ")")


def fit(results_path: Path, bootstrap: int):
    import warnings

    from analysis.fit import fit_results

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_results(results_path, approaches=(2, 3), bootstrap=bootstrap, seed=0)


def main() -> int:
    from ehrfm.app.demo import DemoConfig

    d = DemoConfig()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="sweep_cost_out")
    ap.add_argument("--patients", type=int, default=d.patients)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--budgets", default=",".join(f"{b:g}" for b in d.budgets))
    ap.add_argument("--sizes", type=int, default=d.sizes)
    ap.add_argument("--span-dex", type=float, default=d.span_dex)
    ap.add_argument("--tokens-per-param", type=float, default=d.tokens_per_param)
    ap.add_argument("--context", type=int, default=d.context)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--warmup-frac", type=float, default=d.warmup_frac)
    ap.add_argument("--lr-ref-width", type=int, default=d.lr_ref_width, help="lr * W / d_model per run; 0: one lr")
    ap.add_argument("--eval-tokens", type=int, default=d.eval_tokens)
    ap.add_argument("--decay-shape", default="linear", choices=["linear", "1-sqrt"], help="wsd decay shape (default linear)")
    ap.add_argument("--decay-fraction", type=float, default=0.2, help="wsd decay share of each run's steps (default 0.2)")
    ap.add_argument("--run-seeds", type=int, default=1,
                    help="train each sweep with training seeds 0..K-1 and compare seed means (default 1)")
    ap.add_argument("--max-parallel", type=int, default=None)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--plan-only", action="store_true", help="print planned FLOPs only (no training)")
    args = ap.parse_args()
    from sweeps.plan import parse_budgets

    args.budgets = parse_budgets(args.budgets)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = _prepare_tokens(out, args.patients, args.seed)
    if args.plan_only:
        from sweeps.plan import plan_sweep

        train = {"batch_size": args.batch_size, "lr": args.lr, "warmup_frac": args.warmup_frac, "eval_tokens": args.eval_tokens}
        wsd = {"decay_shape": args.decay_shape, "decay_fraction": args.decay_fraction}
        flops = {s: plan_sweep(tok, args.budgets, out / f"plan_{s}", sizes=args.sizes, span_dex=args.span_dex,
                               tokens_per_param=args.tokens_per_param, context=args.context,
                               train={**train, **(wsd if s == "wsd" else {})},
                               schedule=s, lr_ref_width=args.lr_ref_width)[0].planned_flops for s in ("cosine", "wsd")}
        print(f"planned FLOPs: cosine {flops['cosine']:.4g}, wsd {flops['wsd']:.4g}, ratio {flops['wsd'] / flops['cosine']:.3f}")
        return 0
    # Seed 0 keeps the directory names of a single-seed benchmark, so its sweeps are reused.
    seeds = range(max(1, args.run_seeds))
    by_seed = {s: [run_sweep(tok, out / (s if k == 0 else f"{s}-seed{k}"), s, args, seed=k) for k in seeds]
               for s in ("cosine", "wsd")}
    runs = {s: v[0] for s, v in by_seed.items()}
    c, w = runs["cosine"], runs["wsd"]
    print(f"grid: {args.patients} patients, budgets {', '.join(f'{b:.3g}' for b in args.budgets)}, {args.sizes} sizes")
    print("| sweep | planned FLOPs | training wall s (sum of runs) | launch wall s (this call; ~0 when reused) |\n|---|---|---|---|")
    for s, r in runs.items():
        print(f"| {s} | {r['planned_flops']:.4g} | {r['wall_s']:.0f} | {r['launch_s']:.0f} |")
    print(f"| wsd / cosine | {w['planned_flops'] / c['planned_flops']:.3f} | {w['wall_s'] / c['wall_s']:.3f} | "
          f"{w['launch_s'] / c['launch_s']:.3f} |")

    _print_point_gaps(by_seed)

    fits = {s: fit(r["results_path"], args.bootstrap) for s, r in runs.items()}
    print("\n| exponent | cosine | wsd | wsd inside cosine interval |\n|---|---|---|---|")
    for approach in ("approach2", "approach3"):
        fc, fw = getattr(fits["cosine"], approach, None), getattr(fits["wsd"], approach, None)
        if fc is None or fw is None:
            print(f"| {approach} | not fitted | not fitted | - |")
            continue
        for name in ("a", "b"):
            vc, ci, vw, wci = getattr(fc, name), getattr(fc, f"{name}_ci"), getattr(fw, name), getattr(fw, f"{name}_ci")
            inside = ci[0] <= vw <= ci[1]
            print(f"| {approach} {name} | {vc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | {vw:.3f} [{wci[0]:.3f}, {wci[1]:.3f}] | {inside} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
