"""Clinical utility of one run, for sweeps: a linear probe per task on a fixed label sample.

`ehrfm sweep collect SWEEP --labels LABELS_DIR` calls `score_run` for each completed run and
adds the returned `auroc/<task>`, `auroc_se/<task>` (DeLong standard error on the same sample, clustered by
patient when a patient has several labels: metrics.auroc_standard_error),
`auprc/<task>` and `auroc_boot/<task>` (AUROC on resamples shared by every run) columns to the results table, so analysis can fit utility against compute
with each point's measurement noise. The label sample depends only on the label files, max_labels
and the seed, never on the run: every run of a sweep is scored on the same labels.
"""

from __future__ import annotations

import os
from pathlib import Path

from ehrfm.errors import UserError


def label_files(labels_dir: str | os.PathLike) -> dict[str, Path]:
    """{task: path} for each <task>.parquet in a labels dir (as `ehrfm labels --task all` writes).

    Also each <task>/ subdir of one task's shards in split folders (ACES's cohort_dir on sharded
    MEDS: <task>/<split>/<shard>.parquet; labels.task_label_paths).
    """
    from ehrfm.clinical.labels import task_label_paths

    d = Path(labels_dir)
    if d.is_file():  # one task's file where the dir of every task belongs: "not found" would send the user astray
        raise UserError(f"--labels {d} is a file: it takes the labels dir that `ehrfm labels MEDS --task all --out DIR` "
                        f"writes (one <task>.parquet per task), e.g. {d.parent}")
    if not d.is_dir():
        raise UserError(f"labels dir {d} not found (make it with `ehrfm labels MEDS --task all --out {d}`)")
    files = task_label_paths(d)
    if not files:
        raise UserError(f"labels dir {d} holds no <task>.parquet label files (nor <task>/<split>/ shard dirs)")
    return files


def score_run(
    run_dir: str | os.PathLike,
    tokens_dir: str | os.PathLike,
    labels: dict[str, str | os.PathLike],
    max_labels: int = 2000,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 64,
    context: int | None = None,
    histories: dict | None = None,
    n_boot: int = 0,
    pooling: str = "last",
) -> dict:
    """{"auroc/<task>": .., "auroc_se/<task>": .., "auprc/<task>": .., ...} on held_out, one probe per task.

    Args:
        run_dir: a completed training run.
        tokens_dir: the run's token dir.
        labels: {task: label parquet path}.
        max_labels: at most this many labels per split and task (seeded sample).
        seed: fixes the label sample and the probe.
        device: where the model embeds the histories.
        batch_size: histories per forward pass.
        context: tokens of history read (default: the model's context).
        histories: {task: Histories} from `task_histories` (the same tokens_dir, labels,
            max_labels and seed), so that a sweep locates each task's labels once, not once per
            run; None locates them here.
        n_boot: when > 0, also auroc_boot/<task>: the AUROC on n_boot resamples of the held_out
            labels that every run scored with the same labels and seed shares (paired replicates;
            resampling subjects when some have several labels: metrics.shared_bootstrap_auroc).
        pooling: the probe's representation (ProbeConfig.pooling).

    Returns:
        Per task: auroc/<task>, auroc_se/<task> (DeLong, clustered by subject) and auprc/<task> of the held_out labels
        (None when they have one class), and auroc_boot/<task> (a list) when n_boot > 0: the
        columns `sweep collect --labels` adds to the results table.

    Raises:
        UserError: bad labels (missing subjects, times outside timelines), no held_out labels, a
            vocab mismatch, or a task whose train labels have a single class.
    """
    import torch

    from ehrfm.clinical.metrics import binary_metrics, shared_bootstrap_auroc
    from ehrfm.clinical.model_io import load_run, resolve_context
    from ehrfm.clinical.probe import ProbeConfig, load_label_histories, probe_scores
    from ehrfm.tokens import TokenDir

    td = TokenDir(tokens_dir)
    model, mcfg = load_run(run_dir, td, device)
    ctx = resolve_context(context, mcfg.context)
    out: dict = {}
    features: dict = {}  # tasks with the same histories embed them once
    for task, path in sorted(labels.items()):
        torch.manual_seed(seed)
        h = histories[task] if histories is not None else load_label_histories(td, path, max_labels, seed, task)
        ho = h.split == "held_out"
        if not ho.any():
            raise UserError(f"task {task}: no labels in the held_out split of {path}")
        cfg = ProbeConfig(run_dir=str(run_dir), tokens_dir=str(tokens_dir), labels=str(path), context=ctx,
                          batch_size=batch_size, device=device, bootstrap=0, seed=seed, max_labels=max_labels, task=task,
                          pooling=pooling)
        p, _ = probe_scores(model, td, h, ctx, cfg, task, features)
        subjects = h.labels["subject_id"].to_numpy()[ho]  # the SE (and replicates) treat patients, not stays, as independent
        m = binary_metrics(h.y[ho], p[ho], task, n_boot=0, seed=seed, groups=subjects)
        out[f"auroc/{task}"] = m["auroc"] if m["auroc"] is None else float(m["auroc"])
        out[f"auroc_se/{task}"] = m["auroc_se"]
        out[f"auprc/{task}"] = m["auprc"] if m["auprc"] is None else float(m["auprc"])
        if n_boot > 0:  # none where the SE is withheld (too few of a class): replicates as falsely narrow as it
            out[f"auroc_boot/{task}"] = (shared_bootstrap_auroc(h.y[ho], p[ho], n_boot, seed, subjects).tolist()
                                         if m["auroc_se"] is not None else None)
    return out


def task_histories(tokens_dir: str | os.PathLike, labels: dict[str, str | os.PathLike], max_labels: int | None,
                   seed: int = 0) -> dict:
    """{task: Histories}: each task's labels read, located in the token dir and subsampled once.

    The label sample depends only on the label files, max_labels and the seed, so one sample
    serves every run of a sweep (pass it to `score_run(histories=...)`). UserError: as
    `score_run`'s bad labels.
    """
    from ehrfm.clinical.probe import load_label_histories
    from ehrfm.tokens import TokenDir

    td = TokenDir(tokens_dir)
    return {task: load_label_histories(td, path, max_labels, seed, task) for task, path in sorted(labels.items())}


__all__ = ["score_run", "label_files", "task_histories"]
