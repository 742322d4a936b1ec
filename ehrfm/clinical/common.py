"""Pieces every head shares: label subsampling, the regularised logistic regression, outputs.

Splits: labels are fitted on train, hyper-parameters chosen on tuning, scored on held_out; a
subject's split comes from the token dir (model heads) or the MEDS dataset (baseline), so a
head never sees held_out subjects while fitting.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import numpy as np
import polars as pl

from ehrfm.errors import UserError
from ehrfm.io import check_overwrite
from ehrfm.meds_io import SPLITS

# label x event rows a head (baseline count features) or the audit joins at once (a few hundred MB): a subject
# with many labels (hourly prediction times) meets all of its events once per label
JOIN_ROWS = 5_000_000

C_GRID = tuple(10.0**k for k in range(-4, 3))  # inverse L2 strength searched on tuning


def subsample_per_split(labels: pl.DataFrame, max_labels: int | None, seed: int) -> pl.DataFrame:
    """At most max_labels rows per split, drawn with a fixed seed (same sample for every model)."""
    if not max_labels:
        return labels
    parts = []
    for split in SPLITS:
        part = labels.filter(pl.col("split") == split)
        if part.height > max_labels:
            rng = np.random.default_rng(seed)
            keep = np.sort(rng.choice(part.height, max_labels, replace=False))
            part = part[keep]
        parts.append(part)
    return pl.concat(parts)


def warn_death_in_history(labels_path, n_rows: int, n_subjects: int) -> None:
    """One warning line: n_rows labels (of n_subjects) have the subject's death at or before their prediction time.

    Such a history holds MEDS_DEATH: a mortality outcome is then known, and every task of `ehrfm
    labels` excludes the row (died_before_prediction_time). A user's label file may hold them
    (a prediction after death); the heads score them as asked, but say so (the token heads and the
    baseline alike).
    """
    from ehrfm.io import warn

    if n_rows:
        warn(f"label file {labels_path}: {n_rows} rows ({n_subjects} subjects) have the subject's death (MEDS_DEATH) at or "
             "before their prediction_time, in their history: the outcome may be known (`ehrfm labels` excludes such rows; "
             "see `ehrfm audit`)")


def _made_by_ehrfm_labels(labels_path: Path, meds_dir: Path) -> bool:
    """Was the label file written by `ehrfm labels` from `meds_dir` (its parquet's ehrfm mark, its sidecar's meds_dir)?

    The sidecar records meds_dir as it was typed: a relative one is tried from here and from the sidecar's dir.
    """
    import pyarrow.parquet as pq

    from ehrfm.io import PARQUET_OUTPUT_KEY

    try:
        marked = (pq.read_schema(labels_path).metadata or {}).get(PARQUET_OUTPUT_KEY) == b"labels"
        side = json.loads(labels_path.with_suffix(".json").read_text(encoding="utf-8"))
        made_from = side.get("config", {}).get("meds_dir")
        if not (marked and isinstance(made_from, str)):
            return False
        for place in (Path(made_from), labels_path.parent / made_from):
            if os.path.abspath(place) == os.path.abspath(meds_dir) or (
                    place.exists() and Path(meds_dir).exists() and os.path.samefile(place, meds_dir)):
                return True
        return False
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def _death_times(meds_dir) -> pl.DataFrame:
    """subject_id (Int64) -> death (naive UTC Datetime us): each subject's first MEDS_DEATH in `meds_dir`.

    Read as every stage reads shards (meds_io.scan_shard: subject_id Int64, zoned times as UTC instants), so
    shards written with Int32 and Int64 ids, or one zoned and one naive, read alike.
    """
    from ehrfm.meds_io import open_meds, scan_shard

    shards = [scan_shard(p, ("subject_id", "time", "code")).filter(pl.col("code") == "MEDS_DEATH")
              for p in open_meds(meds_dir).paths_with_rows()]
    if not shards:
        return pl.DataFrame(schema={"subject_id": pl.Int64, "death": pl.Datetime("us")})
    return (pl.concat(shards).collect().group_by("subject_id").agg(pl.col("time").min().alias("death")))


def _labels_after_death(death: pl.DataFrame, labels: pl.DataFrame) -> int:
    """Label rows whose subject's MEDS_DEATH (`_death_times`) is at or before its prediction time (warn_death_in_history's)."""
    joined = labels.select(pl.col("subject_id").cast(pl.Int64), "prediction_time").join(death, on="subject_id")
    try:
        return int((joined["death"] <= joined["prediction_time"].cast(pl.Datetime("us"))).sum())
    except pl.exceptions.PolarsError:  # zoned against naive: the heads refuse such a file in their own words
        return 0


# (label file, its mtime, MEDS dir, task) -> its look-ahead verdict, audited once in this process (a sweep scores many
# runs); the heads write the verdict of their label file into metrics.json (label_audit)
_OUTCOME_CHECKED: dict = {}
_LAST_VERDICT: dict = {}  # "last": (label file, verdict) of the latest call, what the head about to write it met

# The key of a label sidecar that records the audit of its file (record_label_audit), read by the heads
LABEL_AUDIT_KEY = "audit"
# Bumped when the audit's checks change: a record made by other checks is not trusted (the file is audited again)
LABEL_AUDIT_VERSION = 1


def _meds_stamp(meds_dir) -> str:
    """sha256 of each file's relative path, size and mtime under `meds_dir`'s data/ and metadata/.

    What a recorded audit was made against, at the cost of a directory walk (the heads check it in every process
    of a sweep): the MEDS data rewritten in place (an ETL run again, a shard replaced, dataset.json's date-only
    codes edited) makes the record stale. A copy that does not keep mtimes reads as changed: audited again.
    """
    import hashlib

    root = Path(meds_dir)
    lines = []
    for sub in ("data", "metadata"):
        for path in sorted((root / sub).rglob("*")) if (root / sub).is_dir() else []:
            if path.is_file():
                st = path.stat()
                lines.append(f"{path.relative_to(root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()  # a label file: a few MB on full MIMIC-IV


def _outcome_counts(res, dead: int) -> dict:
    """A task's audit (TaskAudit) as the counts warn_outcome_in_history judges: (a)-(c), the labels, and those after a death."""
    return {"n_labels": res.n_labels, "outcome_code_in_history": res.outcome_code_in_history or 0,
            "date_only_same_day": res.date_only_same_day or 0, "not_known_before_prediction": res.not_known_before_prediction or 0,
            "after_death": dead}


def record_label_audit(meds_dir, labels, res) -> None:
    """Record the audit `res` (AuditResult of `labels` against `meds_dir`) in each audited `ehrfm labels` sidecar.

    `labels`: a label file or a dir of them (`ehrfm labels --task all`). The heads then judge such a
    file by its record (warn_outcome_in_history) instead of reading the MEDS data again in every process
    of a sweep; the record holds the file's sha256, so a file changed since is audited afresh. Files
    without an `ehrfm labels` sidecar made from `meds_dir` are left alone. A sidecar rewrite that fails
    leaves the old one (no record: the heads audit the file themselves).
    """
    from ehrfm.clinical.audit import _label_files
    from ehrfm.clinical.labels import read_labels
    from ehrfm.io import write_json

    death, stamp = None, _meds_stamp(meds_dir)
    for task, path in _label_files(labels).items():
        if task not in res.tasks or not path.is_file() or not _made_by_ehrfm_labels(path, Path(meds_dir)):
            continue
        side = path.with_suffix(".json")
        info = json.loads(side.read_text(encoding="utf-8"))
        death = _death_times(meds_dir) if death is None else death  # read once for every task's file
        dead = _labels_after_death(death, read_labels(path, allow_empty=True))
        info[LABEL_AUDIT_KEY] = {"version": LABEL_AUDIT_VERSION, "sha256": _file_sha256(path), "meds": stamp,
                                 **_outcome_counts(res.tasks[task], dead)}
        write_json(side, info)


def _recorded_audit(labels_path: Path, meds_dir) -> dict | None:
    """The audit counts an `ehrfm labels` sidecar records for this file, else None.

    Only a record of exactly this file's bytes, against `meds_dir` as it is now (`_meds_stamp`), by today's checks
    (LABEL_AUDIT_VERSION).
    """
    try:
        rec = json.loads(labels_path.with_suffix(".json").read_text(encoding="utf-8")).get(LABEL_AUDIT_KEY)
        keys = ("n_labels", "outcome_code_in_history", "date_only_same_day", "not_known_before_prediction", "after_death")
        if isinstance(rec, dict) and rec.get("version") == LABEL_AUDIT_VERSION and rec.get("meds") == _meds_stamp(meds_dir) \
                and rec.get("sha256") == _file_sha256(labels_path) and all(
                isinstance(rec.get(k), int) and not isinstance(rec.get(k), bool) for k in keys):
            return rec
    except (OSError, ValueError, AttributeError):
        pass
    return None


def warn_outcome_in_history(meds_dir, labels_path, task: str) -> dict:
    """One warning line when `ehrfm audit` finds labels whose history holds their task's outcome; returns the verdict.

    A head scores a user's label file as asked; one whose prediction times let the history hold the
    outcome (an ICU admission label predicted a minute before discharge: probe AUROC 0.999, without a
    word, where only a death in the history was warned about) scores look-ahead, not prediction. The
    audit's checks (a)-(c) (ehrfm.clinical.audit) are run on the file (or a task's shard dir) for its
    task, once per process, and the labels they flag are counted. A file `ehrfm labels` wrote from this
    MEDS dir is judged by the audit its sidecar records for its bytes (record_label_audit: `ehrfm labels`
    and the demo write it), else audited like any other: its rows exclude an outcome already in the
    history by construction, but not (b) or (c), which are the data's (an ETL that dates discharge
    diagnoses at admission: 242 of 242 mortality labels flagged on the MIMIC-IV demo, scored without a
    word before 2026-12-07). A task the audit knows no outcome of (an ACES file named mort.parquet: pass
    the head's --task) is checked for (b) and (c), and one line says (a) was not (before 2026-12-07 such a
    file was not checked at all). Not checked: token dirs that record no MEDS dir, and a MEDS dir that is
    gone (a warning says so). (a) counts a death in the history for
    every task: when it flags no more labels than hold a death, and (b), (c) none,
    warn_death_in_history has said it.

    Returns the verdict a head writes into its metrics.json as `label_audit` (a stderr line alone left
    an AUROC of 0.993 on look-ahead labels looking clean to whoever read the outputs): {"checked",
    "look_ahead", "outcome_checked", "n_labels", "outcome_in_history", "death_in_history",
    "date_only_same_day", "not_known_before_prediction", "why_not_checked"}; counts are None where not checked.
    """
    if meds_dir is None:  # a token dir that records no MEDS dir (not made by `ehrfm tokenize`): nothing to check against
        return _verdict(None, f"the token dir records no MEDS dir, so {task} labels were not audited")
    labels_path = Path(labels_path)
    if not labels_path.exists():
        return _verdict(None, f"label file {labels_path} not found")
    key = (str(labels_path.resolve()), labels_path.stat().st_mtime_ns, str(Path(meds_dir).resolve()), task)
    if key not in _OUTCOME_CHECKED:
        _OUTCOME_CHECKED[key] = _check_outcome_in_history(meds_dir, labels_path, task)
    _LAST_VERDICT["last"] = (key[0], _OUTCOME_CHECKED[key])
    return _OUTCOME_CHECKED[key]


def label_audit_of(labels_path) -> dict | None:
    """The verdict warn_outcome_in_history last gave label file `labels_path` (or a file in that dir), or None.

    The one a head met last (_LAST_VERDICT), not the newest cache entry: a file audited against MEDS A, then B,
    then scored against A again (cached) wrote B's verdict.
    """
    where = str(Path(labels_path).resolve())
    path, verdict = _LAST_VERDICT.get("last", (None, None))
    return verdict if path is not None and (path == where or path.startswith(where + os.sep)) else None


def _verdict(counts: dict | None, why_not: str = "", known: bool = False) -> dict:
    if counts is None:
        return {"checked": False, "look_ahead": None, "outcome_checked": False, "n_labels": None, "outcome_in_history": None,
                "death_in_history": None, "date_only_same_day": None, "not_known_before_prediction": None, "why_not_checked": why_not}
    a = counts["outcome_code_in_history"] if known else None
    b, c = counts["date_only_same_day"], counts["not_known_before_prediction"]
    return {"checked": True, "look_ahead": bool((a or 0) > counts["after_death"] or b or c), "outcome_checked": known,
            "n_labels": counts["n_labels"], "outcome_in_history": a, "death_in_history": counts["after_death"],
            "date_only_same_day": b, "not_known_before_prediction": c, "why_not_checked": why_not}


def _check_outcome_in_history(meds_dir, labels_path: Path, task: str) -> dict:
    """warn_outcome_in_history's audit of one label file for one task, warned of; its verdict."""
    from ehrfm.clinical.audit import OUTCOME_RULES, audit
    from ehrfm.clinical.labels import read_labels
    from ehrfm.io import warn

    known = task in OUTCOME_RULES
    made = known and labels_path.is_file() and _made_by_ehrfm_labels(labels_path, Path(meds_dir))
    counts = _recorded_audit(labels_path, meds_dir) if made else None
    if counts is None:
        if not Path(meds_dir).is_dir():
            warn(f"label file {labels_path}: the MEDS data its token dir was made from ({meds_dir}) is not there: its "
                 f"histories were not checked for the {task} outcome (run `ehrfm audit MEDS --labels {labels_path}`)")
            return _verdict(None, f"the MEDS data {meds_dir} is not there")
        try:
            # a task the audit knows no outcome of (an ACES file named mort.parquet) is still checked for (b) and (c),
            # which are the data's: it was skipped without a word, and scored GBM AUROC 0.993 on look-ahead labels
            res = next(iter(audit(meds_dir, labels_path, task=task if known else None).tasks.values()))
            counts = _outcome_counts(res, _labels_after_death(_death_times(meds_dir), read_labels(labels_path, allow_empty=True)))
        except UserError as e:  # what the audit refuses, the head refuses in its own words
            return _verdict(None, f"the audit refused the file ({e})")
    a, b, c = counts["outcome_code_in_history"] if known else 0, counts["date_only_same_day"], counts["not_known_before_prediction"]
    verdict = _verdict(counts, "" if known else f"task {task!r} has no outcome the audit knows: only (b) and (c) checked",
                       known)
    if verdict["look_ahead"]:
        what = f"their {task} outcome" if known else "events not known at their prediction time (date-only or unreported)"
        warn(f"label file {labels_path}: `ehrfm audit` finds {max(a, b, c)} of {counts['n_labels']} labels whose history "
             f"may hold {what} (look-ahead: a head scores it as asked, and its AUROC is no prediction); see "
             f"`ehrfm audit {meds_dir} --labels {labels_path}" + (f" --task {task}`" if known else "`"))
    if not known:
        warn(f"label file {labels_path}: task {task!r} is none whose outcome the audit knows ({', '.join(OUTCOME_RULES)}): "
             "its histories were checked for date-only and not-yet-known events, not for the outcome itself (for one of "
             "those tasks, pass the head's --task or name the file <task>.parquet)")
    return verdict


def require_two_classes(y: np.ndarray, split: str, task: str) -> None:
    """Refuse labels y (n,) of one split that are empty or all one class.

    Raises:
        UserError: no labels, or only positives or only negatives (the count is given).
    """
    n_pos = int(y.sum())
    if len(y) == 0:
        raise UserError(f"task {task}: no labels in the {split} split")
    if n_pos == 0 or n_pos == len(y):
        raise UserError(f"task {task}: the {split} split's {len(y)} labels are all {'positive' if n_pos else 'negative'}; a head needs both classes")


def small_problem_threads(n_rows: int, n_cols: int):
    """Limit BLAS/OpenMP to one thread for small fits.

    One BLAS/OpenMP thread for small fits: on a shared machine, thread hand-offs cost far
    more than the arithmetic (15x slower measured on 300 x 64 features); big fits keep all.
    """
    import contextlib

    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1) if n_rows * max(n_cols, 1) < 5_000_000 else contextlib.nullcontext()


def distinct_rows(x) -> tuple[np.ndarray, np.ndarray]:
    """(first, inverse): the first index of each distinct row of x (n, d), and each row's distinct row.

    Rows are compared as bytes: sparse rows as (index, value) lists in canonical CSR form, dense
    rows whole. Sorting byte strings is ~10x faster than np.unique(axis=0), which compares rows
    field by field (85,000 x 1,001 counts: 1.8 s against 17 s).
    """
    if hasattr(x, "tocsr"):
        x = x.tocsr(copy=True)
        x.sum_duplicates()  # canonical: sorted indices, no repeats
        keys = np.empty(x.shape[0], dtype=object)
        for r in range(x.shape[0]):
            a, b = x.indptr[r], x.indptr[r + 1]
            keys[r] = x.indices[a:b].tobytes() + b"|" + x.data[a:b].tobytes()
    else:
        x = np.ascontiguousarray(x)
        keys = np.empty(x.shape[0], dtype=object)
        keys[:] = [row.tobytes() for row in x]
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first, np.asarray(inverse).reshape(-1)


def positive_proba(model, x, rows: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """P(y = 1) of a fitted classifier, exactly equal for equal feature rows.

    Identical histories are common (short first-admission timelines) and have identical features,
    but BLAS may sum their dot products in different orders (it depends on memory alignment, which
    varies between processes), leaving last-bit differences that break their tie one way or the
    other: AUROC would then change between two runs with the same seed. Scoring each distinct row
    once and copying the score keeps such ties exact. `rows`: distinct_rows(x), when already known.
    """
    first, inverse = rows if rows is not None else distinct_rows(x)
    x = x.tocsr() if hasattr(x, "tocsr") else np.asarray(x)
    return model.predict_proba(x[first])[:, 1][inverse]


def fit_logistic(x_train, y_train, x_tuning, y_tuning, seed: int, task: str, groups_train=None):
    """Logistic regression on standardised features; C chosen by tuning AUROC.

    The C grid is walked from strong to weak regularisation, each fit warm-started from the
    previous one (same optimum, a fraction of the iterations). Falls back to 5-fold
    cross-validation on train when tuning lacks a class; with `groups_train` the folds keep each
    subject's labels together (StratifiedGroupKFold): folds that share a patient's stays reward
    memorising patients, and chose the weakest regularisation on pure per-patient noise.

    Args:
        x_train: (n_train, d) features, dense or scipy sparse (scaled by MaxAbsScaler when sparse,
            StandardScaler when dense).
        y_train: (n_train,) 0/1 labels.
        x_tuning: (n_tuning, d) features.
        y_tuning: (n_tuning,) 0/1 labels.
        seed: fixes the solver and the cross-validation folds.
        task: named in errors.
        groups_train: (n_train,) the subject of each train label, or None (labels independent).

    Returns:
        (fitted sklearn pipeline, record {"C": the chosen inverse L2 strength, "selected_on":
        "tuning", "train 5-fold CV" or "train 5-fold CV grouped by subject", "auroc_by_C": {C: AUROC}}).

    Raises:
        UserError: train labels that are empty or of one class, or, when tuning lacks a class, train
            labels with fewer than 2 of a class (with groups: fewer than 2 subjects with a label of
            each class; too few for cross-validation), or grouped folds none of which has both classes
            on both sides.
    """
    import copy

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MaxAbsScaler, StandardScaler

    require_two_classes(y_train, "train", task)
    sparse = hasattr(x_train, "tocsr")

    def path_scores(x_fit, y_fit, x_val, y_val) -> tuple[dict, dict]:
        scaler = (MaxAbsScaler() if sparse else StandardScaler()).fit(x_fit)
        a, b = scaler.transform(x_fit), scaler.transform(x_val)
        b_rows = distinct_rows(b)  # once, not once per C
        lr = LogisticRegression(max_iter=1000, warm_start=True, random_state=seed)
        scores, fitted = {}, {}
        for c in C_GRID:
            lr.set_params(C=c).fit(a, y_fit)
            scores[c] = float(roc_auc_score(y_val, positive_proba(lr, b, b_rows)))
            fitted[c] = make_pipeline(scaler, copy.deepcopy(lr))
        return scores, fitted

    tuning_ok = len(y_tuning) > 0 and 0 < int(y_tuning.sum()) < len(y_tuning)
    with warnings.catch_warnings(), small_problem_threads(*x_train.shape):
        warnings.simplefilter("ignore")  # convergence chatter at tiny C
        if tuning_ok:
            scores, fitted = path_scores(x_train, y_train, x_tuning, y_tuning)
        else:
            from ehrfm.io import warn

            # said where it happens, not only in metrics.json's selection.selected_on: it moves the result
            what = f"'s {len(y_tuning)} labels are all one class" if len(y_tuning) else " has no labels"
            warn(f"task {task}: the tuning split{what}: the L2 strength is chosen by 5-fold cross-validation on train instead")
            n_min = int(min(y_train.sum(), len(y_train) - y_train.sum()))
            unit = ""
            if groups_train is not None:  # the folds split subjects: count those with a label of each class
                g = np.asarray(groups_train)
                n_min = min(len(np.unique(g[y_train == 1])), len(np.unique(g[y_train == 0])))
                unit = "subjects "
            if n_min < 2:  # a 2-fold split would leave a fold's fit with one class (a solver traceback)
                raise UserError(f"task {task}: the tuning split's {len(y_tuning)} labels lack a class, and train's "
                                f"{len(y_train)} labels ({int(y_train.sum())} positive) are too few to choose the L2 "
                                f"strength by cross-validation (needs 2 {unit}of each class): give more labels")
            if groups_train is None:
                folds = StratifiedKFold(n_splits=max(2, min(5, n_min)), shuffle=True, random_state=seed)
                pairs = folds.split(np.zeros(len(y_train)), y_train)
            else:
                folds = StratifiedGroupKFold(n_splits=max(2, min(5, n_min)), shuffle=True, random_state=seed)
                pairs = folds.split(np.zeros(len(y_train)), y_train, g)
            # Grouped folds cannot always stratify: a fold with one class on a side cannot be scored.
            pairs = [(tr, va) for tr, va in pairs if len(np.unique(y_train[tr])) == 2 and len(np.unique(y_train[va])) == 2]
            if not pairs:
                raise UserError(f"task {task}: the tuning split's {len(y_tuning)} labels lack a class, and no "
                                f"cross-validation fold of train's {len(y_train)} labels ({int(y_train.sum())} positive, "
                                "grouped by subject) has both classes: give more labels")
            per_fold = [path_scores(x_train[tr], y_train[tr], x_train[va], y_train[va])[0] for tr, va in pairs]
            scores = {c: float(np.mean([f[c] for f in per_fold])) for c in C_GRID}
            fitted = None
        # Ties -> stronger regularisation. AUROCs are ratios of pair counts; rounding them first
        # keeps two Cs with the same count tied whatever float error the ROC integration adds.
        best = max(C_GRID, key=lambda c: (round(scores[c], 9), -c))
        if fitted is not None:
            model = fitted[best]
        else:
            scaler = MaxAbsScaler() if sparse else StandardScaler()
            model = make_pipeline(scaler, LogisticRegression(C=best, max_iter=1000, random_state=seed)).fit(x_train, y_train)
    cv = "train 5-fold CV" + (" grouped by subject" if groups_train is not None else "")
    record = {"C": best, "selected_on": "tuning" if tuning_ok else cv, "auroc_by_C": {str(c): s for c, s in scores.items()}}
    return model, record


# meds-evaluation's PredictionSchema (meds_evaluation/schema.py): these columns, no others.
PREDICTION_SCHEMA = {
    "subject_id": pl.Int64,
    "prediction_time": pl.Datetime("us"),
    "boolean_value": pl.Boolean,
    "predicted_boolean_value": pl.Boolean,
    "predicted_boolean_probability": pl.Float32,
}
PREDICTED_TRUE_AT = 0.5  # predicted_boolean_value = probability >= this (the schema needs a hard call)


def as_stored(p: np.ndarray) -> np.ndarray:
    """Probabilities (n,) as predictions.parquet stores them: float32, the PredictionSchema type.

    Heads score these values, so metrics.json and meds-evaluation (which casts to float32) rank
    exactly the same numbers: no ties appear or vanish in the cast. Returned as float64.
    """
    return np.asarray(p, dtype=np.float64).astype(np.float32).astype(np.float64)


def prediction_frame(labels: pl.DataFrame, p: np.ndarray, rows: np.ndarray | None = None) -> pl.DataFrame:
    """Predictions of `rows` of `labels` in meds-evaluation's PredictionSchema.

    Args:
        labels: (n, ...) frame with subject_id, prediction_time, boolean_value (MEDS label schema).
        p: (n,) float P(y = 1) for every label row (stored as float32: see as_stored).
        rows: indices or a boolean mask of the rows to keep (default: all), in label order.

    Returns:
        Frame with exactly the PREDICTION_SCHEMA columns and types; predicted_boolean_value is
        probability >= PREDICTED_TRUE_AT.
    """
    p = as_stored(p)
    frame = labels.select(
        pl.col("subject_id").cast(pl.Int64),
        pl.col("prediction_time").cast(pl.Datetime("us")),
        pl.col("boolean_value").cast(pl.Boolean),
        pl.Series("predicted_boolean_value", p >= PREDICTED_TRUE_AT),
        pl.Series("predicted_boolean_probability", p, dtype=pl.Float32),
    )
    if rows is None:
        return frame
    rows = np.asarray(rows)
    return frame.filter(pl.Series(rows)) if rows.dtype == bool else frame[rows.astype(np.int64)]


def split_predictions(labels: pl.DataFrame, p: np.ndarray, split: np.ndarray, scored: tuple[str, ...] = ("held_out",),
                      prefix: str = "") -> dict[str, pl.DataFrame]:
    """{file name: predictions}: the scored split(s) in predictions.parquet, each other split apart.

    predictions.parquet holds exactly the rows metrics.json is computed on, so meds-evaluation
    scores the same rows; predictions_train.parquet etc. keep the rest (never mixed in).

    Args:
        labels: (n, ...) label rows, as for prediction_frame.
        p: (n,) float P(y = 1) of every row, as for prediction_frame.
        split: (n,) split name of each row.
        scored: the split(s) whose rows the metrics are computed on.
        prefix: folder inside OUT ("logistic_regression/" for one of several models).
    """
    split = np.asarray(split)
    files = {f"{prefix}predictions.parquet": prediction_frame(labels, p, np.isin(split, scored))}
    for name in SPLITS:
        if name not in scored and (split == name).any():
            files[f"{prefix}predictions_{name}.parquet"] = prediction_frame(labels, p, split == name)
    return files


def write_head_outputs(out: str | os.PathLike, overwrite: bool, config, metrics: dict,
                       predictions: pl.DataFrame | dict[str, pl.DataFrame], extra: dict | None = None,
                       tables: dict[str, pl.DataFrame] | None = None) -> Path:
    """OUT/metrics.json (metrics + config), OUT/config.json and the prediction files, atomically.

    predictions: one frame (-> predictions.parquet) or {path inside OUT: frame}; every frame must
    be in PREDICTION_SCHEMA exactly (a programming error otherwise: ValueError, nothing written).
    tables: other parquet files {name inside OUT: frame}, written as they are (a head's per-label facts).
    UserError: what ehrfm.io.atomic_dir refuses, the config's inputs (head_inputs) among them.
    """
    from ehrfm.io import atomic_dir, write_json

    files = {"predictions.parquet": predictions} if isinstance(predictions, pl.DataFrame) else dict(predictions)
    for name, frame in files.items():
        if dict(frame.schema) != PREDICTION_SCHEMA:
            raise ValueError(f"{name}: columns {dict(frame.schema)} are not meds-evaluation's PredictionSchema {PREDICTION_SCHEMA}")
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    # the look-ahead verdict of its labels beside the scores it qualifies (warn_outcome_in_history)
    audit = label_audit_of(cfg["labels"]) if cfg.get("labels") else None
    with atomic_dir(out, overwrite=overwrite, inputs=head_inputs(cfg), command=str(metrics.get("head", "head"))) as tmp:
        write_json(tmp / "metrics.json", {**metrics, **(extra or {}), "label_audit": audit or _verdict(
            None, "not audited in this process (the head was called without warn_outcome_in_history)"), "config": cfg})
        write_json(tmp / "config.json", cfg)
        for name, frame in {**files, **(tables or {})}.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            frame.write_parquet(tmp / name)
    return Path(out)


def head_inputs(config) -> list:
    """The input paths of a head's config (run, token, MEDS dirs and labels): never its --out."""
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return [cfg.get(k) for k in ("run_dir", "tokens_dir", "meds_dir", "labels")]


def check_out(out, overwrite: bool, config=None, command: str | None = None) -> None:
    """Refuse a bad output before hours of work.

    That is an existing output without `overwrite`, one that is or holds an input of `config`, or (with
    `command`, the head's name) another command's output.
    """
    check_overwrite(out, overwrite, head_inputs(config) if config is not None else (), command=command)
