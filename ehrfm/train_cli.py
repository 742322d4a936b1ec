"""`ehrfm train TOK --out RUN ...`: a thin wrapper over ehrfm.train.train.

Exit codes: 0 completed (or already completed), 1 diverged or failed (recorded in result.json),
2 user error (nothing written), 3 interrupted by SIGTERM/SIGUSR1 (checkpoint written; rerun the
same command to resume). Runs unchanged under `torchrun --nproc-per-node N -m ehrfm train ...`.
"""

from __future__ import annotations

import argparse

EXIT_FAILED = 1
EXIT_INTERRUPTED = 3


def _budget(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {value!r}")
    return x


def _token_list(text: str) -> list[int]:
    from ehrfm.errors import UserError

    out = []
    for item in (text or "").split(","):
        if item.strip():
            try:
                out.append(int(float(item)))
            except ValueError:
                raise UserError(f"--stable-checkpoints: {item.strip()!r} is not a token count") from None
    return out


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train one model on a token dir for exactly D tokens (or C FLOPs)",
        description="Train one Llama-style GPT on TOK's train split for exactly D tokens; held-out loss on its "
        "tuning split. Writes RUN/{config.json,metrics.jsonl,checkpoint/,result.json}. "
        "SIGTERM/SIGUSR1: checkpoint and exit 3; rerun the same command to resume.",
    )
    p.add_argument("tokens_dir", metavar="TOK", help="token dir written by `ehrfm tokenize`")
    p.add_argument("--out", required=True, metavar="RUN", help="run dir to create (or resume)")
    shape = p.add_argument_group("model shape")
    shape.add_argument("--n-layer", type=int, required=True)
    shape.add_argument("--d-model", type=int, required=True)
    shape.add_argument("--n-head", type=int, required=True)
    shape.add_argument("--context", type=int, default=256, help="tokens per row (default 256)")
    shape.add_argument("--mlp-hidden", type=int, default=0, help="SwiGLU width (default 0: 8/3 d_model rounded up to 32)")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--tokens", type=_budget, metavar="D", help="training tokens (e.g. 2e6)")
    budget.add_argument("--flops", type=_budget, metavar="C", help="compute budget; D = floor(C / flops_per_token)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=int, default=32, help="rows per optimizer step, all ranks together (default 32)")
    opt.add_argument("--micro-batch-size", type=int, default=0, help="rows per forward/backward (default: batch size)")
    opt.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    opt.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr / peak lr (default 0.1)")
    opt.add_argument("--warmup-frac", type=float, default=0.05, help="warmup steps as a fraction of all steps (default 0.05)")
    opt.add_argument("--warmup-steps", type=int, default=None, help="warmup steps (overrides --warmup-frac; a WSD trunk and its branches share it)")
    opt.add_argument("--schedule", default="cosine", choices=["cosine", "wsd"],
                     help="cosine decay after warmup, or warmup-stable-decay (constant lr, then a decay over the last --decay-fraction)")
    opt.add_argument("--decay-fraction", type=float, default=0.2, help="wsd: share of the steps spent decaying (default 0.2)")
    opt.add_argument("--decay-shape", default="linear", choices=["linear", "1-sqrt"], help="wsd: shape of the decay (default linear)")
    opt.add_argument("--trunk", metavar="RUN", default=None,
                     help="wsd branch: start the decay from this wsd run's stable checkpoint at this run's decay start")
    opt.add_argument("--stable-checkpoints", metavar="T1,T2,...", default="",
                     help="wsd trunk: keep stable-phase checkpoints after these token counts (step boundaries) for branches")
    opt.add_argument("--weight-decay", type=float, default=0.1)
    opt.add_argument("--grad-clip", type=float, default=1.0, help="max global gradient norm; 0 disables (default 1.0)")
    ev = p.add_argument_group("evaluation and runtime")
    ev.add_argument("--eval-tokens", type=int, default=262_144, help="held-out tokens from the tuning split (default 262144)")
    ev.add_argument("--eval-interval", type=int, default=0, help="steps between evals (default 0: only at the end)")
    ev.add_argument("--checkpoint-interval", type=int, default=0, help="steps between checkpoints (default 0: end and on signals)")
    ev.add_argument("--log-interval", type=int, default=1, help="steps between metrics.jsonl lines (default 1)")
    ev.add_argument("--seed", type=int, default=0, help="fixes init and data order (default 0)")
    ev.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    ev.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="auto: bf16 autocast on CUDA, fp32 on CPU")
    ev.add_argument("--attention", default="auto", choices=["auto", "sdpa", "xformers"])
    ev.add_argument("--compile", action="store_true", help="torch.compile the model (faster steps after a compile of minutes on CPU)")
    ev.add_argument("--overwrite", action="store_true", help="discard an existing run dir and start over")
    ev.add_argument("--logger", default="none", choices=["none", "tensorboard", "wandb"],
                    help="also send metrics.jsonl lines to TensorBoard (event files in RUN/) or W&B (offline) (default none)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import sys

    from ehrfm.config import TrainConfig
    from ehrfm.loggers import check_logger
    from ehrfm.results import Status
    from ehrfm.train import train

    cfg = TrainConfig(
        tokens_dir=args.tokens_dir,
        out_dir=args.out,
        n_layer=args.n_layer,
        d_model=args.d_model,
        n_head=args.n_head,
        context=args.context,
        mlp_hidden=args.mlp_hidden,
        tokens=int(args.tokens) if args.tokens is not None else None,
        flops=args.flops,
        batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size,
        lr=args.lr,
        min_lr_ratio=args.min_lr_ratio,
        warmup_frac=args.warmup_frac,
        warmup_steps=args.warmup_steps,
        schedule=args.schedule,
        decay_fraction=args.decay_fraction,
        decay_shape=args.decay_shape,
        trunk_dir=args.trunk,
        stable_checkpoints=_token_list(args.stable_checkpoints),
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        eval_tokens=args.eval_tokens,
        eval_interval=args.eval_interval,
        checkpoint_interval=args.checkpoint_interval,
        log_interval=args.log_interval,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        attention=args.attention,
        compile=args.compile,
        overwrite=args.overwrite,
        extra={"logger": check_logger(args.logger)} if args.logger != "none" else {},
    )
    result = train(cfg)
    status = result["status"]
    if status == Status.INTERRUPTED:
        return EXIT_INTERRUPTED
    if status != Status.COMPLETED:
        print(f"ehrfm train: run {status}: {result.get('error')} (see {args.out}/result.json)", file=sys.stderr)
        return EXIT_FAILED
    return 0
