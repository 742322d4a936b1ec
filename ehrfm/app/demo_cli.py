"""`ehrfm demo`: the whole study end to end on the built-in synthetic data or your own (ehrfm.app.demo)."""

from __future__ import annotations

from ehrfm.cli_args import command


def _budgets(text: str) -> list[float]:
    """--budgets as `ehrfm sweep plan` reads it (sweeps.plan.parse_budgets): UserError naming a bad item."""
    from sweeps.plan import parse_budgets

    return parse_budgets(text)


def _add_arguments(p) -> None:
    from ehrfm.app.demo import DemoConfig
    from ehrfm.cli_args import add_fields, non_negative_number

    unset = dict(unset=True)  # not given: DemoConfig's default, or quick_config's with --quick
    add_fields(p, DemoConfig, ["out", "quick"], out=dict(metavar="DIR"))
    data = p.add_mutually_exclusive_group()  # the synthetic cohort (default), or your own data
    add_fields(data, DemoConfig, ["raw", "meds"], raw=dict(metavar="RAW", unset=True), meds=dict(metavar="MEDS", unset=True))
    add_fields(p, DemoConfig, ["patients", "budgets", "sizes", "span_dex", "tokens_per_param", "first_stage", "bracket", "bracket_margin", "max_epochs", "seed_steps", "run_seeds", "schedule", "seed",
                               "executor", "slurm_partition", "gpus_per_node", "slurm_time", "max_parallel", "bootstrap"],
               patients=unset, budgets=dict(convert=_budgets, metavar="C1,C2,...", unset=True), sizes=unset,
               span_dex=unset, tokens_per_param=unset, first_stage=unset, bracket=unset, bracket_margin=dict(metavar="K", unset=True), max_epochs=dict(metavar="E", unset=True, type=non_negative_number), seed_steps=dict(metavar="S", unset=True), run_seeds=dict(metavar="K", unset=True), schedule=unset, seed=unset, executor=unset,
               slurm_partition=dict(flag="--partition", unset=True), gpus_per_node=unset,
               slurm_time=dict(flag="--time", unset=True), max_parallel=unset, bootstrap=unset)
    p.add_argument("--overwrite", action="store_true", help="delete DIR first instead of resuming it")


def demo_flags() -> dict[str, str]:
    """{DemoConfig field: its `ehrfm demo` option string}, in the parser's order, read from the parser itself.

    DemoConfig.command_line writes a config back as the command that makes it; taking the flags
    from the parser keeps the two from drifting apart (a renamed flag, a new one).
    """
    from ehrfm.cli_args import Parser

    p = Parser(prog="ehrfm demo")
    _add_arguments(p)
    return {a.config_field: a.option_strings[0] for a in p._actions  # argparse has no public list of its actions
            if getattr(a, "config_field", None) and a.option_strings}


def register(sub) -> None:
    """Add the `ehrfm demo` subcommand to the subparsers action `sub`."""
    command(
        sub, "demo", _run, _add_arguments,
        help="run the whole study: synth (or your raw MIMIC-IV / MEDS) -> etl -> tokenize -> sweep -> fit -> heads -> report.md",
        description="The main job: synthetic MIMIC-IV (or --raw RAW, your MIMIC-IV download; or --meds MEDS, any MEDS "
        "dataset) -> MEDS -> tokens -> a local (or SLURM) IsoFLOP sweep -> collect with clinical probes -> scaling-law fits "
        "and plots -> clinical heads -> DIR/report.md. An existing DIR made with the same settings is resumed.",
    )


def _run(args) -> int:
    from ehrfm.app.demo import DemoConfig, run_demo
    from ehrfm.cli_args import values

    given = values(DemoConfig, args)
    if (given.get("raw") or given.get("meds")) and given.get("patients") is not None:
        from ehrfm.errors import UserError

        raise UserError(f"--patients {given['patients']}: sizes the synthetic cohort; with "
                        f"{'--raw' if given.get('raw') else '--meds'} the study uses that data's own patients")
    cfg = DemoConfig.quick_config(**given) if given.pop("quick") else DemoConfig(**given)
    run_demo(cfg, overwrite=args.overwrite)
    return 0
