"""`ehrfm train TOK --out RUN ...`: a thin wrapper over ehrfm.train.train.

Exit codes: 0 completed (or already completed), 1 diverged or failed (recorded in result.json),
2 user error (nothing written), 3 interrupted by SIGTERM/SIGUSR1, SIGHUP (unless ignored, as under nohup) or a first
Ctrl-C (checkpoint written; rerun the same command to resume). Runs unchanged under `torchrun --nproc-per-node N -m ehrfm train ...`.
"""

from __future__ import annotations

import argparse

from ehrfm.cli_args import command, positive_number

EXIT_FAILED = 1
EXIT_INTERRUPTED = 3


def _token_count(value: str) -> int:
    """An argparse type: a whole number of tokens, written as 20000 or 2e6 (TrainConfig checks >= 1).

    Exact for integers (int(float("9007199254740993")) is off by one), and a fraction is refused:
    int() truncated "0.5" to 0 ("tokens must be >= 1 (got 0)") and "1000.7" silently to 1000.
    """
    try:
        return int(value)
    except ValueError:
        number = positive_number(value)
    if not number.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number of tokens like 20000 or 2e6 (got {value!r})")
    return int(number)


def _token_list(text) -> list[int]:
    from ehrfm.errors import UserError

    if isinstance(text, list):  # the dataclass default
        return text
    out = []
    for item in (text or "").split(","):
        if item.strip():
            try:
                out.append(_token_count(item.strip()))
            except argparse.ArgumentTypeError:  # a number that is not whole (a fraction was truncated before)
                raise UserError(f"--stable-checkpoints: {item.strip()!r} is not a token count (a whole number >= 1)") from None
    return out


def _add_arguments(p) -> None:
    from ehrfm.cli_args import add_fields
    from ehrfm.config import TrainConfig

    add_fields(p, TrainConfig, ["tokens_dir", "out_dir"], tokens_dir=dict(flag="tokens_dir", metavar="TOK"),
               out_dir=dict(flag="--out", required=True, metavar="RUN"))
    add_fields(p.add_argument_group("model shape"), TrainConfig, ["n_layer", "d_model", "n_head", "context", "mlp_hidden"],
               n_layer=dict(required=True), d_model=dict(required=True), n_head=dict(required=True))
    add_fields(p.add_mutually_exclusive_group(required=True), TrainConfig, ["tokens", "flops"],
               tokens=dict(type=_token_count, metavar="D"), flops=dict(type=positive_number, metavar="C"))
    add_fields(p.add_argument_group("optimisation"), TrainConfig,
               ["batch_size", "micro_batch_size", "lr", "min_lr_ratio", "warmup_frac", "warmup_steps", "schedule",
                "decay_fraction", "decay_shape", "trunk_dir", "stable_checkpoints", "weight_decay", "grad_clip"],
               trunk_dir=dict(flag="--trunk", metavar="RUN"),
               stable_checkpoints=dict(metavar="T1,T2,...", convert=_token_list))
    ev = p.add_argument_group("evaluation and runtime")
    add_fields(ev, TrainConfig, ["eval_tokens", "eval_interval", "eval_batch_size", "checkpoint_interval", "log_interval",
                                 "seed", "device", "dtype", "attention", "compile", "overwrite"])
    ev.add_argument("--logger", default=None, choices=["none", "tensorboard", "wandb"],
                    help="also send metrics.jsonl lines to TensorBoard (event files in RUN/) or W&B (offline) "
                    "(default: $EHRFM_LOGGER, else none; --logger none overrides $EHRFM_LOGGER)")


def register(sub) -> None:
    """Add the `ehrfm train` subcommand to the subparsers action `sub`."""
    command(
        sub, "train", _run, _add_arguments,
        help="train one model on a token dir for exactly D tokens (or C FLOPs)",
        description="Train one Llama-style GPT on TOK's train split for exactly D tokens; held-out loss on its "
        "tuning split. Writes RUN/{config.json,metrics.jsonl,checkpoint/,result.json}. "
        "SIGTERM/SIGUSR1, SIGHUP (a closed terminal or ssh session; not when ignored, as under nohup) or a first "
        "Ctrl-C: checkpoint and exit 3; rerun the same command to resume.",
    )


def _run(args) -> int:
    import signal
    import sys
    import threading
    from pathlib import Path

    from ehrfm import fault_points
    from ehrfm.errors import Terminated

    # A stop (SIGTERM from SLURM or `timeout`, SIGHUP, SIGUSR1) in the seconds this process imports torch,
    # before `train` installs its handlers, ended it with exit 143 (SIGUSR1: killed outright), not the
    # 3 ("interrupted, rerun to resume") that job scripts requeue on. Nothing is written by then: exit 3.
    def stop(signum, frame):
        raise Terminated()

    main_thread = threading.current_thread() is threading.main_thread()
    old_usr1 = signal.signal(signal.SIGUSR1, stop) if main_thread else None
    try:
        fault_points.hold("train-start", Path(args.out_dir).name)  # a test holds here, before torch is imported
        from ehrfm.cli_args import build
        from ehrfm.config import TrainConfig
        from ehrfm.loggers import check_logger
        from ehrfm.results import Status
        from ehrfm.train import train

        # an explicit --logger none is recorded too: without it the run took $EHRFM_LOGGER regardless
        extra = {"logger": check_logger(args.logger)} if args.logger is not None else {}
        cfg = build(TrainConfig, args, extra=extra)
        result = train(cfg)
    except Terminated:
        print("ehrfm train: stopped by a signal before training began; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if main_thread:
            signal.signal(signal.SIGUSR1, old_usr1)
    status = result["status"]
    if status == Status.INTERRUPTED:
        return EXIT_INTERRUPTED
    if status != Status.COMPLETED:
        print(f"ehrfm train: run {status}: {result.get('error')} (see {args.out_dir}/result.json)", file=sys.stderr)
        return EXIT_FAILED
    return 0
