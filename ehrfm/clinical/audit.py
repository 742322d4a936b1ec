"""Leakage audit of label histories: `ehrfm audit MEDS --labels LABELS`.

For each label (subject_id, prediction_time) the history is what a MEDS reader would give a
model: the subject's events with time <= prediction_time, plus its null-time rows (a plain MEDS
reader treats every null-time row as static). Per task the audit counts the labels whose
history holds

(a) the outcome's own code (`OUTCOME_RULES`), or a prediction time that already shows it:
    - mortality: MEDS_DEATH, a DIED discharge, or the stay's own discharge (the stay has ended,
      alive or not; with stay ids, none while a stay of the subject is open at the prediction time:
      a discharge of a stay nested in it is not its end);
    - long stay: a death, the stay's own discharge, or a prediction time later than the
      long-stay threshold (`long_los_days` of the label file's sidecar JSON, else 7 days) after
      the stay's admission (a patient still in hospital then is known to have a long stay);
    - ICU admission: a death, the stay's own discharge, or an ICU admission since 24 h before the
      stay's admission or at any time under the stay's own id (an ED patient boarded in the ICU
      is in it when the stay opens, as `ehrfm labels` excludes), or one of any time whose ICU stay
      is still open at the prediction time (its next ICU_DISCHARGE//* is later);
    - readmission: a death, or an admission at or after the subject's last discharge at or before
      the prediction time (a readmission that has already happened); for a label predicted at no
      discharge (an ACES file predicting at the window's end), at or after the earliest discharge
      within the readmission window (`readmission_days` of the sidecar JSON, else 30) before it,
      counted apart too (`not_at_discharge`);
    - every task: a row under the stay id of a stay admitted after the prediction time (its ED
      registration or orders: that stay has begun, so the patient is alive and coming back; on the
      MIMIC-IV demo with one admittime moved 3 h after the previous discharge, its ED registration and
      13 orders sat in a positive readmission history);
    the stay is the subject's last admission at or before the prediction time;
(b) an event from a date-only source (a code named in the MEDS metadata, see below) dated the
    prediction day and placed before it could have been known: its true time that day is
    unknown, so unless it sits at the end of its day (23:59:59 or later) or at a discharge of
    the subject (the stay's end), it may have happened after the prediction; or an ICD procedure
    code that states its duration (`DURATION_CODED`: ventilation < 24 h, 24-96 h, > 96 h) of the
    label's own stay placed before a discharge: dated by its start, it tells how long the
    procedure will go on (any ETL that keeps procedures at their chartdate); or a code assigned
    only after the discharge (`DISCHARGE_CODED`: the stay's ICD diagnoses and DRG, which coders
    give from the whole record) of the label's own stay placed before a discharge (an ETL that
    dates them by the admission puts every diagnosis of the stay, the cause of death among them,
    into its 24-hour history);
(c) an event not known to precede the prediction time: a row with a null time whose code is not
    static (ehrfm.meds_io's rule), e.g. a MEDS_DEATH without a time;
(d) a stay that overlaps another stay of the same subject (stays from HOSPITAL_ADMISSION//* and
    HOSPITAL_DISCHARGE//* rows sharing a stay id column, `hadm_id`), where facts of one stay can
    leak into the other's label;

(f) a subject that is not in the MEDS data (or has no timed event there), or a prediction time
    before the subject's first timed event or after its last (MEDS_BIRTH is not one: `_timelines`):
    such a label lies outside the data's timelines (none, or a history the data may not hold
    whole), and every head refuses it (ehrfm.clinical.histories,
    baseline.check_prediction_times);

and, for the dataset, (e) the result tables whose events sit at their chart (specimen) time
although a lab value or culture result is known only when it is stored (MIMIC-IV's storetime:
a median 65 min later for labs and 3 days for cultures on the demo), read from the ETL metadata's
`stored_time_sources`; and reports the ETL's drop and duplicate counts from its metadata (below).
(a)-(c), (e) and (f) are faults (`AuditResult.clean` is False and the CLI exits 1); (d) is reported
for review, in the verdict too (a clean audit with overlapping stays says how many).

Date-only codes are read from the MEDS metadata (`metadata/ehrfm_etl.json`, written by this
package's ETL, else `metadata/dataset.json` or `metadata/etl_config.json`), key
`date_only_sources` (or `date_only_codes`): a list of objects `{"table", "column",
"code_prefixes": [...], "schema_date": bool, "rule": ...}` (plain prefix strings are accepted
too), or given by the user (`date_only_codes=`, `--date-only-codes`). Drop and duplicate counts
come from the same files. Nothing is imported from tokenization/: on MEDS made by another ETL,
what the metadata does not say is reported as unknown (None), never guessed, and a line says what (a) of a
mortality or ICU-admission label file with positives on data that holds none of that task's outcome codes
(labels made elsewhere from other codes, e.g. a bare DEATH) cannot see: its count stands; the
count of prediction-day events at exactly 00:00 is given as a hint of undeclared date-only values.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from ehrfm.clinical.common import JOIN_ROWS
from ehrfm.clinical.labels import check_label_window
from ehrfm.errors import UserError
from ehrfm.meds_io import STAY_ID, MedsDataset, calendar_zone, open_meds, scan_shard, wall_clock_expr

ADMISSION, DISCHARGE, ICU, DEATH = "HOSPITAL_ADMISSION//", "HOSPITAL_DISCHARGE//", "ICU_ADMISSION//", "MEDS_DEATH"
ICU_OUT = "ICU_DISCHARGE//"
BIRTH = "MEDS_BIRTH"  # not a timeline event for (f): the token dir has no birth token
DIED = "HOSPITAL_DISCHARGE//DIED"
STAY_ID_COLUMN = STAY_ID
DATE_ONLY_KEY = "date_only_codes"
DATE_ONLY_KEYS = (DATE_ONLY_KEY, "date_only_sources")  # the second: an accepted synonym
US_PER_DAY = 86_400_000_000
US_PER_HOUR = 3_600_000_000
LONG_LOS_DAYS = 7.0  # ehrfm.clinical.configs.LabelConfig's default, when a label file records none
READMISSION_DAYS = 30.0  # likewise
# ICD procedure codes whose text states the procedure's duration (tokenization.etl's
# DURATION_CODED_PROCEDURES): true only once it has ended, so never known within the stay before
# the discharge (on the real MIMIC-IV demo at their chartdate: 22 of 245 mortality histories).
DURATION_CODED = r"^PROCEDURE//ICD//(?:10//5A[01]9[345]5|9//967[0-2]$)"
# Codes assigned after the discharge from the whole record (MIMIC-IV's diagnoses_icd and drgcodes,
# which have no time of their own: tokenization.etl places them at the discharge; MIMIC_IV_MEDS
# uses the same prefixes). Of the label's own stay and before a discharge, they are look-ahead.
DISCHARGE_CODED = ("DIAGNOSIS//", "DRG//")


# Procedure billing codes dated to the procedure's day (MIMIC-IV procedures_icd, hcpcsevents: chartdate). The procedure
# was charted that day, so its fact is known by the day's end, where the ETL places it (as the MIMIC_IV_MEDS ETL does);
# its code is assigned by coders after discharge. Not a leak of the outcome, so no verdict: counted as a hint, since a
# study of deployment (codes as the EHR holds them at prediction) would leave them out of a stay's own history.
BILLING_CODED = ("PROCEDURE//ICD//", "HCPCS//")


def _billing_coded(code: pl.Expr) -> pl.Expr:
    """True for a procedure billing code (BILLING_CODED), duration-coded ones included."""
    return pl.any_horizontal(code.str.starts_with(p) for p in BILLING_CODED)


def _coded_after_discharge(code: pl.Expr) -> pl.Expr:
    """True for a code known only once its stay has ended: DURATION_CODED or DISCHARGE_CODED."""
    return code.str.contains(DURATION_CODED) | pl.any_horizontal(code.str.starts_with(p) for p in DISCHARGE_CODED)

# task -> (codes, prefixes, window): a history event with one of these codes or prefixes is the
# outcome when its time is in the window: "any" (<= prediction time), "stay" (at or after the
# stay's admission, the last admission at or before the prediction time), "in_stay" (strictly
# after it: a discharge at the admission time closes the previous stay), "stay_24h" (at or after
# 24 h before it: labels.py's ICU boarding rule), "after_discharge" (at or after the subject's last
# discharge at or before the prediction time, or == the prediction time when there is none).
# long_los also counts a prediction time past the long-stay threshold (module docstring).
OUTCOME_RULES: dict[str, list[tuple[tuple[str, ...], tuple[str, ...], str]]] = {
    "in_hospital_mortality": [((DEATH, DIED), (), "any"), ((), (DISCHARGE,), "in_stay")],
    "long_los": [((DEATH,), (), "any"), ((), (DISCHARGE,), "in_stay")],
    "icu_admission": [((DEATH,), (), "any"), ((), (ICU,), "stay_24h"), ((), (DISCHARGE,), "in_stay")],
    "readmission_30d": [((DEATH,), (), "any"), ((), (ADMISSION,), "after_discharge")],
}


@dataclass
class TaskAudit:
    """Counts of one task's labels; None where the data cannot tell."""

    task: str
    n_labels: int
    outcome_code_in_history: int | None
    date_only_same_day: int | None
    not_known_before_prediction: int
    overlapping_stays: int | None
    midnight_same_day: int  # hint only: prediction-day events at exactly 00:00 in the history
    # (f) labels no head can score: subject not in the MEDS data (or without a timed event);
    # prediction time before the subject's first timed event; after its last.
    subject_not_in_data: int = 0
    before_first_event: int = 0
    after_last_event: int = 0
    # readmission: labels predicted at no discharge of the subject (ehrfm labels predicts at the discharge); (a)
    # opens their window at the earliest discharge in the readmission_days before. None for other tasks.
    not_at_discharge: int | None = None
    # hint only: labels whose history holds a procedure billing code (BILLING_CODED) of their own open stay
    billing_codes_of_stay: int = 0

    @property
    def outside_data(self) -> int:
        """(f): labels whose subject is not in the data or whose time is outside its timeline."""
        return self.subject_not_in_data + self.before_first_event + self.after_last_event


@dataclass
class AuditResult:
    """What `audit` found; `clean` is False when any task has (a), (b), (c) or (f) above 0."""

    meds_dir: str
    labels: str
    etl: dict
    date_only_codes: list[str] | None
    date_only_from: str | None
    tasks: dict[str, TaskAudit]
    etl_counts: dict | None
    null_time_codes: dict[str, int]
    unknown: list[str] = field(default_factory=list)
    date_only_partial: list[str] = field(default_factory=list)  # only their 00:00 events are dates
    # (e) {"stored": tables placed at their store time, "at_chart_time": tables left at the chart
    # time (no store column)}; None when the metadata does not say (another ETL).
    result_times: dict | None = None

    @property
    def unchecked(self) -> list[str]:
        """Tasks whose outcome code is unknown (not in OUTCOME_RULES): (a), the look-ahead check itself, was not made."""
        return [t for t in self.tasks if t not in OUTCOME_RULES]

    @property
    def empty(self) -> list[str]:
        """Tasks whose label file has no rows: nothing was checked (a task no stay qualifies for)."""
        return [t.task for t in self.tasks.values() if not t.n_labels]

    @property
    def overlapping(self) -> str:
        """(d)'s counts for review, "task (n), ..." over the tasks with any; "" when none."""
        return ", ".join(f"{t.task} ({t.overlapping_stays})" for t in self.tasks.values() if t.overlapping_stays)

    @property
    def clean(self) -> bool:
        """True when every task's (a) was made and no (a)-(c) or (f) is above 0, and no result table is at its chart time (e).

        A task of unknown outcome (a label file named icu_v2.parquet) is not clean: its histories were
        never checked for the outcome (before, such an audit said "clean" and exited 0).
        """
        return not (any(t.outcome_code_in_history or t.date_only_same_day or t.not_known_before_prediction
                        or t.outside_data for t in self.tasks.values())
                    or (self.result_times or {}).get("at_chart_time") or self.unchecked)

    def to_dict(self) -> dict:
        """The audit as a JSON-ready dict (every field, each task's "outside_data", and "clean")."""
        out = {**dataclasses.asdict(self), "clean": self.clean, "unchecked": self.unchecked, "empty": self.empty}
        for name, t in self.tasks.items():
            out["tasks"][name]["outside_data"] = t.outside_data
        return out


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def date_only_from_metadata(meds_dir: str | os.PathLike) -> tuple[list[str] | None, list[str], str | None]:
    """The code prefixes the ETL declared date-only, and the file that declared them.

    Looks in metadata/ehrfm_etl.json (this package's ETL), then metadata/dataset.json and
    metadata/etl_config.json, for `date_only_sources` or `date_only_codes`: a list of prefix
    strings or of objects with `code_prefixes` (or `code_prefix`). A source whose column holds
    dates in some rows only (`"schema_date": false`) is partial: only its events at exactly 00:00
    can be dates placed at the start of their day.

    Returns:
        (prefixes, partial prefixes, file); (None, [], None) when no file has the key (another
        ETL, or an older ehrfm ETL): then (b) cannot be known.

    Raises:
        UserError: the key is there but lists no usable prefixes.
    """
    for name in ("ehrfm_etl.json", "dataset.json", "etl_config.json"):
        path = Path(meds_dir) / "metadata" / name
        meta = _read_json(path)
        key = next((k for k in DATE_ONLY_KEYS if k in meta), None)
        if key is None:
            continue
        entries = meta[key]
        if isinstance(entries, dict):  # {prefix: placement}
            entries = list(entries)
        whole, partial = [], []
        for e in entries if isinstance(entries, list) else [None]:
            found = ([e.get(k) for k in ("code_prefixes", "code_prefix", "code", "prefix", "codes")]
                     if isinstance(e, dict) else [e])
            found = [p for x in found for p in (x if isinstance(x, list) else [x]) if p is not None]
            if not found or not all(isinstance(p, str) and p for p in found):
                raise UserError(f"{path}: {key} must list code prefixes or objects with code_prefixes")
            is_partial = isinstance(e, dict) and e.get("schema_date") is False
            (partial if is_partial else whole).extend(found)
        partial = [p for p in dict.fromkeys(partial) if p not in whole]
        return list(dict.fromkeys(whole)) + partial, partial, str(path)
    return None, [], None


def result_times_from_metadata(meds_dir: str | os.PathLike) -> dict | None:
    """(e): {"stored": [...], "at_chart_time": [...]} tables, or None when the metadata does not say.

    Read from the metadata's `stored_time_sources` ([{"table", "column", "store_column", "present",
    ...}]) in the files date_only_from_metadata reads.
    """
    found = (_read_json(Path(meds_dir) / "metadata" / name).get("stored_time_sources")
             for name in ("ehrfm_etl.json", "dataset.json", "etl_config.json"))
    sources = next((x for x in found if isinstance(x, list)), None)
    if sources is None:
        return None
    out: dict = {"stored": [], "at_chart_time": []}
    for e in sources:
        if isinstance(e, dict) and isinstance(e.get("table"), str):
            out["stored" if e.get("present") else "at_chart_time"].append(e["table"])
    return out


def _etl_counts(meds_dir: str | os.PathLike) -> dict | None:
    """The ETL's drop and duplicate counts from its metadata, or None when it wrote none."""
    meta = Path(meds_dir) / "metadata"
    ours = _read_json(meta / "ehrfm_etl.json")
    cfg = ours or _read_json(meta / "etl_config.json")
    if not cfg:
        return None
    out = {k: v for k, v in cfg.items() if ("drop" in k or "duplicate" in k or k == "discharge_times") and v}
    tables = cfg.get("tables")
    if isinstance(tables, dict):
        dropped = {t: v["dropped"] for t, v in tables.items() if isinstance(v, dict) and v.get("dropped")}
        if dropped:
            out["dropped_by_table"] = dropped
    return out


def _label_files(labels: str | os.PathLike) -> dict[str, Path]:
    """Map each task to its label parquet file.

    task -> label parquet: one file, every *.parquet of a labels dir (task from the sidecar
    JSON's "task", else the file name) and its subdirs of one task's shards, or one task's shards
    in split folders (its dir, task: the dir's name; labels.label_shards, labels.task_label_paths).
    """
    from ehrfm.clinical.labels import label_shards, task_label_paths, task_name

    path = Path(labels)
    if label_shards(path):  # one task's shards (ACES on sharded MEDS: <task>/<split>/<shard>.parquet)
        return {path.name: path}
    out = task_label_paths(path) if path.is_dir() else {task_name(path): path} if path.is_file() else {}
    if not out:
        raise UserError(f"labels {path}: no label parquet files found")
    return out


def _events(ds: MedsDataset, date_only: list[str], zone: str | None = None) -> pl.DataFrame:
    """Read the rows the audit checks need.

    The rows the checks need (stay codes, deaths, date-only, duration and discharge codes, midnight events on the
    wall clock of `zone` (meds_io.calendar_zone; None: the times' own), null-time rows of non-static codes),
    null-time rows included, with a stay id when the data has one.
    """
    cols = ["subject_id", "time", "code"]
    # Any shard with rows with it (a shard without it reads as null ids): as labels._stay_events.
    schema_has_stay = len(ds.files_without(STAY_ID_COLUMN)) < len(ds.paths_with_rows())
    if schema_has_stay:
        cols.append(STAY_ID_COLUMN)
    code = pl.col("code")
    wanted = (code.str.starts_with(ADMISSION) | code.str.starts_with(DISCHARGE) | code.str.starts_with(ICU)
              | code.str.starts_with(ICU_OUT)
              | (code == DEATH) | (pl.col("time").is_not_null()
                                   & (wall_clock_expr(pl.col("time").dt.epoch("us"), zone) % US_PER_DAY == 0))
              | _coded_after_discharge(code) | _billing_coded(code))
    for p in date_only:
        wanted = wanted | code.str.starts_with(p)
    if ds.null_time_codes:
        wanted = wanted | (pl.col("time").is_null() & code.is_in(list(ds.null_time_codes)))
    frames = [scan_shard(dataclasses.replace(sh, drop_null_time=()), cols).filter(wanted)
              for shards in ds.shards.values() for sh in shards]
    ev = pl.concat(frames, how="vertical_relaxed").collect()
    if not schema_has_stay:
        ev = ev.with_columns(pl.lit(None, pl.String).alias(STAY_ID_COLUMN))
    # Stay ids as text (ehrfm.meds_io.STAY_ID): an id column of text ids or floats is only compared.
    return ev.with_columns(pl.col("time").dt.epoch("us").alias("t"), pl.col(STAY_ID_COLUMN).cast(pl.String))


# The code a task's positives rest on; when the data holds none of it yet the labels have positives, they
# were made from other codes (ACES on a dataset that writes DEATH, not MEDS_DEATH), which (a) cannot see.
PRIMARY_OUTCOME = {"in_hospital_mortality": ((DEATH, DIED), "DEATH"), "icu_admission": ((ICU,), "ICU")}


def _outcome_codes_absent(task: str, lab: pl.DataFrame, ev: pl.DataFrame, ds: MedsDataset) -> str | None:
    """An `unknown` line when `task`'s labels have positives but the data none of its outcome codes, else None."""
    if task not in PRIMARY_OUTCOME or not lab.height or not lab["boolean_value"].any():
        return None
    codes, kind = PRIMARY_OUTCOME[task]
    code = pl.col("code")
    present = ev.filter(pl.any_horizontal([code == c if not c.endswith("//") else code.str.starts_with(c) for c in codes]))
    if present.height:
        return None
    from ehrfm.clinical.labels import DEATH_LOOK_ALIKE, ICU_LOOK_ALIKE, _look_alike

    like = _look_alike(ds, DEATH_LOOK_ALIKE if kind == "DEATH" else ICU_LOOK_ALIKE)
    named = " or ".join(c + ("*" if c.endswith("//") else "") for c in codes)
    return (f"(a) task {task!r}: {int(lab['boolean_value'].sum())} positive labels, but the MEDS data has no {named} row"
            f"{like}: the labels were made from other codes, so (a) does not see such an outcome in a history")


def _stays(ev: pl.DataFrame) -> pl.DataFrame:
    """Per stay id: subject, bounds and whether it overlaps another stay.

    subject_id, stay, adm, dis (us) per stay id with both, with `overlaps`: another stay of the
    same subject shares some time with it.
    """
    from ehrfm.clinical.labels import stay_bounds

    st = stay_bounds(ev).filter(pl.col("dis").is_not_null())
    pairs = st.join(st, on="subject_id", suffix="_o").filter(
        (pl.col(STAY_ID_COLUMN) != pl.col(f"{STAY_ID_COLUMN}_o"))
        & (pl.col("adm") < pl.col("dis_o")) & (pl.col("adm_o") < pl.col("dis")))
    overl = pairs.select("subject_id", STAY_ID_COLUMN).unique().with_columns(pl.lit(True).alias("overlaps"))
    return st.join(overl, on=["subject_id", STAY_ID_COLUMN], how="left").with_columns(pl.col("overlaps").fill_null(False))


def _timelines(ds: MedsDataset) -> pl.DataFrame:
    """subject_id, first, last: each subject's first and last timed event (us), over every shard.

    MEDS_BIRTH is not an event of the timeline (the birth alone when there is no other): the token
    dir has no birth token, so a label between the birth and the first recorded care has no history
    there, and the heads refuse it (histories.locate_histories, baseline.check_prediction_times).
    """
    frames = [scan_shard(sh, ["subject_id", "time", "code"]).filter(pl.col("time").is_not_null())
              for shards in ds.shards.values() for sh in shards]
    if not frames:
        return pl.DataFrame(schema={"subject_id": pl.Int64, "first": pl.Int64, "last": pl.Int64})
    care, birth = pl.col("time").filter(pl.col("code") != BIRTH), pl.col("time").filter(pl.col("code") == BIRTH).min()
    return (pl.concat(frames, how="vertical_relaxed").group_by("subject_id")
            .agg(care.min().fill_null(birth).dt.epoch("us").alias("first"),
                 care.max().fill_null(birth).dt.epoch("us").alias("last"))
            .collect())


def _outside(lab: pl.DataFrame, timelines: pl.DataFrame) -> tuple[int, int, int]:
    """(f): label rows (i, subject_id, pred) whose subject is not in `timelines`, before its first, after its last."""
    j = lab.join(timelines, on="subject_id", how="left")
    missing = int(j["first"].null_count())
    return (missing, int((j["pred"] < j["first"]).sum() or 0), int((j["pred"] > j["last"]).sum() or 0))


def _last_at_or_before(lab: pl.DataFrame, ev: pl.DataFrame, prefix: str, name: str) -> pl.DataFrame:
    """`lab` with column `name`: each label's subject's last `prefix` event time at or before its pred (or null)."""
    rows = ev.filter(pl.col("code").str.starts_with(prefix) & pl.col("t").is_not_null()).select(
        "subject_id", pl.col("t").alias(name)).sort(name)
    # an as-of join, not labels x rows: a subject with thousands of labels and stays stays linear
    return (lab.sort("pred").join_asof(rows, left_on="pred", right_on=name, by="subject_id", strategy="backward",
                                       check_sortedness=False)  # both sorted just above (polars cannot tell within groups)
            .sort("i"))


def _window_start(lab: pl.DataFrame, ev: pl.DataFrame, readmission_days: float) -> pl.DataFrame:
    """`lab` (with last_dis) with `window_start`: where each readmission label's window opens.

    Its prediction time when that is a discharge of the subject (as `ehrfm labels` predicts); else the
    earliest discharge within `readmission_days` before it, else its last discharge before it (or null).
    """
    rows = ev.filter(pl.col("code").str.starts_with(DISCHARGE) & pl.col("t").is_not_null()).select(
        "subject_id", pl.col("t").alias("first_dis")).unique().sort("first_dis")
    lab = (lab.with_columns((pl.col("pred") - int(readmission_days * US_PER_DAY)).alias("_from")).sort("_from")
           .join_asof(rows, left_on="_from", right_on="first_dis", by="subject_id", strategy="forward",
                      check_sortedness=False).sort("i"))
    first = pl.when(pl.col("first_dis") <= pl.col("pred")).then(pl.col("first_dis"))
    return lab.with_columns(window_start=pl.when(pl.col("last_dis") == pl.col("pred")).then(pl.col("last_dis"))
                            .otherwise(pl.coalesce(first, pl.col("last_dis")))).drop("_from", "first_dis")


def _in_open_icu_stay(lab: pl.DataFrame, ev: pl.DataFrame) -> pl.DataFrame:
    """The `lab` rows whose subject's last ICU admission at or before pred has its next ICU discharge after pred."""
    lab = _last_at_or_before(lab, ev, ICU, "last_icu").filter(pl.col("last_icu").is_not_null())
    # Its own discharge: the next ICU event after it when that is a discharge (labels._icu_open_at).
    icu = ev.filter((pl.col("code").str.starts_with(ICU) | pl.col("code").str.starts_with(ICU_OUT)) & pl.col("t").is_not_null()
                    ).select("subject_id", "t", pl.col("code").str.starts_with(ICU_OUT).alias("out"))
    nxt = (lab.join(icu, on="subject_id").filter(pl.col("t") > pl.col("last_icu")).sort("t", "out")
           .group_by("i").agg(pl.col("t").first().alias("icu_next"), pl.col("out").first()))
    return lab.join(nxt, on="i").filter(pl.col("out") & (pl.col("icu_next") > pl.col("pred")))


def _stays_begun_before_admission(ev: pl.DataFrame, first_rows: pl.DataFrame) -> pl.DataFrame:
    """(subject_id, adm, first) of each stay id whose earliest row (`stay_first_rows`) precedes its admission.

    A label whose prediction time falls in [first, adm) has a row of a stay admitted after it in its
    history (labels.py's `later_stay_in_history`, the same rule on its Stay objects).
    """
    adm = (ev.filter(pl.col("code").str.starts_with(ADMISSION) & pl.col(STAY_ID_COLUMN).is_not_null() & pl.col("t").is_not_null())
           .group_by("subject_id", STAY_ID_COLUMN).agg(pl.col("t").min().alias("adm")))
    return (adm.join(first_rows, on=["subject_id", STAY_ID_COLUMN]).filter(pl.col("first") < pl.col("adm"))
            .select("subject_id", "adm", "first"))


def _later_stays_begun(lab: pl.DataFrame, begun: pl.DataFrame | None) -> set:
    """The `lab` rows (i) whose history holds a row of a stay admitted after pred (begun: `_stays_begun_before_admission`)."""
    if begun is None or not begun.height:
        return set()
    hit = lab.join(begun, on="subject_id").filter((pl.col("first") <= pl.col("pred")) & (pl.col("adm") > pl.col("pred")))
    return set(hit["i"].unique().to_list())


def _label_chunks(lab: pl.DataFrame, ev: pl.DataFrame, join_rows: int | None = None):
    """(labels, the audited rows of their subjects): `lab` in chunks of at most ~join_rows label x row pairs.

    A label's history is a join of it with every audited row of its subject: whole at once, 2M labels
    on the MIMIC-IV demo's 100 subjects took all of a 23 GB machine. Labels in subject order, each
    chunk with the slice of `ev` (sorted by subject) its subjects span; a label whose subject alone
    has more rows is a chunk of its own. Each label is in exactly one chunk.
    """
    join_rows = JOIN_ROWS if join_rows is None else join_rows
    if lab.height == 0:
        return
    lab = lab.sort("subject_id", "i")
    ev = ev.sort("subject_id")
    subjects = ev["subject_id"].to_numpy()
    wanted = lab["subject_id"].to_numpy()
    lo, hi = np.searchsorted(subjects, wanted, "left"), np.searchsorted(subjects, wanted, "right")
    chunk = np.cumsum(hi - lo) // max(join_rows, 1)
    starts = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], len(chunk)], strict=True):
        yield lab.slice(int(a), int(b - a)), ev.slice(int(lo[a]), int(hi[b - 1] - lo[a]))


def _task_audit(task: str, labels: pl.DataFrame, ev: pl.DataFrame, date_only: list[str] | None,
                null_codes: list[str], stays: pl.DataFrame | None, partial: Sequence[str] = (),
                timelines: pl.DataFrame | None = None, long_los_days: float = LONG_LOS_DAYS,
                begun: pl.DataFrame | None = None, readmission_days: float = READMISSION_DAYS,
                zone: str | None = None) -> TaskAudit:
    """One task's counts (module docstring).

    `zone`: the data's calendar (meds_io.calendar_zone), whose days the same-day and midnight rules count; None:
    the times' own clock.

    `timelines`: _timelines of the data, for (f); `begun`: `_stays_begun_before_admission` of the data,
    for (a)'s rows of a stay admitted after the prediction time.
    """
    lab = labels.select("subject_id", pl.col("prediction_time").dt.epoch("us").alias("pred")).unique().with_row_index("i")
    # The stay a label belongs to: the subject's last admission at or before the prediction time;
    # the subject's last discharge at or before it (after which any admission is a readmission).
    lab = _last_at_or_before(lab, ev, ADMISSION, "stay_adm")
    lab = _last_at_or_before(lab, ev, DISCHARGE, "last_dis")
    not_at_discharge = None
    if task == "readmission_30d":
        # A readmission label's window opens at its discharge. Predicted at no discharge (an ACES file predicting at
        # the window's end), the last discharge before it may be the readmission's own: its admission then
        # preceded it and passed unseen. Its window opens at the earliest discharge within readmission_days before.
        lab = _window_start(lab, ev, readmission_days)
        not_at_discharge = lab.filter(pl.col("last_dis").is_null() | (pl.col("last_dis") != pl.col("pred"))).height
    adm_ids = (ev.filter(pl.col("code").str.starts_with(ADMISSION) & pl.col(STAY_ID_COLUMN).is_not_null())
               .group_by("subject_id", "t").agg(pl.col(STAY_ID_COLUMN).unique().alias("stay_ids")))
    lab = lab.join(adm_ids.rename({"t": "stay_adm"}), on=["subject_id", "stay_adm"], how="left")
    # A row of the label's own stay: its id is one of the stays admitted at the label's admission (all of
    # them, as `ehrfm labels` treats them: one id picked by row order made the audit depend on it); null
    # when either id is unknown.
    own_id = pl.when(pl.col(STAY_ID_COLUMN).is_null() | pl.col("stay_ids").is_null()).then(None).otherwise(
        pl.col("stay_ids").list.contains(pl.col(STAY_ID_COLUMN)))
    code = pl.col("code")
    # Labels with a stay (by id) still open at pred: theirs, whose end is not in the history; another stay's
    # discharge there (a stay nested in it, ended before pred) is no outcome of this label.
    open_i = [] if stays is None else lab.join(stays, on="subject_id").filter(
        (pl.col("adm") <= pl.col("pred")) & (pl.col("pred") < pl.col("dis")))["i"].unique().to_list()
    outcome_in_history = None
    if task in OUTCOME_RULES:
        conds = []
        for codes, prefixes, window in OUTCOME_RULES[task]:
            match = code.is_in(list(codes)) if codes else pl.lit(False)
            for p in prefixes:
                match = match | code.str.starts_with(p)
            if window == "stay":
                match = match & pl.col("t").is_not_null() & (pl.col("t") >= pl.col("stay_adm"))
            elif window == "in_stay":
                match = match & pl.col("t").is_not_null() & (pl.col("t") > pl.col("stay_adm")) & ~pl.col("i").is_in(open_i)
            elif window == "stay_24h":  # or any time under the stay's own id (labels.py's rule)
                match = match & pl.col("t").is_not_null() & ((pl.col("t") >= pl.col("stay_adm") - 24 * US_PER_HOUR)
                                                             | own_id.fill_null(False))
            elif window == "after_discharge":
                match = match & pl.col("t").is_not_null() & pl.when(pl.col("window_start").is_null()).then(
                    pl.col("t") == pl.col("pred")).otherwise(pl.col("t") >= pl.col("window_start"))
            conds.append(match)
        outcome_in_history = conds[0]
        for c in conds[1:]:
            outcome_in_history = outcome_in_history | c
    # days and times of day on the data's wall clock (zoned times are UTC instants here)
    t_local, pred_local = wall_clock_expr(pl.col("t"), zone), wall_clock_expr(pl.col("pred"), zone)
    same_day = pl.col("t").is_not_null() & ((t_local // US_PER_DAY) == (pred_local // US_PER_DAY))
    # Placed at a discharge (or, below, at the end of its day): known by then. Anything earlier may be a leak.
    dis_times = ev.filter(code.str.starts_with(DISCHARGE)).select("subject_id", "t").unique().with_columns(
        pl.lit(True).alias("at_discharge"))
    # Whatever its day: a duration-coded procedure, diagnosis or DRG of this stay is not known while it is open.
    # This needs no metadata, so it is counted on any ETL's MEDS (then (b) is at least this count).
    stay_open = pl.col("last_dis").is_null() | (pl.col("last_dis") <= pl.col("stay_adm"))
    # Its stay: the label's own by the stay id when both have one, else any not at a discharge (at the
    # stay's admission that is the previous stay's discharge, of a transfer recorded as discharge + admission).
    own_stay = own_id.fill_null(~pl.col("at_discharge"))
    in_open_stay = pl.col("t").is_not_null() & stay_open & (pl.col("t") >= pl.col("stay_adm")).fill_null(False) & own_stay
    coded_in_open_stay = _coded_after_discharge(code) & in_open_stay
    counted = {"midnight": same_day & (t_local % US_PER_DAY == 0), "date_only": coded_in_open_stay,
               "billing": _billing_coded(code) & ~_coded_after_discharge(code) & in_open_stay}
    if date_only is not None:
        is_date_only = pl.lit(False)
        midnight_only = t_local % US_PER_DAY == 0
        for p in date_only:
            is_date_only = is_date_only | (code.str.starts_with(p) & (midnight_only if p in partial else pl.lit(True)))
        # At the end of its day (after the day's timed events): known by then, whatever its true time that day.
        known_by_then = pl.col("at_discharge") | (t_local % US_PER_DAY >= US_PER_DAY - 1_000_000)
        counted["date_only"] = (is_date_only & same_day & ~known_by_then) | coded_in_open_stay
    if null_codes:
        counted["not_known"] = pl.col("t").is_null() & code.is_in(null_codes)
    # Each label's history: its subject's audited rows up to its prediction time (labels x rows), a chunk of
    # labels at a time; every count is of labels, and each label lies in one chunk, so the chunks' counts add up.
    n = dict.fromkeys(counted, 0)
    known: set = set()
    for part, rows in _label_chunks(lab, ev):
        hist = (part.join(rows, on="subject_id").filter(pl.col("t").is_null() | (pl.col("t") <= pl.col("pred")))
                .join(dis_times, on=["subject_id", "t"], how="left").with_columns(pl.col("at_discharge").fill_null(False)))
        for name, cond in counted.items():
            n[name] += hist.filter(cond).select("i").n_unique()
        if outcome_in_history is not None:
            known.update(hist.filter(outcome_in_history)["i"].unique().to_list())
    outcome = None
    if outcome_in_history is not None:
        if task == "icu_admission":  # in an ICU stay begun before (however long) and not yet ended
            known |= set(_in_open_icu_stay(lab, ev)["i"].to_list())
        if task == "long_los":  # still in hospital past the threshold: the long stay is known
            known |= set(lab.filter(pl.col("pred") - pl.col("stay_adm") > long_los_days * US_PER_DAY)["i"].to_list())
        known |= _later_stays_begun(lab, begun)
        outcome = len(known)
    # 0 is not "clean" while the date-only sources are unknown
    date_only_n = n["date_only"] if date_only is not None else (n["date_only"] or None)
    not_known, midnight = n.get("not_known", 0), n["midnight"]
    overlapping = None
    if stays is not None:
        own = lab.join(stays, on="subject_id").filter((pl.col("adm") <= pl.col("pred")) & (pl.col("pred") <= pl.col("dis")))
        overlapping = own.filter(pl.col("overlaps")).select("i").n_unique()
    outside = _outside(lab, timelines) if timelines is not None else (0, 0, 0)
    return TaskAudit(task, labels.height, outcome, date_only_n, not_known, overlapping, midnight, *outside,
                     not_at_discharge=not_at_discharge, billing_codes_of_stay=n["billing"])


def audit(meds_dir: str | os.PathLike, labels: str | os.PathLike,
          date_only_codes: Sequence[str] | None = None, task: str | None = None) -> AuditResult:
    """Audit every label file of `labels` (a dir of <task>.parquet or one file) against a MEDS dir.

    Args:
        meds_dir: a MEDS dataset dir (any ETL).
        labels: a label parquet in the MEDS label schema, or a dir of them (`ehrfm labels --task all`).
        date_only_codes: code prefixes of date-only sources; default: the MEDS metadata's
            `date_only_codes`, else unknown.
        task: the task of a labels input of one task whose name does not say it (an ACES output
            named icu_v2.parquet): one of OUTCOME_RULES. Default: the sidecar's task, else the file
            (or shard dir) name.

    Returns:
        An AuditResult: per task the counts (a)-(d) described in the module docstring (None where
        the data cannot tell, with the reason in `unknown`), the ETL's drop/duplicate counts.

    Raises:
        UserError: bad MEDS or label input (the one MEDS reader's and read_labels's messages); `task`
            not a known task, or given for labels of several tasks.
    """
    from ehrfm.clinical.labels import (
        check_named_task,
        read_labels,
        recorded_task,
        shards_lacking_stay_ids,
        stay_first_rows,
        without_misfiled_icu_ids,
    )

    files = _label_files(labels)
    if task is not None:
        if task not in OUTCOME_RULES:
            raise UserError(f"--task {task!r} is not a task whose outcome the audit knows ({', '.join(OUTCOME_RULES)})")
        if len(files) != 1:
            raise UserError(f"--task names the task of one label file, and labels {labels} holds {len(files)} tasks "
                            f"({', '.join(sorted(files))}); audit each file with its own --task")
        (name, path), = files.items()
        recorded = recorded_task(path) if path.is_file() else None
        if recorded is None:  # a long_los.parquet audited as readmission said "LEAKAGE 149"; the heads refuse it
            check_named_task(path, name, task)
        if recorded is not None and recorded != task:  # ehrfm's long_los.parquet audited as mortality came out clean
            raise UserError(f"--task {task}, but the sidecar of label file {path} records task {recorded}: audit it "
                            f"as {recorded} (without --task), or remove the stale sidecar {path.with_suffix('.json')}")
        files = {task: path}
    ds = open_meds(meds_dir)
    unknown: list[str] = []
    partial: list[str] = []
    if date_only_codes is not None:
        date_only, source = list(date_only_codes), "given"
    else:
        date_only, partial, source = date_only_from_metadata(meds_dir)
        if date_only is None:
            unknown.append(f"(b) date-only sources: the MEDS metadata has no {DATE_ONLY_KEY!r} (made by another ETL "
                           "or an older one); pass --date-only-codes to check them")
    # ICU rows filed under another stay's id are paired by time, as `ehrfm labels` pairs them
    zone = calendar_zone(ds)  # the calendar of its days (zoned times are read as UTC instants)
    ev, _ = without_misfiled_icu_ids(_events(ds, date_only or [], zone))
    unmatched = [p for p in (date_only or []) if source == "given" and not ev["code"].str.starts_with(p).any()]
    if unmatched:  # a typo'd prefix checked nothing, and the audit said "clean"
        unknown.append(f"(b) --date-only-codes {', '.join(unmatched)}: no code of the MEDS data starts with "
                       f"{'it' if len(unmatched) == 1 else 'them'} (codes are case-sensitive prefixes), so no such event was checked")
    stays = _stays(ev) if ev[STAY_ID_COLUMN].null_count() < ev.height else None
    lacking, n_files = shards_lacking_stay_ids(ds), len(ds.paths_with_rows())
    if stays is None:
        unknown.append(f"(d) overlapping stays: the MEDS data has no stay id column ({STAY_ID_COLUMN})")
    elif lacking:  # some shards with the column, some without: say which, so the user fixes the export
        unknown.append(f"(d) overlapping stays: {len(lacking)} of the {n_files} shard files with rows lack the stay id "
                       f"column ({STAY_ID_COLUMN}; first: {lacking[0]}): their subjects' stays are not checked")
    timelines = _timelines(ds)
    begun = None
    if stays is not None:
        begun = _stays_begun_before_admission(ev, stay_first_rows(ds))
    zones = ds.time_zones()
    tasks = {}
    for name, f in files.items():
        lab = read_labels(f, allow_empty=True, data_zones=zones, data=f"MEDS dataset {meds_dir}")  # 0 labels: no stay qualified
        tasks[name] = _task_audit(name, lab, ev, date_only, sorted(ds.null_time_codes), stays, partial,
                                  timelines, _long_los_days(f), begun, _label_days(f, "readmission_days", READMISSION_DAYS),
                                  zone=zone)
        if name not in OUTCOME_RULES:
            unknown.append(f"(a) task {name!r}: its outcome code is unknown, so its histories were NOT checked for the "
                           f"outcome (known tasks: {', '.join(OUTCOME_RULES)}; pass --task for a file named otherwise)")
        elif (absent := _outcome_codes_absent(name, lab, ev, ds)) is not None:
            # (a)'s count stands (a discharge in a history is still seen); the line says what it cannot see.
            unknown.append(absent)
    result_times = result_times_from_metadata(meds_dir)
    if result_times is None:
        unknown.append("(e) result times: the MEDS metadata has no 'stored_time_sources' (another ETL, or an older "
                       "one): lab and culture results may sit at their specimen time, before they were known")
    etl_counts = _etl_counts(meds_dir)
    if etl_counts is None:
        unknown.append("ETL drop and duplicate counts: no metadata/ehrfm_etl.json or etl_config.json "
                       "(MEDS made by another ETL)")
    meta = ds.metadata
    etl = {k: meta.get(k) for k in ("etl_name", "etl_version", "meds_version") if k in meta}
    return AuditResult(str(meds_dir), str(labels), etl, date_only, source, tasks, etl_counts,
                       dict(ds.null_time_codes), unknown, partial, result_times)


def _long_los_days(label_file: Path) -> float:
    """The long-stay threshold a label file was made with (its sidecar JSON's config), else LONG_LOS_DAYS."""
    return _label_days(label_file, "long_los_days", LONG_LOS_DAYS)


def _label_days(label_file: Path, key: str, default: float) -> float:
    """A span in days a label file was made with (its sidecar JSON's config `key`), else `default`.

    UserError: the sidecar gives `key` a value no label window can take (labels.check_label_window).
    """
    side = label_file.with_suffix(".json")
    v = (_read_json(side).get("config") or {}).get(key)
    return default if v is None else check_label_window(key, v, where=f"label sidecar {side}")


def _fmt(x: int | None, n: int) -> str:
    return "unknown" if x is None else f"{x} ({x / n:.1%})" if n and x else str(x)


def _count_parts(counts: dict) -> list[str]:
    """{name: count or nested dict} -> ["name count", "name (a 1, b 2)", "name a 1"], zero counts left out."""
    parts = []
    for k, v in sorted(counts.items()):
        if isinstance(v, dict):
            inner = _count_parts(v)
            if len(inner) > 1:
                parts.append(f"{k} ({', '.join(inner)})")
            elif inner:
                parts.append(f"{k} {inner[0]}")
        elif v:
            parts.append(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}")
    return parts


def _counts_text(counts: dict) -> str:
    """Nested {group: {name: count}} as text, each name once (readable, unlike the raw JSON).

    {"dropped": {"hosp/a": {"x": 2, "y": 3}, "hosp/b": {"x": 1}}, "duplicates": {"hosp/c": 4}} ->
    "dropped: hosp/a (x 2, y 3), hosp/b x 1; duplicates: hosp/c 4".
    """
    groups = []
    for k, v in sorted(counts.items()):
        inner = _count_parts(v) if isinstance(v, dict) else _count_parts({k: v})
        if inner:
            groups.append(f"{k}: {', '.join(inner)}" if isinstance(v, dict) else inner[0])
    return "; ".join(groups)


def format_audit(res: AuditResult) -> list[str]:
    """The audit as short markdown lines (a table per task plus the ETL counts and unknowns)."""
    lines = ["| task | labels | (a) outcome code | (b) date-only same day, duration or discharge code | (c) not known before | "
             "(d) overlapping stays | 00:00 same day (hint) | (f) outside the data |", "|---|---|---|---|---|---|---|---|"]
    for t in res.tasks.values():
        lines.append(f"| {t.task} | {t.n_labels} | {_fmt(t.outcome_code_in_history, t.n_labels)} | "
                     f"{_fmt(t.date_only_same_day, t.n_labels)} | {_fmt(t.not_known_before_prediction, t.n_labels)} | "
                     f"{_fmt(t.overlapping_stays, t.n_labels)} | {t.midnight_same_day} | {_fmt(t.outside_data, t.n_labels)} |")
    lines.append("")
    for t in res.tasks.values():
        if t.not_at_discharge:
            lines.append(f"(a) {t.task}: {t.not_at_discharge} labels predicted at no discharge of the subject (`ehrfm labels` "
                         "predicts at the discharge): their window is taken to open at the earliest discharge within the "
                         "readmission window before them, so an admission after it counts as the outcome.")
        if t.billing_codes_of_stay:
            lines.append(f"Hint, {t.task}: {t.billing_codes_of_stay} labels' histories hold procedure billing codes "
                         f"({', '.join(BILLING_CODED)}) of their own open stay, at the end of the procedure's day: the "
                         "procedure was charted then, its code assigned after discharge (not counted as look-ahead; a "
                         "study of codes as the EHR holds them at prediction time would leave them out).")
        if t.outside_data:
            lines.append(f"(f) {t.task}: {t.subject_not_in_data} labels of subjects not in the MEDS data (or without a timed event), "
                         f"{t.before_first_event} before the subject's first event, {t.after_last_event} after its last: "
                         "outside the data's timelines, so every head refuses them.")
    if res.date_only_codes is not None:
        lines.append(f"Date-only codes ({res.date_only_from}): {', '.join(res.date_only_codes) or 'none'}.")
    if res.result_times is not None:
        rt = res.result_times
        lines.append("Result times (e): " + (f"at their store time: {', '.join(rt['stored'])}" if rt["stored"] else "no result tables")
                     + (f"; LEFT AT THEIR CHART TIME (no store-time column): {', '.join(rt['at_chart_time'])}"
                        if rt["at_chart_time"] else "") + ".")
    if res.etl_counts is not None:
        lines.append(f"ETL drop/duplicate counts (its metadata): {_counts_text(res.etl_counts) or 'none'}.")
    if res.null_time_codes:
        lines.append("Non-static codes with a null time: "
                     + ", ".join(f"{c} {n}" for c, n in sorted(res.null_time_codes.items())) + ".")
    lines += [f"Unknown: {u}." for u in res.unknown]
    open_b = any(t.date_only_same_day is None for t in res.tasks.values())
    tasks_leak = any(t.outcome_code_in_history or t.date_only_same_day or t.not_known_before_prediction
                     for t in res.tasks.values())
    chart = " (e) lists results at their chart time." if (res.result_times or {}).get("at_chart_time") else ""
    outside = sum(t.outside_data for t in res.tasks.values())
    unscorable = f"UNSCORABLE: {outside} labels outside the data (f)." if outside else ""
    unchecked = (f"NOT CHECKED: (a) for {', '.join(res.unchecked)} (outcome unknown; pass --task)."
                 if res.unchecked else "")
    verdict = ("LEAKAGE: (a)-(c) are not all 0." + chart if tasks_leak else "LEAKAGE:" + chart if chart
               else "" if outside or unchecked else "no leak in (a) and (c); (b) unknown." if open_b
               else "clean ((a)-(c) are 0).")
    if res.overlapping:  # for review, not a fault: said beside any verdict, so "clean" never hides it
        verdict += f" REVIEW (d): labels of stays that overlap another stay of the subject: {res.overlapping}."
    empty = f"NO LABELS in {', '.join(res.empty)}: nothing checked there." if res.empty else ""
    lines.append("Verdict: " + " ".join(x for x in (verdict, unscorable, unchecked, empty) if x))
    return lines
