"""Linear probe: a frozen model's representation at the prediction time -> logistic regression.

Representation (ProbeConfig.pooling, ehrfm.clinical.model_io): the final-normed hidden state at
the last history token (time <= prediction_time) beside the mean and the feature-wise max of the
states over the window ("last+mean+max"), beside the mean alone ("last+mean"), or that last
state alone ("last"), through at most the last `context` tokens; by default ("layers") those three
of every depth, the embeddings' and each block's as well as the final one. The logistic regression is fitted
on train labels, its L2 strength C chosen by tuning AUROC, and it is scored on held_out:
metrics.json, predictions.parquet (exactly the scored held_out rows, in meds-evaluation's
PredictionSchema; predictions_train/_tuning.parquet hold the other splits), history_tokens.parquet
(subject_id, prediction_time, history_tokens: each held_out row's whole history length in tokens,
in predictions.parquet's order; the report compares the heads on histories longer than the window
with it) and config.json in OUT.
"""

from __future__ import annotations

import os
import time

import numpy as np
import polars as pl

from ehrfm.clinical.common import (
    as_stored,
    check_out,
    fit_logistic,
    positive_proba,
    require_two_classes,
    split_predictions,
    subsample_per_split,
    warn_outcome_in_history,
    write_head_outputs,
)
from ehrfm.clinical.configs import ProbeConfig
from ehrfm.clinical.histories import Histories, locate_histories, select
from ehrfm.clinical.labels import head_labels, read_labels
from ehrfm.clinical.metrics import binary_metrics, format_metrics
from ehrfm.errors import UserError
from ehrfm.tokens import TokenDir

REPRESENTATIONS = {
    "last": "final-normed hidden state at the last token with time <= prediction_time",
    "last+mean": "final-normed hidden state at the last token with time <= prediction_time, beside the mean "
                 "of the states over the window",
    "last+mean+max": "final-normed hidden state at the last token with time <= prediction_time, beside the mean "
                     "and the feature-wise max of the states over the window",
    "layers": "last+mean+max of every depth: the RMS-normed residual stream entering each block (the embeddings "
              "first), then the final-normed output",
}


def load_label_histories(td: TokenDir, labels_path, max_labels: int | None, seed: int, task: str | None = None) -> Histories:
    """Read labels, locate their histories (refusing bad rows), then subsample per split.

    With `task`, a label file whose histories hold that task's outcome is warned about
    (common.warn_outcome_in_history, against the MEDS data the token dir was made from).
    """
    labels = read_labels(labels_path, data_zones=td.meds_time_zones, data=f"token dir {td.path}")
    h = locate_histories(td, labels, labels_path)
    if task is not None:
        warn_outcome_in_history(td.meds_dir, labels_path, task)
    if max_labels:
        keyed = h.labels.with_row_index("_row")
        kept = subsample_per_split(keyed, max_labels, seed)["_row"].to_numpy()
        mask = np.zeros(len(h.start), dtype=bool)
        mask[kept] = True
        h = select(h, mask)
    return h


def load_head_inputs(cfg) -> tuple:
    """Load what a clinical head needs from its config.

    (task, TokenDir, label Histories, model, its ModelConfig, context, the metrics' "model" record:
    model_io.model_record, with the loaded checkpoint's step and status) of a head's config
    (ProbeConfig or FinetuneConfig: run_dir, tokens_dir, labels, task, max_labels, context,
    device, seed, allow_incomplete), after seeding torch with cfg.seed. UserError: see
    labels.head_labels (a label dir of several files, a task mismatch) and model_io.load_run.
    """
    import torch

    from ehrfm.clinical.model_io import load_run, resolve_context

    torch.manual_seed(cfg.seed)
    labels, task = head_labels(cfg.labels, cfg.task)
    td = TokenDir(cfg.tokens_dir)
    h = load_label_histories(td, labels, cfg.max_labels, cfg.seed)
    model, mcfg, record = load_run(cfg.run_dir, td, cfg.device, n_labels=len(h.start),
                                   allow_incomplete=cfg.allow_incomplete, with_record=True)
    warn_outcome_in_history(td.meds_dir, labels, task)  # after what refuses: a refusal is the one line on stderr
    return task, td, h, model, mcfg, resolve_context(cfg.context, mcfg.context), record


def probe_scores(model, td: TokenDir, h: Histories, context: int, cfg: ProbeConfig, task: str,
                 features: dict | None = None):
    """Embed, fit on train, pick C on tuning; (probabilities for every label, selection record).

    features: an optional memo {histories key: representations} shared across calls, so that
    tasks with the same label histories (mortality and long stay predict at the same times) embed
    them once; the representations are the same either way.
    """
    from ehrfm.clinical.model_io import POOLINGS, embed_histories

    split, y = h.split, h.y
    tr, tu = split == "train", split == "tuning"
    require_two_classes(y[tr], "train", task)
    if cfg.pooling not in POOLINGS:
        raise UserError(f"probe pooling {cfg.pooling!r} is not one of {', '.join(POOLINGS)}")
    key = (cfg.run_dir, cfg.tokens_dir, cfg.pooling, context, split.astype(str).tobytes(), h.start.tobytes(), h.stop.tobytes())
    x = None if features is None else features.get(key)
    if x is None:
        x = embed_histories(model, td, h, context, cfg.batch_size, cfg.device, desc=f"probe {task}", pooling=cfg.pooling)
        if features is not None:
            features[key] = x
    subjects = h.labels["subject_id"].to_numpy()
    clf, selection = fit_logistic(x[tr], y[tr], x[tu], y[tu], cfg.seed, task, subjects[tr])
    return positive_proba(clf, x), selection


def probe(cfg: ProbeConfig, out: str | os.PathLike, overwrite: bool = False, features: dict | None = None) -> dict:
    """Run the probe and write OUT (see the module docstring); returns the metrics.

    Args:
        cfg: the run dir, token dir, labels, task, context, max_labels, bootstrap, seed, device, pooling.
        out: output directory: metrics.json, config.json, predictions*.parquet, history_tokens.parquet (atomically).
        overwrite: replace `out` if it exists.
        features: a memo shared by probes of one model, so that tasks with the same histories embed
            them once (probe_scores).

    Returns:
        metrics.json's content: binary_metrics of held_out (AUROC, AUPRC with bootstrap 95%
        intervals, DeLong auroc_se, calibration) plus head, split, representation, context,
        n_features (numbers per label), n_train, n_tuning, selection (the chosen C), model,
        history_tokens_mean (tokens), wall_s.

    Raises:
        UserError: `out` exists without overwrite, the run, token dir or labels cannot serve the
            task (load_head_inputs), no held_out labels, or train labels of one class.
    """
    from ehrfm.clinical.model_io import representation_width
    from ehrfm.io import summary

    check_out(out, overwrite, cfg, command="probe")
    t0 = time.time()
    task, td, h, model, mcfg, context, record = load_head_inputs(cfg)
    ho = h.split == "held_out"
    if not ho.any():
        raise UserError(f"task {task}: no labels in the held_out split to score")
    p, selection = probe_scores(model, td, h, context, cfg, task, features)
    p = as_stored(p)  # score what predictions.parquet holds
    y = h.y
    metrics = {
        **binary_metrics(y[ho], p[ho], task, cfg.bootstrap, cfg.seed, h.labels["subject_id"].to_numpy()[ho]),
        "head": "probe",
        "split": "held_out",
        "representation": REPRESENTATIONS[cfg.pooling],
        "n_features": representation_width(cfg.pooling, mcfg.n_layer, mcfg.d_model),
        "context": context,
        "n_train": int((h.split == "train").sum()),
        "n_tuning": int((h.split == "tuning").sum()),
        "selection": selection,
        "model": record,
        "history_tokens_mean": float(np.minimum(h.lengths(), context).mean()),
        "wall_s": time.time() - t0,
    }
    history = (h.labels.filter(pl.Series(ho)).select("subject_id", "prediction_time")
               .with_columns(pl.Series("history_tokens", h.lengths()[ho], dtype=pl.Int64)))
    write_head_outputs(out, overwrite, cfg, metrics, split_predictions(h.labels, p, h.split),
                       tables={"history_tokens.parquet": history})
    summary(f"probe {format_metrics(metrics)} -> {out}")
    return metrics
