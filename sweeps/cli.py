"""`ehrfm sweep plan|launch|status|collect`: thin wrappers over sweeps' public functions.

Nothing heavy is imported here (`ehrfm --help` stays instant); each handler imports its stage
module when it runs.
"""

from __future__ import annotations


def _plan(args) -> int:
    from sweeps.plan import parse_budgets, parse_train_options, plan_sweep, print_plan

    train = parse_train_options(args.train_opt)
    for key in ("batch_size", "lr", "seed"):
        if getattr(args, key) is not None:
            train[key] = getattr(args, key)
    if args.decay_fraction is not None:
        train["decay_fraction"] = args.decay_fraction
    if args.decay_shape is not None:
        train["decay_shape"] = args.decay_shape
    sweep, rows, warnings = plan_sweep(
        args.tokens,
        parse_budgets(args.budgets),
        args.out,
        sizes=args.sizes,
        span_dex=args.span_dex,
        tokens_per_param=args.tokens_per_param,
        context=args.context,
        min_steps=args.min_steps,
        train=train,
        schedule=args.schedule,
    )
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
    from sweeps.launch import LaunchConfig, check_executor, launch_sweep

    check_executor(args.executor)  # before anything else: the one clear error
    cfg = LaunchConfig(
        executor=args.executor,
        partition=args.partition,
        account=args.account,
        qos=args.qos,
        time=args.time,
        cpus_per_task=args.cpus_per_task,
        mem=args.mem,
        gpus_per_node=args.gpus_per_node,
        tasks_per_node=args.tasks_per_node,
        nodes=args.nodes,
        max_parallel=args.max_parallel,
        constraint=args.constraint,
        exclude=args.exclude,
        signal_delay_s=args.signal_delay_s,
        max_timeouts=args.max_timeouts,
        slurm_args=_slurm_args(args.slurm_arg),
        setup=list(args.setup or []),
        retry_failed=args.retry_failed,
        wait=args.wait,
        dry_run=args.dry_run,
        logger=args.logger,
    )
    report = launch_sweep(args.sweep, cfg)
    bad = [rid for rid, s in report.final_states.items() if s in ("failed", "diverged")]
    return 1 if bad else 0


def _status(args) -> int:
    from sweeps.collect import print_status, status_rows

    print_status(status_rows(args.sweep))
    return 0


def _collect(args) -> int:
    from sweeps.collect import collect_sweep

    collect_sweep(args.sweep, labels_dir=args.labels, max_labels=args.max_labels, seed=args.seed,
                  zeroshot=args.zeroshot, zeroshot_rollouts=args.zeroshot_rollouts, zeroshot_max_labels=args.zeroshot_max_labels)
    return 0


def register(sub) -> None:
    p = sub.add_parser("sweep", help="plan, launch, follow and collect a scaling sweep (IsoFLOP grid)",
                       description="Plan an IsoFLOP sweep, launch it on SLURM or locally, follow it, collect its results table.")
    ssub = p.add_subparsers(dest="sweep_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    pp = ssub.add_parser("plan", help="plan runs per compute budget: sizes log-spaced around the optimum, D = C / FLOPs per token")
    pp.add_argument("--tokens", required=True, metavar="TOK", help="token dir (ehrfm tokenize output)")
    pp.add_argument("--budgets", required=True, metavar="C1,C2,...", help="compute budgets in FLOPs, e.g. 1e12,3e12,1e13")
    pp.add_argument("--sizes", type=int, default=7, metavar="K", help="model sizes per budget (default 7)")
    pp.add_argument("--out", required=True, metavar="SWEEP", help="sweep dir to write (re-planning it keeps its runs)")
    pp.add_argument("--span-dex", type=float, default=1.0, help="sizes span N*(C) * 10^(+-span) (default 1.0)")
    pp.add_argument("--tokens-per-param", type=float, default=20.0, help="D/N at the ladder's centre N*(C) (default 20)")
    pp.add_argument("--context", type=int, default=256, help="context length of every run (default 256)")
    pp.add_argument("--batch-size", type=int, default=None, help="sequences per optimizer step (trainer default if unset)")
    pp.add_argument("--lr", type=float, default=None, help="peak learning rate (trainer default if unset)")
    pp.add_argument("--seed", type=int, default=None, help="seed of every run (default 0)")
    pp.add_argument("--min-steps", type=int, default=50, help="warn for runs with fewer optimizer steps (default 50)")
    pp.add_argument("--schedule", default="cosine", choices=["cosine", "wsd"],
                    help="cosine: every run on its own; wsd: one warmup-stable-decay trunk per shape, smaller budgets of "
                    "that shape branch off at 80%% of their tokens and decay (default cosine)")
    pp.add_argument("--decay-fraction", type=float, default=None, help="wsd: share of each run's steps spent decaying (default 0.2)")
    pp.add_argument("--decay-shape", default=None, choices=["linear", "1-sqrt"], help="wsd: shape of the decay (default linear)")
    pp.add_argument("--train-opt", action="append", metavar="KEY=VALUE", help="any other train option for every run (repeatable), e.g. warmup_frac=0.1")
    pp.set_defaults(func=_plan)

    pl = ssub.add_parser("launch", help="submit the runs that still need to run (SLURM job array or local processes)")
    pl.add_argument("sweep", metavar="SWEEP")
    pl.add_argument("--executor", required=True, metavar="local|slurm", help="slurm: a submitit job array; local: processes on this machine")
    pl.add_argument("--partition", help="SLURM partition")
    pl.add_argument("--account", help="SLURM account")
    pl.add_argument("--qos", help="SLURM quality of service")
    pl.add_argument("--time", default="24:00:00", help="time limit per job: minutes, HH:MM:SS or D-HH:MM:SS (default 24:00:00); jobs checkpoint and requeue at the limit")
    pl.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per task, also the trainer's threads")
    pl.add_argument("--mem", default=None, help="memory per node, e.g. 32G")
    pl.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per job (per node); a multi-GPU job runs one DDP task per GPU")
    pl.add_argument("--tasks-per-node", type=int, default=None, help="DDP ranks per node (default: one per GPU; on CPU, N gloo ranks)")
    pl.add_argument("--nodes", type=int, default=1, help="nodes per job (multi-node DDP)")
    pl.add_argument("--max-parallel", type=int, default=None, help="jobs running at once (SLURM array throttle; local default: cores / cpus-per-task)")
    pl.add_argument("--constraint", help="SLURM node features (--constraint)")
    pl.add_argument("--exclude", help="SLURM nodes to avoid (--exclude)")
    pl.add_argument("--signal-delay-s", type=int, default=120, help="seconds before the time limit when jobs are told to checkpoint (default 120)")
    pl.add_argument("--max-timeouts", type=int, default=5, help="requeues after reaching the time limit (default 5)")
    pl.add_argument("--slurm-arg", action="append", metavar="KEY=VALUE", help="any other sbatch option (repeatable), e.g. mail-type=END")
    pl.add_argument("--setup", action="append", metavar="CMD", help="shell line run before each job (repeatable), e.g. 'module load cuda'")
    pl.add_argument("--retry-failed", action="store_true", help="also resubmit runs that failed")
    pl.add_argument("--wait", action="store_true", help="SLURM: wait until the submitted runs finish (local always waits)")
    pl.add_argument("--dry-run", action="store_true", help="list the runs that would be submitted, submit nothing")
    pl.add_argument("--logger", choices=["tensorboard", "wandb"], default=None,
                    help="every run also logs its metrics there (TensorBoard event files beside metrics.jsonl; "
                         "W&B offline, run name = run id, group = the sweep); default: none, or $EHRFM_LOGGER")
    pl.set_defaults(func=_launch)

    ps = ssub.add_parser("status", help="table of runs: budget, N, D, state, loss, job id")
    ps.add_argument("sweep", metavar="SWEEP")
    ps.set_defaults(func=_status)

    pc = ssub.add_parser("collect", help="write SWEEP/results.parquet (all runs, with status and error)")
    pc.add_argument("sweep", metavar="SWEEP")
    pc.add_argument("--labels", metavar="LABELS_DIR", help="dir of <task>.parquet label files: add auroc/<task>, auprc/<task> columns")
    pc.add_argument("--max-labels", type=int, default=2000, help="labels scored per task and run (default 2000)")
    pc.add_argument("--seed", type=int, default=0, help="seed of the label subsample and bootstrap (default 0)")
    pc.add_argument("--zeroshot", action="store_true",
                    help="also add zeroshot_auroc/<task>, zeroshot_auroc_se/<task>, zeroshot_undecided/<task> from "
                         "generative rollouts (slow; results kept in SWEEP/zeroshot/ and reused)")
    pc.add_argument("--zeroshot-rollouts", type=int, default=20, help="rollouts per label (default 20)")
    pc.add_argument("--zeroshot-max-labels", type=int, default=200, help="held_out labels rolled out per task and run (default 200)")
    pc.set_defaults(func=_collect)
