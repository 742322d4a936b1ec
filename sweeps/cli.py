"""`ehrfm sweep plan|launch|status|collect`: thin wrappers over sweeps' public functions.

Nothing heavy is imported here (`ehrfm --help` stays instant); each handler imports its stage
module when it runs.
"""

from __future__ import annotations

from ehrfm.cli_args import command


def _plan(args) -> int:
    from ehrfm.cli_args import values
    from ehrfm.config import TrainConfig
    from sweeps.plan import SweepConfig, parse_train_options, plan_sweep, print_plan

    train = parse_train_options(args.train_opt)
    train.update(values(TrainConfig, args))  # only the options given (unset ones keep the trainer default)
    opts = values(SweepConfig, args)
    sweep, rows, warnings = plan_sweep(opts.pop("tokens_dir"), opts.pop("budgets"), args.out, train=train, centre_from=args.centre_from,
                                       bracket_from=args.bracket_from, **opts)
    print_plan(sweep, rows, warnings, args.out)
    return 0


def _slurm_args(items: list[str] | None) -> dict:
    from ehrfm.errors import UserError

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not key.strip():
            raise UserError(f"--slurm-arg {item!r}: expected KEY=VALUE (an sbatch option without dashes) or KEY")
        out[key.strip().lstrip("-")] = value if sep else True
    return out


def _launch(args) -> int:
    from ehrfm.cli_args import build
    from sweeps.launch import LaunchConfig, check_executor, launch_sweep, unfinished_runs

    check_executor(args.executor)  # before anything else: the one clear error
    cfg = build(LaunchConfig, args)
    report = launch_sweep(args.sweep, cfg)
    # waited for (local, or --wait): a run that did not complete (failed, diverged, cancelled, lost) is exit 1, and so
    # is a branch left waiting for a trunk another launch runs (exit 0 let `launch && collect && fit` go on without it)
    waiting = report.skipped.get("waiting for trunk", [])
    if waiting and (cfg.executor == "local" or cfg.wait) and not cfg.dry_run:
        from ehrfm.io import warn

        warn(f"{len(waiting)} branch run(s) were not launched: their trunk runs under another launch (first: "
             f"{waiting[0]}); launch again once it has ended (`ehrfm sweep status {args.sweep}`)", "sweep")
        return 1
    return 1 if unfinished_runs(report) else 0


def _status(args) -> int:
    from sweeps.collect import print_status, status_rows

    print_status(status_rows(args.sweep))
    return 0


def _collect(args) -> int:
    from sweeps.collect import collect_sweep

    collect_sweep(args.sweep, labels_dir=args.labels, max_labels=args.max_labels, seed=args.seed,
                  zeroshot=args.zeroshot, zeroshot_rollouts=args.zeroshot_rollouts, zeroshot_max_labels=args.zeroshot_max_labels,
                  utility_boot=args.utility_boot, pooling=args.pooling, probe_best=args.probe_best)
    return 0


def _plan_arguments(pp) -> None:
    from ehrfm.cli_args import add_fields, non_negative_number
    from ehrfm.config import TrainConfig
    from sweeps.plan import SweepConfig

    add_fields(pp, SweepConfig, ["tokens_dir", "budgets", "sizes"],
               tokens_dir=dict(flag="--tokens", required=True, metavar="TOK"),
               budgets=dict(required=True, metavar="C1,C2,...", convert=_budgets), sizes=dict(metavar="K"))
    pp.add_argument("--out", required=True, metavar="SWEEP", help="sweep dir to write (re-planning it keeps its runs)")
    add_fields(pp, SweepConfig, ["span_dex", "tokens_per_param", "context", "lr_ref_width"])
    unset = dict(unset=True)  # not given: the trainer's default
    add_fields(pp, TrainConfig, ["batch_size", "lr", "seed"], batch_size=unset, lr=unset, seed=unset)
    add_fields(pp, SweepConfig, ["min_steps", "schedule", "run_seeds", "seed_steps", "bracket_margin", "max_epochs"],
               # not given: the sweep dir's own values on a re-plan (a --bracket-from re-plan keeps its seeds)
               run_seeds=dict(metavar="K", unset=True), seed_steps=dict(metavar="S", unset=True),
               bracket_margin=dict(metavar="K", unset=True), max_epochs=dict(metavar="E", unset=True, type=non_negative_number))
    add_fields(pp, TrainConfig, ["decay_fraction", "decay_shape"], decay_fraction=unset, decay_shape=unset)
    pp.add_argument("--centre-from", default=None, metavar="FIT",
                    help="fit dir (or fits.json) of this sweep's smaller budgets: centre each larger budget's sizes on "
                    "the N_opt its Approach 2 law predicts, instead of D/N = --tokens-per-param (re-plan the same --out)")
    pp.add_argument("--bracket-from", default=None, metavar="RESULTS",
                    help="results table of this sweep's runs: add a size beyond the end of each budget's ladder where its "
                    "lowest loss sits, or has fewer than --bracket-margin sizes beyond it (re-plan the same --out; added sizes are kept)")
    pp.add_argument("--train-opt", action="append", metavar="KEY=VALUE", help="any other train option for every run (repeatable), e.g. warmup_frac=0.1")


def _launch_arguments(pl) -> None:
    from ehrfm.cli_args import add_fields
    from sweeps.launch import LaunchConfig

    pl.add_argument("sweep", metavar="SWEEP", help="a sweep dir (the --out of `ehrfm sweep plan`)")
    add_fields(pl, LaunchConfig, [
        "executor", "partition", "account", "qos", "time", "cpus_per_task", "mem", "gpus_per_node", "tasks_per_node",
        "nodes", "max_parallel", "constraint", "exclude", "signal_delay_s", "max_timeouts", "slurm_args", "setup",
        "retry_failed", "wait", "dry_run", "logger",
    ], executor=dict(required=True, metavar="local|slurm"),
       slurm_args=dict(flag="--slurm-arg", action="append", metavar="KEY=VALUE", unset=True, convert=_slurm_args),
       setup=dict(action="append", metavar="CMD", unset=True, convert=list))


def _budgets(text: str) -> list[float]:
    from sweeps.plan import parse_budgets

    return parse_budgets(text)


def register(sub) -> None:
    """Add `ehrfm sweep` and its subcommands (plan, launch, status, collect) to the subparsers action `sub`."""
    p = sub.add_parser("sweep", help="plan, launch, follow and collect a scaling sweep (IsoFLOP grid)",
                       description="Plan an IsoFLOP sweep, launch it on SLURM or locally, follow it, collect its results table.")
    ssub = p.add_subparsers(dest="sweep_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    command(ssub, "plan", _plan, _plan_arguments,
            help="plan runs per compute budget: sizes log-spaced around the optimum, D = C / FLOPs per token")
    command(ssub, "launch", _launch, _launch_arguments,
            help="submit the runs that still need to run (SLURM job array or local processes)",
            description="Submit every planned run of SWEEP that still needs to run: a SLURM job array (--executor slurm) "
                        "or local processes (--executor local, waiting for them). Completed runs are never submitted again, "
                        "queued or running ones not twice, failed ones only with --retry-failed. Exit 1 when a run waited for "
                        "did not complete (failed, diverged, or ended without a result: cancelled, timed out, lost).")
    ps = command(ssub, "status", _status, help="table of runs: budget, N, D, state, loss, job id",
                 description="Print one row per planned run of SWEEP: budget, N, D, state (planned, queued, running, "
                             "interrupted, completed, failed, diverged, lost, unknown), loss (nats/token), job id, and why "
                             "a run failed or waits. Reads the run dirs and job records; asks SLURM only about live jobs.")
    ps.add_argument("sweep", metavar="SWEEP", help="a sweep dir (the --out of `ehrfm sweep plan`)")

    pc = command(ssub, "collect", _collect, help="write SWEEP/results.parquet (all runs, with status and error)",
                 description="Write SWEEP/results.parquet (the table `ehrfm fit` reads): one row per planned run with "
                             "its status, error, N, D, FLOPs, loss (nats/token) and its eval standard error; with --labels, "
                             "a linear probe's AUROC/AUPRC per task and run.")
    pc.add_argument("sweep", metavar="SWEEP", help="a sweep dir (the --out of `ehrfm sweep plan`)")
    pc.add_argument("--labels", metavar="LABELS_DIR", help="dir of <task>.parquet label files: add auroc/<task>, auprc/<task> columns")
    pc.add_argument("--max-labels", type=int, default=2000, help="labels scored per task and run (default 2000)")
    pc.add_argument("--seed", type=int, default=0, help="seed of the label subsample and bootstrap (default 0)")
    pc.add_argument("--zeroshot", action="store_true",
                    help="also add zeroshot_auroc/<task>, zeroshot_auroc_se/<task>, zeroshot_undecided/<task> from "
                         "generative rollouts (slow; results kept in SWEEP/zeroshot/ and reused)")
    pc.add_argument("--zeroshot-rollouts", type=int, default=20, help="rollouts per label (default 20)")
    pc.add_argument("--utility-boot", type=int, default=400,
                    help="held-out resamples shared by every run (auroc_boot/<task>; paired utility intervals in `ehrfm fit`; default 400, 0: none)")
    from ehrfm.clinical.configs import POOLINGS

    pc.add_argument("--pooling", choices=POOLINGS, default="last",
                    help="the probes' representation, as `ehrfm probe --pooling` (default last, the cheapest for every run of a "
                         "sweep; `ehrfm probe` defaults to layers for one model; recorded in the table's metadata)")
    pc.add_argument("--zeroshot-max-labels", type=int, default=200, help="held_out labels rolled out per task and run (default 200)")
    pc.add_argument("--probe-best", type=int, metavar="K",
                    help="probe only each budget's K lowest-loss shapes (the utility law takes each budget's loss-optimal "
                         "run; the loss -> AUROC link every probed run); default: every completed run")
