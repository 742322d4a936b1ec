"""`ehrfm demo`: the whole study end to end on the built-in synthetic data (ehrfm.app.demo)."""

from __future__ import annotations

from ehrfm.cli_args import command


def _budgets(text: str) -> list[float]:
    """--budgets as `ehrfm sweep plan` reads it (sweeps.plan.parse_budgets): UserError naming a bad item."""
    from sweeps.plan import parse_budgets

    return parse_budgets(text)


def _add_arguments(p) -> None:
    from ehrfm.app.demo import DemoConfig
    from ehrfm.cli_args import add_fields

    unset = dict(unset=True)  # not given: DemoConfig's default, or quick_config's with --quick
    add_fields(p, DemoConfig, ["out", "quick"], out=dict(metavar="DIR"))
    add_fields(p, DemoConfig, ["patients", "budgets", "sizes", "span_dex", "tokens_per_param", "first_stage", "bracket", "seed", "executor",
                               "slurm_partition", "max_parallel", "bootstrap"],
               patients=unset, budgets=dict(convert=_budgets, metavar="C1,C2,...", unset=True), sizes=unset,
               span_dex=unset, tokens_per_param=unset, first_stage=unset, bracket=unset, seed=unset, executor=unset,
               slurm_partition=dict(flag="--partition", unset=True), max_parallel=unset, bootstrap=unset)
    p.add_argument("--overwrite", action="store_true", help="delete DIR first instead of resuming it")


def register(sub) -> None:
    """Add the `ehrfm demo` subcommand to the subparsers action `sub`."""
    command(
        sub, "demo", _run, _add_arguments,
        help="run the whole study on synthetic data: synth -> etl -> tokenize -> sweep -> fit -> heads -> report.md",
        description="The main job: synthetic MIMIC-IV -> MEDS -> tokens -> a local (or SLURM) IsoFLOP sweep -> "
        "collect with clinical probes -> scaling-law fits and plots -> clinical heads -> DIR/report.md. "
        "An existing DIR made with the same settings is resumed.",
    )


def _run(args) -> int:
    from ehrfm.app.demo import DemoConfig, run_demo
    from ehrfm.cli_args import values

    given = values(DemoConfig, args)
    cfg = DemoConfig.quick_config(**given) if given.pop("quick") else DemoConfig(**given)
    run_demo(cfg, overwrite=args.overwrite)
    return 0
