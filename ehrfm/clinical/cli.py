"""CLI of the clinical stage: labels, audit, probe, finetune, zeroshot, baseline.

Thin wrappers over ehrfm.clinical's public functions; heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json

TASK_CHOICES = ("in_hospital_mortality", "long_los", "icu_admission", "readmission_30d", "all")


def _labels(args) -> int:
    from pathlib import Path

    from ehrfm.clinical.labels import make_labels, write_label_dir, write_labels
    from ehrfm.errors import UserError
    from ehrfm.io import check_overwrite, summary

    options = dict(gap_hours=args.gap_hours, long_los_days=args.long_los_days, readmission_days=args.readmission_days)
    out = Path(args.out)
    if args.task == "all":
        if out.suffix == ".parquet":
            raise UserError(f"--task all writes one file per task: --out {out} must be a directory, not a .parquet")
        check_overwrite(out, args.overwrite)
        labels, info = make_labels(args.meds, "all", **options)
        write_label_dir(labels, info, out, overwrite=args.overwrite)
        parts = ", ".join(f"{t} {i['n']} ({i['n_positive']} positive)" for t, i in info.items())
        summary(f"labels: {parts} -> {out}")
        return 0
    check_overwrite(out, args.overwrite)
    labels, info = make_labels(args.meds, args.task, **options)
    write_labels(labels, out, info)
    prev = f"{info['prevalence']:.3f}" if info["prevalence"] is not None else "n/a"
    summary(f"labels: {args.task} n={info['n']} positive={info['n_positive']} prevalence={prev} -> {out}")
    return 0


def _audit(args) -> int:
    from ehrfm.clinical.audit import audit, format_audit
    from ehrfm.io import atomic_file, summary

    codes = [c.strip() for c in args.date_only_codes.split(",") if c.strip()] if args.date_only_codes is not None else None
    res = audit(args.meds, args.labels, date_only_codes=codes)
    if args.out:
        with atomic_file(args.out) as f:
            f.write(json.dumps(res.to_dict(), indent=2) + "\n")
    for line in format_audit(res)[:-1]:
        print(line)
    worst = {t.task: (t.outcome_code_in_history or 0) + (t.date_only_same_day or 0) + t.not_known_before_prediction
             for t in res.tasks.values()}
    summary(f"audit: {len(res.tasks)} tasks, " + ("clean" if res.clean else "LEAKAGE in " + ", ".join(
        f"{t} ({n})" for t, n in worst.items() if n)) + (f", {len(res.unknown)} unknown" if res.unknown else ""))
    return 0 if res.clean else 1


def _head_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run dir (a trained model)")
    p.add_argument("--tokens", required=True, help="token dir made with the run's tokenizer")
    p.add_argument("--labels", required=True, help="label parquet in the MEDS label schema (ours or ACES)")
    p.add_argument("--out", required=True, help="output dir (metrics.json, predictions.parquet, config.json)")
    p.add_argument("--context", type=int, default=None, help="history length in tokens (default: the model's context)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-labels", type=int, default=None, help="subsample at most this many labels per split")
    p.add_argument("--overwrite", action="store_true")


def _probe(args) -> int:
    from ehrfm.clinical.probe import ProbeConfig, probe

    cfg = ProbeConfig(
        run_dir=args.run, tokens_dir=args.tokens, labels=args.labels, context=args.context,
        batch_size=args.batch_size, device=args.device, bootstrap=args.bootstrap, seed=args.seed,
        max_labels=args.max_labels,
    )
    probe(cfg, args.out, overwrite=args.overwrite)
    return 0


def _finetune(args) -> int:
    from ehrfm.clinical.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(
        run_dir=args.run, tokens_dir=args.tokens, labels=args.labels, context=args.context,
        batch_size=args.batch_size, device=args.device, bootstrap=args.bootstrap, seed=args.seed,
        max_labels=args.max_labels, full=args.full, lr=args.lr, max_epochs=args.epochs, patience=args.patience,
    )
    finetune(cfg, args.out, overwrite=args.overwrite)
    return 0


def _zeroshot(args) -> int:
    from ehrfm.clinical.zeroshot import ZeroShotConfig, zeroshot

    cfg = ZeroShotConfig(
        run_dir=args.run, tokens_dir=args.tokens, labels=args.labels, task=args.task, context=args.context,
        batch_size=args.batch_size, device=args.device, bootstrap=args.bootstrap, seed=args.seed,
        max_labels=args.max_labels, n_samples=args.samples, max_new_tokens=args.max_new_tokens,
        rollout_contexts=args.rollout_contexts, temperature=args.temperature, undecided=args.undecided,
    )
    zeroshot(cfg, args.out, overwrite=args.overwrite)
    return 0


def _baseline(args) -> int:
    from ehrfm.clinical.baseline import BaselineConfig, baseline

    cfg = BaselineConfig(
        meds_dir=args.meds, labels=args.labels, windows=args.windows, min_count=args.min_count,
        bootstrap=args.bootstrap, seed=args.seed, max_labels=args.max_labels,
    )
    baseline(cfg, args.out, overwrite=args.overwrite)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "labels",
        help="clinical task labels (MEDS label schema) from a MEDS dataset",
        description="Make labels for in-hospital mortality, long stay, ICU admission or 30-day readmission. "
        "Exclusion rules: see ehrfm/clinical/labels.py.",
    )
    p.add_argument("meds", help="MEDS dataset dir")
    p.add_argument("--task", required=True, choices=TASK_CHOICES, help="a task, or all (then --out is a dir)")
    p.add_argument("--out", required=True, help="LABELS.parquet, or a dir of <task>.parquet with --task all")
    p.add_argument("--gap-hours", type=float, default=24.0, help="prediction at admission + this (mortality, long stay)")
    p.add_argument("--long-los-days", type=float, default=7.0)
    p.add_argument("--readmission-days", type=float, default=30.0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_labels)

    p = sub.add_parser(
        "audit",
        help="leakage audit of label histories (exit 1 when a history holds its outcome)",
        description="Per task, how many label histories hold (a) the outcome's own code, (b) a date-only event "
        "of the prediction day, (c) an event not known to precede the prediction time, (d) a stay overlapping "
        "another stay; plus the ETL's drop/duplicate counts. Exit 1 when (a)-(c) are not all 0. "
        "Rules: see ehrfm/clinical/audit.py.",
    )
    p.add_argument("meds", help="MEDS dataset dir (any ETL)")
    p.add_argument("--labels", required=True, help="a label parquet or a dir of <task>.parquet (ehrfm labels --task all)")
    p.add_argument("--date-only-codes", default=None, metavar="PREFIX,...",
                   help="code prefixes of date-only sources (default: the MEDS metadata's date_only_codes)")
    p.add_argument("--out", default=None, help="also write the audit as JSON here")
    p.set_defaults(func=_audit)

    p = sub.add_parser("probe", help="linear probe of a frozen model at the prediction time")
    _head_args(p)
    p.set_defaults(func=_probe)

    p = sub.add_parser("finetune", help="fine-tune a classification head (optionally the whole network)")
    _head_args(p)
    p.add_argument("--full", action="store_true", help="train the whole network, not only the head")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=int, default=20, help="at most this many epochs (early stopping on tuning)")
    p.add_argument("--patience", type=int, default=3, help="epochs without tuning AUROC gain before stopping")
    p.set_defaults(func=_finetune)

    p = sub.add_parser("zeroshot", help="ETHOS-style zero-shot rollout until the outcome or a competing event (any task)",
                       description="Sample continuations of each history until the task's outcome or competing event, "
                       "sliding the context; P(outcome) = share of rollouts reaching the outcome. Rules: "
                       "ehrfm/clinical/zeroshot.py.")
    _head_args(p)
    p.add_argument("--task", required=True, choices=("in_hospital_mortality", "long_los", "icu_admission", "readmission_30d"))
    p.add_argument("--samples", type=int, default=20, help="sampled continuations per label")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="rollout length bound (default: --rollout-contexts x the model's context)")
    p.add_argument("--rollout-contexts", type=int, default=8, help="default bound in model contexts (default 8)")
    p.add_argument("--undecided", choices=("exclude", "negative"), default="exclude",
                   help="rollouts reaching neither event: left out of the label's share (default; a label with none "
                        "decided gets the cohort's share) or counted as no outcome")
    p.add_argument("--temperature", type=float, default=1.0)
    p.set_defaults(func=_zeroshot, batch_size=None)  # rows = labels x samples; default: as many as 1 GiB of KV cache holds

    p = sub.add_parser("baseline", help="count-feature baseline (logistic regression, gradient boosting)")
    p.add_argument("meds", help="MEDS dataset dir")
    p.add_argument("--labels", required=True, help="label parquet in the MEDS label schema")
    p.add_argument("--out", required=True, help="output dir (metrics.json, predictions.parquet, config.json)")
    p.add_argument("--windows", default="full,30d", help="history windows to count codes in, e.g. full,30d,24h")
    p.add_argument("--min-count", type=int, default=5, help="codes seen in fewer train labels' histories are dropped")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-labels", type=int, default=None)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_baseline)
