"""`ehrfm demo`: the whole study end to end on the built-in synthetic data (ehrfm.app.demo)."""

from __future__ import annotations

import argparse


def _budgets(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated FLOPs like 1e11,3e11,1e12 (got {text!r})") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"budgets must be positive (got {text!r})")
    return values


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole study on synthetic data: synth -> etl -> tokenize -> sweep -> fit -> heads -> report.md",
        description="The main job: synthetic MIMIC-IV -> MEDS -> tokens -> a local (or SLURM) IsoFLOP sweep -> "
        "collect with clinical probes -> scaling-law fits and plots -> clinical heads -> DIR/report.md. "
        "An existing DIR made with the same settings is resumed.",
    )
    p.add_argument("--out", default="demo_out", metavar="DIR", help="output dir (default demo_out)")
    p.add_argument("--quick", action="store_true", help="a ~1-minute smoke version (small cohort, tiny budgets; used by the tests)")
    p.add_argument("--patients", type=int, help="synthetic cohort size (default 8000; quick 1500)")
    p.add_argument("--budgets", type=_budgets, metavar="C1,C2,...", help="compute budgets in FLOPs")
    p.add_argument("--sizes", type=int, help="model sizes per budget")
    p.add_argument("--span-dex", type=float, help="model sizes span N*(C) x 10^(+-SPAN) (see `ehrfm sweep plan --help`)")
    p.add_argument("--tokens-per-param", type=float, help="D/N at the centre of each budget's ladder")
    p.add_argument("--seed", type=int, help="seed of the data, runs, fits and heads (default 0)")
    p.add_argument("--executor", choices=["local", "slurm"], help="where the sweep runs (default local)")
    p.add_argument("--partition", dest="slurm_partition", help="SLURM partition (with --executor slurm)")
    p.add_argument("--max-parallel", type=int, help="runs at once (default: the CPU cores)")
    p.add_argument("--bootstrap", type=int, help="bootstrap replicates of the fits")
    p.add_argument("--overwrite", action="store_true", help="delete DIR first instead of resuming it")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ehrfm.app.demo import DemoConfig, run_demo

    overrides = {k: getattr(args, k) for k in ("patients", "budgets", "sizes", "span_dex", "tokens_per_param", "seed",
                                                "executor", "slurm_partition", "max_parallel", "bootstrap")}
    overrides["out"] = args.out
    if args.quick:
        cfg = DemoConfig.quick_config(**overrides)
    else:
        cfg = DemoConfig(**{k: v for k, v in overrides.items() if v is not None})
    run_demo(cfg, overwrite=args.overwrite)
    return 0
