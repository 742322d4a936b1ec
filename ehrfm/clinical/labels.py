"""Clinical task labels from a MEDS dataset, in the MEDS label schema.

A label is (subject_id, prediction_time, boolean_value): the model may use the subject's events
with time <= prediction_time and nothing later. One row per eligible hospital stay.

Stays. When the MEDS data has a stay id column (`hadm_id`, kept by this package's ETL) on
every admission and discharge row of a subject, a stay is the HOSPITAL_ADMISSION//* and
HOSPITAL_DISCHARGE//* rows sharing an id, and only ICU_ADMISSION//* rows of that id (or
without one) count for it: overlapping stays keep their own ends and facts. Otherwise a stay
is a HOSPITAL_ADMISSION//* event paired with the next HOSPITAL_DISCHARGE//* event of the same
subject. In-stay transfers (ward moves, ICU_ADMISSION//* / ICU_DISCHARGE//*, any
TRANSFER codes) never split a stay. An admission that is followed by another admission before
any discharge, or by nothing, has no discharge: its outcome is unknown and it is excluded from
every task. A discharge at the same timestamp as the next admission (a transfer between
hospitals recorded as discharge + admission) closes the first stay and opens a second one.

In-hospital death. A subject's death is its earliest MEDS_DEATH event; later records (a second
death, often of an organ-donation admission) are counted in `info["deaths"]`, never used. The
stay ends in death when the discharge location is DIED (HOSPITAL_DISCHARGE//DIED), when the
death falls between admission and discharge, or when it falls later on the discharge day and the
discharge names no live destination (location unknown: death dates are often day-resolved, so
the death code can sit at the end of the discharge day). A death later on the discharge day
after a discharge to a named place (HOME, HOSPICE, SKILLED NURSING FACILITY, ...) is a death
after discharge, not in hospital (MIMIC-IV: the patients.dod of an out-of-hospital death; an
in-hospital death has its admissions.deathtime, all 15 on the demo). A death at exactly 00:00 is
read as a date (MIMIC-IV's patients.dod, which ETLs such as MIMIC_IV_MEDS place at midnight; this
package's ETL places it at 23:59:59): it may have happened any time that day, so on a discharge day
it follows the rule above (a live discharge that day: a death after discharge), and a stay admitted
that day is not "admitted after death". A death at 23:59:59 on a discharge day follows that rule
too, also when the discharge is a date placed at 23:59:59 as well (both at one time: a live
discharge there was a death in hospital before 2026-12-03). MEDS_DEATH
rows with a null time are dropped by the MEDS reader (ehrfm.meds_io) and counted.

Exclusions common to every task, each counted under its own reason in `info["excluded"]`:
- discharge_before_admission: with stay ids, a stay whose discharge row precedes its admission
  row (bad data, kept by this package's ETL as written): it has no usable end, so no task can
  label it. As the next stay of another it may have been admitted at either of its two times: a
  readmission label that depends on which is excluded (next_admission_time_unknown).
- death_contradicted: every stay of a subject whose death (its earliest MEDS_DEATH) falls inside a
  stay that ends with a discharge to a named live destination (HOME, SKILLED NURSING FACILITY, ...;
  after the death's day, for a date), or is timed at that very discharge (an admissions.deathtime
  after a HOME discharge, to which the ETL moves the discharge, was an in-hospital death before
  2026-12-05): one of the two records is wrong, and which is unknown (a patients.dod set days into a
  stay that went on to a home discharge and later admissions made 10 in-hospital deaths and excluded
  17 readmissions on a copy of the MIMIC-IV demo, silently).
- admitted_after_death: an admission opened after the subject's death (MIMIC-IV records organ
  donation as a new admission). It gets no label and is never anybody's readmission.
- died_before_prediction_time: the death is at or before the prediction time, so the outcome
  is already in the history (admitted 10:00, died 20:00, discharge paperwork 30 h later).
- duplicate_prediction_time: a second stay of the subject with the same prediction time
  (duplicated source rows); the first is kept.
- later_stay_in_history: a row under the stay id of a stay admitted after the prediction time is
  at or before it (its ED registration, orders): the patient is alive and coming back, whatever
  the task's outcome (the audit's (a) counts the same rows). On the MIMIC-IV demo one stay's next
  stay has heparin orders inside it, 6 days before its own admission; with one readmission's
  admittime moved 3 h after the previous discharge, its ED registration (6 h 40 min before that
  discharge) and 13 orders sat in a positive readmission history.
- transferred: the subject's next admission follows the discharge within `transfer_hours`
  (default 1 h; at the same timestamp included): the next stay continues this one (on the
  MIMIC-IV demo: a discharge to a psych facility with an "INTERNAL TRANSFER TO OR FROM PSYCH"
  admission 15 minutes later, and an observation stay admitted as inpatient 1 minute after its
  discharge; the next-shortest gap there is 20 h). Its discharge is no end of care, so its death,
  length of stay or ICU bed may lie in the next stay; it is excluded whatever its outcome (an
  exclusion that looked at the outcome would bias the labels), and the next stay is labelled as
  its own. For readmission the next stay is a transfer, not a readmission.
- in_another_stay_at_discharge: the stay is discharged while another stay of the subject is open
  (overlapping stay ids: admitted before it, discharged after): the patient is still in hospital,
  so the stay's death, length of stay, ICU bed and discharge are not its own (every task; before
  2026-12-07 readmission only, and a stay nested in one that ended in death was a survivor).
Every stay is either labelled or excluded: n + n_excluded == n_stays, and prevalence is stated.

Tasks (DESIGN.md section 6):

- in_hospital_mortality: prediction_time = admission + 24 h; true when the stay ends in death.
  Excluded: stays that end (discharge or death) at or before the prediction time, since the
  outcome would already be in the history (this excludes deaths within 24 h and same-day
  discharges).
- long_los: prediction_time = admission + 24 h; true when discharge - admission > 7 days.
  Excluded: stays that end at or before the prediction time. In-hospital deaths are kept and
  labelled by their length of stay.
- icu_admission: prediction_time = admission; true when an ICU_ADMISSION//* event falls after
  the admission and at or before the discharge. Excluded: stays whose first ICU admission is at
  or before the prediction time, or in the 24 h before the hospital admission, or at any time
  before it under the stay's own id or that of another stay admitted at the same time (ED patients
  boarded in the ICU before admittime; duplicated admissions share one history), or whose
  patient is in an ICU stay begun earlier and ended (ICU_DISCHARGE//*) only after the admission: the
  patient is already in the ICU when the prediction is made and the ICU token would be in the
  history. Also excluded (admitted_directly_to_icu): stays whose first ICU admission follows the
  admission by less than `direct_icu_minutes` (default 5; exactly 5 min after is labelled): the patient is admitted straight into the ICU, one
  registration (MIMIC-IV writes admittime to the minute and the ICU intime to the second: on the
  demo 20 of the 126 positive stays began their ICU stay 24-117 s after admittime, their first unit the ICU; the next 12
  minutes after), so the outcome is decided when the prediction is made. Also excluded: stays that
  end at the admission timestamp.
- readmission_30d: prediction_time = discharge; true when the subject's next hospital admission
  is after the discharge and within 30 days (next_admission - discharge <= 30 * 24 h, a clock
  not calendar days: 30 days to the microsecond is positive, on day 30 later in the day than the
  discharge was is negative). Excluded: in-hospital deaths (no
  readmission is possible), transfers (above), discharges to another acute hospital
  (HOSPITAL_DISCHARGE//ACUTE HOSPITAL, `OTHER_HOSPITAL_LOCATIONS`: the acute episode goes on
  elsewhere, so a return cannot be seen; the usual readmission measures, such as CMS's, exclude
  them; 1 on the MIMIC-IV demo), and stays discharged while
  another stay of the subject is open (in_another_stay_at_discharge, above). A subject with no later
  admission in the data is negative (MIMIC records readmissions to the same hospital only; this
  is the usual convention; MIMIC's dates are shifted per patient, so the end of a subject's
  follow-up cannot be known), as is a death after discharge without readmission (a competing
  event); `info["negatives"]` counts both (on the MIMIC-IV demo: 85 and 5 of 207 negatives).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from ehrfm.clinical.configs import LabelConfig
from ehrfm.errors import UserError
from ehrfm.io import as_utc_zones, refuse_repeated_columns
from ehrfm.meds_io import (
    LEGACY_COLUMNS,
    MEDS_VERSION,
    STAY_ID,
    MedsDataset,
    calendar_zone,
    day_end_expr,
    is_utc,
    open_meds,
    scan_shards,
    wall_clock_expr,
)

TASKS = ("in_hospital_mortality", "long_los", "icu_admission", "readmission_30d")

ADMISSION_PREFIX = "HOSPITAL_ADMISSION//"
DISCHARGE_PREFIX = "HOSPITAL_DISCHARGE//"
ICU_ADMISSION_PREFIX = "ICU_ADMISSION//"
ICU_DISCHARGE_PREFIX = "ICU_DISCHARGE//"
DEATH_CODE = "MEDS_DEATH"
DIED_DISCHARGE_CODE = "HOSPITAL_DISCHARGE//DIED"
# Discharge locations that do not say the patient left alive (MIMIC-IV's null location is UNK).
UNKNOWN_DISCHARGE_LOCATIONS = frozenset({"", "DIED", "UNK", "UNKNOWN", "NONE", "NULL", "NAN", "OTHER"})
# Discharge locations that move the patient to acute care in another hospital (MIMIC-IV's discharge_location):
# the stay ends here but the acute episode goes on elsewhere, where a readmission cannot be seen.
OTHER_HOSPITAL_LOCATIONS = frozenset({"ACUTE HOSPITAL"})
# STAY_ID: the stay id column this package's ETL keeps (MIMIC's hadm_id), when present; read as text.

US_PER_HOUR = 3_600_000_000
US_PER_DAY = 24 * US_PER_HOUR
# The MEDS label schema's other value columns (a label file may use one instead of boolean_value).
OTHER_LABEL_VALUES = ("integer_value", "float_value", "categorical_value")


@dataclass
class Stay:
    """One hospital stay of a subject; times are microseconds since the epoch."""
    subject_id: int
    admission: int  # us since epoch
    discharge: int | None  # None: no discharge recorded
    died: bool
    first_icu: int | None  # first ICU admission in [admission, discharge], us
    icu_just_before: bool = False  # an ICU admission in the 24 h before the admission, or before it under its id, or an ICU stay open at it
    death: int | None = None  # the subject's death (earliest MEDS_DEATH) when at or after admission (its day, for a date), us
    admitted_after_death: bool = False  # opened after the subject's death (e.g. organ donation)
    discharge_location: str = ""  # of HOSPITAL_DISCHARGE//<location>, stripped and upper-cased ("" when none)
    discharge_before_admission: bool = False  # its stay id's discharge precedes its admission (bad data; no discharge)
    # Its earliest row: the earliest of its admission and every row under its stay id (an ED registration,
    # orders); with a discharge before the admission, also that discharge.
    first_event: int | None = None
    # discharge_before_admission: its discharge and admission times as written (either may be its admission).
    written_span: tuple[int, int] | None = None
    death_contradicted: bool = False  # its subject's death precedes a discharge to a named live destination
    # The subject's discharges that end no stay and fall in none (a stay whose admission row has no time, dropped by
    # the ETL, keeps its discharge): a stay of unknown start there, so a readmission before it is unknown.
    unpaired_discharges: tuple[int, ...] = ()
    # An ICU discharge in the stay with no ICU admission before it (an icustays row without intime): the ICU stay's
    # start, before or after the prediction time, is unknown.
    icu_start_unknown: bool = False


# --- reading MEDS ----------------------------------------------------------------------------------
def _stay_events(meds_dir: str | os.PathLike) -> tuple[pl.DataFrame, MedsDataset, list[Path]]:
    """Read the stay-defining events of a MEDS dataset.

    The events that define stays (admissions, discharges, ICU admissions, deaths), the opened
    dataset (its null_time_codes say how many deaths had no time), and the shard files whose
    stays are paired by time for lack of stay ids (shards_lacking_stay_ids; [] when no shard has them).
    """
    ds = open_meds(meds_dir)
    cols = ["subject_id", "time", "code"]
    # Any shard with the stay id column: scan_shard reads it as null in a shard without it, whose subjects
    # are then paired by time (stays_from_events); requiring it in every shard unpaired every subject.
    without, lacking = ds.files_without(STAY_ID), []
    if len(without) < len(ds.paths_with_rows()):
        cols.append(STAY_ID)
        if lacking := shards_lacking_stay_ids(ds, without):  # the subjects of those shards are paired otherwise: say so
            from ehrfm.io import warn

            warn(f"labels: {len(lacking)} of the shard files with rows lack the stay id column {STAY_ID} (first: "
                 f"{lacking[0]}): their subjects' stays are paired by time order, not by id (write the column in "
                 "every shard to pair every stay by id)")
    elif without and shards_lacking_stay_ids(ds, without):  # no shard has it (a MEDS dataset from another ETL): said too
        from ehrfm.io import warn

        warn(f"labels: no shard of {meds_dir} has the stay id column {STAY_ID}: stays are paired by time order, and a "
             "later stay's orders written before its admission cannot be told from this stay's (later_stay_in_history "
             f"is not checked); keep {STAY_ID} in the MEDS shards to pair stays by id")
    lf = scan_shards([sh for shards in ds.shards.values() for sh in shards], cols).filter(
        pl.col("code").str.starts_with(ADMISSION_PREFIX)
        | pl.col("code").str.starts_with(DISCHARGE_PREFIX)
        | pl.col("code").str.starts_with(ICU_ADMISSION_PREFIX)
        | pl.col("code").str.starts_with(ICU_DISCHARGE_PREFIX)
        | (pl.col("code") == DEATH_CODE)
    )
    # A flat layout lists each file once per split with that split's subjects: no row twice.
    events = lf.collect().with_columns(pl.col("time").dt.epoch("us").alias("t"))
    if STAY_ID in events.columns:
        events = events.with_columns(pl.col(STAY_ID).cast(pl.String))
    bad = events.filter(pl.col("t").is_null()).height
    if bad:
        raise UserError(f"MEDS dataset {meds_dir}: {bad} admission/discharge/ICU rows have a null time")
    return events.sort("subject_id", "t", "code"), ds, lacking


# An ICU stay is boarded from the ED hours before its hospital admission (30 h is read as its own: tests);
# one further from the stay its id names, inside another stay of the subject, was filed under the wrong id.
MISFILED_ICU_HOURS = 24


def stay_bounds(events: pl.DataFrame) -> pl.DataFrame:
    """Per stay id: subject_id, STAY_ID, adm (its first admission) and dis (its last discharge, null if none), in us.

    events: subject_id, t (us), code and STAY_ID (text). Stays without an admission row are left
    out. One computation for `labels` (misfiled ICU ids) and the audit (overlapping stays).
    """
    return (events.filter(pl.col(STAY_ID).is_not_null() & pl.col("t").is_not_null())
            .group_by("subject_id", STAY_ID)
            .agg(adm=pl.col("t").filter(pl.col("code").str.starts_with(ADMISSION_PREFIX)).min(),
                 dis=pl.col("t").filter(pl.col("code").str.starts_with(DISCHARGE_PREFIX)).max())
            .filter(pl.col("adm").is_not_null()))


def without_misfiled_icu_ids(events: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """`events` with the stay id of each misfiled ICU admission row set null, and how many there were.

    A misfiled row: an ICU_ADMISSION//* row whose stay id names a stay it lies more than
    MISFILED_ICU_HOURS before the admission of (or after the discharge of), while it lies inside
    another stay of the subject (admission <= t <= discharge). Taken on trust, the id moved the ICU
    stay to the other stay: on a copy of the MIMIC-IV demo with one icustays row given the hadm_id of
    the subject's stay admitted 110 days later, its own stay's ICU label went from True to False and
    the later stay's was excluded as boarded, silently. With its id null it is paired by time, as a
    row without one always was (labels and the audit alike). events: subject_id, t (us), code and
    STAY_ID (text); returned unchanged without that column.
    """
    if STAY_ID not in events.columns:
        return events, 0
    has_id = pl.col(STAY_ID).is_not_null() & pl.col("t").is_not_null()
    bounds = stay_bounds(events)
    events = events.with_row_index("_row")
    icu = events.filter(has_id & pl.col("code").str.starts_with(ICU_ADMISSION_PREFIX)).select("_row", "subject_id", "t", STAY_ID)
    margin = MISFILED_ICU_HOURS * US_PER_HOUR
    far = icu.join(bounds, on=["subject_id", STAY_ID]).filter(
        (pl.col("t") < pl.col("adm") - margin) | (pl.col("dis").is_not_null() & (pl.col("t") > pl.col("dis") + margin)))
    other = bounds.rename({STAY_ID: "_other", "adm": "_adm", "dis": "_dis"})
    misfiled = far.join(other, on="subject_id").filter(
        (pl.col("_other") != pl.col(STAY_ID)) & (pl.col("_adm") <= pl.col("t")) & pl.col("_dis").is_not_null()
        & (pl.col("t") <= pl.col("_dis")))["_row"].unique()
    events = events.with_columns(pl.when(pl.col("_row").is_in(misfiled.implode())).then(None).otherwise(pl.col(STAY_ID))
                                 .alias(STAY_ID)).drop("_row")
    return events, misfiled.len()


def shards_lacking_stay_ids(ds: MedsDataset, without: list[Path] | None = None) -> list[Path]:
    """The shard files with admission rows but no stay id to pair them by: no `hadm_id` column, or one of no value.

    A shard whose subjects have no hospital stay (in MIMIC-IV ~40% of patients have no admission)
    needs no id: counted, it warned that stays it does not hold were paired by time. `without`:
    `ds.files_without(STAY_ID)` when the caller has it.
    """
    def has_admissions(path: Path) -> bool:
        return pl.scan_parquet(path).select("code").filter(pl.col("code").str.starts_with(ADMISSION_PREFIX)).head(1) \
            .collect().height > 0

    return [p for p in (ds.files_without(STAY_ID) if without is None else without) if has_admissions(p)]


def stay_first_rows(ds: MedsDataset) -> pl.DataFrame:
    """Each stay's earliest timed row: (subject_id Int64, stay id String, first: its time in us), one row per stay id.

    Over every row that carries a stay id: a stay's care can begin before its admittime (an ED
    registration, ED orders and medications under its hadm_id; on the MIMIC-IV demo one
    readmission's ED registration was 6 h 40 min before the previous stay's discharge). No rows
    when the data has no stay id column. The audit's (a) reads it as a frame, `labels` as a dict.
    """
    shards = [sh for shards in ds.shards.values() for sh in shards]  # a shard without the column reads as null ids
    schema = {"subject_id": pl.Int64, STAY_ID: pl.String, "first": pl.Int64}
    if not shards:
        return pl.DataFrame(schema=schema)
    # Streaming: on full MIMIC-IV most of a few hundred million rows carry a hadm_id.
    first = (scan_shards(shards, ["subject_id", "time", STAY_ID])
             .filter(pl.col(STAY_ID).is_not_null() & pl.col("time").is_not_null())
             .group_by("subject_id", STAY_ID).agg(pl.col("time").min().dt.epoch("us").alias("first"))
             .collect(engine="streaming"))
    return first.select(pl.col("subject_id").cast(pl.Int64), pl.col(STAY_ID).cast(pl.String), "first")


def _death_counts(events: pl.DataFrame, ds: MedsDataset | None = None) -> dict:
    """How deaths were recorded: the earliest MEDS_DEATH of a subject is its death."""
    deaths = events.filter(pl.col("code") == DEATH_CODE)
    per = deaths.group_by("subject_id").agg(
        pl.len().alias("n"), pl.col("t").n_unique().alias("times"),
        (pl.col("t") // US_PER_DAY).n_unique().alias("days"))
    return {
        "subjects_with_death": per.height,
        "extra_death_records": int((per["n"] - 1).sum()) if per.height else 0,
        "subjects_with_several_death_times": int((per["times"] > 1).sum()) if per.height else 0,
        "subjects_with_deaths_on_different_days": int((per["days"] > 1).sum()) if per.height else 0,
        "deaths_without_time": int((ds.null_time_codes if ds else {}).get(DEATH_CODE, 0)),
        "rule": "the earliest MEDS_DEATH of a subject is its death; later records are counted here, not used",
    }


def _live_discharge(code: str) -> bool:
    """Does a HOSPITAL_DISCHARGE//<location> code name where a live patient went (not DIED, not unknown)?"""
    if not code.startswith(DISCHARGE_PREFIX):
        return False
    return code[len(DISCHARGE_PREFIX):].strip().upper() not in UNKNOWN_DISCHARGE_LOCATIONS


def _pairs_by_time(by_time: dict[int, tuple[list[str], list[str]]]) -> list[tuple[int, int | None, str, None]]:
    """(admission, discharge or None, discharge code or "", None) in time order (module docstring)."""
    open_adm: int | None = None
    pairs: list[tuple[int, int | None, str, None]] = []
    for t in sorted(by_time):
        adms, diss = by_time[t]
        diss = list(diss)
        if open_adm is not None and diss:
            d = diss.pop(0)
            pairs.append((open_adm, t, d, None))
            open_adm = None
        for _ in adms:
            if open_adm is not None:
                pairs.append((open_adm, None, "", None))
            open_adm = t
            if diss:
                d = diss.pop(0)
                pairs.append((open_adm, t, d, None))
                open_adm = None
        # Discharges with no open stay are ignored (a timeline starting mid-stay).
    if open_adm is not None:
        pairs.append((open_adm, None, "", None))
    return pairs


BEFORE_ADMISSION = "<discharge before admission>"  # _pairs_by_id's discharge code of a stay whose discharge precedes it


def _pairs_by_id(codes: list[str], times: list[int], ids: list) -> list[tuple[int, int | None, str, object]]:
    """Per stay id, its admission, discharge and discharge code.

    (admission, discharge or None, discharge code or "", stay id) per stay id: the admission and
    discharge rows that share the id, so overlapping stays keep their own ends.
    """
    adm: dict = {}
    dis: dict = {}
    for c, t, i in zip(codes, times, ids, strict=False):
        if c.startswith(ADMISSION_PREFIX):
            adm[i] = min(adm.get(i, t), t)
        elif c.startswith(DISCHARGE_PREFIX) and (i not in dis or t > dis[i][0]):
            dis[i] = (t, c)
    # Discharges of an id with no admission are ignored (a timeline starting mid-stay).
    ok = {i: i in dis and dis[i][0] >= a for i, a in adm.items()}
    # A discharge of the id before its admission (bad data): no usable end, excluded under its own reason.
    return sorted((a, dis[i][0] if ok[i] else None, dis[i][1] if ok[i] else BEFORE_ADMISSION if i in dis else "", i)
                  for i, a in adm.items())


def stays_from_events(events: pl.DataFrame, by_stay_id: bool = True,
                      first_events: dict[tuple[int, str], int] | None = None, zone: str | None = None) -> list[Stay]:
    """Pair admissions with discharges per subject.

    Pair admissions with discharges per subject (rules in the module docstring): by the stay
    id column (`hadm_id`) when every admission and discharge row of the subject has one, else by
    time order. first_events: {(subject_id, stay id): first} of `stay_first_rows`, for each stay's `first_event`.
    zone: the data's calendar (meds_io.calendar_zone), whose days the date rules count (a death at midnight
    is a date; the end of a discharge day) on its wall clock (meds_io.wall_clock); None: the times' own clock.
    """
    # each time's day on the data's wall clock, and the UTC instant that day ends (a changeover day is 23 or 25 h)
    events = events.with_columns(wall_clock_expr(pl.col("t"), zone).alias("t_local"),
                                 day_end_expr(pl.col("t"), zone).alias("t_day_end"))
    from ehrfm.io import progress

    stays: list[Stay] = []
    groups = events.group_by("subject_id", maintain_order=True)
    for (subject_id,), ev in progress(groups, total=events["subject_id"].n_unique(), desc="labels: stays", unit="subject"):
        codes = ev["code"].to_list()
        times = ev["t"].to_list()
        local = dict(zip(times, ev["t_local"].to_list(), strict=True)).__getitem__  # its day and time of day
        day_end = dict(zip(times, ev["t_day_end"].to_list(), strict=True)).__getitem__
        deaths = [t for c, t in zip(codes, times, strict=False) if c == DEATH_CODE and t is not None]
        first_death = min(deaths) if deaths else None
        # A death at exactly 00:00 is a date (MIMIC-IV's patients.dod, which ETLs such as MIMIC_IV_MEDS
        # place at midnight): it happened at some time that day, up to `death_by`. An admission that day
        # is not after it (a readmission that day was real), and on a discharge day it is in hospital
        # only as a later death on that day is (the rule below: not after a live discharge).
        death_local = local(first_death) if first_death is not None else None  # its wall clock: its day and time of day
        death_is_date = death_local is not None and death_local % US_PER_DAY == 0
        death_by = day_end(first_death) - 1 if death_is_date else first_death
        # A death at 23:59:59 (or later in its second) is a date placed at the end of its day (this package's
        # ETL, patients.dod): on a discharge day it is no later than a date-only discharge placed there too.
        death_at_day_end = death_local is not None and death_local % US_PER_DAY >= US_PER_DAY - 1_000_000
        # Group by timestamp: at a shared timestamp the open stay is closed first, then new
        # admissions open, then a remaining discharge closes a zero-length stay.
        by_time: dict[int, tuple[list[str], list[str]]] = {}
        for c, t in zip(codes, times, strict=False):
            if t is None:
                continue
            if c.startswith(ADMISSION_PREFIX):
                by_time.setdefault(t, ([], []))[0].append(c)
            elif c.startswith(DISCHARGE_PREFIX):
                by_time.setdefault(t, ([], []))[1].append(c)
        ids = ev[STAY_ID].to_list() if STAY_ID in ev.columns else [None] * len(codes)
        by_id = by_stay_id and STAY_ID in ev.columns and all(
            i is not None for c, i in zip(codes, ids, strict=False)
            if c.startswith(ADMISSION_PREFIX) or c.startswith(DISCHARGE_PREFIX))
        pairs = _pairs_by_id(codes, times, ids) if by_id else _pairs_by_time(by_time)
        unpaired = _unpaired_discharges(codes, times, ids, pairs, by_id)
        # A death its subject's own records contradict: a stay open at it (after its day, for a date) discharged to
        # a named live destination (HOME, ...). Which record is wrong is unknown, so no label rests on either. (A stay
        # admitted after the death, an organ donation's, may name any destination: it is admitted_after_death.)
        # A timed death at the very moment of a live discharge contradicts it too: a stay's own deathtime after a
        # HOME discharge (which this package's ETL moves to the death) was an in-hospital death, silently.
        # (A death that is a date, placed at its day's end, is after a live discharge that day: the rule below.)
        timed_death = first_death is not None and not death_is_date and not death_at_day_end
        contradicted = first_death is not None and any(
            dis is not None and _live_discharge(code) and (adm <= death_by < dis or (timed_death and first_death == dis))
            for adm, dis, code, _ in pairs)
        for adm, dis, dis_code, sid in pairs:
            before_admission = dis_code == BEFORE_ADMISSION
            dis_code = "" if before_admission else dis_code
            # With stay ids, ICU rows of another stay are that stay's facts, not this one's.
            icu_times = [t for c, t, i in zip(codes, times, ids, strict=False) if c.startswith(ICU_ADMISSION_PREFIX)
                         and (sid is None or i is None or i == sid)]
            died = dis_code == DIED_DISCHARGE_CODE
            if dis is not None and not died and first_death is not None:
                dis_local = local(dis)
                end_of_discharge_day = day_end(dis)
                # A day-resolved death later on the discharge day is in hospital unless the
                # discharge names where a live patient went (HOME, HOSPICE, ...): then it is a
                # death after discharge (MIMIC-IV's patients.dod of an out-of-hospital death).
                on_discharge_day = (death_is_date or death_at_day_end) and death_local // US_PER_DAY == dis_local // US_PER_DAY
                died = (adm <= death_by and first_death <= dis and not on_discharge_day) or (
                    (dis < first_death < end_of_discharge_day or on_discharge_day) and not _live_discharge(dis_code))
            first_icu = None
            icu_start_unknown = False
            if dis is not None:
                in_stay = [t for t in icu_times if adm <= t <= dis]
                first_icu = min(in_stay) if in_stay else None
                icu_start_unknown = _icu_discharge_without_admission(codes, times, ids, sid, adm, dis)
            # In the ICU when the stay opens: an ICU admission in the 24 h before it, or one recorded
            # under this stay's own id before it (ED boarding; the ICU stay belongs to this stay).
            # Or an ICU stay of the subject (any id) begun earlier and ended (ICU_DISCHARGE) only after the
            # admission: still in the ICU at the prediction time, however long before it began.
            # Its own id: that of any stay admitted at its admission time (duplicated admissions share one
            # history, so a boarding of one is in the other's too, as the audit reads it).
            own_ids = {i for c, t, i in zip(codes, times, ids, strict=False) if c.startswith(ADMISSION_PREFIX) and t == adm
                       and i is not None} if sid is not None else set()
            just_before = any(adm - 24 * US_PER_HOUR <= t < adm for t in icu_times) or any(
                c.startswith(ICU_ADMISSION_PREFIX) and i in own_ids and t < adm for c, t, i in zip(codes, times, ids, strict=False)
            ) or _icu_open_at(codes, times, adm)
            # `death` keeps the recorded time: a MEDS_DEATH at or before a prediction time is in its history.
            death = first_death if first_death is not None and death_by >= adm else None
            after_death = first_death is not None and adm > death_by
            location = dis_code[len(DISCHARGE_PREFIX):].strip().upper() if dis_code.startswith(DISCHARGE_PREFIX) else ""
            starts = [adm]
            if sid is not None and first_events:
                starts += [t for t in (first_events.get((int(subject_id), str(sid))),) if t is not None]
            written_span = None
            if before_admission:  # its discharge as written, before the admission: the stay lies between the two
                written = max(t for c, t, i in zip(codes, times, ids, strict=False) if c.startswith(DISCHARGE_PREFIX) and i == sid)
                starts.append(written)
                written_span = (written, adm)
            stays.append(Stay(int(subject_id), adm, dis, died, first_icu, just_before, death, after_death, location,
                              before_admission, min(starts), written_span, contradicted, unpaired, icu_start_unknown))
    return stays


def _unpaired_discharges(codes: list[str], times: list[int], ids: list, pairs: list, by_id: bool) -> tuple[int, ...]:
    """The times of a subject's discharges that end none of its stays and lie in none of them, sorted.

    By stay id: a discharge of an id without an admission; by time: one left over by the pairing. One inside a
    paired stay (a repeated row) or after an open stay's admission is no other stay. What is left is a stay whose
    admission has no time (the ETL drops that row, `missing_time`, and keeps the rest of the stay): its start is
    unknown, so whether it is a readmission within the window is too.
    """
    admitted = {i for c, i in zip(codes, ids, strict=False) if c.startswith(ADMISSION_PREFIX)}
    discharges = [(t, i) for c, t, i in zip(codes, times, ids, strict=False) if c.startswith(DISCHARGE_PREFIX) and t is not None]
    if by_id:
        left = [t for t, i in discharges if i not in admitted]
    else:
        used = [dis for _, dis, _, _ in pairs if dis is not None]
        left = []
        for t, _ in discharges:
            if t in used:
                used.remove(t)
            else:
                left.append(t)
    spans = [(adm, dis) for adm, dis, _, _ in pairs]
    return tuple(sorted(t for t in left if not any(adm <= t and (dis is None or t <= dis) for adm, dis in spans)))


def _icu_discharge_without_admission(codes: list[str], times: list[int], ids: list, sid, adm: int, dis: int) -> bool:
    """Does the stay [adm, dis] hold an ICU discharge (of its stay id, or none) whose previous ICU event is no ICU admission?

    An icustays row without intime loses its ICU_ADMISSION (missing_time) and keeps its ICU_DISCHARGE: the ICU
    stay's start, before or after a prediction time, is unknown (its label was negative, silently).
    """
    icu = sorted((t, c.startswith(ICU_ADMISSION_PREFIX)) for c, t, i in zip(codes, times, ids, strict=False)
                 if t is not None and (c.startswith(ICU_ADMISSION_PREFIX) or c.startswith(ICU_DISCHARGE_PREFIX))
                 and (sid is None or i is None or i == sid))
    for k, (t, is_admission) in enumerate(icu):
        if not is_admission and adm < t <= dis and (k == 0 or not icu[k - 1][1]):
            return True
    return False


def _icu_open_at(codes: list[str], times: list[int], at: int) -> bool:
    """Is an ICU stay open at `at`: the last ICU admission before it followed by no ICU discharge until after it?

    Only a recorded ICU discharge later than `at` says so (data without ICU_DISCHARGE//* rows never does).
    """
    ins = [t for c, t in zip(codes, times, strict=False) if c.startswith(ICU_ADMISSION_PREFIX) and t < at]
    if not ins:
        return False
    # Its own discharge: the next ICU event after it, when that is a discharge (a later ICU admission first
    # means this one's discharge is missing, and a discharge after that one is the later stay's).
    after = sorted((t, c.startswith(ICU_DISCHARGE_PREFIX)) for c, t in zip(codes, times, strict=False)
                   if (c.startswith(ICU_ADMISSION_PREFIX) or c.startswith(ICU_DISCHARGE_PREFIX)) and t > max(ins))
    return bool(after) and after[0][1] and after[0][0] > at


def _open_at_discharge(stays: list[Stay]) -> list[bool]:
    """For each stay, is another stay of the subject open at its discharge (admitted before, discharged after)?"""
    by_subject: dict[int, list[Stay]] = {}
    for s in stays:
        if s.discharge is not None and not s.admitted_after_death:
            by_subject.setdefault(s.subject_id, []).append(s)
    return [s.discharge is not None and any(o is not s and o.admission < s.discharge < o.discharge
                                            for o in by_subject.get(s.subject_id, [])) for s in stays]


def _next_stays(stays: list[Stay]) -> list[tuple[int | None, int | None]]:
    """For each stay, its subject's next admission after its discharge, as (earliest, latest) time.

    (None, None) for a stay without a discharge or a next stay. The next stay is the one admitted
    first at or after the discharge (an admission after death is no readmission). A stay whose
    discharge precedes its admission (bad data) may have been admitted at either time: the first
    value takes the earlier, the second the later, so a label that depends on which is told by the
    two disagreeing (they are equal otherwise).
    """
    by_subject: dict[int, list[Stay]] = {}
    for s in stays:
        if not s.admitted_after_death:
            by_subject.setdefault(s.subject_id, []).append(s)
    out = []
    for s in stays:
        later = []
        for o in by_subject.get(s.subject_id, []) if s.discharge is not None else []:
            early, late = o.written_span or (o.admission, o.admission)
            if o.admission != s.admission and late >= s.discharge:
                later.append((early if early >= s.discharge else late, late))
        out.append((min(e for e, _ in later), min(v for _, v in later)) if later else (None, None))
    return out


def _later_stays_begun(stays: list[Stay]) -> dict[int, list[tuple[int, int]]]:
    """{subject_id: [(admission, first row) of each stay whose first row precedes its admission]}.

    A label whose prediction time falls between the two has a row of a stay that begins after it in
    its history (`later_stay_in_history`; the audit's (a) counts the same).
    """
    out: dict[int, list[tuple[int, int]]] = {}
    for s in stays:
        if s.first_event is not None and s.first_event < s.admission:
            out.setdefault(s.subject_id, []).append((s.admission, s.first_event))
    return out


# --- the tasks -------------------------------------------------------------------------------------
def labels_from_stays(stays: list[Stay], cfg: LabelConfig, notes: dict | None = None) -> tuple[pl.DataFrame, dict]:
    """Apply one task's definition to the stays: (labels frame, exclusion counts).

    notes: for readmission_30d, filled with how many negative labels have no later admission in
    the data at all ("negative_no_later_admission": follow-up ends with the data, an assumption
    the negative rests on) and how many of those died within the window after discharge
    ("negative_died_within_window": a competing death, labelled negative as no readmission).
    """
    if cfg.task not in TASKS:
        raise UserError(f"unknown task {cfg.task!r}; choose one of {', '.join(TASKS)} or all")
    gap = int(cfg.gap_hours * US_PER_HOUR)
    transfer = int(cfg.transfer_hours * US_PER_HOUR)
    direct_icu = int(cfg.direct_icu_minutes * 60_000_000)
    rows: list[tuple] = []  # (subject_id, prediction_time, label[, why negative: 0, 1 no later admission, 2 + died])
    excluded = {"no_discharge": 0}

    def exclude(reason: str) -> None:
        excluded[reason] = excluded.get(reason, 0) + 1

    nexts = _next_stays(stays)
    begun = _later_stays_begun(stays)
    still_in = _open_at_discharge(stays)
    for s, (nxt, nxt_late), in_other in zip(stays, nexts, still_in, strict=False):
        if s.death_contradicted:
            exclude("death_contradicted")
            continue
        if s.admitted_after_death:
            exclude("admitted_after_death")
            continue
        if s.discharge_before_admission:  # bad data, not an open stay: counted apart from no_discharge
            exclude("discharge_before_admission")
            continue
        if s.discharge is None:
            excluded["no_discharge"] += 1
            continue
        pred = {"in_hospital_mortality": s.admission + gap, "long_los": s.admission + gap,
                "icu_admission": s.admission}.get(cfg.task, s.discharge)
        # The outcome is known once the subject has died: no prediction is left to make.
        if s.death is not None and s.death <= pred and not (cfg.task == "readmission_30d" and s.died):
            exclude("died_before_prediction_time")
            continue
        # A stay that begins after the prediction time already has a row in the history (its ED registration or
        # orders under its hadm_id): the patient is alive and coming back, whatever the task's outcome.
        if any(first <= pred < admission for admission, first in begun.get(s.subject_id, ())):
            exclude("later_stay_in_history")
            continue
        # A stay the next one continues within the transfer window (an observation stay admitted as
        # inpatient, an internal transfer recorded as discharge + admission): its discharge is no end
        # of care, so its outcome (a death, the length of stay, an ICU bed) is not this stay's alone.
        continued = nxt is not None and nxt - s.discharge <= transfer
        # Discharged while another stay of the subject is open (overlapping stay ids): the patient is still in
        # hospital, so neither this stay's end (death, length of stay, ICU bed) nor its discharge is its own.
        if in_other:
            exclude("in_another_stay_at_discharge")
            continue
        if cfg.task in ("in_hospital_mortality", "long_los"):
            if s.discharge <= pred:
                exclude("ended_before_prediction_time")
                continue
            if continued:
                exclude("transferred")
                continue
            if cfg.task == "in_hospital_mortality":
                rows.append((s.subject_id, pred, s.died))
            else:
                rows.append((s.subject_id, pred, s.discharge - s.admission > cfg.long_los_days * US_PER_DAY))
        elif cfg.task == "icu_admission":
            if s.discharge <= pred:
                exclude("ended_at_admission")
                continue
            if s.icu_just_before or (s.first_icu is not None and s.first_icu <= pred):
                exclude("in_icu_at_prediction_time")
                continue
            if s.first_icu is not None and s.first_icu - pred < direct_icu:
                exclude("admitted_directly_to_icu")
                continue
            if s.icu_start_unknown:  # an ICU stay in it whose admission has no time: in the ICU at admission, or later?
                exclude("icu_admission_time_unknown")
                continue
            if continued:
                exclude("transferred")
                continue
            rows.append((s.subject_id, pred, s.first_icu is not None))
        else:  # readmission_30d
            if s.died:
                exclude("died_in_hospital")
                continue
            if continued:
                exclude("transferred")
                continue
            if s.discharge_location in OTHER_HOSPITAL_LOCATIONS:  # in acute care elsewhere: no return here to see
                exclude("discharged_to_another_hospital")
                continue
            window = cfg.readmission_days * US_PER_DAY
            label = nxt is not None and nxt - s.discharge <= window
            if nxt_late is not None and label != (nxt_late - s.discharge <= window):
                exclude("next_admission_time_unknown")  # a next stay with its discharge before its admission
                continue
            if not label and any(u > s.discharge and (nxt is None or u < nxt) for u in s.unpaired_discharges):
                # a stay with no admission time ends before the next known one: it may have begun within the window
                exclude("next_admission_time_unknown")
                continue
            died_in_window = s.death is not None and s.death - s.discharge <= cfg.readmission_days * US_PER_DAY
            rows.append((s.subject_id, s.discharge, label, 0 if nxt is not None else 2 if died_in_window else 1))
    rows = [r if len(r) == 4 else (*r, 0) for r in rows]
    frame = pl.DataFrame(
        rows,
        schema={"subject_id": pl.Int64, "prediction_time": pl.Int64, "boolean_value": pl.Boolean, "_why": pl.Int8},
        orient="row",
    ).with_columns(pl.col("prediction_time").cast(pl.Datetime("us")))
    # Two stays can share a prediction time only through duplicated source rows; keep one, counted.
    n_rows = frame.height
    frame = frame.unique(["subject_id", "prediction_time"], keep="first", maintain_order=True)
    if frame.height < n_rows:
        excluded["duplicate_prediction_time"] = n_rows - frame.height
    if notes is not None and cfg.task == "readmission_30d":
        notes["negative_no_later_admission"] = int((frame["_why"] >= 1).sum())
        notes["negative_died_within_window"] = int((frame["_why"] == 2).sum())
    frame = frame.drop("_why").sort("subject_id", "prediction_time")
    return frame, excluded


# A label window longer than any life is no window; past ~290,000 years its microseconds overflow int64 (a traceback).
MAX_WINDOW_YEARS = 150
WINDOW_UNITS_PER_YEAR = {"gap_hours": 8766.0, "long_los_days": 365.25, "readmission_days": 365.25,
                         "transfer_hours": 8766.0, "direct_icu_minutes": 525_960.0}
WINDOW_STRICT = frozenset({"long_los_days", "readmission_days"})  # must be > 0; the others >= 0


def check_label_window(name: str, value, where: str | None = None) -> float:
    """A label window (gap_hours, long_los_days, readmission_days, transfer_hours or direct_icu_minutes) as a float.

    Raises:
        UserError: not a number, not finite, negative (0 too for long_los_days and readmission_days), or longer
            than MAX_WINDOW_YEARS; named as the flag (`--gap-hours`), or as `where`'s config key when given
            (a label file's sidecar JSON).
    """
    what = f"--{name.replace('_', '-')}" if where is None else f"{where}: config {name!r}"
    try:
        v = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        v = math.nan
    strict = name in WINDOW_STRICT
    most = MAX_WINDOW_YEARS * WINDOW_UNITS_PER_YEAR[name]
    if not math.isfinite(v) or v < 0 or (strict and v == 0) or v > most:
        need = f"{'> 0' if strict else '>= 0'} and at most {most:g} ({MAX_WINDOW_YEARS} years)"
        raise UserError(f"{what} must be a finite number {need} (got {value!r})")
    return v


def check_label_options(options: dict, task: str | None = None) -> None:
    """Refuse windows that cannot define a task (UserError naming the flag), before any data is read.

    Each window as `check_label_window` wants it: gap_hours >= 0 (a negative gap would predict before the
    admission the label is about); long_los_days and readmission_days > 0; direct_icu_minutes >= 0;
    transfer_hours >= 0 and shorter than the readmission window; all finite and at most MAX_WINDOW_YEARS.
    For long_los (or "all"), the gap must be shorter than the long-stay
    threshold: a stay still open at admission + gap would already have
    lasted the threshold, so every label would be positive and known at the prediction time.
    """
    for name in WINDOW_UNITS_PER_YEAR:
        if name in options and options[name] is not None:
            check_label_window(name, options[name])
    if task in ("readmission_30d", "all"):
        hours = float(options.get("transfer_hours") if options.get("transfer_hours") is not None else LabelConfig.transfer_hours)
        days = float(options.get("readmission_days") if options.get("readmission_days") is not None
                     else LabelConfig.readmission_days)
        if hours >= days * 24:
            raise UserError(f"--transfer-hours {hours:g} is not shorter than --readmission-days {days:g} ({days * 24:g} h): "
                            "every readmission would be a transfer; use a shorter transfer window")
    if task in ("long_los", "all"):
        gap = float(options.get("gap_hours") if options.get("gap_hours") is not None else LabelConfig.gap_hours)
        days = float(options.get("long_los_days") if options.get("long_los_days") is not None else LabelConfig.long_los_days)
        if gap >= days * 24:
            raise UserError(f"--gap-hours {gap:g} is not shorter than --long-los-days {days:g} ({days * 24:g} h): every "
                            "long_los stay open at the prediction time would already be long (all labels positive, the "
                            "outcome known); use a shorter gap or a longer threshold")


# Codes of other conventions that may stand for a task's codes (meds_etl's Visit/IP, a bare DEATH, lower case),
# named in the error when a task's own codes are absent, so the user sees what to map. Case-insensitive regexes on
# the whole code; most match the code's first part only (a drug named "Critical Care" is no ICU stay).
STAY_LOOK_ALIKE = r"^(HOSPITAL_|HOSP_|IP_)?(ADMISSION|ADMIT|DISCHARGE|VISIT|VISIT_END|ENCOUNTER|INPATIENT)[A-Z_]*(/|$)"
DEATH_LOOK_ALIKE = r"^[A-Z_]*(DEATH|DECEASED|MORTALITY)[A-Z_]*(/|$)|DISCHARGE[A-Z_]*//.*(DIED|EXPIRED|DEAD)"
ICU_LOOK_ALIKE = r"^[A-Z_]*(ICU|INTENSIVE)[A-Z_]*(/|$)"
CODE_HINT = ("ehrfm labels reads MIMIC_IV_MEDS-style codes (MEDS_DEATH, HOSPITAL_ADMISSION//*, HOSPITAL_DISCHARGE//*, "
             "ICU_ADMISSION//*; README \"Clinical tasks\"): rename your dataset's codes to them, or make labels with ACES")


def _n_subjects(ds: MedsDataset) -> int:
    return ds.subject_splits().height


def _look_alike(ds: MedsDataset, pattern: str, n: int = 5) -> str:
    """' (codes like it in the data: X (k rows), ...)' for codes matching `pattern`, the most frequent first; else ''."""
    shards = [sh for shards in ds.shards.values() for sh in shards]
    found = (scan_shards(shards, ["code"]).filter(pl.col("code").str.contains(f"(?i){pattern}"))
             .group_by("code").len().sort("len", "code", descending=[True, False]).collect())
    if not found.height:
        return ""
    parts = ", ".join(f"{c} ({k} rows)" for c, k in found.head(n).iter_rows())
    more = f" and {found.height - n} more" if found.height > n else ""
    return f" (codes like it in the data: {parts}{more})"


def _missing_outcomes(meds_dir, events: pl.DataFrame, ds: MedsDataset, tasks: tuple[str, ...]) -> dict[str, str]:
    """Per task whose outcome codes the dataset lacks entirely, a warning line naming the codes and counts.

    Labels made without them are all negative: a dataset that writes DEATH, not MEDS_DEATH, gave 243
    mortality labels with 0 positives and no word. Not refused: a small dataset may truly hold no
    death or ICU stay. Said on stderr once per task and kept in the label info (`missing_outcome_codes`).
    """
    codes = events["code"]
    found: dict[str, tuple[str, str]] = {}  # task -> (what is absent, look-alike regex)
    if "in_hospital_mortality" in tasks and not ((codes == DEATH_CODE).any() or (codes == DIED_DISCHARGE_CODE).any()):
        untimed = int(ds.null_time_codes.get(DEATH_CODE, 0))
        note = f"; its {untimed} {DEATH_CODE} rows have no time" if untimed else ""
        found["in_hospital_mortality"] = f"no {DEATH_CODE} or {DIED_DISCHARGE_CODE} row{note}", DEATH_LOOK_ALIKE
    if "icu_admission" in tasks and not codes.str.starts_with(ICU_ADMISSION_PREFIX).any():
        found["icu_admission"] = f"no {ICU_ADMISSION_PREFIX}* row", ICU_LOOK_ALIKE
    if not found:
        return {}
    from ehrfm.io import warn

    n, said = _n_subjects(ds), {}
    for task, (why, pattern) in found.items():
        said[task] = f"{why} among the {n} subjects{_look_alike(ds, pattern)}"
        warn(f"labels: {task}: every label is negative: {said[task]} of {meds_dir}. {CODE_HINT}")
    return said


def make_labels(meds_dir: str | os.PathLike, task: str, **options) -> tuple[pl.DataFrame, dict]:
    """Labels of one task (or of every task, task="all") from a MEDS dataset dir.

    Returns (labels, info) for one task, where labels has the MEDS label schema columns and info
    holds n, n_positive, prevalence, excluded counts and the config. For task="all" returns
    ({task: labels}, {task: info}).
    """
    check_label_options(options, task)
    events, ds, lacking = _stay_events(meds_dir)
    events, misfiled = without_misfiled_icu_ids(events)
    if misfiled:
        from ehrfm.io import warn

        warn(f"labels: {misfiled} ICU admission row(s) of {meds_dir} lie inside another stay of their subject, over "
             f"{MISFILED_ICU_HOURS} h outside the stay their {STAY_ID} names: that id is taken as wrong and they are paired "
             "with stays by time")
    first_events = None
    if STAY_ID in events.columns:
        first_events = {(subject, stay): t for subject, stay, t in stay_first_rows(ds).iter_rows()}
    stays = stays_from_events(events, first_events=first_events, zone=calendar_zone(ds))
    tasks = TASKS if task == "all" else (task,)
    if not stays:  # every task would write an empty file that looks like a result
        n_adm = events.filter(pl.col("code").str.starts_with(ADMISSION_PREFIX)).height
        n_dis = events.filter(pl.col("code").str.starts_with(DISCHARGE_PREFIX)).height
        raise UserError(f"MEDS {meds_dir}: no hospital stays among {_n_subjects(ds)} subjects: looked for a "
                        f"{ADMISSION_PREFIX}* row followed by a {DISCHARGE_PREFIX}* row (found {n_adm} and {n_dis} rows)"
                        f"{_look_alike(ds, STAY_LOOK_ALIKE)}; nothing to label. {CODE_HINT}")
    missing = _missing_outcomes(meds_dir, events, ds, tasks)
    deaths = _death_counts(events, ds)
    contradicted = len({s.subject_id for s in stays if s.death_contradicted})
    deaths["subjects_with_death_before_a_live_discharge"] = contradicted
    if contradicted:
        from ehrfm.io import warn

        warn(f"labels: {contradicted} subject(s) of {meds_dir} have a death ({DEATH_CODE}) before a discharge to a named "
             "live destination: one of the two records is wrong, so their stays are excluded from every task "
             "(death_contradicted in labels.json)")
    unpaired = int(events["code"].str.starts_with(DISCHARGE_PREFIX).sum()) - sum(s.discharge is not None for s in stays)
    pairing = "by time order" if STAY_ID not in events.columns else f"by {STAY_ID}" + (
        f" (by time order for the subjects of {len(lacking)} shard files without it)" if lacking else "")
    out_labels, out_info = {}, {}
    for t in tasks:
        cfg = LabelConfig(meds_dir=str(meds_dir), task=t, **options)
        notes: dict = {}
        labels, excluded = labels_from_stays(stays, cfg, notes)
        n = labels.height
        n_pos = int(labels["boolean_value"].sum()) if n else 0
        out_labels[t] = labels
        out_info[t] = {
            "task": t,
            "n": n,
            "n_positive": n_pos,
            "prevalence": n_pos / n if n else None,
            "n_stays": len(stays),
            "n_subjects": labels["subject_id"].n_unique(),
            "excluded": excluded,
            "n_excluded": sum(excluded.values()),
            "deaths": deaths,
            "stay_pairing": pairing,
            # Discharge rows no stay ended with (before any admission, a second of one stay, one of an id without
            # an admission): ignored, so counted; a timeline that starts mid-stay has one.
            "discharges_not_paired": unpaired,
            "dropped_null_time_rows": ds.null_time_codes,
            # the clock of the data the prediction times were taken from (read_labels compares it with the data a
            # head reads them against): zones other than UTC, [] for naive (or UTC) times
            "meds_time_zones": ds.time_zones(),
            "config": dataclasses.asdict(cfg),
        }
        if t in missing:  # its outcome codes are absent: every label is negative (warned)
            out_info[t]["missing_outcome_codes"] = missing[t]
        if notes:  # readmission: what its negatives rest on (labels_from_stays)
            out_info[t]["negatives"] = notes
    if task == "all":
        return out_labels, out_info
    return out_labels[task], out_info[task]


# --- label files -----------------------------------------------------------------------------------
def to_label_table(labels: pl.DataFrame) -> pa.Table:
    """A polars labels frame -> a pyarrow table that meds.LabelSchema validates."""
    from meds import LabelSchema

    table = pa.table(
        {
            "subject_id": pa.array(labels["subject_id"].to_numpy(), pa.int64()),
            "prediction_time": labels["prediction_time"].cast(pl.Datetime("us")).to_arrow().cast(pa.timestamp("us")),
            "boolean_value": labels["boolean_value"].to_arrow().cast(pa.bool_()),
        }
    )
    LabelSchema.validate(table)
    return table


def _meds_inputs(info: dict) -> set[str]:
    """The MEDS dataset dir(s) labels were made from (make_labels's info of one task or of all)."""
    infos = [info] if "config" in info else list(info.values())
    return {i["config"]["meds_dir"] for i in infos if isinstance(i, dict) and "config" in i}


def write_labels(labels: pl.DataFrame, path: str | os.PathLike, info: dict | None = None) -> Path:
    """Write labels atomically as parquet (MEDS label schema) and, given `info`, `<stem>.json` beside it.

    The two files are replaced together (ehrfm.io.atomic_files): an interrupted write leaves the
    old pair or the new one, never labels beside another run's sidecar.

    UserError: `path` (or its sidecar) is, or lies inside, the MEDS dataset of info["config"].
    """
    import pyarrow.parquet as pq

    from ehrfm.io import FILE_OUTPUT_KEY, PARQUET_OUTPUT_KEY, atomic_file, atomic_files, check_not_input, write_json

    path = Path(path)
    if info is not None:
        for f in (path, path.with_suffix(".json")):
            check_not_input(f, _meds_inputs(info))
        info = {FILE_OUTPUT_KEY: "labels", **info}  # what --overwrite may replace (ehrfm.io.check_ehrfm_output)
    table = to_label_table(labels)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), PARQUET_OUTPUT_KEY: b"labels"})
    if info is None:
        with atomic_file(path, "wb") as f:
            pq.write_table(table, f)
        return path
    # Replaced together: labels interrupted beside an older run's sidecar would be read as that
    # run's task and windows (task_name, the audit, zeroshot's label_options).
    with atomic_files(path, path.with_suffix(".json")) as (parquet_tmp, sidecar_tmp):
        pq.write_table(table, parquet_tmp)
        write_json(sidecar_tmp, info)
    return path


def write_label_dir(labels: dict[str, pl.DataFrame], info: dict, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write every task's labels into one directory, atomically.

    `<task>.parquet` (MEDS label schema) and `<task>.json` per task, plus `labels.json` holding
    every task's counts (the layout `sweep collect --labels` and the demo read). `labels`, `info`:
    make_labels(meds, "all").

    Raises:
        UserError: `out` exists and `overwrite` is false, is, holds or lies inside the MEDS dataset
            the labels were made from (info's config), or is a directory ehrfm did not write.
    """
    from ehrfm.io import atomic_dir, write_json

    with atomic_dir(out, overwrite=overwrite, inputs=_meds_inputs(info), command="labels") as tmp:
        for task, frame in labels.items():
            write_labels(frame, tmp / f"{task}.parquet", info[task])
        write_json(tmp / "labels.json", info)
    return Path(out)


def recorded_task(path: str | os.PathLike) -> str | None:
    """The task `ehrfm labels` recorded for a label file (its sidecar `<stem>.json`'s "task"), or None."""
    import json

    side = Path(path).with_suffix(".json")
    try:
        t = json.loads(side.read_text(encoding="utf-8")).get("task")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return t if isinstance(t, str) else None


def _recorded_zones(path: Path) -> list[str] | None:
    """The MEDS time zones `ehrfm labels` recorded in a label file's sidecar (meds_time_zones), or None.

    None: no sidecar, or one written before 2026-12-07 (such files keep the earlier rule: trusted as UTC instants).
    """
    import json

    try:
        z = json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8")).get("meds_time_zones")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return z if isinstance(z, list) and all(isinstance(x, str) for x in z) else None


def task_name(path: str | os.PathLike) -> str:
    """The task of a label file: the one its sidecar JSON records, else the file stem."""
    return recorded_task(path) or Path(path).stem


def _visible_parquet_files(folder: Path) -> list[Path]:
    """The *.parquet files under `folder`, sorted, without hidden ones, as the MEDS readers leave them out.

    Hidden: a name starting with '.' anywhere below `folder` (macOS's ._* copies, .ipynb_checkpoints/).
    """
    from ehrfm.meds_io import _parquet_files

    return _parquet_files(folder, folder)


# A parquet dataset's part files: Spark's part-00000-<uuid>-c000.snappy.parquet, pyarrow's part-0.parquet, Dask's part.0.parquet
PART_FILE = re.compile(r"part[-_.]\d+")


def label_shards(path: Path) -> list[Path] | None:
    """The shards of ONE task's labels in `path`, when it is a sharded label dir, else None.

    ACES on sharded MEDS data (and the MEDS label layout) writes one task as
    `<task>/<split>/<shard>.parquet`: every parquet file lies in a folder named by a MEDS split
    (train, tuning, held_out or an alias), none at the top. A parquet dataset of one task is one
    too: the part files of Spark, pyarrow or Dask at the top (PART_FILE), or hive partitions
    (`split=train/0.parquet`, every folder `key=value`); each was taken for several tasks named
    "part-00000" (the audit) or refused (the heads), whose advice to pass one part scored half the
    labels. The splits are the data's, whatever the folders say. A dir of several tasks
    (`<task>.parquet` files, `ehrfm labels --task all`) is not one: it returns None.
    """
    from ehrfm.meds_io import split_name

    if not path.is_dir():
        return None
    files = _visible_parquet_files(path)
    if not files:
        return None
    parts = [f.relative_to(path).parts for f in files]
    in_splits = all(len(p) > 1 and split_name(p[0]) for p in parts)
    dataset = all(len(p) == 1 and PART_FILE.match(p[0]) for p in parts)
    hive = all(len(p) > 1 and all("=" in folder for folder in p[:-1]) for p in parts)
    return files if in_splits or dataset or hive else None


def task_label_paths(labels_dir: Path) -> dict[str, Path]:
    """{task: label file or shard dir} of a dir of tasks.

    Each `<task>.parquet` (task: its sidecar's, else the stem; `ehrfm labels --task all`) and each
    `<task>/` subdir of one task's shards (ACES's cohort_dir on sharded MEDS; label_shards). Empty
    when there is none.

    Raises:
        UserError: two of them are one task (a `los14.parquet` whose sidecar records long_los beside
            `long_los.parquet`): one would be scored, silently, under the other's name.
    """
    found = [(task_name(f), f) for f in sorted(labels_dir.glob("*.parquet")) if f.is_file() and not f.name.startswith(".")]
    found += [(sub.name, sub) for sub in sorted(p for p in labels_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
              if label_shards(sub)]
    out: dict[str, Path] = {}
    for task, f in found:
        if task in out:
            raise UserError(f"labels dir {labels_dir}: {out[task].name} and {f.name} both hold labels of task {task} "
                            "(a sidecar's \"task\", else the name): one task per file or shard dir; move one of them out")
        out[task] = f
    return out


def head_labels(path: str | os.PathLike, task: str | None = None) -> tuple[Path, str]:
    """(label file or sharded label dir, task) for a head, which scores one task.

    Args:
        path: a label parquet, a directory holding exactly one (e.g. one ACES task), or one task's
            shards in split folders (ACES on sharded MEDS: `<task>/<split>/<shard>.parquet`,
            label_shards; read_labels reads them all, the task is the dir's name).
        task: the task the user named (--task); None: the recorded task, else the file stem.

    Raises:
        UserError: `path` missing; a directory with no or several .parquet files that are not one
            task's shards (named: one task per head, as several would be mixed); or `task` given
            where the file records another task (its sidecar JSON, written by `ehrfm labels`), or,
            without a sidecar, is named after another of TASKS (`long_los.parquet`, an ACES output
            named by its config, or a shard dir `long_los/`).
    """
    path = Path(path)
    if label_shards(path):  # one task's shards: read together (refused before, as "several files")
        check_named_task(path, path.name, task)
        return path, task or path.name
    if path.is_dir():
        files = _visible_parquet_files(path)
        if len(files) != 1:
            names = ", ".join(str(f.relative_to(path)) for f in files[:6]) + (", ..." if len(files) > 6 else "")
            example = files[0] if files else path / "TASK.parquet"
            if files and label_shards(path / files[0].relative_to(path).parts[0]):
                example = path / files[0].relative_to(path).parts[0]  # a task's shard dir, not one shard of it
            raise UserError(f"--labels {path} is a directory holding {len(files)} parquet files ({names or 'none'}); a head "
                            "scores one task: pass one label file or task shard dir, e.g. --labels " + str(example))
        path = files[0]
    elif not path.is_file():
        raise UserError(f"label file {path} not found")
    recorded = recorded_task(path)
    if task is not None and recorded is not None and task != recorded:
        raise UserError(f"label file {path} holds labels of task {recorded} ({path.with_suffix('.json')}), not {task}: "
                        "pass that task's label file, or the matching --task")
    if recorded is None:
        check_named_task(path, path.stem, task)
    return path, task or recorded or path.stem


def check_named_task(path: Path, name: str, task: str | None) -> None:
    """Refuse `task`, one of TASKS, for labels without a sidecar whose file (or shard dir) is named after another.

    A zero-shot --task sets the rollout's outcome rule: long_los labels rolled out as mortality gave an
    AUROC of the wrong question, without a word.
    """
    if task in TASKS and name in TASKS and name != task:
        raise UserError(f"label file {path} is named after task {name}, not {task}: pass that task's label file, or "
                        f"--task {name} (a file of other labels: rename it)")


def read_labels(path: str | os.PathLike, allow_empty: bool = False, data_zones: list[str] | None = None,
                data: str = "the data") -> pl.DataFrame:
    """Read any label parquet in the MEDS label schema (ours, ACES output, ...).

    A file without rows is refused (a head cannot be fitted or scored on it) unless `allow_empty`
    (the audit: `ehrfm labels` writes a task that no stay qualifies for as a file without rows).
    Zoned prediction times are read as UTC instants, as zoned MEDS times are. With `data_zones` (the
    zones other than UTC of the MEDS times the labels are read against, `data` naming them; None:
    not known), a zone other than UTC beside data whose times have none is refused: that label
    is hours off its history, and read as UTC it put the outcome inside 25% of ICU-admission
    histories (probe AUROC 0.887 instead of 0.807, with only a warning). Likewise labels without a
    zone beside data with one, unless `ehrfm labels` wrote them (a sidecar: UTC instants, as it reads
    the data): their clock cannot be told. A file whose sidecar records the time zones of the data it was
    made from (meds_time_zones) is refused beside data on another clock (zoned there, naive here, or the
    reverse): the same wall clocks are other instants.

    Only boolean labels are used by the heads. Columns are cast to the schema's types; null
    labels or prediction times, and types that would be cast by guessing (`_check_label_types`),
    are refused with a count. Rows repeating a (subject_id, prediction_time) pair are dropped but
    the first of each, with one warning line on stderr giving the counts. Returns subject_id,
    prediction_time, boolean_value, sorted.
    """
    import pyarrow.parquet as pq
    from meds import LabelSchema

    from ehrfm.io import check_not_temporary

    check_not_temporary(path, "label file")
    path = Path(path)
    if path.is_dir():
        files = _visible_parquet_files(path)
        if not files:
            raise UserError(f"label dir {path} holds no parquet files (hidden ones, named '.*', are left out)")
    elif path.is_file():
        files = [path]
    else:
        raise UserError(f"label file {path} not found")
    frames = []
    own_split = []  # files that carry a split of their own, said once below
    for f in files:
        try:
            table = pq.read_table(f)
        except Exception as e:  # pyarrow raises several types for non-parquet input
            refuse_repeated_columns(f, "label file")  # readable, but a column named twice
            raise UserError(f"label file {f} is not a readable parquet file ({type(e).__name__})") from None
        cols = set(table.column_names)
        if "split" in cols or (path.is_dir() and any(d.startswith("split=") for d in f.relative_to(path).parts[:-1])):
            own_split.append(f)
        for col in ("subject_id", "prediction_time", "boolean_value"):
            if col not in cols:
                old = [o for o, c in LEGACY_COLUMNS.items() if c == col and o in cols]
                if old:
                    raise UserError(f"label file {f} lacks column {col!r} (found {old[0]!r}: the name used before "
                                    f"MEDS 0.3.2); ehrfm reads the MEDS {MEDS_VERSION} label schema")
                has = [c for c in OTHER_LABEL_VALUES if c in cols]
                raise UserError(f"label file {f} lacks column {col!r} (MEDS label schema; binary tasks need boolean_value"
                                + (f"; it has {', '.join(has)}: convert the labels to boolean_value)" if has else ")"))
        written = table.schema.field("prediction_time").type
        # 'Z' and '+05:30' (a pandas or Python datetime.timezone offset) as UTC instants, which they are
        frame = pl.from_arrow(as_utc_zones(table.select(["subject_id", "prediction_time", "boolean_value"])))
        zone = getattr(written, "tz", None) or getattr(frame["prediction_time"].dtype, "time_zone", None)
        if data_zones is not None and not data_zones and zone is not None and not is_utc(zone):
            raise UserError(f"label file {f}: column prediction_time has time zone {zone}, and the times of {data} have "
                            "none: read as UTC instants, each prediction time would sit hours off its history (look-ahead). "
                            "Write the labels on the data's clock without a zone (polars: "
                            "pl.col('prediction_time').dt.replace_time_zone(None) keeps the wall clock)")
        made_on = _recorded_zones(f)
        if data_zones is not None and made_on is not None and sorted(made_on) != sorted(data_zones):
            # An `ehrfm labels` file made from other data: the same stays zoned Asia/Tokyo there and naive here put
            # 46 of 295 ICU-admission histories past their outcome (baseline AUROC 0.963 instead of 0.611), warned only.
            def clock(zones):
                return f"in {', '.join(zones)}" if zones else "without a time zone"

            raise UserError(f"label file {f} was written by `ehrfm labels` from MEDS times {clock(made_on)} (its sidecar "
                            f"{f.with_suffix('.json').name}), and the times of {data} are {clock(data_zones)}: its prediction "
                            "times would sit hours off these histories (look-ahead). Make the labels from this data "
                            "(`ehrfm labels`)")
        if data_zones and zone is None and recorded_task(f) is None:
            # The data's zoned times are read as UTC instants (meds_io.scan_shard); a naive label time is
            # on no known clock. Written on the data's wall clock (the zone stripped), it sat 9 h after its
            # history beside Asia/Tokyo data: probe AUROC 1.000 instead of 0.710, without a word.
            # `ehrfm labels` (its sidecar) writes UTC instants, so those are read as they are.
            zones = ", ".join(data_zones)
            raise UserError(f"label file {f}: column prediction_time has no time zone, and the times of {data} are in "
                            f"{zones} (read as UTC instants): on which clock the labels are cannot be told, and on the "
                            "data's wall clock each would sit hours off its history (look-ahead). Give them their zone "
                            f"(polars: pl.col('prediction_time').dt.replace_time_zone('{data_zones[0]}') for wall-clock "
                            "times, or 'UTC' for UTC instants)")
        for col in ("subject_id", "prediction_time", "boolean_value"):
            nulls = frame[col].null_count()
            if nulls:
                # A MEDS label file may hold its label in another value column; say where it is,
                # as the heads (binary tasks) read boolean_value only.
                other = [f"{c} has {len(table[c]) - table[c].null_count}" for c in OTHER_LABEL_VALUES
                         if col == "boolean_value" and c in cols and table[c].null_count < len(table[c])]
                hint = f" ({', '.join(other)} values: binary tasks read boolean_value only; convert the labels to it)" if other else ""
                raise UserError(f"label file {f}: column {col} has {nulls} null rows{hint}")
        frame = _check_label_types(f, frame)
        for col, dtype in (("subject_id", pl.Int64), ("prediction_time", pl.Datetime("us")), ("boolean_value", pl.Boolean)):
            # Values the type check lets through but the schema's type cannot hold (a uint64 id past
            # int64's range): counted per column, never a polars cast error.
            cast = frame[col].cast(dtype, strict=False)
            bad = cast.null_count() - frame[col].null_count()
            if bad:
                raise UserError(f"label file {f}: column {col} ({frame[col].dtype}) has {bad} of {frame.height} rows that "
                                f"{dtype} (the MEDS {MEDS_VERSION} LabelSchema) cannot hold")
            frame = frame.with_columns(cast.alias(col))
        frames.append(frame)
    labels = pl.concat(frames).sort("subject_id", "prediction_time", maintain_order=True)
    _say_split_ignored(path, own_split)
    LabelSchema.validate(to_label_table(labels))
    if labels.height == 0 and not allow_empty:
        raise UserError(f"label file {path} has no rows")
    # One label per (subject, time), as make_labels keeps (duplicate_prediction_time): a repeat would
    # count twice in training and in the AUROC, and two stays starting together (ACES on the MIMIC-IV
    # demo writes one such pair) share one history, so only one label can be scored for it.
    pairs = labels.group_by("subject_id", "prediction_time").agg(pl.len(), pl.col("boolean_value").n_unique().alias("values"))
    repeated = pairs.filter(pl.col("len") > 1)
    disagree = int((repeated["values"] > 1).sum())
    if disagree:  # keeping the first row made the label, and the AUROC, depend on the file's row order
        raise UserError(f"label {'dir' if path.is_dir() else 'file'} {path}: column boolean_value: {disagree} "
                        "(subject_id, prediction_time) pairs have rows with both true and false, so their label cannot "
                        "be told; keep one row per pair")
    if repeated.height:
        from ehrfm.io import warn_once

        labels = labels.unique(["subject_id", "prediction_time"], keep="first", maintain_order=True)
        # once: a head reads its label file more than once (a probe said it 3x)
        warn_once("label repeats", str(path),
                  f"label {'dir' if path.is_dir() else 'file'} {path}: {repeated.height} (subject_id, prediction_time) "
                  f"pairs have more than one row, each with one value ({int(repeated['len'].sum() - repeated.height)} "
                  "repeated rows dropped)")
    return labels


def _check_label_types(path: Path, frame: pl.DataFrame) -> pl.DataFrame:
    """Refuse label columns whose type would be cast by guessing (the MEDS LabelSchema types).

    Returns `frame`, a zoned prediction_time made the naive UTC instant.

    subject_id must be an integer and prediction_time a timestamp (any unit), as in MEDS data
    (ehrfm.meds_io.COLUMN_TYPES): a date would predict at midnight, an epoch number in another unit
    in 1970. A zoned prediction_time is an instant: it is converted to naive UTC exactly as
    meds_io.scan_shard converts zoned MEDS times (with one warning), so both sides of each history
    cut are on one clock (stripping the zone instead, wall-clock, put labels hours after the UTC
    token times: look-ahead). boolean_value may be a boolean or numbers that are all 0 or 1; any
    other number (0.5, 2) is not a binary label; text ("True") is refused by its type.

    Raises:
        UserError: a column of another type, or boolean_value numbers other than 0 and 1 (counted).
    """
    from ehrfm.meds_io import COLUMN_TYPES, SUBJECT_ID, TIME

    for col, like in (("subject_id", SUBJECT_ID), ("prediction_time", TIME)):
        ok, want = COLUMN_TYPES[like]
        if not ok(frame[col].dtype):
            raise UserError(f"label file {path}: column {col} is {frame[col].dtype}, not {want} (the MEDS "
                            f"{MEDS_VERSION} LabelSchema); convert it where the labels are made")
    zone = getattr(frame["prediction_time"].dtype, "time_zone", None)
    if zone is not None:
        _warn_label_zone_once(zone, path)
        frame = frame.with_columns(pl.col("prediction_time").dt.convert_time_zone("UTC").dt.replace_time_zone(None))
    bv = frame["boolean_value"]
    if bv.dtype != pl.Boolean and not bv.dtype.is_numeric() and bv.dtype != pl.Null:
        raise UserError(f"label file {path}: column boolean_value is {bv.dtype}, not a boolean (or numbers 0/1) "
                        f"(the MEDS {MEDS_VERSION} LabelSchema); convert it where the labels are made")
    if bv.dtype.is_numeric():
        other = int(((bv != 0) & (bv != 1)).sum())
        if other:
            raise UserError(f"label file {path}: column boolean_value has {other} of {frame.height} rows that are "
                            "neither 0 nor 1 (nor true/false): not a binary label")
    return frame


def _say_split_ignored(path: Path, own_split: list[Path]) -> None:
    """One warning when label files under `path` carry their own split (`own_split`, read by read_labels).

    `own_split` lists the files with a `split` column or under hive `split=` folders. The heads score
    by the patient splits of the token dir the model was trained on (never a held-out patient the
    model saw), the baseline and the audit by the MEDS data's: a label file's own split was ignored
    without a word, and its user read held-out AUROCs of other patients.
    """
    if not own_split:
        return
    from ehrfm.io import warn_once

    # once per label file and process, not once per head of a sweep
    warn_once("label split", str(path), f"label {'dir' if path.is_dir() else 'file'} {path} carries its own split (a `split` column or split= folders): "
         "ignored; labels are split by the patient splits of the token dir (the model's) or the MEDS data")


def _warn_label_zone_once(zone: str, path: Path) -> None:
    """Say once that zoned prediction times are read as UTC instants, as zoned MEDS shards are."""
    if is_utc(zone):
        return
    from ehrfm.io import warn_once

    warn_once("label zone", zone, f"label file {path}: column prediction_time has time zone {zone}; ehrfm reads it as UTC instants, as it "
         f"reads zoned MEDS times. If the MEDS data's times have no zone and are {zone} wall-clock times, this puts "
         "each prediction time hours off its history: write the labels on that clock without a zone instead")


def epoch_us(labels: pl.DataFrame) -> np.ndarray:
    """prediction_time as int64 microseconds since the epoch (the token dir's time unit)."""
    return labels["prediction_time"].cast(pl.Datetime("us")).dt.epoch("us").to_numpy().astype(np.int64)


def us_to_datetime(us: int) -> datetime:
    """A naive UTC datetime of `us` microseconds since the epoch."""
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).replace(tzinfo=None)
