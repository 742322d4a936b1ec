"""CLI of the clinical stage: labels, audit, probe, finetune, zeroshot, baseline.

Thin wrappers over ehrfm.clinical's public functions; heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json

from ehrfm.cli_args import command

TASK_CHOICES = ("in_hospital_mortality", "long_los", "icu_admission", "readmission_30d", "all")


def _labels(args) -> int:
    from pathlib import Path

    from ehrfm.cli_args import values
    from ehrfm.clinical.labels import LabelConfig, check_label_options, make_labels, write_label_dir, write_labels
    from ehrfm.errors import UserError
    from ehrfm.io import check_file_output, check_overwrite, summary

    options = values(LabelConfig, args, names=("gap_hours", "long_los_days", "readmission_days", "transfer_hours",
                                                      "direct_icu_minutes"))
    check_label_options(options, args.task)  # (an empty or "." --out: refused by ehrfm.app.cli.main for every command)
    out = Path(args.out)
    if args.task == "all":
        if out.suffix == ".parquet":
            raise UserError(f"--task all writes one file per task: --out {out} must be a directory, not a .parquet")
        check_overwrite(out, args.overwrite, inputs=(args.meds_dir,), command="labels")
        labels, info = make_labels(args.meds_dir, "all", **options)
        write_label_dir(labels, info, out, overwrite=args.overwrite)
        _audit_written_labels(args.meds_dir, out, list(info))
        parts = ", ".join(f"{t} {i['n']} ({i['n_positive']} positive)" for t, i in info.items())
        summary(f"labels: {parts} -> {out}")
        return 0
    check_file_output(args.out, suffix=".parquet")  # one task: one parquet (--task all takes a directory)
    check_overwrite(out, args.overwrite, inputs=(args.meds_dir,), command="labels")
    check_overwrite(out.with_suffix(".json"), args.overwrite, inputs=(args.meds_dir,), command="labels")  # the sidecar
    labels, info = make_labels(args.meds_dir, args.task, **options)
    write_labels(labels, out, info)
    _audit_written_labels(args.meds_dir, out, [args.task])
    prev = f"{info['prevalence']:.3f}" if info["prevalence"] is not None else "n/a"
    summary(f"labels: {args.task} n={info['n']} positive={info['n_positive']} prevalence={prev} -> {out}")
    return 0


def _audit_written_labels(meds_dir, out, tasks: list[str]) -> None:
    """`ehrfm audit` of the labels just written, recorded in their sidecars (the heads read it) and warned of now.

    The labels exclude an outcome already in a history by construction; the audit also checks what
    is the data's (date-only codes on the prediction day, results not known by then).
    """
    from pathlib import Path

    from ehrfm.clinical.audit import audit
    from ehrfm.clinical.common import record_label_audit, warn_outcome_in_history
    from ehrfm.errors import UserError
    from ehrfm.io import warn

    out = Path(out)
    try:
        record_label_audit(meds_dir, out, audit(meds_dir, out))
    except UserError:  # what the audit refuses, `ehrfm audit` says in its own words; the heads audit unrecorded files
        return
    except Exception as e:  # noqa: BLE001 - the labels are written and right; an audit that broke must not undo that
        warn(f"labels written to {out}, but auditing them or recording the audit in their sidecars broke "
             f"({type(e).__name__}): a label file whose sidecar holds no audit is audited by the heads when they read "
             f"it; `ehrfm audit {meds_dir} --labels {out}` audits them now")
        return
    for task in tasks:
        warn_outcome_in_history(meds_dir, out / f"{task}.parquet" if out.is_dir() else out, task)


def _audit(args) -> int:
    from ehrfm.clinical.audit import audit, format_audit
    from ehrfm.io import FILE_OUTPUT_KEY, atomic_file, check_file_output, check_overwrite, printable, summary

    if args.out:  # (`--out ''` is refused by ehrfm.app.cli.main, as for every command)
        check_file_output(args.out)
        check_overwrite(args.out, args.overwrite, inputs=(args.meds, args.labels), command="audit")
    codes = [c.strip() for c in args.date_only_codes.split(",") if c.strip()] if args.date_only_codes is not None else None
    res = audit(args.meds, args.labels, date_only_codes=codes, task=args.task)
    if args.out:
        with atomic_file(args.out) as f:
            f.write(json.dumps({FILE_OUTPUT_KEY: "audit", **res.to_dict()}, indent=2) + "\n")
    for line in format_audit(res)[:-1]:
        print(printable(line))  # it names the data's codes: one holding a line break or ESC stays inert
    leaks = leak_verdicts(res)
    outside = [f"{t.task} ({t.outside_data})" for t in res.tasks.values() if t.outside_data]
    found = (["LEAKAGE in " + ", ".join(leaks)] if leaks else []) + (
        ["labels outside the data (heads refuse them) in " + ", ".join(outside)] if outside else [])
    if res.unchecked:  # (a) not made: never "clean" (before: a file named icu_v2.parquet passed unchecked)
        found.append(f"NOT CHECKED for its outcome: {', '.join(res.unchecked)} (pass --task)")
    if res.empty:  # 0 labels are trivially free of leakage: "clean" alone read as a checked cohort
        found.append(f"no labels to check in {', '.join(res.empty)}")
    summary(f"audit: {len(res.tasks)} tasks, " + ("; ".join(found) if found else "clean")
            + (f", {len(res.unknown)} unknown" if res.unknown else "")
            + (f"; for review, labels of overlapping stays (d) in {res.overlapping}" if res.overlapping else ""))
    return 0 if res.clean else 1


def _head_args(p: argparse.ArgumentParser, cls) -> None:
    """The options every model head shares, derived from its config dataclass `cls`."""
    from ehrfm.cli_args import add_fields

    add_fields(p, cls, ["run_dir", "tokens_dir", "labels"], run_dir=dict(flag="run_dir", metavar="run"),
               tokens_dir=dict(flag="--tokens", required=True), labels=dict(required=True))
    p.add_argument("--out", required=True, help="output dir (metrics.json, predictions.parquet, config.json)")
    add_fields(p, cls, ["context", "batch_size", "device", "bootstrap", "seed", "max_labels"])
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (only an output ehrfm wrote)")
    add_fields(p, cls, ["allow_incomplete"])


def _probe_arguments(p) -> None:
    from ehrfm.cli_args import add_fields
    from ehrfm.clinical.configs import ProbeConfig

    _head_args(p, ProbeConfig)
    add_fields(p, ProbeConfig, ["pooling", "task"], task=dict(choices=TASK_CHOICES[:-1]))


def _finetune_arguments(p) -> None:
    from ehrfm.cli_args import add_fields
    from ehrfm.clinical.configs import FinetuneConfig

    _head_args(p, FinetuneConfig)
    add_fields(p, FinetuneConfig, ["full", "lr", "max_epochs", "patience", "task"], max_epochs=dict(flag="--epochs"),
               task=dict(choices=TASK_CHOICES[:-1]))


def _zeroshot_arguments(p) -> None:
    from ehrfm.cli_args import add_fields
    from ehrfm.clinical.configs import ZeroShotConfig

    _head_args(p, ZeroShotConfig)
    add_fields(p, ZeroShotConfig, ["task", "n_samples", "max_new_tokens", "rollout_contexts", "undecided", "temperature"],
               n_samples=dict(flag="--samples"))


def _baseline_arguments(p) -> None:
    from ehrfm.cli_args import add_fields
    from ehrfm.clinical.configs import BaselineConfig

    add_fields(p, BaselineConfig, ["meds_dir", "labels"], meds_dir=dict(flag="meds_dir", metavar="meds"),
               labels=dict(required=True))
    p.add_argument("--out", required=True, help="output dir (metrics.json, config.json, and per model "
                   "logistic_regression/ and gradient_boosting/ with its predictions.parquet)")
    add_fields(p, BaselineConfig, ["windows", "min_count", "bootstrap", "seed", "max_labels", "task"],
               task=dict(choices=TASK_CHOICES[:-1]))
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (only an output ehrfm wrote)")


def _labels_arguments(p) -> None:
    from ehrfm.cli_args import add_fields
    from ehrfm.clinical.configs import LabelConfig

    add_fields(p, LabelConfig, ["meds_dir", "task"], meds_dir=dict(flag="meds_dir", metavar="meds"),
               task=dict(required=True, choices=TASK_CHOICES))
    p.add_argument("--out", required=True, help="LABELS.parquet, or a dir of <task>.parquet with --task all")
    add_fields(p, LabelConfig, ["gap_hours", "long_los_days", "readmission_days", "transfer_hours", "direct_icu_minutes"])
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (only an output ehrfm wrote)")


def _run_head(args, config_class, run) -> int:
    """A head's command: its config from the options, run into --out."""
    from ehrfm.cli_args import build

    run(build(config_class, args), args.out, overwrite=args.overwrite)
    return 0


def _probe(args) -> int:
    from ehrfm.clinical.probe import ProbeConfig, probe

    return _run_head(args, ProbeConfig, probe)


def _finetune(args) -> int:
    from ehrfm.clinical.finetune import FinetuneConfig, finetune

    return _run_head(args, FinetuneConfig, finetune)


def _zeroshot(args) -> int:
    from ehrfm.clinical.zeroshot import ZeroShotConfig, zeroshot

    return _run_head(args, ZeroShotConfig, zeroshot)


def _baseline(args) -> int:
    from ehrfm.clinical.baseline import BaselineConfig, baseline

    return _run_head(args, BaselineConfig, baseline)


def register(sub) -> None:
    """Add the clinical subcommands (labels, audit, probe, finetune, zeroshot, baseline) to the subparsers action `sub`."""
    command(sub, "labels", _labels, _labels_arguments,
            help="clinical task labels (MEDS label schema) from a MEDS dataset",
            description="Make labels for in-hospital mortality, long stay, ICU admission or 30-day readmission. "
            "Exclusion rules: see ehrfm/clinical/labels.py.")

    p = command(
        sub, "audit", _audit,
        help="leakage audit of label histories (exit 1 when a history holds its outcome)",
        description="Per task, how many label histories hold (a) the outcome's own code, (b) a date-only event "
        "of the prediction day, (c) an event not known to precede the prediction time, (d) a stay overlapping "
        "another stay, (f) a subject or prediction time outside the data; for the dataset, (e) result tables left at "
        "their chart time (no storetime); plus the ETL's drop/duplicate counts. "
        "Exit 1 when (a)-(c) or (f) are not all 0, (e) lists a table, or a task's outcome is unknown ((a) not made: "
        "name the file <task>.parquet or pass --task). "
        "Rules: see ehrfm/clinical/audit.py.",
    )
    p.add_argument("meds", help="MEDS dataset dir (any ETL)")
    p.add_argument("--labels", required=True, help="a label parquet or a dir of <task>.parquet (ehrfm labels --task all)")
    p.add_argument("--task", default=None, choices=TASK_CHOICES[:-1],
                   help="the task of a --labels file whose name does not say it (default: its sidecar's task, else its name)")
    p.add_argument("--date-only-codes", default=None, metavar="PREFIX,...",
                   help="code prefixes of date-only sources (default: the MEDS metadata's date_only_codes)")
    p.add_argument("--out", default=None, help="also write the audit as JSON here")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    command(sub, "probe", _probe, _probe_arguments, help="linear probe of a frozen model at the prediction time")
    command(sub, "finetune", _finetune, _finetune_arguments,
            help="fine-tune a classification head (optionally the whole network)")
    command(sub, "zeroshot", _zeroshot, _zeroshot_arguments,
            help="ETHOS-style zero-shot rollout until the outcome or a competing event (any task)",
            description="Sample continuations of each history until the task's outcome or competing event, "
            "sliding the context; P(outcome) = share of rollouts reaching the outcome. Rules: "
            "ehrfm/clinical/zeroshot.py.")
    command(sub, "baseline", _baseline, _baseline_arguments,
            help="count-feature baseline (logistic regression, gradient boosting)")


def leak_verdicts(res) -> list[str]:
    """The audit verdict's leakage entries: "task (n)" per task with look-ahead, and the results at chart time.

    A label may be counted by several checks ((a) outcome in history, (b) date-only same day, (c) not known
    before the prediction): their counts are named apart, never added (the sum said 2,156 of 1,720 labels).
    """
    leaks = []
    for t in res.tasks.values():
        found_by = {k: n for k, n in (("(a)", t.outcome_code_in_history or 0), ("(b)", t.date_only_same_day or 0),
                                       ("(c)", t.not_known_before_prediction)) if n}
        if len(found_by) == 1:
            leaks.append(f"{t.task} ({next(iter(found_by.values()))})")
        elif found_by:
            leaks.append(f"{t.task} ({', '.join(f'{k} {n}' for k, n in found_by.items())}, of {t.n_labels} labels)")
    at_chart = (res.result_times or {}).get("at_chart_time") or []
    return leaks + [f"results at chart time ({', '.join(at_chart)})"] * bool(at_chart)
