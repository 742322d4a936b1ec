"""Count-feature baseline (MEDS-Tab-like) for clinical tasks.

Count-feature baseline (MEDS-Tab-like): codes in the history -> logistic regression and
histogram gradient boosting.

For each label, every MEDS event of the subject with time <= prediction_time (plus the static,
time-null rows such as GENDER//F) is counted per code, in each history window (`full`: all
history; `30d`, `24h`, ...: only events within that span before the prediction time). Features
are (window, code) counts, kept when they occur in at least `min_count` train labels' histories,
stored sparse. Age at the prediction time (from MEDS_BIRTH) is one more feature. Nothing after
the prediction time enters a feature (see `count_features`).

Logistic regression: L2, C chosen on tuning AUROC, on max-abs-scaled sparse counts.
Gradient boosting: sklearn HistGradientBoostingClassifier on the `max_dense_features` most
frequent features (it needs dense input), early-stopped on a seeded ~10% of train's subjects
(all labels of a subject on one side: a patient's stays on both sides would reward memorising patients).
Both are scored on held_out (metrics.json under "models"); each writes its predictions in
meds-evaluation's PredictionSchema to OUT/<model>/predictions.parquet (held_out rows only).
"""

from __future__ import annotations

import math
import os
import re
import time

import numpy as np
import polars as pl

from ehrfm.clinical.common import (
    JOIN_ROWS,
    as_stored,
    check_out,
    fit_logistic,
    positive_proba,
    require_two_classes,
    small_problem_threads,
    split_predictions,
    subsample_per_split,
    warn_death_in_history,
    warn_outcome_in_history,
    write_head_outputs,
)
from ehrfm.clinical.configs import BaselineConfig
from ehrfm.clinical.labels import head_labels, read_labels, task_name  # noqa: F401 (task_name: re-exported)
from ehrfm.clinical.metrics import binary_metrics, format_metrics
from ehrfm.errors import UserError
from ehrfm.meds_io import SPLITS, MedsDataset, open_meds, scan_shard

BIRTH_CODE = "MEDS_BIRTH"  # the age feature's source; not an event of the timeline (count_features)
US = {"s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000, "y": 365 * 86_400_000_000}
MAX_WINDOW_YEARS = 1000  # longer than any history, short enough that prediction_time - span stays in int64
MAX_WINDOW_US = MAX_WINDOW_YEARS * US["y"]


def parse_windows(spec: str) -> list[tuple[str, int | None]]:
    """'full,30d,24h' -> [('full', None), ('30d', 30 days in us), ('24h', ...)].

    UserError: a window that is not full or <n><s|m|h|d|y>, spans 0, or spans more than MAX_WINDOW_YEARS.
    """
    out = []
    for w in [w.strip() for w in spec.split(",") if w.strip()]:
        if w == "full":
            out.append((w, None))
            continue
        m = re.fullmatch(r"(\d+)([smhdy])", w)
        if not m:
            raise UserError(f"bad history window {w!r}: use full or a span like 30d, 24h, 1y")
        if int(m.group(1)) == 0:  # an empty window: its counts are all 0, features that only look present
            raise UserError(f"bad history window {w!r}: a window must span more than 0 {m.group(2)}")
        span = int(m.group(1)) * US[m.group(2)]
        if span > MAX_WINDOW_US:  # prediction_time - span wrapped around int64: every timed event fell outside
            raise UserError(f"bad history window {w!r}: a window spans at most {MAX_WINDOW_YEARS} years (use full for "
                            "all history)")
        out.append((w, span))
    if not out:
        raise UserError("no history windows given")
    return out


# --- MEDS side -------------------------------------------------------------------------------------
def meds_subject_splits(meds_dir: str | os.PathLike | MedsDataset) -> pl.DataFrame:
    """Map subject_id to its split.

    subject_id -> split, from the data/<split>/ dirs or metadata/subject_splits.parquet
    (through the one MEDS reader, ehrfm.meds_io, so split aliases map the same everywhere).
    """
    ds = meds_dir if isinstance(meds_dir, MedsDataset) else open_meds(meds_dir, check_static=False)
    splits = ds.subject_splits()
    if splits.height == 0:
        raise UserError(f"MEDS dataset {ds.root}: no subject splits (metadata/subject_splits.parquet or data/<split>/)")
    return splits


def attach_splits(labels: pl.DataFrame, splits: pl.DataFrame, labels_path, where: str) -> pl.DataFrame:
    """Join each label row to its subject's split.

    Args:
        labels: label rows with a subject_id column.
        splits: subject_id -> split (`meds_subject_splits`).
        labels_path: the label file, named in errors.
        where: what `splits` came from, named in errors.

    Returns:
        `labels` with a "split" column.

    Raises:
        UserError: rows whose subject has no split (the row and subject counts are given).
    """
    joined = labels.join(splits, on="subject_id", how="left")
    missing = joined["split"].null_count()
    if missing:
        n_subj = joined.filter(pl.col("split").is_null())["subject_id"].n_unique()
        raise UserError(f"label file {labels_path}: {missing} rows ({n_subj} subjects) have subjects missing from {where} (in none of its splits)")
    return joined


def count_features(meds_dir, labels: pl.DataFrame, windows: list[tuple[str, int | None]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Code counts per label window, and each label's timeline bounds.

    Long-format counts (label_idx, feature, count) of codes in each window, and per-label
    (label_idx, first_time, last_time, birth, death) timeline bounds (death: the first MEDS_DEATH).

    Only events with time <= prediction_time (or static, time null) are counted; a null-time row
    of a code that is not static (a MEDS_DEATH without a time, ...) is dropped by the MEDS reader,
    never counted as static. first_time / last_time: the subject's first and last timed event
    other than MEDS_BIRTH (the token dir's timeline; the birth alone when there is no other).
    `meds_dir` is a dataset dir or an opened MedsDataset.
    """
    ds = meds_dir if isinstance(meds_dir, MedsDataset) else open_meds(meds_dir)
    keys = labels.select("label_idx").hstack(_label_keys(labels))
    counts, bounds = _scan_counts(ds, keys, windows, keys["subject_id"])
    return counts, keys.join(bounds, on="subject_id", how="left")


def _label_keys(labels: pl.DataFrame) -> pl.DataFrame:
    """(subject_id, pred): each label's subject and prediction time in epoch microseconds."""
    return labels.select("subject_id", pl.col("prediction_time").cast(pl.Datetime("us")).dt.epoch("us").alias("pred"))


def _scan_counts(ds: MedsDataset, keys: pl.DataFrame, windows: list[tuple[str, int | None]],
                 subjects: pl.Series) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One scan of the MEDS shards: code counts of `keys`' labels, and the timeline bounds of `subjects`.

    keys: (label_idx, subject_id, pred) of the labels to count; subjects: every subject whose
    bounds are wanted (those of `keys` and more: the whole label file's, checked when --max-labels
    counts only a sample of it). Returns (counts as count_features gives them, per-subject bounds
    (subject_id, first_time, last_time, birth, death)).

    Raises:
        UserError: the MEDS data has no events of `subjects`.
    """
    from ehrfm.io import progress

    wanted = subjects.unique().to_frame("subject_id").lazy()
    counts, bounds = [], []
    shards = [sh for split_shards in ds.shards.values() for sh in split_shards]
    for shard in progress(shards, desc="baseline: count codes", unit="shard"):
        ev = (
            scan_shard(shard)
            .select("subject_id", pl.col("time").dt.epoch("us").alias("t"), "code")
            .join(wanted, on="subject_id", how="semi")
            .collect()
        )
        if ev.height == 0:
            continue
        # The timeline runs from the first to the last timed event other than the birth, as in the
        # token dir (the tokenizer emits no MEDS_BIRTH token): a label before any recorded care has
        # no history there, so every head refuses it alike (audit (f)).
        bounds.append(_shard_bounds(ev))
        # Each label meets every event of its subject (labels x events rows): joined a chunk of labels
        # at a time, codes as categorical ids, so that a patient with many labels (hourly prediction
        # times) cannot exhaust memory (3 GB for 100 labels per patient on the MIMIC-IV demo before).
        ev = ev.with_columns(pl.col("code").cast(pl.Categorical))
        per_label = keys.join(ev.group_by("subject_id").len(), on="subject_id")
        chunks = per_label.with_columns((pl.col("len").cum_sum() // JOIN_ROWS).alias("chunk")).partition_by("chunk")
        for part in chunks:
            hist = ev.join(part.select("label_idx", "subject_id", "pred"), on="subject_id").filter(
                pl.col("t").is_null() | (pl.col("t") <= pl.col("pred")))
            for name, span in windows:
                w = hist if span is None else hist.filter(pl.col("t").is_null() | (pl.col("t") >= pl.col("pred") - span))
                counts.append(
                    w.group_by("label_idx", "code")
                    .agg(pl.len().alias("count"))
                    .select("label_idx", (pl.lit(name + "/") + pl.col("code").cast(pl.String)).alias("feature"), "count")
                )
    bounds = _merge_bounds(bounds, ds.root)
    counts = pl.concat(counts) if counts else pl.DataFrame(schema={"label_idx": pl.Int64, "feature": pl.Utf8, "count": pl.UInt32})
    counts = counts.group_by("label_idx", "feature").agg(pl.col("count").sum())
    return counts, bounds


def _shard_bounds(ev: pl.DataFrame) -> pl.DataFrame:
    """Per subject of one shard's events (subject_id, t, code): first/last timed event but the birth, birth, death."""
    care = pl.col("t").filter(pl.col("code") != BIRTH_CODE)
    return ev.group_by("subject_id").agg(
        care.min().alias("first_time"),
        care.max().alias("last_time"),
        pl.col("t").filter(pl.col("code") == BIRTH_CODE).min().alias("birth"),
        pl.col("t").filter(pl.col("code") == "MEDS_DEATH").min().alias("death"),
    )


def _merge_bounds(bounds: list[pl.DataFrame], meds_dir) -> pl.DataFrame:
    """The shards' _shard_bounds as one row per subject. UserError: no shard had the subjects' events."""
    if not bounds:
        raise UserError(f"MEDS dataset {meds_dir} has no events for the labels' subjects")
    return pl.concat(bounds).group_by("subject_id").agg(
        pl.col("first_time").min(), pl.col("last_time").max(), pl.col("birth").min(), pl.col("death").min()
    ).with_columns(  # only a birth: the timeline is that instant (the tokenizer's fallback)
        pl.col("first_time").fill_null(pl.col("birth")), pl.col("last_time").fill_null(pl.col("birth")))


def check_prediction_times(keys: pl.DataFrame, labels_path, where: str) -> None:
    """Refuse labels whose prediction time is outside the subject's timeline."""
    outside = keys.filter(
        pl.col("first_time").is_null() | (pl.col("pred") < pl.col("first_time")) | (pl.col("pred") > pl.col("last_time"))
    )
    if outside.height:
        raise UserError(
            f"label file {labels_path}: {outside.height} rows have a prediction_time outside the subject's timeline in {where} "
            f"(before its first or after its last event)"
        )


def feature_matrix(counts: pl.DataFrame, keys: pl.DataFrame, train_idx: np.ndarray, min_count: int):
    """Sparse CSR (n_labels, n_features): counts of features frequent enough on train, + age."""
    import scipy.sparse as sp

    n = keys.height
    train_set = pl.DataFrame({"label_idx": train_idx.astype(np.int64)})
    freq = counts.join(train_set, on="label_idx", how="semi").group_by("feature").agg(pl.len().alias("n_labels"))
    vocab = freq.filter(pl.col("n_labels") >= min_count).sort(["n_labels", "feature"], descending=[True, False])
    names = vocab["feature"].to_list()
    if not names and counts.height and len(train_idx):  # the "count baseline" would be age alone, reported as counts
        from ehrfm.io import warn

        most = int(freq["n_labels"].max() or 0) if freq.height else 0
        warn(f"baseline: no code is in the histories of {min_count:,} train labels (--min-count; the most frequent is in "
             f"{most:,}): its features are age alone")
    # Typed even when no feature is kept (few train labels): an untyped empty frame cannot be joined.
    col = pl.DataFrame({"feature": names, "col": np.arange(len(names), dtype=np.int64)},
                       schema={"feature": pl.String, "col": pl.Int64})
    kept = counts.join(col, on="feature", how="inner")
    x = sp.csr_matrix(
        (kept["count"].cast(pl.Float32).to_numpy(), (kept["label_idx"].to_numpy(), kept["col"].to_numpy())),
        shape=(n, len(names)),
        dtype=np.float32,
    )
    age = ((keys["pred"] - keys["birth"]) / US["y"]).fill_null(np.nan).to_numpy().astype(np.float32)
    # A missing age (no birth row) takes the train labels' mean: a mean over every split would carry
    # the held-out labels' ages into the training features.
    train_age = age[train_idx]
    age = np.nan_to_num(age, nan=float(np.nanmean(train_age)) if np.isfinite(train_age).any() else 0.0)
    x = sp.hstack([x, sp.csr_matrix(age.reshape(-1, 1))], format="csr")
    return x, names + ["age_years"]


def _check_timelines(keys: pl.DataFrame, cfg: BaselineConfig) -> None:
    """check_prediction_times and the death-in-history warning on label keys with timeline bounds."""
    check_prediction_times(keys, cfg.labels, f"MEDS dataset {cfg.meds_dir}")
    dead = keys.filter(pl.col("death") <= pl.col("pred"))  # the same warning as the token heads (histories)
    warn_death_in_history(cfg.labels, dead.height, dead["subject_id"].n_unique())


def prepare(cfg: BaselineConfig):
    """Labels with splits and their feature matrix (the parts tests check for look-ahead).

    Every row of the label file is checked (prediction times inside the subject's timeline, deaths in
    history), not only the --max-labels sample, as the token heads do; the MEDS data is scanned once.

    Raises:
        UserError: bad labels or MEDS data (labels.read_labels, attach_splits, check_prediction_times).
    """
    ds = open_meds(cfg.meds_dir)
    label_file, task = head_labels(cfg.labels, cfg.task)
    labels = read_labels(label_file, data_zones=ds.time_zones(), data=f"MEDS dataset {cfg.meds_dir}")
    labels = attach_splits(labels, meds_subject_splits(ds), cfg.labels, f"MEDS dataset {cfg.meds_dir}")
    windows = parse_windows(cfg.windows)
    everyone = labels
    labels = subsample_per_split(labels, cfg.max_labels, cfg.seed).with_row_index("label_idx").with_columns(
        pl.col("label_idx").cast(pl.Int64))
    # One scan of the MEDS data counts the sampled labels' codes and bounds the timelines of every
    # subject in the file, so every row is checked (as the token heads do, probe.load_label_histories):
    # the same file is refused (or warned about) alike whatever --max-labels and --seed.
    keys = labels.select("label_idx").hstack(_label_keys(labels))
    counts, bounds = _scan_counts(ds, keys, windows, everyone["subject_id"])
    _check_timelines(_label_keys(everyone).join(bounds, on="subject_id", how="left"), cfg)
    warn_outcome_in_history(cfg.meds_dir, label_file, task)
    keys = keys.join(bounds, on="subject_id", how="left")
    train_idx = np.flatnonzero(labels["split"].to_numpy() == "train")
    x, names = feature_matrix(counts, keys, train_idx, cfg.min_count)
    return labels, x, names


def boosting_skip_reason(y_train: np.ndarray) -> str | None:
    """Why gradient boosting cannot be fitted on train labels y_train (n,) 0/1, or None.

    Its early stopping holds out a stratified 10% of train (sklearn's validation_fraction): that
    needs at least 2 labels of each class, and at least 2 labels (one per class) both in the 10%
    and in the rest.
    """
    n, n_pos = len(y_train), int(y_train.sum())
    n_val = math.ceil(0.1 * n)
    if min(n_pos, n - n_pos) < 2 or n_val < 2 or n - n_val < 2:
        return (f"{n} train labels ({n_pos} positive) are too few for its early-stopping split "
                "(needs 2 of each class, and 2 labels in the held-back 10%)")
    return None


def boosting_validation(y_train: np.ndarray, groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray] | str:
    """(fit rows, validation rows) of train for gradient boosting's early stopping, or why there are none.

    About 10% of train's subjects, each with all its labels: the first of 10 seeded StratifiedKFold
    folds of the subjects, stratified by whether a subject has a positive label (sklearn's own
    validation_fraction splits labels, so a patient's stays fell on both sides). Folding subjects,
    not labels, is what StratifiedGroupKFold does too, but its per-group search took 7.7 s for the
    demo's 35,000 train subjects (of a 40-s baseline). y_train: (n,) 0/1; groups: (n,)
    subject ids. Both sides must hold both classes.
    """
    import warnings

    from sklearn.model_selection import StratifiedKFold

    reason = boosting_skip_reason(y_train)
    if reason:
        return reason
    n, n_pos = len(y_train), int(y_train.sum())
    subjects, row_subject = np.unique(groups, return_inverse=True)
    n_groups = len(subjects)
    if n_groups >= 2:
        has_positive = np.bincount(row_subject, weights=y_train, minlength=n_groups) > 0
        # StratifiedKFold refuses more folds than the larger class has subjects: 15 subjects, 7 with a
        # positive label, take 8 folds (StratifiedGroupKFold split them too).
        n_splits = min(10, int(np.bincount(has_positive.astype(np.int64)).max()))
        if n_splits >= 2:
            folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # a class with fewer subjects than folds: still split
                _, val_subjects = next(folds.split(np.zeros(n_groups), has_positive))
            held = np.isin(row_subject, val_subjects)
            fit, val = np.flatnonzero(~held), np.flatnonzero(held)
            if len(np.unique(y_train[fit])) == 2 and len(np.unique(y_train[val])) == 2:
                return fit, val
    return (f"{n} train labels ({n_pos} positive) of {n_groups} subjects are too few for its early-stopping split by "
            "subject (needs both classes in the held-back ~10% of subjects and in the rest)")


def _fmt(m: dict) -> str:
    if m.get("skipped"):
        return f"skipped: {m['skipped']}"
    if m.get("auroc") is None:
        return "n/a (one class)"
    ci = m.get("auroc_ci")
    return f"{m['auroc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else " (no interval)" if m.get("note") else "")


def baseline(cfg: BaselineConfig, out: str | os.PathLike, overwrite: bool = False) -> dict:
    """Fit both count-feature models on train (tuning for C), score on held_out, write OUT.

    A MEDS-Tab-like baseline: code counts in each history window, then logistic regression
    (L2 strength C chosen by tuning AUROC) and histogram gradient boosting on the most frequent
    features plus age. Gradient boosting is skipped, with the reason in its metrics entry
    ({"skipped": ...}) and no prediction files, when train is too small for its early-stopping
    split by subject (boosting_validation). Both models' choices on train (C by grouped
    cross-validation when tuning lacks a class; boosting's early stopping) keep each subject's
    labels on one side.

    Args:
        cfg: the MEDS dir, labels, task, windows, feature limits, bootstrap, seed.
        out: output directory: metrics.json, config.json and per model
            <model>/predictions*.parquet (atomically).
        overwrite: replace `out` if it exists.

    Returns:
        metrics.json's content: task, head, split, n, n_positive, prevalence, n_train, n_tuning,
        n_features, models ({model: binary_metrics ...}), wall_s (seconds).

    Raises:
        UserError: `out` exists without overwrite (or is, holds or lies in an input), a label dir of
            several files or a task other than the file's (labels.head_labels), bad labels or MEDS
            data, train labels of one class, or no held_out labels.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    from ehrfm.io import summary

    check_out(out, overwrite, cfg, command="baseline")
    t0 = time.time()
    task = head_labels(cfg.labels, cfg.task)[1]
    labels, x, names = prepare(cfg)
    split = labels["split"].to_numpy()
    y = labels["boolean_value"].to_numpy().astype(np.int64)
    tr, tu, ho = (split == s for s in SPLITS)
    require_two_classes(y[tr], "train", task)
    if ho.sum() == 0:
        raise UserError(f"task {task}: no labels in the held_out split to score")

    subject_ids = labels["subject_id"].to_numpy()
    lr, selection = fit_logistic(x[tr], y[tr], x[tu], y[tu], cfg.seed, task, subject_ids[tr])
    p_lr = as_stored(positive_proba(lr, x))  # score what the prediction files hold

    subjects = subject_ids[ho]  # the intervals resample subjects (metrics.bootstrap_intervals)
    models = {"logistic_regression": {**binary_metrics(y[ho], p_lr[ho], task, cfg.bootstrap, cfg.seed, subjects),
                                      "selection": selection}}
    predictions = split_predictions(labels, p_lr, split, prefix="logistic_regression/")
    split_rows = boosting_validation(y[tr], subject_ids[tr], cfg.seed)
    if isinstance(split_rows, str):  # logistic regression alone; the reason is in metrics.json and the summary line
        models["gradient_boosting"] = {"skipped": split_rows}
    else:
        # Gradient boosting needs dense input: the most frequent features (columns are sorted by
        # train frequency), plus age (the last column).
        k = min(cfg.max_dense_features, x.shape[1] - 1)
        cols = list(range(k)) + [x.shape[1] - 1]
        dense = x[:, cols].toarray()
        hgb = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, early_stopping=True, random_state=cfg.seed)
        fit_rows, val_rows = split_rows
        d_tr, y_tr = dense[tr], y[tr]
        with small_problem_threads(*dense.shape):
            hgb.fit(d_tr[fit_rows], y_tr[fit_rows], X_val=d_tr[val_rows], y_val=y_tr[val_rows])
            p_hgb = as_stored(positive_proba(hgb, dense))
        models["gradient_boosting"] = {**binary_metrics(y[ho], p_hgb[ho], task, cfg.bootstrap, cfg.seed, subjects),
                                       "n_iter": int(hgb.n_iter_)}
        predictions.update(split_predictions(labels, p_hgb, split, prefix="gradient_boosting/"))
    n_pos = int(y[ho].sum())
    metrics = {
        "task": task,
        "head": "baseline",
        "split": "held_out",
        "n": int(ho.sum()),
        "n_positive": n_pos,
        "prevalence": n_pos / int(ho.sum()),
        "n_train": int(tr.sum()),
        "n_tuning": int(tu.sum()),
        "n_features": int(x.shape[1]),
        "models": models,
        "wall_s": time.time() - t0,
    }
    # one meds-evaluation prediction file per model: OUT/<model>/predictions.parquet (+ other splits)
    write_head_outputs(out, overwrite, cfg, metrics, predictions)
    summary(
        f"baseline {x.shape[1]} count features; logistic regression {format_metrics(models['logistic_regression'])}; "
        f"gradient boosting AUROC {_fmt(models['gradient_boosting'])} -> {out}"
    )
    return metrics
