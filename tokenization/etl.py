"""Raw MIMIC-IV 2.x/3.x (hosp/, icu/, and ed/ of MIMIC-IV-ED when present; CSV[.gz]) -> a MEDS 0.4 dataset dir.

    etl(raw, out, overwrite=False, split_fractions=(0.8, 0.1, 0.1), split_seed=0, tables=None, ...)

Tables (TABLES; `tables=` / `ehrfm etl --tables` chooses, select_tables): every event table of
MIMIC-IV 2.2 and 3.1 -- hosp/patients, admissions (required), transfers, diagnoses_icd,
procedures_icd, drgcodes, labevents, prescriptions, emar, emar_detail, pharmacy, poe,
microbiologyevents, hcpcsevents, services, omr; icu/icustays, chartevents, inputevents,
outputevents, procedureevents, datetimeevents, ingredientevents -- and MIMIC-IV-ED's ed/edstays,
triage, vitalsign, diagnosis, medrecon, pyxis when the raw dir has ed/ (then edstays is
required: every ED event is timed by its ED stay). Not events: the d_* dictionaries (code
descriptions), provider and caregiver (id lists), poe_detail (attributes of poe orders), ED
free text (chiefcomplaint, icd_title). Headers match without regard to case; 3.1's only
difference in the columns read is the case of procedureevents' ORIGINALAMOUNT/ORIGINALRATE
(lower case in 3.1; compared against a 3.1 column inventory), and a table without the columns
this ETL needs is refused naming the table, every missing column and the columns it has, and
one it reads that the header names twice is refused too. Folder and file names match without
regard to case, a table file in another folder than its module's or only in a form this ETL does
not read (a `.part` download, a `.zip`, a split export) is refused (find_table), gzip is
recognised by content, not by the .gz name (other compressions are named), lines may end in LF,
CRLF or a lone CR, and quoted values may hold line breaks.

Output (DESIGN.md section 1):
    data/{train,tuning,held_out}/{k}.parquet   subject_id, time, code, numeric_value, text_value,
                                               hadm_id (extra column: the raw admission id)
    metadata/codes.parquet                     code, description, parent_codes (ICD codes: ICD9CM/,
                                               ICD9Proc/, ICD10CM/, ICD10PCS/ + the code), count
    metadata/dataset.json                      dataset_name, ..., meds_version, created_at
    metadata/subject_splits.parquet            subject_id, split
    metadata/etl_config.json                   the EtlConfig that made it, tables used and missing,
                                               the per-table account of rows, events and drops,
                                               optional columns a table lacked (read as empty),
                                               data files in raw's folders that no table is read from
    metadata/ehrfm_etl.json                    where date-only events sit, drops (for `ehrfm audit`)

How it stays within memory on the full MIMIC-IV:
1. Each raw table is read as a stream of CSV record batches of `batch_bytes` (pyarrow's
   streaming reader decompresses .gz incrementally), each batch is turned into MEDS events with
   polars and appended to a staging parquet file. No table is ever fully in memory.
2. Subjects are assigned to a split (stable hash of subject_id) and a shard of at most
   `shard_subjects` subjects; one pass over the staging files routes each batch's rows to
   per-shard bucket files (linear in events). A shard is assembled a chunk of subjects at a
   time (about `chunk_events` events; its bucket files are split by chunk in one read, a batch at a time): each
   chunk is deduplicated, timed, placed, sorted, validated against meds.DataSchema and appended
   to the shard's parquet file. Every step is per subject, so chunks give the same output as
   whole shards; memory is bounded by the chunk.
3. Dictionaries (d_icd_*, d_hcpcs, d_labitems, d_items) are read a row at a time, keeping only
   the codes present. `ehrfm etl` starts arrow's and polars' jemalloc lean (tokenization.cli.
   LEAN_ALLOCATOR_ENV: one arena, no thread cache, freed pages returned after 1 s) before either
   library loads; etl() called from Python switches arrow to its jemalloc pool.
   Peak RSS on the demo: 412-440 MB at issue 11, ~241 MB now with 22 tables (the reference
   MIMIC_IV_MEDS: 499 MB).
4. Both cores (`workers`, `ehrfm etl --workers N`; default: one process for under 64 MiB of raw
   input, else the CPUs this process may use, at most MAX_DEFAULT_WORKERS): steps 1 and 2 run in a pool of N spawned worker processes, one
   job at a time each: a table is staged (the largest files first; diagnoses and DRG codes after
   admissions, ED triage and diagnoses after the ED stays that time them) while a reader thread
   decompresses and parses its next CSV block; then each staged table is routed to its buckets;
   then each shard is assembled. A worker is bounded as the serial step is (one CSV block, one
   staged batch, one shard's bucket file and chunk), so the process tree holds at most N of
   those plus this process's lookups; each worker's polars pool gets CPUs // N threads.
   Counts are merged in table and shard order, so the output is byte-identical for any N;
   workers=1 runs every step in this process. An error in a worker is the serial path's: the
   first failing table in TABLES order, raised (without the worker's traceback) once running
   jobs have finished. Peak RSS of the whole tree, synthetic 100k patients (35M events): 697 MiB
   in one process, 1450 MiB with 2 workers (a spawned worker starts at ~180 MiB: python,
   polars, pyarrow); CPU time 109 s against 122 s before workers (the faster exact dedup,
   _unique_rows, more than pays for the processes). Wall time follows the free cores: 96 s
   against 127 s on 2 cores that other jobs kept at load 5-8.
Everything is written under `<out>.tmp-*` and renamed into place at the end.

Codes (MIMIC_IV_MEDS "//" style; values always in numeric_value, never in the code):
    GENDER//<F|M> (static), MEDS_BIRTH (1 Jan of anchor_year - anchor_age), MEDS_DEATH
    (admissions.deathtime, else patients.dod at 23:59:59 so a date never precedes the death),
    HOSPITAL_ADMISSION//<admission_type>//<admission_location>, HOSPITAL_DISCHARGE//<location>,
    ED_REGISTRATION, ED_OUT, TRANSFER_TO//<eventtype>//<careunit>, ICU_ADMISSION//<careunit>,
    ICU_DISCHARGE//<careunit>, DIAGNOSIS//ICD//<9|10>//<code> (at discharge, the earliest they are
    known: coded from the whole record, often days later), PROCEDURE//ICD//<9|10>//<code> (chartdate, a date: see below; at discharge for codes that
    state a duration, DURATION_CODED_PROCEDURES), DRG//<type>//<code>,
    LAB//<itemid>//<unit>, MEDICATION//<drug> (prescriptions: starttime, or its pharmacy row's
    entertime when later), OMR//<result_name>,
    VITAL//<itemid>//<unit> (chartevents), INFUSION//<itemid>//<unit>, OUTPUT//<itemid>//<unit>,
    PROCEDURE//ITEM//<itemid>,
    EMAR//<event_txt>//<medication> (every charted action: Administered, Not Given, ...),
    EMAR_DOSE//<product_description>//<dose_given_unit> (emar_detail product lines, value = dose
    given, at its emar row's time and stay), PHARMACY//<medication> (the later of starttime and
    entertime: an order is in the record from its entry; see Results below),
    POE//<order_type>//<order_subtype> (ordertime), MICROBIOLOGY//<test_name>//<org_name|NONE>
    [//<ab_name>] (storetime, else storedate as a date: when the result was known; value = dilution_value, text_value =
    interpretation S/I/R), HCPCS//<hcpcs_cd> (chartdate, a date), SERVICE//<curr_service>
    (transfertime), DATETIME//<itemid> (datetimeevents charttime; the charted date itself is not
    read), INGREDIENT//<itemid>//<amountuom> (value = amount), MIMIC-IV-ED: ED_ARRIVAL//<arrival_transport>
    (intime), ED_DISPOSITION//<disposition> (outtime), ED_TRIAGE//<temperature|heartrate|resprate|
    o2sat|sbp|dbp|pain|acuity> (at the ED stay's intime), ED_VITAL//<same but acuity> (charttime;
    pain is free text: a 0-10 rating where it states one, "7" or "7/10", else its text in text_value, _pain),
    ED_DIAGNOSIS//ICD//<9|10>//<code> (at the ED stay's outtime), ED_MEDRECON//<name>,
    ED_PYXIS//<name> (charttime). A missing or blank unit, location or name part is `UNK`;
    spaces around a part are dropped (`Vitamin D3 ` and a CHAR(7) `4019   ` are `Vitamin D3`, `4019`); so are
    spaces around every raw value when it is read, and a value of spaces only is empty (_trimmed). A tab or
    line break inside a value is one space (counted), as is a no-break or other Unicode space (counted);
    any other control character but NUL (C0, DEL, C1: cp1252 text read as Latin-1 leaves C1 characters in
    real free text) and any invisible format character (zero-width space, byte-order mark, soft hyphen,
    direction marks) is removed (counted); a NUL byte (a damaged copy) refuses the table, naming file,
    column and count (_without_control_characters): no code holds a control or invisible character.
Within one timestamp events keep a clinical order: admission, transfers, measurements,
medications, procedures, diagnoses, death, discharge; then source table, rank (seq_num of ICD
diagnoses and procedures, HCPCS: Table.rank), code, value, text, stay and row key (_event_order).
The order is a function of the events alone, never of the CSV rows' order or block size (numeric_value
-0.0 is written 0.0, _unsigned_zero: the two are equal to the sort and the duplicate check).

Dates and midnights (an event is never placed before the first moment it could have been known):
- A date-only value is a value of a DATE column of MIMIC-IV's schema (patients.dod,
  procedures_icd.chartdate, omr.chartdate, hcpcsevents.chartdate; whatever its text, e.g.
  `2150-03-01 00:00:00` from a database export) or any time value written without a time of day
  (e.g. `2150-03-01` in labevents.charttime or pharmacy.starttime). microbiologyevents.charttime
  falls back to the row's chartdate (a date) where empty, or where it is exactly that date's
  00:00:00 (a date written as a time, as for dischtime below). Audited in MIMIC-IV's schema
  (mimic-code's buildmimic create.sql) and on the real demo (these columns hold only dates;
  pharmacy.starttime and microbiologyevents.charttime mix; every other time column read holds
  only full timestamps). One rule for all of them: a date D is placed at D 23:59:59; an event with a
  stay (hadm_id) moves to the stay's discharge instead when the discharge falls on D before
  23:59:59 and no timed event of the subject on D comes after the discharge; a result's or an
  entered order's date (a table with a store or entry time: a culture's storedate) never moves
  there, as a record time can trail the discharge (a culture finalised that evening sat in the
  readmission history at its discharge). Earlier versions
  put procedures at 00:00 or at the admission, before the day's own events (look-ahead).
- Results (labevents, microbiologyevents, chartevents, outputevents, datetimeevents, inputevents,
  ingredientevents, procedureevents, emar): each row is placed at the later of its time column
  and its storetime, when its value was in the record (Table.stored_at). An ICU infusion's time
  column is its endtime, not its starttime: its amount is what ran until then (on the demo 12,867 of
  20,404 inputevents and 16,498 of 25,728 ingredientevents rows were stored before their endtime;
  at their start, 61 of 245 24-hour mortality histories held an amount that ran past the prediction time). On the real demo lab
  results were stored a median 65 min after the specimen (90th percentile 3 h) and culture
  results 73 h after it, so a result at its charttime entered 24-hour mortality histories before
  anyone knew it. A row without a storetime (a result never stored) is dropped and counted
  `result_never_stored`; a culture's storedate stands in for an empty storetime (a date: the
  date-only rule). A file without the storetime column keeps its rows at their time column and
  the metadata says so (`stored_time_sources`, present false), which `ehrfm audit` reports as
  leakage (e). Orders too: a pharmacy row is placed at the later of its starttime and its entertime
  (1,274 of 15,306 rows on the demo start before they were entered, median 0.8 h, up to 4 days),
  and a prescription at its pharmacy row's time when later (Table.entered_by: 1,404 moved, 15 of
  them by a pharmacy row that makes no event for its missing medication; all keep their starttime
  when hosp/pharmacy is not read). Rows that land on one time keep their source time in the event key (_key, with
  the row id where the table has one), so distinct source rows stay distinct events.
- Midnights: a timed value of exactly 00:00:00 is kept as a time, except admissions.dischtime.
  MIMIC-IV writes the discharge of some in-hospital deaths as the date at 00:00:00 while the
  death (deathtime) is later that day (3 of 15 deaths on the demo), so the discharge, its
  diagnoses and DRG codes would precede the day's events. Such a dischtime is read as a date:
  placed at 23:59:59 of its day, or sooner at the stay's deathtime or the subject's next
  admittime when either falls later that day. Any discharge before its own stay's death moves
  to the death. Midnight admittimes (planned surgical/elective admissions), lab and medication
  times are common real times (00:00 is a standard draw and order time) and are kept; every
  column's count of 00:00:00 values is reported. Counts: `midnight_times` per table and
  `discharge_times` in etl_config.json and the detail lines.
- Exact duplicate source rows are dropped, counted per table as `duplicate`. A row is told apart
  by the columns read plus its row id where its table has one (the event key, _key): poe_seq,
  pharmacy_id (pharmacy), emar_seq and the emar_detail product line always; Table.row_id, read
  when the file has it (without it, rows are compared in the other columns read): labevent_id,
  microevent_id, prescriptions' pharmacy_id, orderid (inputevents, ingredientevents,
  procedureevents), seq_num (procedures_icd, hcpcsevents, omr), med_rn (ED pyxis). So distinct
  records that give one event -- one drug ordered PR and PO at one time, two equal blood
  pressures of one day, ingredients of two orders -- stay two events: on the real demo, whose
  raw files hold no exact duplicate row, 3,183 such events were dropped as duplicates before
  (prescriptions 2,602, ingredientevents 344, omr 127, microbiologyevents 60, inputevents 19,
  labevents 18, procedureevents 12, hcpcsevents 1); now none is. Tables without a row id read:
  MIMIC-IV has none for chartevents, outputevents, datetimeevents, drgcodes, services, ED
  vitalsign and medrecon (its rows of one medication differ by GSN/NDC class only); a repeat in
  transfers or icustays (one move at one instant), diagnoses_icd and ED diagnosis (a code listed
  twice for one stay: one diagnosis) is no second event.
- Every other drop is counted by table and reason (events): missing_subject_id,
  unknown_subject_id (not in patients), missing_time, missing_hadm_id / unknown_hadm_id /
  hadm_id_of_another_subject / stay_without_dischtime (diagnoses and DRG codes, timed by their stay's discharge), missing_drug, missing_medication
  (emar, pharmacy), administration_summary_row / no_dose_given / no_emar_row (emar_detail: the
  parent row of an administration repeats its product lines; a line without a dose; a line
  whose emar row is absent or dropped), missing_stay_id / unknown_stay_id (ED triage and
  diagnoses), missing_name (ED medrecon, pyxis), discharge_row_made_by_admissions (transfers),
  icd_version_not_9_or_10 / no_icd_code (diagnoses_icd, procedures_icd, ED diagnosis: no ICD//<9|10>//<code> of them),
  no_drg_code (drgcodes), no_hcpcs_code (hcpcsevents),
  later_death_merged (one death per subject, the earliest kept), time_outside_lifetime (an
  event more than a year before the subject's MEDS_BIRTH -- its birth year is anchor_year -
  anchor_age, give or take one -- or over MAX_ANCHOR_AGE + 1 years after it: a database's
  sentinel date such as 1900-01-01 or 9999-12-31, an epoch-0 1970-01-01, or a date that was not
  shifted as MIMIC-IV's are; subjects without a birth are not checked). Distinct source rows keep
  their row id (above) so only true repeats are `duplicate`. A table keyed by one row per id
  (Table.key: patients, admissions, icustays, ED edstays and triage) with two different rows of one
  id is refused, naming file, column and how many ids (_one_row_per_key).
Kept but counted per table (etl_config.json `events_after_death`, and said in the table's line):
events timed after the subject's MEDS_DEATH (results stored after it, an ICU discharge or infusion
end charted after it: 225 events of 16 of the MIMIC-IV demo's 31 deceased subjects, up to 62 days
later for a culture). They happened; a label's history ends at its prediction time, before them.
  Numbers that do not parse are kept as null and counted (`unparseable_numbers_set_null`);
  numbers that parse but are no usable value -- NaN, infinite, or beyond float32's range
  (|x| > 3.4e38, which numeric_value would hold as inf: `1e308`, `Infinity`, `NaN` from an
  export) -- are kept as null too and counted (`out_of_range_numbers_set_null`); MIMIC-IV's
  de-identification placeholder `___` in a number column is kept as null and counted apart
  (`redacted_numbers_set_null`: removed on purpose, not a fault); unparseable
  ids and times refuse the table (UserError). ED pain is text, not a number column: text that
  states no 0-10 rating ("unable", "3-4", "13") is kept as text_value and counted
  (`text_values_kept`), not as unparseable; its placeholder `___` makes no event, counted as
  `redacted_numbers_set_null` as in the number columns. A hadm_id naming another subject's
  admission is kept as null and counted (`stay_ids_of_another_subject_set_null`; the event keeps
  its own time and is paired with a stay by time), and so is one of no admission in admissions
  (`unknown_stay_ids_set_null`, since 2026-12-08: it was written dangling, counted nowhere); a
  diagnosis or DRG code, timed by its stay's discharge, is dropped instead (`hadm_id_of_another_subject`,
  `unknown_hadm_id`, or `stay_without_dischtime` for a stay whose discharge time is missing).
  They are printed as detail lines before the one-line summary and written to
  metadata/etl_config.json: `tables` = {table: {rows_read, events_written, dropped: {reason: n},
  date_only_values: {column: n}, date_only_placed_at_discharge, midnight_times: {column: n},
  unparseable_numbers_set_null: {column: n}, out_of_range_numbers_set_null: {column: n},
  redacted_numbers_set_null: {column: n}, text_values_kept: {column: n}, moved_to_store_time:
  {column: n}, line_breaks_set_to_space: {column: n}, unicode_spaces_set_to_space: {column: n},
  control_characters_removed: {column: n}, stay_ids_of_another_subject_set_null: {"hadm_id": n},
  unknown_stay_ids_set_null: {"hadm_id": n}}} (the last thirteen only when non-zero), and `count_units` (COUNT_UNITS): which counts are
  per row read (a row listed twice counts twice; its repeat is a `duplicate` drop) and which per
  event written, after exact repeats are dropped (a row listed twice changes none of them).

metadata/ehrfm_etl.json (read by `ehrfm audit` without importing this package):
    {"format": "ehrfm_etl/1", "etl_name", "etl_version", "end_of_day": "23:59:59",
     "rules": {rule: text},            # DATE_RULES
     "date_only_sources": [{"table", "column", "code_prefixes": [...], "schema_date": bool,
                            "date_only_values": n, "rule": "end_of_day" | "end_of_day_or_discharge"
                            | "discharge", "time_of_day": "23:59:59",
                            "events_at_discharge": n | "midnight_values_read_as_date": n}],
     "discharge_times": {"midnight_read_as_date", "date_only", "moved_to_death",
                         "date_moved_by_death_or_next_admission", "before_admission",
                         "death_before_admission"},
     "tables": {...as in etl_config.json}, "duplicates_dropped": {table: n},
     "stored_time_sources": [{"table", "column", "store_column", "code_prefixes", "present": bool,
                              "moved": n, "never_stored_dropped": n}]}
An event whose code starts with a listed prefix came from that date-only source when its time
of day is 23:59:59 or equals its stay's HOSPITAL_DISCHARGE time; its source date is the date of
its time. Schema-date sources of the tables read are always listed (0 values when none); other
columns only when they held date-only values. So a prediction time T sees a date-only event of
T's own day only when the event sits at its stay's discharge and T is at or after that discharge
(e.g. readmission at discharge), when the event was known.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import gzip
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from ehrfm import fault_points
from ehrfm.errors import UserError
from ehrfm.io import atomic_dir, check_overwrite, progress, summary, write_json
from ehrfm.meds_io import SPLITS

ETL_NAME = "ehrfm.tokenization.etl"
ETL_VERSION = "0.1.0"
TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f",
                "%Y-%m-%d %H:%M", "%Y-%m-%d")
END_OF_DAY = pl.duration(hours=23, minutes=59, seconds=59)
END_OF_DAY_TEXT = "23:59:59"
SOURCE_TIME = "_source_time"  # a moved result's chart time (us): its event _key, see _at_stored_time
ROW_KEY = "_row_key"  # the row id (Table.row_id), with SOURCE_TIME where both: the event _key, see _with_row_key
MOVED = "_moved"  # a row's (then its events') flag: placed later than its time column (EVENT_SCHEMA)
DATE_FLAG = "_date_only__"  # + time column: that row's value was a date (placed by the date-only rule)
REDACTED_FLAG = "_redacted__"  # + number column: that row's value was the placeholder ___ (set null)
ETL_METADATA = "ehrfm_etl.json"  # in metadata/: what the audit reads (format in the module docstring)
ETL_METADATA_FORMAT = "ehrfm_etl/1"
# Staged rows routed to shard buckets at a time. With batch_bytes and chunk_events it sets the
# per-call overhead (each polars/arrow call costs ~ms): 64k-row batches, 1 MiB CSV blocks and
# 40k-event chunks spent most of a 30k-patient ETL's CPU time in overhead.
BUCKET_ROWS = 1 << 19
# Staging, bucket and chunk files are read once, soon: not compressed (snappy/zstd cost ~20-35% of
# their write time; dictionary and run-length encoding keep them ~8 bytes/event).
SCRATCH_COMPRESSION = "none"
DATE_RULES = {
    "end_of_day": "a date D is placed at D 23:59:59 (nothing on D can be known later)",
    "end_of_day_or_discharge": "a date D is placed at D 23:59:59, or at its stay's discharge (the HOSPITAL_DISCHARGE "
                               "time of the same hadm_id) when that falls on D and no timed event of the subject on D "
                               "comes after it",
    "discharge": "a dischtime that is a date (no time, or exactly 00:00:00) is placed at D 23:59:59, or sooner at the "
                 "stay's deathtime or the subject's next admittime when either falls later on D; the events timed "
                 "by the discharge (listed code_prefixes) follow it",
}

# Order of events sharing a timestamp (lower first).
ORDER_STATIC, ORDER_BIRTH, ORDER_ADMIT, ORDER_TRANSFER, ORDER_ICU_IN = 0, 1, 2, 3, 4
ORDER_MEASURE, ORDER_MED, ORDER_PROC, ORDER_ICU_OUT, ORDER_DX, ORDER_DEATH, ORDER_DISCH = 5, 6, 7, 8, 9, 10, 11

EVENT_SCHEMA = {
    "subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.String, "numeric_value": pl.Float32,
    "text_value": pl.String, "hadm_id": pl.Int64, "_order": pl.Int8, "_date_only": pl.Boolean,
    # The event key: emar_seq of emar and emar_detail events (the shard step times a detail by its emar
    # row), else the source row's id and/or SOURCE_TIME (_ev, _with_row_key): only exact repeats are duplicates.
    "_key": pl.Int64,
    # The event was placed later than its row's own time (a result at its store time, _at_stored_time; a
    # duration-coded procedure at its stay's discharge): counted per table after duplicates are dropped (_assemble).
    MOVED: pl.Boolean,
}


# Worker processes by default: the usable CPUs, at most this many. Each worker adds about one
# serial step's memory (one CSV block, or one shard's largest bucket file and chunk).
MAX_DEFAULT_WORKERS = 4


def default_workers() -> int:
    """EtlConfig.workers by default: the CPUs this process may run on (its affinity), at most MAX_DEFAULT_WORKERS."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_DEFAULT_WORKERS))


# Below this much raw input (bytes of the raw dir's files) one process is faster: a spawned worker
# costs ~1.5 s and ~180 MiB to start (python, polars, pyarrow), more than it saves on a small
# dataset (the real demo: 4.9 s with 2 workers, 3.4 s with 1).
SMALL_INPUT_BYTES = 64 << 20


def auto_workers(raw: str | os.PathLike) -> int:
    """EtlConfig.workers when not given: 1 for raw input under SMALL_INPUT_BYTES, else default_workers()."""
    size = sum(f.stat().st_size for f in Path(raw).rglob("*") if f.is_file())
    return 1 if size < SMALL_INPUT_BYTES else default_workers()


@dataclass
class EtlConfig:
    """Everything that decides a raw MIMIC-IV -> MEDS conversion; saved in metadata/etl_config.json.

    Sizes: shard_subjects in subjects, batch_bytes in bytes, chunk_events in events. Split fractions
    are (train, tuning, held_out); subjects are split by a stable hash of subject_id seeded by
    split_seed unless splits_file is given.
    """
    raw: str
    out: str
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    splits_file: str | None = None  # an existing subject_splits.parquet to use instead of the hash
    shard_subjects: int = 10_000  # bounds the memory of shard assembly (and of tokenize downstream)
    batch_bytes: int = 4 << 20  # CSV block size read at a time (bounds memory while staging)
    chunk_events: int = 100_000  # events assembled at a time within a shard (bounds memory while sorting)
    tables: list[str] | None = None  # tables to convert (select_tables); None: every table the raw dir has
    dataset_name: str | None = None
    dataset_version: str | None = None
    # Processes that stage tables, route them and assemble shards side by side (1: all in this
    # process, the serial path). The output is byte-identical for any number. None: decided from
    # the raw input's size (auto_workers); the number used is what etl_config.json records.
    workers: int | None = None
    # Where a stay's procedure billing codes (procedures_icd, hcpcsevents) go: "procedure_day", the end of their
    # chartdate (the procedure was charted then; the MIMIC_IV_MEDS ETL's choice), or "discharge", with the
    # diagnoses, when coders assign them (a study of codes as the EHR holds them at prediction time).
    billing_codes_at: str = "procedure_day"


@dataclass
class Table:
    """One raw table: where it is, the columns it needs, which are times, how it becomes events."""

    name: str  # e.g. "hosp/labevents"
    columns: list[str]
    times: list[str] = field(default_factory=list)
    ints: list[str] = field(default_factory=list)
    # integer column -> (lowest, highest) value this ETL can hold: others refuse the file (a year
    # polars' and Python's dates cannot hold made a traceback that quoted the value).
    int_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    floats: list[str] = field(default_factory=list)
    to_events: Callable[[pl.DataFrame, Context], list[pl.DataFrame]] | None = None
    required: bool = False
    dates: list[str] = field(default_factory=list)  # DATE columns in MIMIC-IV's schema: every value is a day
    code_prefixes: dict[str, list[str]] = field(default_factory=dict)  # time column -> codes it times
    fallback: dict[str, str] = field(default_factory=dict)  # time column -> a DATE column used where it is empty
    # Time columns whose every value must have a time of day (a date refuses the file): admittime orders a
    # subject's stays and sets the labels' prediction times; at its day's end (the date-only rule) a stay
    # opened at its own discharge, or a discharge and the next admission of one day tied, and the next
    # stay's admission entered the readmission history (`ehrfm audit`: leakage in all four tasks).
    timed_only: list[str] = field(default_factory=list)
    # time column -> the column recording when the row was stored (MIMIC-IV's storetime): the
    # event is placed at the later of the two, when its content was known (module docstring).
    stored_at: dict[str, str] = field(default_factory=dict)
    timed_by: str | None = None  # events take their time in the shard step from this table's rows (emar_detail)
    # A table whose row of the same key (_key) records when this row was entered: the events move
    # to that row's (placed) time when it is later (prescriptions by their pharmacy row's entertime:
    # on the real demo 1,404 of 18,087 start before they were entered, up to 4 days; _at_entry_time).
    entered_by: str | None = None
    module: str = ""  # "ed": read only when the raw dir has ed/ (MIMIC-IV-ED)
    needs: tuple[str, ...] = ()  # tables staged first: their rows time this table's (Context.admissions, ed_stays)
    # The column that tells distinct source rows (orders, results) apart where the columns read
    # can repeat: the events' key (_row_key), so that only exact repeats of a row are `duplicate`.
    # Optional (read when the file has it; without it rows are told apart as before).
    row_id: str | None = None
    # The column that ranks the rows one time shares (seq_num of ICD codes: the principal diagnosis
    # first): their events follow it in the shard step (_assemble), whatever the order of the CSV rows.
    # Without a row id it is the events' _key, and rows that differ only in it are one event (the
    # lowest rank kept: a code listed twice for one stay is one diagnosis).
    rank: str | None = None
    # The column the table has one row per (MIMIC-IV's primary key: subject_id of patients, hadm_id
    # of admissions, stay_id of icustays, edstays and ED triage): the table is small (a row per
    # subject or stay) and read whole, and rows of one key that disagree are refused (_one_row_per_key);
    # exact repeats make repeated events, dropped and counted as `duplicate`.
    key: str | None = None

    def __post_init__(self):
        for c, s in self.stored_at.items():  # the store time times the same codes (date-only metadata)
            self.code_prefixes.setdefault(s, self.code_prefixes.get(c, []))


@dataclass
class Context:
    """Small lookups that event rules need (admission times), built from admissions first."""

    admissions: pl.DataFrame | None = None  # hadm_id, subject_id, admittime, dischtime (as placed), deathtime
    untimed: dict = field(default_factory=dict)  # table -> events dropped for lack of a time
    table: str = ""  # the table being staged (rules count their drops under it)
    drops: dict = field(default_factory=dict)  # table -> reason -> events dropped
    date_only: dict = field(default_factory=dict)  # (table, column) -> date-only values read
    midnight: dict = field(default_factory=dict)  # table -> column -> timed values at exactly 00:00:00
    unparseable: dict = field(default_factory=dict)  # table -> column -> numbers that did not parse (set null)
    out_of_range: dict = field(default_factory=dict)  # table -> column -> NaN, inf or beyond float32 (set null)
    redacted: dict = field(default_factory=dict)  # table -> column -> de-identification placeholders ___ (set null)
    text_values: dict = field(default_factory=dict)  # table -> column -> free-text values kept as text_value (ED pain)
    line_breaks: dict = field(default_factory=dict)  # table -> column -> values whose tabs/line breaks became a space
    unicode_spaces: dict = field(default_factory=dict)  # table -> column -> values whose no-break (or other) spaces became one space
    controls: dict = field(default_factory=dict)  # table -> column -> values whose other control or invisible characters were removed
    # table -> "hadm_id" -> events whose hadm_id is another subject's stay (set null: one stay id names one patient)
    foreign_stays: dict = field(default_factory=dict)
    # table -> "hadm_id" -> events whose hadm_id is no admission of admissions.csv (set null, as above)
    unknown_stays: dict = field(default_factory=dict)
    stored: dict = field(default_factory=dict)  # (table, time column) -> {"store_column", "present", "moved"}
    discharge: dict = field(default_factory=dict)  # how discharge times were placed -> count
    duration_coded: int = 0  # procedures_icd events placed at their stay's discharge (DURATION_CODED_PROCEDURES)
    # table -> events timed after the subject's MEDS_DEATH, kept (module docstring: events_after_death)
    after_death: dict = field(default_factory=dict)
    ed_stays: pl.DataFrame | None = None  # stay_id, intime, outtime of ed/edstays (triage and ED diagnoses)
    billing_at_discharge: bool = False  # EtlConfig.billing_codes_at == "discharge"

    def drop(self, reason: str, n: int, table: str | None = None) -> None:
        """Count `n` events dropped for `reason` under `table` (default: the table being staged)."""
        self.count(self.drops, reason, n, table)

    def count(self, counts: dict, key: str, n: int, table: str | None = None) -> None:
        """Add `n` to counts[table][key], one of the table -> column (or reason) -> n counts above."""
        if n:
            d = counts.setdefault(table or self.table, {})
            d[key] = d.get(key, 0) + int(n)


# ------------------------------------------------------------------------------- event rules
# numeric_value is float32: a larger magnitude would be written as inf.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _usable_number(x: pl.Expr) -> pl.Expr:
    """The value of x where it is a finite number float32 can hold, else null (NaN compares false)."""
    return pl.when(x.abs() <= FLOAT32_MAX).then(x)


def _unsigned_zero(x: pl.Expr) -> pl.Expr:
    """The float32 values x, -0.0 made 0.0 (after the float32 cast: `-1e-50` is -0.0 there).

    `-0` and `0` are one value, but the exact de-duplication (_unique_rows) and the sort take them as
    equal while the file keeps the sign: of two outputevents rows alike but for `-0`/`0` (no row id),
    the first listed was written, so the MEDS bytes followed the rows' order.
    """
    return pl.when(x == 0).then(pl.lit(0.0, pl.Float32)).otherwise(x)


def _ev(df: pl.DataFrame, time: pl.Expr | str, code: pl.Expr, order: int, numeric: pl.Expr | None = None,
        text: pl.Expr | None = None, hadm: bool = True, key: pl.Expr | None = None) -> pl.DataFrame:
    """MEDS events of `df`; `time` given as a column name carries that column's date-only flag along."""
    date_only = pl.lit(False)
    if isinstance(time, str):
        if f"{DATE_FLAG}{time}" in df.columns:
            date_only = pl.col(f"{DATE_FLAG}{time}")
        time = pl.col(time)
    return df.select(
        subject_id=pl.col("subject_id"),
        time=time,
        code=code,
        numeric_value=_unsigned_zero((_usable_number(numeric.cast(pl.Float64)) if numeric is not None else pl.lit(None))
                                     .cast(pl.Float32)),
        text_value=(text if text is not None else pl.lit(None)).cast(pl.String),
        hadm_id=(pl.col("hadm_id") if hadm and "hadm_id" in df.columns else pl.lit(None)).cast(pl.Int64),
        _order=pl.lit(order, pl.Int8),
        _date_only=date_only.fill_null(False),
        **{MOVED: pl.col(MOVED).fill_null(False) if MOVED in df.columns else pl.lit(False)},
        _key=(key if key is not None else pl.col(ROW_KEY) if ROW_KEY in df.columns
              else pl.col(SOURCE_TIME) if SOURCE_TIME in df.columns else pl.lit(None)).cast(pl.Int64),
    )


# A whole number written as a decimal ("50971.0", "9.00"), as pandas and spreadsheets write an integer
# column that holds a null: its integer's digits. Only for columns that are integers in MIMIC-IV's
# schema (itemid, icd_version); text codes (icd_code "0389", drg_code) keep every character.
WHOLE_AS_DECIMAL = r"^(\d+)\.0*$"


def _int_part(col: str) -> pl.Expr:
    """A code component from an integer column (itemid, icd_version): _part, with "50971.0" read as 50971.

    Without this `LAB//50971.0//mEq/L` was a code of its own beside `LAB//50971//mEq/L`, with no
    dictionary description, and `DIAGNOSIS//ICD//9.0//78829` matched no ICD vocabulary.
    """
    return _part(col).str.replace(WHOLE_AS_DECIMAL, "${1}")


def _part(col: str) -> pl.Expr:
    """A code component: the raw value without surrounding spaces, or UNK when missing or blank.

    '//' inside it would break parsing. Spaces around a value carry no meaning but made two codes
    of one: the real demo writes some drug names with a trailing space (`PHARMACY//Vitamin D3 ` beside
    `PHARMACY//Vitamin D3`, 23 such pairs) and a blank lab unit (`LAB//51498// `), and a PostgreSQL
    export pads CHAR(n) columns (icd_code CHAR(7): `4019   `, which no ICD hierarchy parses).
    """
    value = pl.col(col).cast(pl.String).str.strip_chars()
    return pl.when(value.str.len_chars() > 0).then(value).otherwise(pl.lit("UNK")).str.replace_all("//", "/", literal=True)


def _keep(df: pl.DataFrame, ctx: Context, cond: pl.Expr, reason: str) -> pl.DataFrame:
    """df.filter(cond), counting the rows it removes under `reason` (one event each)."""
    kept = df.filter(cond)
    ctx.drop(reason, df.height - kept.height)
    return kept


MAX_ANCHOR_AGE = 130  # years; MIMIC-IV caps anchor_age at 91


def _patients(df, ctx):
    birth = pl.datetime(pl.col("anchor_year") - pl.col("anchor_age"), 1, 1)
    plausible = pl.col("anchor_age").is_between(0, MAX_ANCHOR_AGE) | pl.col("anchor_age").is_null()
    return [
        _ev(df, pl.lit(None, pl.Datetime("us")), pl.lit("GENDER//") + _part("gender"), ORDER_STATIC),
        _ev(_keep(df, ctx, plausible, "birth_of_implausible_anchor_age"), birth, pl.lit("MEDS_BIRTH"), ORDER_BIRTH),
        # dod is a date: _typed already put it at the end of its day.
        _ev(df.filter(pl.col("dod").is_not_null()), "dod", pl.lit("MEDS_DEATH"), ORDER_DEATH),
    ]


def _admissions(df, ctx):
    out = [
        _ev(df, "admittime", pl.concat_str(pl.lit("HOSPITAL_ADMISSION//"), _part("admission_type"),
                                           pl.lit("//"), _part("admission_location")), ORDER_ADMIT),
        _ev(df, "dischtime", pl.lit("HOSPITAL_DISCHARGE//") + _part("discharge_location"), ORDER_DISCH),
        _ev(df.filter(pl.col("deathtime").is_not_null()), "deathtime", pl.lit("MEDS_DEATH"), ORDER_DEATH),
    ]
    if "edregtime" in df.columns:
        out.append(_ev(df.filter(pl.col("edregtime").is_not_null()), "edregtime", pl.lit("ED_REGISTRATION"), ORDER_ADMIT))
        out.append(_ev(df.filter(pl.col("edouttime").is_not_null()), "edouttime", pl.lit("ED_OUT"), ORDER_TRANSFER))
    return out


def _place_discharges(adm: pl.DataFrame, ctx: Context) -> pl.DataFrame:
    """Discharge times as the ETL places them (module docstring, "Dates and midnights").

    adm: the whole typed admissions table. A dischtime that is a date (no time, or exactly
    00:00:00) moves to the end of its day, or sooner to the stay's death or the subject's next
    admission when either falls later that day; any discharge before its own stay's death moves
    to the death. Counts go to ctx.discharge, one per stay: an exact repeat of a row (dropped later as
    `duplicate`) is neither counted again nor its own stay's next admission (listed twice, a stay
    discharged on its admission day, a date, was placed at its own admittime).
    """
    flag = f"{DATE_FLAG}dischtime"
    midnight = pl.col("dischtime").is_not_null() & (pl.col("dischtime").dt.time() == pl.time(0)) & ~pl.col(flag)
    day_start = pl.col("dischtime").dt.truncate("1d")
    stay = ["subject_id", "hadm_id", "admittime"]
    # Each stay once, ties of one admittime ordered by hadm_id: the next admission never follows the rows' order.
    nxt = (adm.select(stay).unique().with_columns(_next=pl.col("admittime").shift(-1).over(
        "subject_id", order_by=["admittime", "hadm_id"])))
    adm = adm.join(nxt, on=stay, how="left", maintain_order="left", nulls_equal=True).with_columns(
        _midnight=midnight, _raw=pl.col("dischtime"))
    once = adm.unique()  # the counts below: per stay, not per row read
    ctx.discharge["midnight_read_as_date"] = int(once["_midnight"].sum())
    ctx.discharge["date_only"] = int(once[flag].sum())
    is_date = pl.col("_midnight") | pl.col(flag)
    eod = day_start + END_OF_DAY
    # The earliest later fact of that day that the discharge cannot follow: the death or a new admission.
    cap = pl.min_horizontal(
        pl.when(pl.col("deathtime") > day_start).then(pl.col("deathtime")),
        pl.when(pl.col("_next") > day_start).then(pl.col("_next")),
    )
    placed = pl.when(is_date).then(pl.min_horizontal(eod, cap)).otherwise(pl.col("dischtime"))
    adm = adm.with_columns(dischtime=placed, **{flag: is_date})
    before_death = pl.col("deathtime").is_not_null() & (pl.col("dischtime") < pl.col("deathtime"))
    ctx.discharge["moved_to_death"] = int(adm.unique().select(before_death.sum()).item())
    adm = adm.with_columns(dischtime=pl.when(before_death).then(pl.col("deathtime")).otherwise(pl.col("dischtime")))
    ctx.discharge["date_moved_by_death_or_next_admission"] = int(adm.unique().select(
        (is_date & (pl.col("dischtime") < pl.col("_raw").dt.truncate("1d") + END_OF_DAY)).sum()).item())
    return adm.drop("_midnight", "_next", "_raw")


def _at_discharge(df: pl.DataFrame, ctx: Context) -> pl.DataFrame:
    """Rows joined to their stay's discharge; rows without a known stay of their own subject are counted and dropped.

    A hadm_id of another subject's stay would time the row at that patient's discharge.
    """
    df = _keep(df, ctx, pl.col("hadm_id").is_not_null(), "missing_hadm_id")
    stays = ctx.admissions.select("hadm_id", "dischtime", _owner=pl.col("subject_id"))
    df = _keep(df.join(stays, on="hadm_id", how="left", maintain_order="left"), ctx,
               pl.col("_owner").is_null() | pl.col("subject_id").is_null() | (pl.col("_owner") == pl.col("subject_id")),
               "hadm_id_of_another_subject")
    df = _keep(df, ctx, pl.col("_owner").is_not_null(), "unknown_hadm_id")
    # a stay of admissions whose dischtime is missing (counted `missing_time` there) was "unknown_hadm_id" here
    return _keep(df.drop("_owner"), ctx, pl.col("dischtime").is_not_null(), "stay_without_dischtime")


def _without_foreign_stays(shard: pl.DataFrame, names: list[str], ctx: Context) -> pl.DataFrame:
    """`shard` with each hadm_id that is another subject's stay, or no stay at all, set null, counted per table.

    Another subject's stay is counted in ctx.foreign_stays, an id that admissions.csv does not hold in
    ctx.unknown_stays (labevents of a stay missing from admissions were written with the dangling id, counted
    nowhere, while diagnoses of such a stay are dropped and counted `unknown_hadm_id`).

    Such an id (an export's join gone wrong) would pair the event with that patient's stay: place a
    date-only event at their discharge (_place_dates) and let `ehrfm labels` read it as care of a stay the
    subject never had. Set null, the event keeps its own time and is paired by time, as one without an id.
    Done in the shard step, which every worker runs with the admissions (staging workers get them only
    for tables that need them), after exact duplicates are dropped: counts are of events written.
    """
    if ctx.admissions is None or shard.height == 0 or not shard.select(pl.col("hadm_id").is_not_null().any()).item():
        return shard
    owners = ctx.admissions.select("hadm_id", _owner=pl.col("subject_id"))
    marked = shard.join(owners, on="hadm_id", how="left", maintain_order="left")
    is_foreign = pl.col("_owner").is_not_null() & (pl.col("_owner") != pl.col("subject_id"))
    is_unknown = pl.col("_owner").is_null() & pl.col("hadm_id").is_not_null()
    for src, n in marked.filter(is_foreign).group_by("_src").len().iter_rows():
        ctx.count(ctx.foreign_stays, "hadm_id", n, names[src])
    for src, n in marked.filter(is_unknown).group_by("_src").len().iter_rows():
        ctx.count(ctx.unknown_stays, "hadm_id", n, names[src])
    return marked.with_columns(hadm_id=pl.when(is_foreign | is_unknown).then(None).otherwise(pl.col("hadm_id"))).drop("_owner")


ICD_VERSIONS = ("9", "10")  # MIMIC-IV's icd_version: DIAGNOSIS//ICD//<9|10>//<code> (DESIGN.md section 1)


def _icd_rows(df, ctx):
    """The rows of df an ICD code can be made of; the others are counted under their reason.

    An icd_version other than 9 or 10 (`ICD10`, `9.5`, `-9`, missing) made codes such as
    `DIAGNOSIS//ICD//ICD10//4139` that no ICD hierarchy parses; a missing icd_code made
    `DIAGNOSIS//ICD//9//UNK`, and a stay's rows without a code merged into one event counted as
    duplicates.
    """
    df = _keep(df, ctx, _int_part("icd_version").is_in(ICD_VERSIONS), "icd_version_not_9_or_10")
    return _keep(df, ctx, _part("icd_code") != "UNK", "no_icd_code")


def _diagnoses(df, ctx):
    df = _at_discharge(_icd_rows(df, ctx), ctx)
    code = pl.concat_str(pl.lit("DIAGNOSIS//ICD//"), _int_part("icd_version"), pl.lit("//"), _part("icd_code"))
    return [_ev(df, pl.col("dischtime"), code, ORDER_DX)]  # in rank order at the shard step (Table.rank)


# EtlConfig.billing_codes_at's choices, and the tables it moves (their codes: ehrfm.clinical.audit.BILLING_CODED)
BILLING_CODES_AT = ("procedure_day", "discharge")
BILLING_TABLES = ("hosp/procedures_icd", "hosp/hcpcsevents")

# ICD procedure codes that state how long the procedure went on (ventilation < 24 h, 24-96 h, > 96 h;
# ICD-9 96.70-96.72), as "<version>//<code>". Their chartdate is the start, but the code is only true
# once the procedure has ended: at its start day's end, "ventilated > 96 hours" told 24-hour
# mortality and long-stay histories the future (22 of 245 on the real demo, 15 of them long stays).
DURATION_CODED_PROCEDURES = r"^(?:10//5A[01]9[345]5|9//967[0-2]$)"


def _procedures(df, ctx):
    # chartdate is a date: at the end of its day here; the shard step moves it to the stay's
    # discharge when that comes sooner (the date-only rule, module docstring). A duration-coded
    # procedure goes to its stay's discharge (coded from the whole record, as diagnoses; not known before it).
    version_code = pl.concat_str(_int_part("icd_version"), pl.lit("//"), _part("icd_code"))
    if ctx.billing_at_discharge:  # --billing-codes-at discharge: every code at its stay's discharge, as diagnoses
        df = _at_discharge(_icd_rows(df, ctx), ctx)
        return [_ev(df, pl.col("dischtime"), pl.lit("PROCEDURE//ICD//") + version_code, ORDER_PROC)]
    df = _icd_rows(df, ctx).join(ctx.admissions.select("subject_id", "hadm_id", "dischtime"), on=["subject_id", "hadm_id"], how="left",
                 maintain_order="left").with_columns(
        _dur=version_code.str.contains(DURATION_CODED_PROCEDURES) & pl.col("dischtime").is_not_null())
    flag = f"{DATE_FLAG}chartdate"
    df = df.with_columns(chartdate=pl.when("_dur").then(pl.col("dischtime")).otherwise(pl.col("chartdate")),
                         **{MOVED: pl.col("_dur")},  # counted after duplicates are dropped (_assemble)
                         **{flag: pl.col(flag) & ~pl.col("_dur")})
    return [_ev(df, "chartdate", pl.lit("PROCEDURE//ICD//") + version_code, ORDER_PROC)]


def _drgcodes(df, ctx):
    df = _at_discharge(_keep(df, ctx, _part("drg_code") != "UNK", "no_drg_code"), ctx)  # DRG//<type>//UNK names no group
    code = pl.concat_str(pl.lit("DRG//"), _part("drg_type"), pl.lit("//"), _part("drg_code"))
    return [_ev(df, pl.col("dischtime"), code, ORDER_DX)]


def _transfers(df, ctx):
    # The discharge row duplicates admissions.dischtime, which makes the discharge event.
    df = _keep(df, ctx, pl.col("eventtype").fill_null("") != "discharge", "discharge_row_made_by_admissions")
    code = pl.concat_str(pl.lit("TRANSFER_TO//"), _part("eventtype"), pl.lit("//"), _part("careunit"))
    return [_ev(df, "intime", code, ORDER_TRANSFER)]


def _icustays(df, ctx):
    out_ok = pl.col("outtime").is_null() | pl.col("intime").is_null() | (pl.col("outtime") >= pl.col("intime"))
    return [
        _ev(df, "intime", pl.lit("ICU_ADMISSION//") + _part("first_careunit"), ORDER_ICU_IN),
        _ev(_keep(df, ctx, out_ok, "icu_outtime_before_intime"), "outtime", pl.lit("ICU_DISCHARGE//") + _part("last_careunit"),
            ORDER_ICU_OUT),
    ]


def _measure(prefix: str, time_col: str, unit_col: str, value_col: str, text_col: str | None, order=ORDER_MEASURE):
    def rule(df, ctx):
        code = pl.concat_str(pl.lit(prefix), _int_part("itemid"), pl.lit("//"), _part(unit_col))
        text = None
        if text_col is not None:
            text = pl.when(pl.col(value_col).is_null()).then(pl.col(text_col)).otherwise(None)
        return [_ev(df, time_col, code, order, numeric=pl.col(value_col), text=text)]

    return rule


def _prescriptions(df, ctx):
    df = _keep(df, ctx, pl.col("drug").is_not_null(), "missing_drug")
    return [_ev(df, "starttime", pl.lit("MEDICATION//") + _part("drug"), ORDER_MED)]


def _emar(df, ctx):
    # Every charted action (administered, held, not given, ...) is an event of its own kind.
    df = _keep(df, ctx, pl.col("medication").is_not_null(), "missing_medication")
    code = pl.concat_str(pl.lit("EMAR//"), _part("event_txt"), pl.lit("//"), _part("medication"))
    return [_ev(df, "charttime", code, ORDER_MED, key=pl.col("emar_seq"))]


KEY_LINES = 1000  # emar_detail's _key: emar_seq * KEY_LINES + the product line


def _emar_detail(df, ctx):
    # The per-product rows (parent_field_ordinal set) carry the dose given; the parent row of
    # each administration only repeats it. The time comes from the emar row (shard step).
    df = _keep(df, ctx, pl.col("parent_field_ordinal").is_not_null(), "administration_summary_row")
    # A dose de-identified as ___ was given, its amount hidden: an event without a value, as the summary says
    # (`redacted_numbers_set_null`); it was dropped as no_dose_given.
    df = _keep(df, ctx, pl.col("dose_given").is_not_null() | pl.col(f"{REDACTED_FLAG}dose_given"), "no_dose_given")
    code = pl.concat_str(pl.lit("EMAR_DOSE//"), _part("product_description"), pl.lit("//"), _part("dose_given_unit"))
    # The key keeps the product line (parent_field_ordinal, NUMERIC(3,2)) so that two products
    # of one administration are two rows, not duplicates; // KEY_LINES recovers emar_seq.
    line = (pl.col("parent_field_ordinal").cast(pl.Float64, strict=False) * 100).round().cast(pl.Int64).fill_null(0)
    return [_ev(df, pl.lit(None, pl.Datetime("us")), code, ORDER_MED, numeric=pl.col("dose_given"),
                hadm=False, key=pl.col("emar_seq") * KEY_LINES + line)]


# Not a MEDS code: a pharmacy row without a medication makes no event, but its entry time still
# places its prescriptions (_at_entry_time); such rows are staged under this code and removed there.
ENTRY_ONLY = "\x00entry-only"


def _pharmacy(df, ctx):
    has_med = pl.col("medication").is_not_null()
    entry_only = df.filter(~has_med & pl.col("subject_id").is_not_null() & pl.col("starttime").is_not_null())
    df = _keep(df, ctx, has_med, "missing_medication")
    # Keyed by pharmacy_id: two orders of one drug at one time are two events, not duplicates.
    return [_ev(df, "starttime", pl.lit("PHARMACY//") + _part("medication"), ORDER_MED, key=pl.col("pharmacy_id")),
            _ev(entry_only, "starttime", pl.lit(ENTRY_ONLY), ORDER_MED, key=pl.col("pharmacy_id"))]


def _microbiology(df, ctx):
    # One event per result row: the organism grown (NONE: no growth) and, for a susceptibility
    # row, the antibiotic; its dilution in numeric_value, its interpretation (S/I/R) in text_value.
    org = pl.col("org_name").cast(pl.String).str.strip_chars()
    org = pl.when(org.str.len_chars() > 0).then(org).otherwise(pl.lit("NONE")).str.replace_all("//", "/", literal=True)
    ab = pl.when(pl.col("ab_name").is_not_null()).then(pl.lit("//") + _part("ab_name")).otherwise(pl.lit(""))
    code = pl.concat_str(pl.lit("MICROBIOLOGY//"), _part("test_name"), pl.lit("//"), org, ab)
    return [_ev(df, "charttime", code, ORDER_MEASURE, numeric=pl.col("dilution_value"),
                text=pl.col("interpretation"))]


def _hcpcs(df, ctx):
    # chartdate is a date: the date-only rule places it (end of day or the stay's discharge).
    df = _keep(df, ctx, _part("hcpcs_cd") != "UNK", "no_hcpcs_code")  # HCPCS//UNK names no procedure
    if ctx.billing_at_discharge:  # --billing-codes-at discharge: at its stay's discharge, as diagnoses
        df = _at_discharge(df, ctx)
        return [_ev(df, pl.col("dischtime"), pl.lit("HCPCS//") + _part("hcpcs_cd"), ORDER_PROC)]
    return [_ev(df, "chartdate", pl.lit("HCPCS//") + _part("hcpcs_cd"), ORDER_PROC)]


def _services(df, ctx):
    return [_ev(df, "transfertime", pl.lit("SERVICE//") + _part("curr_service"), ORDER_TRANSFER)]


def _datetimeevents(df, ctx):
    # The value is itself a date (e.g. of a line insertion): the charted item is the event.
    return [_ev(df, "charttime", pl.lit("DATETIME//") + _int_part("itemid"), ORDER_MEASURE)]


def _poe(df, ctx):
    code = pl.concat_str(pl.lit("POE//"), _part("order_type"), pl.lit("//"), _part("order_subtype"))
    # Keyed by poe_seq: several orders of one type at one time are distinct orders, not duplicates.
    return [_ev(df, "ordertime", code, ORDER_MED, key=pl.col("poe_seq"))]


ED_VITALS = ["temperature", "heartrate", "resprate", "o2sat", "sbp", "dbp", "pain"]
ED_NUMBERS = [c for c in ED_VITALS if c != "pain"]  # NUMERIC in MIMIC-IV-ED's schema; pain is free text (_pain)
# MIMIC-IV-ED's pain is what the nurse typed (VARCHAR): mostly a 0-10 rating, also "10/10", "unable",
# "uta" (unable to assess), "sleeping", "denies", ranges "3-4". A value is a number only where it
# states one rating on the 0-10 scale: "7", "7.5", "+7", "7/10". Anything else -- a range (which
# rating?), a number off the scale ("13", "100": a typo or another scale), words -- is no rating:
# kept as the event's text_value (a patient unable to rate pain is itself a finding), counted per
# column as `text_values_kept`, never as an unparseable number. The placeholder ___ is no value:
# no event, counted as redacted (REDACTED).
PAIN_SCALE = (0.0, 10.0)
PAIN_RATING = r"^\+?(\d+(?:\.\d*)?|\.\d+)(?:\s*/\s*10)?$"


def _pain(df: pl.DataFrame, ctx: Context) -> pl.DataFrame:
    """The rows with `pain` as its 0-10 rating (Float64, null where none) and `_pain_text` (its text where no rating)."""
    text = pl.col("pain").cast(pl.String).str.strip_chars()
    # MIMIC-IV's de-identification placeholder ___ is a value removed, not what the nurse typed: no
    # event, counted as redacted as in the number columns (_typed), never kept as a pain "text".
    redacted = text.str.contains(REDACTED).fill_null(False)
    n_redacted = df.select(redacted.sum()).item() if df.height else 0
    ctx.count(ctx.redacted, "pain", n_redacted)
    text = pl.when(~redacted).then(text)
    rating = text.str.extract(PAIN_RATING, 1).cast(pl.Float64, strict=False)
    rating = pl.when(rating.is_between(*PAIN_SCALE)).then(rating)
    df = df.with_columns(pain=rating, _pain_text=pl.when(rating.is_null() & (text.str.len_chars() > 0)).then(text))
    ctx.count(ctx.text_values, "pain", df["_pain_text"].count())
    return df


def _ed_vitals_events(df: pl.DataFrame, ctx: Context, time, prefix: str, columns: list[str]) -> list[pl.DataFrame]:
    """One event per non-null vital of `columns` (pain: its rating, else its text as text_value)."""
    df = _pain(df, ctx)
    out = []
    for c in columns:
        if c == "pain":
            rows = df.filter(pl.col("pain").is_not_null() | pl.col("_pain_text").is_not_null())
            out.append(_ev(rows, time, pl.lit(f"{prefix}pain"), ORDER_MEASURE, numeric=pl.col("pain"),
                           text=pl.col("_pain_text")))
        else:
            out.append(_ev(df.filter(pl.col(c).is_not_null()), time, pl.lit(f"{prefix}{c}"), ORDER_MEASURE,
                           numeric=pl.col(c)))
    return out


def _ed_stay_times(df: pl.DataFrame, ctx: Context) -> pl.DataFrame:
    """Rows joined to their ED stay's intime/outtime; rows without a known ED stay are counted and dropped."""
    df = _keep(df, ctx, pl.col("stay_id").is_not_null(), "missing_stay_id")
    stays = ctx.ed_stays if ctx.ed_stays is not None else pl.DataFrame(
        schema={"stay_id": pl.Int64, "_in": pl.Datetime("us"), "_out": pl.Datetime("us")})
    df = df.join(stays, on="stay_id", how="left")
    return _keep(df, ctx, pl.col("_in").is_not_null(), "unknown_stay_id")


def _edstays(df, ctx):
    return [
        _ev(df, "intime", pl.lit("ED_ARRIVAL//") + _part("arrival_transport"), ORDER_ADMIT),
        _ev(df, "outtime", pl.lit("ED_DISPOSITION//") + _part("disposition"), ORDER_TRANSFER),
    ]


def _ed_triage(df, ctx):
    # Triage has no time of its own: it is taken at arrival (the ED stay's intime).
    df = _ed_stay_times(df, ctx)
    return _ed_vitals_events(df, ctx, pl.col("_in"), "ED_TRIAGE//", [*ED_VITALS, "acuity"])


def _ed_vitalsign(df, ctx):
    return _ed_vitals_events(df, ctx, "charttime", "ED_VITAL//", ED_VITALS)


def _ed_diagnosis(df, ctx):
    # Coded at the end of the ED stay, like hospital diagnoses at discharge.
    df = _ed_stay_times(_icd_rows(df, ctx), ctx)
    code = pl.concat_str(pl.lit("ED_DIAGNOSIS//ICD//"), _int_part("icd_version"), pl.lit("//"), _part("icd_code"))
    return [_ev(df, pl.col("_out"), code, ORDER_DX)]


def _ed_med(prefix: str):
    def rule(df, ctx):
        df = _keep(df, ctx, pl.col("name").is_not_null(), "missing_name")
        return [_ev(df, "charttime", pl.lit(prefix) + _part("name"), ORDER_MED)]

    return rule


# An OMR blood pressure "systolic/diastolic" ("120/80"): two numbers, one event each (as MIMIC_IV_MEDS splits them).
BLOOD_PRESSURE = r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$"


def _omr(df, ctx):
    value = _usable_number(pl.col("result_value").cast(pl.Float64, strict=False))
    text = pl.when(value.is_null()).then(pl.col("result_value")).otherwise(None)
    # A "120/80" blood pressure was one text event, so the tokens (numbers only) held that a pressure was taken
    # and never what it was: every OMR pressure of the MIMIC-IV demo (871). It is two numeric events now.
    # Only a blood pressure's "x/y" is split (MIMIC's names: "Blood Pressure", "... Sitting", "... Standing", ...);
    # another name's "x/y" stays the text it was.
    pressure = (pl.col("result_value").cast(pl.String).str.contains(BLOOD_PRESSURE)
                & pl.col("result_name").cast(pl.String).str.contains("(?i)blood pressure")).fill_null(False)
    bp, rest = df.filter(pressure), df.filter(~pressure)
    code = pl.lit("OMR//") + _part("result_name")
    # chartdate is a date: _typed put it at the end of its day (never seen before it was taken).
    return [_ev(rest, "chartdate", code, ORDER_MEASURE, numeric=value, text=text, hadm=False)] + [
        _ev(bp, "chartdate", code + pl.lit(f"//{side}"), ORDER_MEASURE, hadm=False,
            numeric=_usable_number(pl.col("result_value").cast(pl.String).str.extract(BLOOD_PRESSURE, group)
                                   .cast(pl.Float64, strict=False)))
        for side, group in (("SYSTOLIC", 1), ("DIASTOLIC", 2))]


def _procedureevents(df, ctx):
    return [_ev(df, "starttime", pl.lit("PROCEDURE//ITEM//") + _int_part("itemid"), ORDER_PROC)]


TABLES: list[Table] = [
    Table("hosp/patients", ["subject_id", "gender", "anchor_age", "anchor_year", "dod"], times=["dod"],
          ints=["anchor_age", "anchor_year"], int_ranges={"anchor_year": (1 + MAX_ANCHOR_AGE, 9999)}, to_events=_patients, required=True, dates=["dod"],
          code_prefixes={"dod": ["MEDS_DEATH"]}, key="subject_id"),
    Table("hosp/admissions", ["subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type",
                              "admission_location", "discharge_location", "edregtime", "edouttime"],
          times=["admittime", "dischtime", "deathtime", "edregtime", "edouttime"], ints=["hadm_id"], to_events=_admissions, required=True,
          timed_only=["admittime"],
          key="hadm_id",
          code_prefixes={"admittime": ["HOSPITAL_ADMISSION//"], "dischtime": ["HOSPITAL_DISCHARGE//", "DIAGNOSIS//ICD//", "DRG//"],
                         "deathtime": ["MEDS_DEATH"], "edregtime": ["ED_REGISTRATION"], "edouttime": ["ED_OUT"]}),
    Table("hosp/transfers", ["subject_id", "hadm_id", "eventtype", "careunit", "intime"], times=["intime"],
          ints=["hadm_id"], to_events=_transfers, code_prefixes={"intime": ["TRANSFER_TO//"]}),
    Table("icu/icustays", ["subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit", "intime", "outtime"],
          times=["intime", "outtime"], ints=["hadm_id", "stay_id"], to_events=_icustays, key="stay_id",
          code_prefixes={"intime": ["ICU_ADMISSION//"], "outtime": ["ICU_DISCHARGE//"]}),
    Table("hosp/diagnoses_icd", ["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"],
          ints=["hadm_id", "seq_num"], to_events=_diagnoses, needs=("hosp/admissions",), rank="seq_num"),
    Table("hosp/procedures_icd", ["subject_id", "hadm_id", "chartdate", "icd_code", "icd_version", "seq_num"],
          times=["chartdate"], ints=["hadm_id", "seq_num"], to_events=_procedures, dates=["chartdate"],
          code_prefixes={"chartdate": ["PROCEDURE//ICD//"]}, row_id="seq_num", rank="seq_num", needs=("hosp/admissions",)),
    Table("hosp/drgcodes", ["subject_id", "hadm_id", "drg_type", "drg_code"], ints=["hadm_id"], to_events=_drgcodes,
          needs=("hosp/admissions",)),
    Table("hosp/labevents", ["subject_id", "hadm_id", "itemid", "charttime", "storetime", "value", "valuenum", "valueuom",
                             "labevent_id"],
          times=["charttime", "storetime"], ints=["hadm_id", "labevent_id", "itemid"], floats=["valuenum"],
          to_events=_measure("LAB//", "charttime", "valueuom", "valuenum", "value"), code_prefixes={"charttime": ["LAB//"]},
          stored_at={"charttime": "storetime"}, row_id="labevent_id"),
    Table("hosp/prescriptions", ["subject_id", "hadm_id", "starttime", "drug", "pharmacy_id"], times=["starttime"],
          ints=["hadm_id", "pharmacy_id"], to_events=_prescriptions, code_prefixes={"starttime": ["MEDICATION//"]},
          row_id="pharmacy_id", entered_by="hosp/pharmacy"),
    Table("hosp/emar", ["subject_id", "hadm_id", "emar_seq", "charttime", "storetime", "medication", "event_txt"],
          times=["charttime", "storetime"], ints=["hadm_id", "emar_seq"], to_events=_emar,
          code_prefixes={"charttime": ["EMAR//", "EMAR_DOSE//"]}, stored_at={"charttime": "storetime"}),
    Table("hosp/emar_detail", ["subject_id", "emar_seq", "parent_field_ordinal", "dose_given", "dose_given_unit",
                               "product_description"], ints=["emar_seq"], floats=["dose_given"],
          to_events=_emar_detail, timed_by="hosp/emar"),
    # An order is in the record from its entertime: starttime can be earlier (a start set back to
    # the time of a verbal order or a dose already given: 1,274 of 15,306 rows on the real demo,
    # median 0.8 h, up to 4 days), so it is placed at the later of the two, as results are.
    Table("hosp/pharmacy", ["subject_id", "hadm_id", "pharmacy_id", "starttime", "medication", "entertime"],
          times=["starttime", "entertime"], ints=["hadm_id", "pharmacy_id"],
          to_events=_pharmacy, code_prefixes={"starttime": ["PHARMACY//"]}, stored_at={"starttime": "entertime"}),
    Table("hosp/poe", ["subject_id", "hadm_id", "poe_seq", "ordertime", "order_type", "order_subtype"],
          times=["ordertime"], ints=["hadm_id", "poe_seq"], to_events=_poe, code_prefixes={"ordertime": ["POE//"]}),
    Table("hosp/microbiologyevents", ["subject_id", "hadm_id", "chartdate", "charttime", "storedate", "storetime",
                                      "test_name", "org_name", "ab_name", "dilution_value", "interpretation", "microevent_id"],
          times=["charttime", "storetime"], ints=["hadm_id", "microevent_id"], floats=["dilution_value"], to_events=_microbiology,
          fallback={"charttime": "chartdate", "storetime": "storedate"}, code_prefixes={"charttime": ["MICROBIOLOGY//"]},
          stored_at={"charttime": "storetime"}, row_id="microevent_id"),
    Table("hosp/hcpcsevents", ["subject_id", "hadm_id", "chartdate", "hcpcs_cd", "seq_num"], times=["chartdate"],
          ints=["hadm_id", "seq_num"], to_events=_hcpcs, dates=["chartdate"], code_prefixes={"chartdate": ["HCPCS//"]},
          row_id="seq_num", rank="seq_num", needs=("hosp/admissions",)),
    Table("hosp/services", ["subject_id", "hadm_id", "transfertime", "curr_service"], times=["transfertime"],
          ints=["hadm_id"], to_events=_services, code_prefixes={"transfertime": ["SERVICE//"]}),
    Table("hosp/omr", ["subject_id", "chartdate", "result_name", "result_value", "seq_num"], times=["chartdate"],
          ints=["seq_num"], to_events=_omr, dates=["chartdate"], code_prefixes={"chartdate": ["OMR//"]}, row_id="seq_num"),
    Table("icu/chartevents", ["subject_id", "hadm_id", "charttime", "storetime", "itemid", "value", "valuenum", "valueuom"],
          times=["charttime", "storetime"], ints=["hadm_id", "itemid"], floats=["valuenum"],
          to_events=_measure("VITAL//", "charttime", "valueuom", "valuenum", "value"), code_prefixes={"charttime": ["VITAL//"]},
          stored_at={"charttime": "storetime"}),
    # An infusion's amount is what ran from starttime to endtime (a bag stopped early, at a death,
    # holds less): it is known at endtime, so it sits there (or at its storetime, when later).
    Table("icu/inputevents", ["subject_id", "hadm_id", "endtime", "storetime", "itemid", "amount", "amountuom", "orderid"],
          times=["endtime", "storetime"], ints=["hadm_id", "orderid", "itemid"], floats=["amount"],
          to_events=_measure("INFUSION//", "endtime", "amountuom", "amount", None, order=ORDER_MED),
          code_prefixes={"endtime": ["INFUSION//"]}, stored_at={"endtime": "storetime"}, row_id="orderid"),
    Table("icu/outputevents", ["subject_id", "hadm_id", "charttime", "storetime", "itemid", "value", "valueuom"],
          times=["charttime", "storetime"], ints=["hadm_id", "itemid"], floats=["value"],
          to_events=_measure("OUTPUT//", "charttime", "valueuom", "value", None), code_prefixes={"charttime": ["OUTPUT//"]},
          stored_at={"charttime": "storetime"}),
    Table("icu/procedureevents", ["subject_id", "hadm_id", "starttime", "storetime", "itemid", "orderid"],
          times=["starttime", "storetime"], ints=["hadm_id", "orderid", "itemid"], to_events=_procedureevents,
          code_prefixes={"starttime": ["PROCEDURE//ITEM//"]}, stored_at={"starttime": "storetime"}, row_id="orderid"),
    Table("icu/datetimeevents", ["subject_id", "hadm_id", "charttime", "storetime", "itemid"], times=["charttime", "storetime"],
          ints=["hadm_id", "itemid"], to_events=_datetimeevents, code_prefixes={"charttime": ["DATETIME//"]},
          stored_at={"charttime": "storetime"}),
    Table("icu/ingredientevents", ["subject_id", "hadm_id", "endtime", "storetime", "itemid", "amount", "amountuom",
                                   "orderid"],
          times=["endtime", "storetime"], ints=["hadm_id", "orderid", "itemid"], floats=["amount"],
          to_events=_measure("INGREDIENT//", "endtime", "amountuom", "amount", None, order=ORDER_MED),
          code_prefixes={"endtime": ["INGREDIENT//"]}, stored_at={"endtime": "storetime"}, row_id="orderid"),
    # MIMIC-IV-ED (a separate module: read when the raw dir has ed/; edstays then required).
    Table("ed/edstays", ["subject_id", "hadm_id", "stay_id", "intime", "outtime", "arrival_transport", "disposition"],
          times=["intime", "outtime"], ints=["hadm_id", "stay_id"], to_events=_edstays, module="ed", key="stay_id",
          code_prefixes={"intime": ["ED_ARRIVAL//", "ED_TRIAGE//"], "outtime": ["ED_DISPOSITION//", "ED_DIAGNOSIS//"]}),
    Table("ed/triage", ["subject_id", "stay_id", *ED_VITALS, "acuity"], ints=["stay_id"],
          floats=[*ED_NUMBERS, "acuity"], to_events=_ed_triage, module="ed", needs=("ed/edstays",), key="stay_id"),
    Table("ed/vitalsign", ["subject_id", "stay_id", "charttime", *ED_VITALS], times=["charttime"], ints=["stay_id"],
          floats=ED_NUMBERS, to_events=_ed_vitalsign, module="ed", code_prefixes={"charttime": ["ED_VITAL//"]}),
    Table("ed/diagnosis", ["subject_id", "stay_id", "seq_num", "icd_code", "icd_version"], ints=["stay_id", "seq_num"],
          to_events=_ed_diagnosis, module="ed", needs=("ed/edstays",), rank="seq_num"),
    Table("ed/medrecon", ["subject_id", "stay_id", "charttime", "name"], times=["charttime"], ints=["stay_id"],
          to_events=_ed_med("ED_MEDRECON//"), module="ed", code_prefixes={"charttime": ["ED_MEDRECON//"]}),
    Table("ed/pyxis", ["subject_id", "stay_id", "charttime", "name", "med_rn"], times=["charttime"], ints=["stay_id", "med_rn"],
          to_events=_ed_med("ED_PYXIS//"), module="ed", code_prefixes={"charttime": ["ED_PYXIS//"]}, row_id="med_rn"),
]
TABLE_NAMES = [t.name for t in TABLES]
TABLES_BY_NAME = {t.name: t for t in TABLES}
# Columns a table may lack (older or trimmed extracts); they are read as all-null. A table's row id
# (Table.row_id: labevent_id, microevent_id, orderid, seq_num, med_rn, prescriptions' pharmacy_id)
# may be absent too (_check_columns' keys): without it rows are told apart by the columns read.
OPTIONAL_COLUMNS = {"dod", "hadm_id", "storetime", "storedate", "value", "valueuom", "amountuom", "discharge_location", "admission_location",
                    "seq_num", "edregtime", "edouttime", "order_subtype", "product_description", "dose_given_unit",
                    "dilution_value", "interpretation", "ab_name", "arrival_transport", "disposition", "acuity", "pain",
                    "entertime"}
# Every column of each table in MIMIC-IV 2.2 and 3.1 (the same up to case: 2.2's procedureevents
# has ORIGINALAMOUNT, ORIGINALRATE) and MIMIC-IV-ED 2.2. A file that lacks a column this ETL
# reads and has a column not listed here was renamed or reshaped: refused, never read as nulls.
KNOWN_COLUMNS = {k: set(v.split()) for k, v in {
    "hosp/patients": "subject_id gender anchor_age anchor_year anchor_year_group dod",
    "hosp/admissions": (
        "subject_id hadm_id admittime dischtime deathtime admission_type admit_provider_id "
        "admission_location discharge_location insurance language marital_status race edregtime "
        "edouttime hospital_expire_flag"),
    "hosp/transfers": "subject_id hadm_id transfer_id eventtype careunit intime outtime",
    "icu/icustays": "subject_id hadm_id stay_id first_careunit last_careunit intime outtime los",
    "hosp/diagnoses_icd": "subject_id hadm_id seq_num icd_code icd_version",
    "hosp/procedures_icd": "subject_id hadm_id seq_num chartdate icd_code icd_version",
    "hosp/drgcodes": "subject_id hadm_id drg_type drg_code description drg_severity drg_mortality",
    "hosp/labevents": (
        "labevent_id subject_id hadm_id specimen_id itemid order_provider_id charttime storetime "
        "value valuenum valueuom ref_range_lower ref_range_upper flag priority comments"),
    "hosp/prescriptions": (
        "subject_id hadm_id pharmacy_id poe_id poe_seq order_provider_id starttime stoptime drug_type "
        "drug formulary_drug_cd gsn ndc prod_strength form_rx dose_val_rx dose_unit_rx form_val_disp "
        "form_unit_disp doses_per_24_hrs route"),
    "hosp/emar": (
        "subject_id hadm_id emar_id emar_seq poe_id pharmacy_id enter_provider_id charttime "
        "medication event_txt scheduletime storetime"),
    "hosp/emar_detail": (
        "subject_id emar_id emar_seq parent_field_ordinal administration_type pharmacy_id "
        "barcode_type reason_for_no_barcode complete_dose_not_given dose_due dose_due_unit dose_given "
        "dose_given_unit will_remainder_of_dose_be_given product_amount_given product_unit "
        "product_code product_description product_description_other prior_infusion_rate infusion_rate "
        "infusion_rate_adjustment infusion_rate_adjustment_amount infusion_rate_unit route "
        "infusion_complete completion_interval new_iv_bag_hung continued_infusion_in_other_location "
        "restart_interval side site non_formulary_visual_verification"),
    "hosp/pharmacy": (
        "subject_id hadm_id pharmacy_id poe_id starttime stoptime medication proc_type status "
        "entertime verifiedtime route frequency disp_sched infusion_type sliding_scale "
        "lockout_interval basal_rate one_hr_max doses_per_24_hrs duration duration_interval "
        "expiration_value expiration_unit expirationdate dispensation fill_quantity"),
    "hosp/poe": (
        "poe_id poe_seq subject_id hadm_id ordertime order_type order_subtype transaction_type "
        "discontinue_of_poe_id discontinued_by_poe_id order_provider_id order_status"),
    "hosp/microbiologyevents": (
        "microevent_id subject_id hadm_id micro_specimen_id order_provider_id chartdate charttime "
        "spec_itemid spec_type_desc test_seq storedate storetime test_itemid test_name org_itemid "
        "org_name isolate_num quantity ab_itemid ab_name dilution_text dilution_comparison "
        "dilution_value interpretation comments"),
    "hosp/hcpcsevents": "subject_id hadm_id chartdate hcpcs_cd seq_num short_description",
    "hosp/services": "subject_id hadm_id transfertime prev_service curr_service",
    "hosp/omr": "subject_id chartdate seq_num result_name result_value",
    "icu/inputevents": (
        "subject_id hadm_id stay_id caregiver_id starttime endtime storetime itemid amount amountuom "
        "rate rateuom orderid linkorderid ordercategoryname secondaryordercategoryname "
        "ordercomponenttypedescription ordercategorydescription patientweight totalamount "
        "totalamountuom isopenbag continueinnextdept statusdescription originalamount originalrate"),
    "icu/outputevents": "subject_id hadm_id stay_id caregiver_id charttime storetime itemid value valueuom",
    "icu/procedureevents": (
        "subject_id hadm_id stay_id caregiver_id starttime endtime storetime itemid value valueuom "
        "location locationcategory orderid linkorderid ordercategoryname ordercategorydescription "
        "patientweight isopenbag continueinnextdept statusdescription originalamount originalrate"),
    "icu/datetimeevents": "subject_id hadm_id stay_id caregiver_id charttime storetime itemid value valueuom warning",
    "icu/ingredientevents": (
        "subject_id hadm_id stay_id caregiver_id starttime endtime storetime itemid amount amountuom "
        "rate rateuom orderid linkorderid statusdescription originalamount originalrate"),
    "icu/chartevents": (
        "subject_id hadm_id stay_id caregiver_id charttime storetime itemid value valuenum valueuom "
        "warning"),
    "ed/edstays": "subject_id hadm_id stay_id intime outtime gender race arrival_transport disposition",
    "ed/triage": "subject_id stay_id temperature heartrate resprate o2sat sbp dbp pain acuity chiefcomplaint",
    "ed/vitalsign": "subject_id stay_id charttime temperature heartrate resprate o2sat sbp dbp rhythm pain",
    "ed/diagnosis": "subject_id stay_id seq_num icd_code icd_version icd_title",
    "ed/medrecon": "subject_id stay_id charttime name gsn ndc etc_rn etccode etcdescription",
    "ed/pyxis": "subject_id stay_id charttime med_rn name gsn_rn gsn",
}.items()}
# Dictionaries for code descriptions: table -> (key columns, description column)
DICTIONARIES = {
    "hosp/d_labitems": ["itemid", "label", "fluid"],
    "icu/d_items": ["itemid", "label"],
    "hosp/d_icd_diagnoses": ["icd_code", "icd_version", "long_title"],
    "hosp/d_icd_procedures": ["icd_code", "icd_version", "long_title"],
    "hosp/d_hcpcs": ["code", "long_description", "short_description"],  # CPT rows have only the short one
}
# The event tables whose codes each dictionary describes: a dictionary absent beside one of them is reported
# (DESIGN.md: labevents + d_labitems, icu tables + d_items), its codes described by their ids alone.
DESCRIBES = {
    "hosp/d_labitems": ("hosp/labevents",),
    "icu/d_items": ("icu/chartevents", "icu/inputevents", "icu/outputevents", "icu/procedureevents",
                    "icu/datetimeevents", "icu/ingredientevents"),
    "hosp/d_icd_diagnoses": ("hosp/diagnoses_icd",),
    "hosp/d_icd_procedures": ("hosp/procedures_icd",),
    "hosp/d_hcpcs": ("hosp/hcpcsevents",),
}


# ------------------------------------------------------------------------------- reading raw
# How a raw table's file is named (lower case): the one rule find_table and _warn_raw_files_not_read share.
TABLE_FILE_SUFFIXES = (".csv.gz", ".csv")


def table_of_file(file_name: str) -> str | None:
    """The table a raw file holds, by its name (`LABEVENTS.CSV.GZ` -> "labevents"), or None if no table's name."""
    name = file_name.lower()
    return next((name[: -len(s)] for s in TABLE_FILE_SUFFIXES if name.endswith(s)), None)


def find_table(raw: Path, name: str) -> Path | None:
    """The file of raw table `name` (e.g. "hosp/labevents") under `raw`: .csv.gz or .csv, else None.

    Folder and file names match without regard to case (`HOSP/LABEVENTS.CSV.GZ` as some
    copies and Windows tools write them). A table file that lies in another folder of `raw` (or
    in `raw` itself) is refused, never left out as absent: MIMIC-IV 1.0's core/patients, a
    flattened copy, or an icu/ table saved in hosp/ would otherwise vanish from the output
    with only "absent" said about it; so is one in a folder inside its module's folder, and a folder
    named as the table (a folder of parts).

    Raises:
        UserError: two files of the table in its folder (which one is the table is a guess: a
            half-done decompression?), a file of it in another folder (named, with where
            it belongs), or only a file of it in another format (`labevents.csv.gz.part`).
    """
    module, table = name.split("/", 1)

    def files(folder: Path) -> list[Path]:
        try:
            return sorted(f for f in folder.iterdir() if table_of_file(f.name) == table and f.is_file())
        except OSError:
            return []

    folders = [d for d in sorted(raw.iterdir()) if d.is_dir()] if raw.is_dir() else []
    home = [f for d in folders if d.name.lower() == module for f in files(d)]
    # ... and in a folder inside its module's folder (hosp/extra/labevents.csv.gz was "absent", silently)
    inner = [sub for d in folders if d.name.lower() == module for sub in _subfolders(d)]
    elsewhere = [f for d in [raw, *(d for d in folders if d.name.lower() != module), *inner] for f in files(d)]
    if len(home) > 1:
        raise UserError(f"table {name}: both {home[0]} and {home[1]} exist; keep one")
    if elsewhere and not home and elsewhere[0].parent == raw and raw.name.lower() in {t.name.split("/")[0] for t in TABLES}:
        raise UserError(f"{raw} is MIMIC-IV's {raw.name}/ folder, not the folder that holds hosp/ and icu/: pass {raw.parent}")
    if elsewhere:
        what = (f", which holds {home[0].name} too: remove the stray copy" if home
                else f": MIMIC-IV keeps {table} in {module}/, move it there")
        raise UserError(f"table {name}: {elsewhere[0]} lies outside {raw / module}/{what}")
    if not home:
        # The table in a form this ETL does not read was left out as absent: an unfinished download
        # (labevents.csv.gz.part, .crdownload), another format (.zip, .bz2, .parquet), a split export
        # (BigQuery's labevents-000000000000.csv.gz) or a browser's second copy ("labevents (1).csv.gz").
        # Refused, named. The name must not go on with a letter, digit or "_" (poe vs poe_detail).
        of_table = re.compile(rf"{re.escape(table)}(?![a-z0-9_])")
        other = [f for d in folders if d.name.lower() == module for f in sorted(d.iterdir()) if of_table.match(f.name.lower())]
        if other and other[0].is_dir():  # a folder of parts (Spark, BigQuery) or an unzip's folder named labevents.csv.gz
            raise UserError(f"table {name}: {other[0]} is a folder, not {table}.csv.gz or {table}.csv (a folder of parts, or "
                            "an archive unpacked into a folder?): ehrfm reads one file per table; put the table's file there")
        if other and other[0].is_symlink() and not other[0].exists():  # data linked in from a shared area that moved
            raise UserError(f"table {name}: {other[0]} is a broken symbolic link (to {os.readlink(other[0])}, which does not "
                            "exist): link it to the table's file, or copy the file there")
        if other and table_of_file(other[0].name) == table:  # the right name, but a FIFO, socket or device
            raise UserError(f"table {name}: {other[0]} is not a regular file (a named pipe, socket or device?): ehrfm reads "
                            "each table twice or more, so it must be a file; save the table there")
        if other:
            raise UserError(f"table {name}: {other[0]} is not {table}.csv.gz or {table}.csv (an unfinished download, "
                            "a split export or another format?): ehrfm reads one file per table, a .csv.gz or .csv")
    return home[0] if home else None


def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(d for d in folder.iterdir() if d.is_dir())
    except OSError:
        return []


# Raw CSVs are UTF-8 (as PhysioNet ships them); a byte-order mark (written by Excel and some
# Windows tools) is skipped, as pyarrow's CSV reader skips it for the rows.
CSV_ENCODING = "utf-8-sig"
NOT_UTF8_HINT = "MIMIC-IV is UTF-8 text; re-encode the file (e.g. iconv -f latin1 -t utf-8)"


GZIP_MAGIC = b"\x1f\x8b"


def _is_gzip(path: Path) -> bool:
    """Whether the file holds gzip data, by its first bytes, not its name.

    A `.csv.gz` that is plain text (saved decompressed under its old name) and a `.csv` that is
    still compressed both read as what they hold: judged by the name, the first failed as a bad
    gzip file and the second was refused as "not UTF-8 text" (its compressed bytes).
    """
    try:
        with open(path, "rb") as f:
            return f.read(2) == GZIP_MAGIC
    except OSError:
        return path.suffix == ".gz"  # unreadable: the read itself reports it


def _open_text(path: Path, mode: str = "rb", **kwargs):
    """open() or gzip.open() of a raw CSV, by its content (_is_gzip)."""
    return (gzip.open if _is_gzip(path) else open)(path, mode, **kwargs)


def _csv_source(path: Path, lines: _LineCount | None = None):
    """A pyarrow input stream of a raw CSV, decompressed when its content is gzip (_is_gzip); counted into `lines`."""
    import pyarrow as pa

    stream = pa.input_stream(str(path), compression="gzip" if _is_gzip(path) else None)
    return stream if lines is None else lines.wrap(stream)


class _LineCount:
    r"""Physical lines (line ends: \n, \r\n or a lone \r) of the bytes a CSV reader takes through `wrap`.

    Rows read, the header and the line breaks inside the values read account for every line of a
    sound file: more lines than that hold line breaks inside values the ETL does not read, which is
    where a double quote left open in a free-text column (labevents.comments) hides the following
    rows (_stage_table then checks those columns for merged records).
    """

    def __init__(self):
        self.n, self._last_cr = 0, False

    def wrap(self, stream):
        import io

        count = self

        class Counted(io.RawIOBase):  # the file-like object pyarrow's CSV reader reads through
            def readable(self):
                return True

            def read(self, n=-1):
                b = stream.read(n)
                count.add(b)
                return b

            def close(self):
                stream.close()
                super().close()

        return Counted()

    def add(self, b: bytes) -> None:
        if not b:
            return
        crlf = b.count(b"\r\n") + (self._last_cr and b[:1] == b"\n")
        self.n += b.count(b"\n") + b.count(b"\r") - crlf
        self._last_cr = b[-1:] == b"\r"


# Quoted values may hold line breaks (free text: drug names, comments). Without this pyarrow
# cuts blocks at any newline, and a quoted one at a block boundary failed the table ("CSV parser
# got out of sync with chunker" or "Expected N columns, got M"), depending on the block size.
CSV_PARSE = {"newlines_in_values": True}


# The first bytes of other compressed or binary formats a raw table may have been saved in. A
# gzip inside the gzip is a file compressed twice (a download that was gzipped in transit, too).
OTHER_FORMATS = {b"PK\x03\x04": "zip", b"BZh": "bzip2", b"\x28\xb5\x2f\xfd": "zstd", b"\xfd7zXZ\x00": "xz",
                 b"7z\xbc\xaf\x27\x1c": "7-zip", b"PAR1": "parquet", GZIP_MAGIC: "gzip-inside-gzip (compressed twice)"}


def _header(path: Path, table: str | None = None) -> list[str]:
    """The column names of a raw CSV[.gz].

    Only its first line is read and decoded, so a bad byte further down is not blamed on the header.

    Raises:
        UserError: unreadable, another format (zip, bzip2, zstd, xz, 7-zip, parquet, gzip twice),
            not UTF-8, or empty (no header line: a header-only file is an empty table, a file
            without one is a truncated copy).
    """
    try:
        with _open_text(path) as f:
            line = _first_line(f)
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read the CSV header ({type(e).__name__})") from None
    kind = next((k for magic, k in OTHER_FORMATS.items() if line.startswith(magic)), None)
    if kind:  # else refused as "not UTF-8 text; re-encode (iconv)", which does not help
        raise UserError(f"{path}: holds {kind} data, not CSV text or gzip-compressed CSV (table {table or path.name}); "
                        "decompress it to a .csv (or .csv.gz) file")
    # A UTF-16/32 byte-order mark, or ASCII with NUL bytes between its letters (which decode as UTF-8).
    if line[:2] in (b"\xff\xfe", b"\xfe\xff") or line[:4] == b"\x00\x00\xfe\xff" or (
            len(line) >= 4 and (not any(line[1::2]) or not any(line[0::2]))):
        raise UserError(f"{path}: the header line is UTF-16 or UTF-32 text (table {table or path.name}); MIMIC-IV is "
                        "UTF-8: re-encode the file (e.g. iconv -f utf-16 -t utf-8)")
    try:
        text = line.decode(CSV_ENCODING)
    except UnicodeDecodeError:
        # Control bytes (NUL, or over 1 in 20; not a DOS end-of-file Ctrl-Z) are no text in another encoding: random
        # or damaged bytes, which were told to re-encode (iconv) as a latin-1 header would be.
        if b"\x00" in line or 20 * sum(b < 9 or 13 < b < 32 and b != 26 for b in line) > len(line):
            named_gz = " nor gzip data, though named .gz" if path.suffix == ".gz" and not _is_gzip(path) else ""
            raise UserError(f"{path}: holds binary data, not CSV text{named_gz} (table {table or path.name}): a damaged "
                            "or partial download? Download it again (MIMIC-IV's SHA256SUMS.txt gives each file's "
                            "checksum)") from None
        raise UserError(f"{path}: the header line is not UTF-8 text; {NOT_UTF8_HINT}") from None
    header = next(csv.reader([text]), []) if text.strip() else []
    if not header:
        raise UserError(f"{path}: empty file, no header line (table {table or path.name}); a truncated copy? "
                        "Copy it again: a table without rows still has its header line")
    return header


def _first_line(f, limit: int = 1 << 20) -> bytes:
    """The first line of a binary file object, without its line end (LF, CRLF or a lone CR).

    A lone CR ends a line too: old Mac tools and Excel's "CSV (Macintosh)" end lines with it, and
    pyarrow's CSV reader reads such rows; readline() alone took the whole file as the header line
    (and the csv module then failed with a traceback). Reads at most `limit` bytes.
    """
    head = b""
    while len(head) < limit:
        chunk = f.readline(1 << 16)  # stops after a newline; a file of lone CRs gives 64 KiB at a time
        head += chunk
        if not chunk or b"\n" in chunk or b"\r" in chunk:
            break
    return head.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n", 1)[0]


def _check_columns(path: Path, needed: list[str], optional: set[str] = frozenset(), table: str | None = None,
                   keys: set[str] = frozenset()) -> dict[str, str]:
    """The needed columns the file has: {name in MIMIC-IV's lower case: name in the file's header}.

    Names match without regard to case (MIMIC-IV 2.2 writes procedureevents' ORIGINALAMOUNT in
    upper case, 3.1 and database exports lower case); extra columns are ignored, and optional
    columns may be absent (trimmed extracts) unless the file also has columns MIMIC-IV never
    had (KNOWN_COLUMNS): then a column was renamed and reading it as null would hide that.
    `keys` (a table's row id, Table.row_id) may be absent in any case: its values only tell rows
    apart, so without it rows are told apart by the other columns read, as before it was read.

    Raises:
        UserError: a needed column is missing, or an optional one is missing from a file with
            unknown columns; names the file, the table, every missing and unknown column and the
            columns the file has (names only, never values).
    """
    header = _header(path, table)
    if values := _values_in_header(header):  # its cells would be a patient's values in every message below
        raise UserError(f"{path}: the first line is not a header: {values} of its {len(header)} fields "
                        f"are numbers or dates where table {table or path.name} names its columns (values not shown); the "
                        "file seems to have been exported without its header line: export it again with the header")
    by_lower = {}
    for c in header:
        by_lower.setdefault(c.strip().lower(), c)
    twice = [c for c in needed if sum(h.strip().lower() == c for h in header) > 1]
    if twice:  # e.g. a SELECT * of a join: which column holds the table's values is a guess
        names = [h for h in header if h.strip().lower() == twice[0]]
        raise UserError(f"{path}: column {twice[0]!r} appears {len(names)} times in the header "
                        f"({', '.join(map(repr, names))}); keep one (table {table or path.name})")
    missing = [c for c in needed if c not in by_lower and c not in optional and c not in keys]
    if missing:
        more = f" (and {len(missing) - 1} more: {', '.join(map(repr, missing[1:]))})" if len(missing) > 1 else ""
        raise UserError(f"{path}: missing column {missing[0]!r}{more}; table {table or path.name} has an unexpected "
                        f"column set for MIMIC-IV 2.2/3.x: {', '.join(header)}")
    known = KNOWN_COLUMNS.get(table or "")
    absent = [c for c in needed if c not in by_lower and c not in keys]
    unknown = [c for c in header if known is not None and c.strip().lower() not in known]
    if absent and unknown:
        raise UserError(f"{path}: table {table} has an unexpected column set for MIMIC-IV 2.2/3.x: no "
                        f"{', '.join(map(repr, absent))} but {', '.join(map(repr, unknown))} (columns: {', '.join(header)})")
    return {c: by_lower[c] for c in needed if c in by_lower}


def _values_in_header(header: list[str]) -> int:
    """How many header cells look like values (start with a digit, a sign or a decimal point): no MIMIC-IV column name does."""
    return sum(bool(re.match(r"\s*[-+.]?\d", c)) for c in header)


def _read_batches(path: Path, columns: list[str] | dict[str, str], block_size: int, lines: _LineCount | None = None):
    """Stream a CSV[.gz] as polars DataFrames of string columns, a block at a time.

    columns: names to read, or {output name: name in the file} (from _check_columns).
    lines: counts the file's physical lines as it is read (_LineCount).
    """
    rename = dict(columns) if isinstance(columns, dict) else {c: c for c in columns}
    columns = list(rename.values())
    import pyarrow as pa
    import pyarrow.csv as pacsv

    # pyarrow finds the header in the first block: with a header line longer than the block it
    # reported an empty file, read below as a table without rows (every row lost, unsaid).
    with _open_text(path) as f:
        block_size = max(block_size, len(_first_line(f)) + 2)
    try:
        reader = pacsv.open_csv(_csv_source(path, lines), read_options=pacsv.ReadOptions(block_size=block_size, use_threads=False),
                                parse_options=pacsv.ParseOptions(**CSV_PARSE),
                                convert_options=pacsv.ConvertOptions(
                                    include_columns=columns, column_types={c: pa.string() for c in columns},
                                    strings_can_be_null=True, null_values=[""]))
    except (pa.ArrowInvalid, OSError, EOFError) as e:
        if "Empty CSV file" in str(e) and _header(path):
            # A header line without a line end (what some exporters write for a table with no
            # rows): pyarrow finds no complete line; the table has no rows.
            return iter(())
        raise _csv_error(path, e, block_size) from None
    return _iter_batches(reader, path, {v: k for k, v in rename.items() if k != v}, block_size)


def _iter_batches(reader, path: Path, rename: dict[str, str], block_size: int = 4 << 20):
    import pyarrow as pa

    with _closing_reader(reader):
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except (pa.ArrowInvalid, OSError, EOFError) as e:
                raise _csv_error(path, e, block_size) from None
            if batch.num_rows:
                df = pl.from_arrow(pa.Table.from_batches([batch]))
                yield df.rename(rename) if rename else df


@contextlib.contextmanager
def _closing_reader(reader):
    """Close a pyarrow CSV streaming reader on leaving, error or not.

    Its read-ahead runs on pyarrow's I/O thread, reading through Python (_LineCount). Left to the garbage
    collector (a traceback keeps the reader's frame alive until exit), that thread could still be reading
    while the interpreter shut down: after the right one-line error, about 1 run in 16 then aborted
    ("terminate called without an active exception", exit 134).
    """
    try:
        yield reader
    finally:
        reader.close()


def _prefetched(items, depth: int = 1):
    """Iterate `items` (e.g. _read_batches) in a thread that stays `depth` items ahead.

    pyarrow decompresses and parses the next CSV block without the GIL while polars transforms
    the current one, so one table keeps up to two cores busy. An error raised while reading is
    raised here, as the plain iteration would; stopping early stops the thread.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def run():
        try:
            for x in items:
                if not put((x, None)):
                    return
            put((end, None))
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer, which raises it
            put((None, e))

    thread = threading.Thread(target=run, name="etl-csv-reader", daemon=True)
    thread.start()
    try:
        while True:
            x, e = q.get()
            if e is not None:
                raise e
            if x is end:
                return
            yield x
    finally:
        stop.set()
        thread.join()


def _csv_error(path: Path, e: Exception, block_size: int) -> UserError:
    """The UserError for a CSV read error `e`.

    A text column that is not UTF-8 is named, with its count of such rows (one more pass over that
    column); any other error by its kind (_safe_reason).
    """
    import re

    m = re.search(r"CSV column #(\d+):.*invalid UTF8", str(e))
    if m:
        header = _header(path)
        i = int(m.group(1))
        if i < len(header):
            col = header[i]
            n = _count_not_utf8(path, col, block_size)
            rows = f"{n} row{'s' if n != 1 else ''}" if n is not None else "some rows"
            return UserError(f"{path}: column {col.strip()!r} has {rows} that are not UTF-8 text; {NOT_UTF8_HINT}")
    if re.search(r"Expected \d+ columns, got \d+", str(e)):
        counted = _count_ragged_rows(path, block_size)
        if counted is not None and counted[0]:
            n, expected, first = counted
            return UserError(f"{path}: cannot be read as CSV: {n} row{'s' if n != 1 else ''} without the header's {expected} "
                             f"columns (the first at line {first}): rows cut short (a truncated copy?) or values with an "
                             "unquoted comma")
    return UserError(f"{path}: cannot be read as CSV ({_safe_reason(e)})")


def merged_records_pattern(n_columns: int) -> str:
    """A value that holds a line break followed by what starts a record of a file of `n_columns` columns.

    MERGED_RECORDS (an id, two more fields and a date-time), or a line of at least n_columns - 1 commas: a
    table whose rows hold no time (hcpcsevents, drgcodes) or start with no plain number (poe's 10000032-12)
    lost its rows to a quote left open, unrefused, when only the first was looked for.
    """
    if n_columns < 3:
        return MERGED_RECORDS
    return f"(?:{MERGED_RECORDS})|(?:[\\r\\n](?:[^,\\r\\n]*,){{{n_columns - 1}}})"


def _merged_records_in_other_columns(path: Path, read: list[str], block_size: int) -> dict[str, int]:
    """{column: values holding a merged record} of the columns of CSV `path` not in `read` (counts, never values).

    Columns are taken by position (a header with an empty or repeated name, a trailing comma, cannot be
    selected by name); a file pyarrow cannot read is one UserError (_csv_error).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    header = _header(path)
    others = [i for i, c in enumerate(header) if c not in read]
    if not others:
        return {}
    names = [f"c{i}" for i in range(len(header))]
    pattern = merged_records_pattern(len(header))
    with _open_text(path) as f:
        block_size = max(block_size, len(_first_line(f)) + 2)
    found: dict[str, int] = {}
    try:
        reader = pacsv.open_csv(_csv_source(path), read_options=pacsv.ReadOptions(
                                    block_size=block_size, use_threads=False, skip_rows=1, column_names=names),
                                parse_options=pacsv.ParseOptions(**CSV_PARSE),
                                convert_options=pacsv.ConvertOptions(include_columns=[names[i] for i in others],
                                                                     column_types={names[i]: pa.string() for i in others}))
        with _closing_reader(reader):
            for batch in reader:
                df = pl.from_arrow(pa.Table.from_batches([batch]))
                counts = df.select(pl.col(names[i]).str.contains(pattern).sum() for i in others).row(0)
                for i, n in zip(others, counts, strict=True):
                    if n:
                        found[header[i] or f"#{i + 1}"] = found.get(header[i] or f"#{i + 1}", 0) + int(n)
    except (pa.ArrowInvalid, OSError, EOFError) as e:
        raise _csv_error(path, e, block_size) from None
    return found


RAGGED_FIELD_MAX_BYTES = 16 << 20  # a longer value is a quote left open (the rest of the file read as one value)


def _count_ragged_rows(path: Path, block_size: int) -> tuple[int, int, int] | None:
    """Rows whose column count is not the header's: (how many, the header's count, the first's line), or None.

    pyarrow stops at the first such row; one more pass counts them all (never their text: patient data).
    Python's csv module, not pyarrow's invalid_row_handler: that Python callback was released on one of
    pyarrow's threads after the error was printed, sometimes as the interpreter shut down, and the process
    aborted ("terminate called without an active exception", exit 134, about 1 run in 16). block_size is
    unused (kept for the callers' signature).
    """
    n_bad, expected, first, before = 0, 0, 0, 0  # before: physical lines read before the current row (quoted line breaks)
    limit = csv.field_size_limit(RAGGED_FIELD_MAX_BYTES)
    try:
        with _open_text(path, "rt", encoding="utf-8-sig", errors="replace", newline="") as f:
            rows = csv.reader(f)
            for row in rows:
                if not row:  # a blank line: pyarrow skips those too
                    before = rows.line_num
                    continue
                if not expected:
                    expected = len(row)
                elif len(row) != expected:
                    n_bad += 1
                    first = first or before + 1
                before = rows.line_num
    except csv.Error:
        if not expected:
            return None
        # a quote left open: the rest of the file is one value, a row that is not the header's
        return n_bad + 1, expected, first or before + 1
    except (OSError, EOFError, UnicodeError):
        return None
    finally:
        csv.field_size_limit(limit)
    return n_bad, expected, first


def _count_not_utf8(path: Path, col: str, block_size: int) -> int | None:
    """Values of column `col` that are not valid UTF-8 (None when the file cannot be read to the end)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        reader = pacsv.open_csv(_csv_source(path), read_options=pacsv.ReadOptions(block_size=block_size, use_threads=False),
                                parse_options=pacsv.ParseOptions(**CSV_PARSE),
                                convert_options=pacsv.ConvertOptions(include_columns=[col], column_types={col: pa.binary()}))
        n = 0
        with _closing_reader(reader):
            for batch in reader:
                values = batch.column(0)
                try:  # a whole block at once (the common case: valid); else value by value
                    values.view(pa.string()).validate(full=True)
                except pa.ArrowInvalid:
                    n += sum(not _is_utf8(v) for v in values.to_pylist() if v is not None)
        return n
    except (pa.ArrowInvalid, OSError, EOFError):
        return None


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# pyarrow's and zlib's words for gzip data that ends early or is corrupt.
DAMAGED_GZIP = ("Truncated compressed stream", "zlib inflate failed", "Compressed file ended", "incorrect header check",
                "invalid stored block", "invalid distance", "invalid block type")


def _safe_reason(e: Exception) -> str:
    """The kind of a CSV read error without the row content pyarrow quotes (patient data)."""
    import re

    text = str(e)
    if isinstance(e, EOFError) or any(w in text for w in DAMAGED_GZIP):
        return "its gzip data is truncated or damaged: an interrupted download or copy? Copy it again"
    if "straddling object" in text:
        return "a row longer than the CSV block size (batch_bytes); a damaged file?"
    m = re.search(r"Expected \d+ columns, got \d+", text)
    return (m.group(0) + ": a row cut short (a truncated copy?) or a value with an unquoted comma") if m else type(e).__name__


def _parse_times(df: pl.DataFrame, cols: list[str]) -> pl.DataFrame:
    """Parse timestamp columns: MIMIC's own format first, the other formats only where it failed."""
    first = df.with_columns([pl.col(c).str.to_datetime(TIME_FORMATS[0], time_unit="us", strict=False) for c in cols])
    slow = [c for c in cols if (df[c].is_not_null() & first[c].is_null()).any()]
    if not slow:
        return first
    return first.with_columns([
        pl.coalesce([df[c].str.strip_chars().str.to_datetime(f, time_unit="us", strict=False) for f in TIME_FORMATS]).alias(c)
        for c in slow
    ])


def _number_text(text: pl.Series) -> pl.Series:
    """A text column read as float64 without surrounding spaces or a leading '+' (null where it is no number)."""
    return text.str.strip_chars().str.strip_prefix("+").cast(pl.Float64, strict=False)


def _parse_ints(df: pl.DataFrame, typed: pl.DataFrame, cols: list[str]) -> pl.DataFrame:
    """Integer columns of `typed` that failed to parse, read again as whole numbers written as decimals.

    `20000001.0` is 20000001 (pandas writes an id column holding a null as float; exact up to 2^53). Only columns with failures are parsed again (the usual file costs nothing more); what is still
    null is counted as unparseable by _typed.
    """
    slow = [c for c in cols if (df[c].is_not_null() & typed[c].is_null()).any()]
    if not slow:
        return typed
    exprs = []
    for c in slow:
        x = _number_text(df[c])
        whole = x.is_finite() & (x == x.floor()) & (x.abs() <= 2.0 ** 53)
        exprs.append(pl.coalesce(typed[c], pl.when(whole).then(x).cast(pl.Int64)).alias(c))
    return typed.with_columns(exprs)


def _parse_floats(df: pl.DataFrame, typed: pl.DataFrame, cols: list[str]) -> pl.DataFrame:
    """Number columns of `typed` that failed to parse, read again without surrounding spaces or a leading '+'.

    `" 7.5 "` (a fixed-width export) and `+7.5` are 7.5: polars' cast refuses both, and every such
    value became an event without a number. Only columns with failures are parsed again; what is
    still null is counted as unparseable by _typed.
    """
    slow = [c for c in cols if (df[c].is_not_null() & typed[c].is_null()).any()]
    if not slow:
        return typed
    return typed.with_columns([
        pl.coalesce(typed[c], _number_text(df[c])).alias(c) for c in slow])


class _BadValues:
    """Counts unparseable values per column across batches; reported once per table."""

    def __init__(self, path: Path):
        self.path = path
        self.counts: dict[str, tuple[str, int]] = {}
        self.markers: dict[str, int] = {}  # column -> how many of its unparseable values are a null marker
        self.zones: dict[str, int] = {}  # column -> how many of its unparseable times carry a time zone
        self.slashes: dict[str, int] = {}  # column -> how many of its unparseable times are 1/2/2150-style dates
        self.control: dict[str, int] = {}  # column -> values holding a NUL byte (_without_control_characters)
        self.merged: dict[str, int] = {}  # column -> values holding a line break and then a record's start (MERGED_RECORDS)
        self.line_breaks = 0  # line ends (\n, \r\n, \r) inside the values read: physical lines that are no row (_LineCount)
        self.merged_pattern = MERGED_RECORDS  # what a merged record looks like in this file (merged_records_pattern)
        self.dates: dict[str, int] = {}  # Table.timed_only column -> its values written without a time of day

    def __bool__(self) -> bool:
        return bool(self.counts or self.control or self.merged or self.dates)

    def add(self, col: str, kind: str, n: int, markers: int = 0, zones: int = 0, slashes: int = 0):
        if n:
            k, m = self.counts.get(col, (kind, 0))
            self.counts[col] = (k, m + n)
            self.markers[col] = self.markers.get(col, 0) + markers
            self.zones[col] = self.zones.get(col, 0) + zones
            self.slashes[col] = self.slashes.get(col, 0) + slashes

    def raise_if_any(self):
        for col, n in self.control.items():  # damage first: it is what made the values unparseable
            raise UserError(f"{self.path}: column {col!r} has {n} value{'s' if n != 1 else ''} holding a NUL byte: "
                            "MIMIC-IV's values hold none; a damaged copy (a block of zeros) or binary data in a text "
                            "field? Download or export the file again")
        for col, n in self.merged.items():
            raise UserError(f"{self.path}: column {col!r} has {n} value{'s' if n != 1 else ''} holding a line break followed "
                            "by what starts a record (an id, a comma and more fields): a double quote left open in the file "
                            "(a stray \" in a text field) merged the following lines into one value, other rows' fields with "
                            "them; close or remove that quote, or export the file again")
        for col, n in self.dates.items():
            raise UserError(f"{self.path}: column {col!r} has {n} value{'s' if n != 1 else ''} written as a date without a "
                            "time of day: a subject's stays are ordered by it and the labels predict from it, which a date "
                            "cannot do (a discharge and the next admission of one day would tie); MIMIC-IV's files give "
                            f"{col} to the second: use the file as downloaded, or export {col} with its times")
        if self.counts:
            col, (kind, n) = next(iter(self.counts.items()))
            k = self.markers.get(col, 0)
            why = (f" ({'all' if k == n else k} of them the text {'/'.join(NULL_MARKERS[:2])} or the like: a database "
                   "export's null; write nulls as empty fields, as PhysioNet's files do)") if k else ""
            z = self.zones.get(col, 0)
            if z and not k:
                why = (f" ({'all' if z == n else z} of them with a time zone, e.g. Z, +01:00 or UTC: MIMIC-IV's times "
                       "have none; export them as local times without a zone)")
            d = self.slashes.get(col, 0)
            if d and not k and not z:
                why = (f" ({'all' if d == n else d} of them dates written with '/', as a spreadsheet saves them: "
                       "MIMIC-IV writes YYYY-MM-DD HH:MM:SS; use the file as downloaded, or save times in that format)")
            what = f"value{'s' if n != 1 else ''} {kind}" if kind.startswith("outside ") else \
                f"unparseable {kind} value{'s' if n != 1 else ''}"
            raise UserError(f"{self.path}: column {col!r} has {n} {what}{why}")


# MIMIC-IV's de-identification placeholder (free text that could name a person, e.g. emar_detail's
# dose_given): removed on purpose, so counted apart from numbers that do not parse.
REDACTED = r"^_{3,}$"


def _is_redacted(col: str) -> pl.Expr:
    return pl.col(col).str.strip_chars().str.contains(REDACTED)


# Texts some database exports write for a null (MySQL \N, psql/pandas NULL, NaN, ...); MIMIC-IV
# writes an empty field. Not read as null (a text column may hold them as values): an id or time
# column holding them is refused with a hint.
NULL_MARKERS = ("NULL", "\\N", "NONE", "NAN", "NA", "N/A", "NIL")


# A time zone written after a timestamp (ISO 8601's Z or +hh:mm, a database's " UTC"): MIMIC-IV's
# times are local times without one, so such values are refused with this hint, never shifted.
# It must follow a time of day: after a bare date, "2125-13-01"'s "-01" read as an offset of -01 hours.
ZONE_SUFFIX = r"\d:\d\d(?::\d\d(?:[.,]\d+)?)?(?:Z|z|\s*[+-]\d\d(?::?\d\d)?|\s*UTC)$"


def _is_null_marker(col: str) -> pl.Expr:
    return pl.col(col).str.strip_chars().str.to_uppercase().is_in(list(NULL_MARKERS))


def _typed(df: pl.DataFrame, table: Table, bad: _BadValues, ctx: Context) -> pl.DataFrame:
    """Parse the string columns we rely on; count (never show) values that do not parse.

    Each time column `c` gets a flag column DATE_FLAG + c: true where the value is a date (a
    DATE column of MIMIC-IV's schema, or a value written without a time of day); such values
    are placed at the end of their day here (module docstring, "Dates and midnights").
    """
    exprs = [pl.col("subject_id").cast(pl.Int64, strict=False)]
    exprs += [pl.col(c).cast(pl.Int64, strict=False) for c in table.ints if c in df.columns]
    exprs += [pl.col(c).cast(pl.Float64, strict=False) for c in table.floats if c in df.columns]
    times = [c for c in table.times if c in df.columns]
    typed = _parse_ints(df, df.with_columns(exprs), ["subject_id", *(c for c in table.ints if c in df.columns)])
    typed = _parse_floats(df, _parse_times(typed, times), [c for c in table.floats if c in df.columns])
    checks = [("subject_id", "integer")] + [(c, "timestamp") for c in table.times] + [(c, "integer") for c in table.ints]
    present = [c for c, _ in checks if c in df.columns]
    floats = [c for c in table.floats if c in df.columns]
    is_date = {c: (typed[c].is_not_null() if c in table.dates
                   else typed[c].is_not_null() & (df[c].str.strip_chars().str.len_chars() <= 10)) for c in times}
    midnight = {c: typed[c].is_not_null() & ~is_date[c] & (typed[c].dt.time() == dt.time(0)) for c in times}
    counts = df.select(
        [(pl.col(c).is_not_null() & typed[c].is_null()).sum().alias(c) for c in present]
        + [(_is_null_marker(c) & typed[c].is_null()).sum().alias(f"marker:{c}") for c in present]
        + [(pl.col(c).is_not_null() & typed[c].is_null()).sum().alias(f"float:{c}") for c in floats]
        + [(_is_redacted(c) & typed[c].is_null()).sum().alias(f"redacted:{c}") for c in floats]
        + [(typed[c].is_not_null() & _usable_number(typed[c]).is_null()).sum().alias(f"range:{c}") for c in floats]
        + [pl.lit((~typed[c].is_between(lo, hi)).sum()).alias(f"outside:{c}") for c, (lo, hi) in table.int_ranges.items()
           if c in df.columns]
        + [pl.lit(is_date[c].sum()).alias(f"date:{c}") for c in times]
        + [pl.lit(midnight[c].sum()).alias(f"midnight:{c}") for c in times]
    ).row(0, named=True) if len(df) else {}
    bad_times = [c for c in times if counts.get(c, 0)]
    if bad_times:  # rare: only then look for time zones and 1/2/2150 dates among the values that did not parse
        counts.update(df.select(
            [(pl.col(c).str.strip_chars().str.contains(ZONE_SUFFIX) & typed[c].is_null()).sum().alias(f"zone:{c}")
             for c in bad_times]
            + [(pl.col(c).str.contains(r"^\s*\d{1,4}/\d{1,2}/\d{1,4}") & typed[c].is_null()).sum().alias(f"slash:{c}")
               for c in bad_times]).row(0, named=True))
    for c, kind in checks:
        bad.add(c, kind, int(counts.get(c, 0)), int(counts.get(f"marker:{c}", 0)), int(counts.get(f"zone:{c}", 0)),
                int(counts.get(f"slash:{c}", 0)))
    for c, (lo, hi) in table.int_ranges.items():
        bad.add(c, f"outside {lo}-{hi}", int(counts.get(f"outside:{c}", 0)))
    for c in floats:
        # MIMIC's de-identification placeholder: a value removed on purpose, not a fault of the data
        r = int(counts.get(f"redacted:{c}", 0))
        ctx.count(ctx.redacted, c, r, table.name)
        # kept as an event without a number (the raw text stays in text_value where there is one)
        ctx.count(ctx.unparseable, c, int(counts.get(f"float:{c}", 0)) - r, table.name)
        # NaN, inf, 1e308: no value a float32 numeric_value can hold (kept as an event without a number)
        ctx.count(ctx.out_of_range, c, int(counts.get(f"range:{c}", 0)), table.name)
    for c in times:
        n = int(counts.get(f"date:{c}", 0))
        ctx.date_only[(table.name, c)] = ctx.date_only.get((table.name, c), 0) + n
        if n and c in table.timed_only:
            bad.dates[c] = bad.dates.get(c, 0) + n
        ctx.count(ctx.midnight, c, int(counts.get(f"midnight:{c}", 0)), table.name)
    # every batch has the same columns (keyed tables concatenate them); a regex pass only where a placeholder is
    redacted = [df.select(_is_redacted(c).fill_null(False).alias(f"{REDACTED_FLAG}{c}")).to_series()
                if counts.get(f"redacted:{c}", 0) else pl.lit(False).alias(f"{REDACTED_FLAG}{c}") for c in floats]
    return typed.with_columns(
        [_usable_number(pl.col(c)).alias(c) for c in floats]
        + [pl.when(is_date[c]).then(typed[c].dt.truncate("1d") + END_OF_DAY).otherwise(typed[c]).alias(c) for c in times]
        + [is_date[c].alias(f"{DATE_FLAG}{c}") for c in times]
        + redacted
    )


def _at_stored_time(df: pl.DataFrame, table: Table, present: dict, ctx: Context) -> pl.DataFrame:
    """Place each row of a result table no earlier than it was stored (module docstring, "Results").

    df: typed rows (_typed). For each (time column c, store column s) of table.stored_at, c becomes
    max(c, s) and its date-only flag follows whichever came later; a row with c but no s (never
    stored: a cancelled or pending result) is dropped and counted `result_never_stored`. A file
    without the store column keeps c, and the metadata says so (`stored_time_sources`).
    """
    for c, s in table.stored_at.items():
        fill = table.fallback.get(s)
        info = ctx.stored.setdefault((table.name, c), {"store_column": s, "present": False, "moved": 0})
        if s not in present and (fill is None or fill not in present):
            continue
        info["present"] = True
        df = _keep(df, ctx, pl.col(c).is_null() | pl.col(s).is_not_null(), "result_never_stored")
        later = pl.col(s) > pl.col(c)
        if SOURCE_TIME not in df.columns:  # rows distinct at their chart times stay distinct when stored together
            df = df.with_columns(pl.col(c).dt.epoch("us").alias(SOURCE_TIME))
        # Moved events are counted after duplicates are dropped (_assemble): a repeated row is one move.
        df = df.with_columns(later.fill_null(False).alias(MOVED),
                             pl.when(later).then(pl.col(s)).otherwise(pl.col(c)).alias(c),
                             pl.when(later).then(pl.col(DATE_FLAG + s)).otherwise(pl.col(DATE_FLAG + c)).alias(DATE_FLAG + c))
    return df


def _with_row_key(df: pl.DataFrame, table: Table) -> pl.DataFrame:
    """The rows with ROW_KEY, their events' _key, for a table with a row id (Table.row_id); else df as is.

    Rows whose columns read are identical but whose row ids differ (one drug ordered PR and PO at
    one time: two pharmacy_id) are distinct records: the key keeps them two events, and only
    exact repeats of a row are dropped as `duplicate`. Where the row also has SOURCE_TIME (a
    result moved to its store time, _at_stored_time) the key is a hash of both, so rows apart in
    either stay apart. A row without an id (a file without the column) keeps the key it had
    without one: SOURCE_TIME or none. A table with a rank but no row id (diagnoses: seq_num) is keyed
    by its rank, which orders its events (_assemble) but tells no rows apart (_write_shard).
    """
    if table.row_id is None:
        return df.with_columns(pl.col(table.rank).cast(pl.Int64).alias(ROW_KEY)) if table.rank else df
    row_id = pl.col(table.row_id)
    if SOURCE_TIME in df.columns:
        both = pl.struct(row_id, pl.col(SOURCE_TIME)).hash(seed=0).reinterpret(signed=True)
        key = pl.when(row_id.is_not_null()).then(both).otherwise(pl.col(SOURCE_TIME))
    else:
        key = row_id
    return df.with_columns(key.cast(pl.Int64).alias(ROW_KEY))


def _lean_arrow_memory() -> None:
    """Use arrow's jemalloc pool, returning freed memory at once (measured on the demo: the lowest peak RSS)."""
    import pyarrow as pa

    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        pa.jemalloc_set_decay_ms(0)
    except (NotImplementedError, AttributeError):  # a pyarrow built without jemalloc: keep its default pool
        pass


def named_tables(names: list[str] | str) -> list[str]:
    """The full names (module/table) of the tables named, as given to --tables (UserError: see select_tables)."""
    if isinstance(names, str):
        names = names.split(",")
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise UserError("--tables: no table named; name the tables to convert (e.g. --tables labevents,prescriptions), "
                        "or leave --tables out to convert every table")
    short = {n.split("/", 1)[1]: n for n in TABLE_NAMES}
    full = [n if n in TABLE_NAMES else short.get(n) for n in names]
    unknown = [n for n, f in zip(names, full, strict=True) if f is None]
    if unknown:
        raise UserError(f"--tables: unknown table {unknown[0]!r}; known tables: {', '.join(TABLE_NAMES)}")
    return full


def select_tables(names: list[str] | str | None) -> list[str]:
    """The tables to convert, in ETL order, from names like `hosp/labevents` or `labevents`.

    hosp/patients and hosp/admissions are always converted (every other table needs them); an
    ED table brings ed/edstays (its stay times) and hosp/emar_detail brings hosp/emar (its times).

    Args:
        names: table names (a list or one comma-separated string); None: every table.

    Returns:
        Full table names (module/table), in TABLES order.

    Raises:
        UserError: a name that is no table of MIMIC-IV this ETL reads (the known names listed), or
            no name at all (`--tables ''`, an unset shell variable: it converted every table).
    """
    if names is None:
        return list(TABLE_NAMES)
    chosen = {"hosp/patients", "hosp/admissions", *named_tables(names)}
    by_name = {t.name: t for t in TABLES}
    for n in list(chosen):
        if by_name[n].module == "ed":
            chosen.add("ed/edstays")
        if by_name[n].timed_by:
            chosen.add(by_name[n].timed_by)
    return [n for n in TABLE_NAMES if n in chosen]


def _stable_uniform(ids: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of (subject_id, seed) -> [0, 1): the same split on any machine and version."""
    with np.errstate(over="ignore"):
        x = ids.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def assign_splits(subject_ids: np.ndarray, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> np.ndarray:
    """The split name of each subject: a stable hash of subject_id, cut at the given fractions.

    Args:
        subject_ids: (n,) integer subject ids.
        fractions: (train, tuning, held_out) shares, non-negative, summing to 1.
        seed: changes the hash; the same (subject_id, seed) always gets the same split.

    Returns:
        (n,) split names from SPLITS ("train", "tuning", "held_out").

    Raises:
        UserError: fractions that are not three non-negative numbers summing to 1.
    """
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or (f < 0).any() or not np.isclose(f.sum(), 1.0):
        raise UserError(f"split fractions must be three non-negative numbers summing to 1 (got {list(fractions)})")
    u = _stable_uniform(np.asarray(subject_ids), seed)
    cut = np.cumsum(f)
    return np.array(SPLITS)[np.minimum(np.searchsorted(cut, u, side="right"), 2)]


# ------------------------------------------------------------------------------- the ETL
def _resolve_tables(raw: Path, cfg: EtlConfig) -> tuple[list, dict, list[str], dict]:
    """The raw tables to read, their files and the columns used.

    The tables to read (cfg.tables normalised in place), their files (None: absent), the absent
    names and the columns used per present table; raises UserError on a required table missing.
    """
    asked = [] if cfg.tables is None else named_tables(cfg.tables)
    selected = select_tables(cfg.tables)
    cfg.tables = None if cfg.tables is None else selected
    has_ed = any(d.is_dir() and d.name.lower() == "ed" for d in raw.iterdir())
    if not has_ed:
        _refuse_nested_ed(raw)
    # The ED module is read only when its directory is there; its tables are then expected.
    # (ED tables named in --tables are reported absent when there is no ed/.)
    wanted = [t for t in TABLES if t.name in selected and (t.module != "ed" or has_ed or cfg.tables is not None)]
    present = {t.name: find_table(raw, t.name) for t in wanted}
    for t in wanted:
        if t.required and present[t.name] is None:
            raise UserError(f"required table {t.name}.csv.gz (or .csv) not found in {raw}"
                            f"{_other_output_hint(raw) or _where_mimic_is(raw)}")
    if has_ed and any(t.module == "ed" for t in wanted) and present.get("ed/edstays") is None:
        raise UserError(f"{raw / 'ed'}: MIMIC-IV-ED directory without edstays.csv.gz (or .csv): every ED "
                        "event is timed by its ED stay; add ed/edstays or remove the ed/ directory")
    for t in wanted:  # a table timed by another is unusable without it
        if t.timed_by and present.get(t.timed_by) is None:
            present[t.name] = None
    missing = [t.name for t in wanted if present[t.name] is None]
    absent = [n for n in asked if n in missing]
    if absent:  # named, yet absent: none of its events, and exit 0 said nothing was wrong
        raise UserError(f"--tables names {', '.join(absent)}, which {raw} lacks ({absent[0]}.csv.gz or .csv, or a table "
                        "it needs); leave it out of --tables, or add the file")
    # Check every header up front: a missing column fails in seconds, not after an hour.
    used_columns = {}
    for t in wanted:
        if present[t.name] is not None:
            optional = {c for c in t.columns if c in OPTIONAL_COLUMNS}
            keys = {t.row_id} if t.row_id else set()
            used_columns[t.name] = _check_columns(present[t.name], t.columns, optional, table=t.name, keys=keys)
    return wanted, present, missing, used_columns


# What a trimmed extract loses with each optional column (OPTIONAL_COLUMNS), said when it is absent.
ABSENT_COLUMN_EFFECTS = {
    "storetime": "results are timed when measured, not when stored: a result can enter a history before it was known",
    "storedate": "results are timed when measured, not when stored: a result can enter a history before it was known",
    "dod": "deaths after discharge are not recorded (only in-hospital deathtime)",
    "hadm_id": "events are matched to hospital stays by time alone",
    "discharge_location": "discharges to another hospital are not told apart (readmission labels count them)",
    "valueuom": "codes carry no unit (//UNK)", "amountuom": "codes carry no unit (//UNK)",
    "dose_given_unit": "codes carry no unit (//UNK)",
}


def _warn_absent_optional_columns(wanted, present: dict, used_columns: dict) -> dict[str, list[str]]:
    """{table: [optional column it lacks]}, each table said once on stderr with what follows.

    A trimmed extract's missing optional column is read as all-null (OPTIONAL_COLUMNS): the ETL
    runs, but its events change (no storetime: labs stay at charttime; no valueuom: LAB//id//UNK)
    and nothing said so. Recorded in etl_config.json as `optional_columns_absent`.
    """
    from ehrfm.io import warn

    absent = {}
    for t in wanted:
        if present.get(t.name) is None:
            continue
        cols = [c for c in t.columns if c in OPTIONAL_COLUMNS and c not in used_columns[t.name] and c != t.row_id]
        if cols:
            absent[t.name] = cols
            effects = sorted({ABSENT_COLUMN_EFFECTS[c] for c in cols if c in ABSENT_COLUMN_EFFECTS})
            warn(f"etl: {present[t.name]} lacks optional column(s) {', '.join(cols)}, read as empty"
                 + (f": {'; '.join(effects)}" if effects else ""))
    return absent


# MIMIC-IV files that hold no events this ETL converts (module docstring): said nowhere when absent or present.
NOT_EVENT_TABLES = frozenset({"hosp/provider", "icu/caregiver", "hosp/poe_detail"})
# What a data file is named like (a wget mirror of PhysioNet also leaves index.html in each folder: not data).
_DATA_FILE = re.compile(r".*\.(csv|tsv|parquet|zip|bz2|xz|zst|7z)(\.gz)?$|.*\.gz$", re.IGNORECASE)


def _warn_raw_files_not_read(raw: Path) -> list[str]:
    """Data files in raw's module folders that are no table this ETL knows, each said once on stderr.

    A table it does not know (`hosp/mytable.csv.gz`, half of a labevents split by hand into
    `labevents_part2.csv.gz`, MIMIC-IV-Note's `note/discharge.csv.gz`) was left out without a word,
    and the events it held were simply not there. Returns their paths relative to raw (sorted), as
    etl_config.json records them (`raw_files_not_read`). Files in raw itself (MIMIC-IV's LICENSE,
    SHA256SUMS, the demo's subject list) and tables deliberately left out by --tables are not listed.
    """
    from ehrfm.io import warn

    known = {t.name for t in TABLES} | set(DICTIONARIES) | NOT_EVENT_TABLES
    unread = []
    for folder in sorted(d for d in raw.iterdir() if d.is_dir() and not d.name.startswith(".")):
        try:
            files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
        except OSError:
            continue
        for f in files:
            stem = table_of_file(f.name) or f.name.lower()
            if _DATA_FILE.match(f.name) and f"{folder.name.lower()}/{stem}" not in known:
                unread.append(f"{folder.name}/{f.name}")
    if unread:
        shown = ", ".join(unread[:10]) + (f" and {len(unread) - 10} more" if len(unread) > 10 else "")
        warn(f"etl: {len(unread)} file(s) in {raw} are no MIMIC-IV table this ETL reads and were left out: {shown} "
             "(etl_config.json raw_files_not_read; the tables it reads are listed in `ehrfm etl --help`)")
    return unread


def _dictionary_files(raw: Path) -> dict[str, tuple[Path, dict[str, str]]]:
    """The dictionaries present (DICTIONARIES): name -> (file, columns used), their headers checked.

    Called before any event table is read: a misplaced, doubled, empty or reshaped dictionary is
    refused in seconds, not after every table and shard of a full MIMIC-IV was converted (its
    codes' descriptions are written last, by _write_codes).
    """
    found = {}
    for name, cols in DICTIONARIES.items():
        path = find_table(raw, name)
        if path is not None:
            optional = set(cols[2:]) if name in ("hosp/d_labitems", "hosp/d_hcpcs") else set()
            found[name] = (path, _check_columns(path, cols, optional=optional, table=name))
    return found


def _refuse_nested_ed(raw: Path, depth: int = 3) -> None:
    """Refuse (UserError) a MIMIC-IV-ED ed/ folder (holding edstays) below `raw` but not at raw/ed.

    PhysioNet ships MIMIC-IV-ED as its own download (mimic-iv-ed-2.2/ed/); saved inside the MIMIC-IV
    folder under that name, its ED stays, triage, vitals and diagnoses were left out without a word
    (the ED tables are read, and reported absent, only when raw/ed exists).
    """
    for k in range(1, depth + 1):
        for ed in sorted(raw.glob("/".join(["[!.]*"] * k) + "/[eE][dD]")):
            try:
                if ed.is_dir() and any(table_of_file(f.name) == "edstays" for f in ed.iterdir()):
                    raise UserError(f"{ed} holds MIMIC-IV-ED, which ehrfm reads from {raw / 'ed'}: move or link that "
                                    f"ed/ folder there (or move it out of {raw} to convert without the ED module)")
            except OSError:  # an unreadable folder: not where to look
                continue


def _other_output_hint(raw: Path) -> str:
    """A hint for a dir ehrfm made passed where raw MIMIC-IV belongs (a MEDS dataset, a token dir), else "".

    `ehrfm etl MEDS_DIR` said only that hosp/patients was not found, as for an empty folder.
    """
    if (raw / "tokenizer.json").is_file():
        return "; it is a token dir (made by `ehrfm tokenize`), not raw MIMIC-IV"
    if (raw / "data").is_dir() and ((raw / "metadata").is_dir() or any((raw / "data").rglob("*.parquet"))):
        return f"; it is a MEDS dataset already (data/, metadata/): tokenize it with `ehrfm tokenize {raw} --out TOKEN_DIR`"
    return ""


def _where_mimic_is(raw: Path, depth: int = 4) -> str:
    """A hint naming the MIMIC-IV folders (holding hosp/patients) up to `depth` levels below `raw`.

    `wget -r` from PhysioNet writes physionet.org/files/mimiciv/<version>/hosp/...: passing a
    folder above the version's is a common slip. "" when none is found (or `raw` has hosp/).
    """
    def has_patients(hosp: Path) -> bool:
        try:
            return hosp.is_dir() and any(table_of_file(f.name) == "patients" for f in hosp.iterdir())
        except OSError:  # an unreadable folder: not where to look
            return False

    if any(d.name.lower() == "hosp" for d in raw.iterdir() if d.is_dir()):
        return ""
    found = []
    for k in range(1, depth + 1):
        found += [str(h.parent) for h in sorted(raw.glob("/".join(["[!.]*"] * k) + "/[hH][oO][sS][pP]")) if has_patients(h)]
        if found:
            more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
            return f"; MIMIC-IV is in {', '.join(found[:3])}{more}: pass " + ("that folder" if len(found) == 1 else "one of them")
    return ""


def _etl_result(out, split_of, counts: dict, rows_in: dict, missing: list[str], account: dict, ctx: Context,
                seconds: float) -> dict:
    """etl()'s summary dict (see etl's Returns)."""
    return {
        "out": str(out),
        "subjects": int(len(split_of)),
        "events": counts["events"],
        "subjects_per_split": counts["subjects_per_split"],
        "events_per_split": counts["events_per_split"],
        "codes": counts["n_codes"],
        "tables_used": sorted(rows_in),
        "tables_missing": missing,
        "dropped_events_unknown_subject": sum(d.get("unknown_subject_id", 0) for d in ctx.drops.values()),
        "dropped_events_without_time": {k: v for k, v in ctx.untimed.items() if v},
        "dropped_events": {k: v for k, v in ctx.drops.items() if v},
        "tables": account,
        "discharge_times": dict(ctx.discharge),
        "seconds": round(seconds, 2),
    }


def etl(raw: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False, **options) -> dict:
    """Convert a raw MIMIC-IV directory to a MEDS dataset at `out`; return a summary dict.

    Args:
        raw: the raw MIMIC-IV 2.x/3.x root (hosp/, icu/, optionally ed/; .csv.gz or .csv).
        out: the MEDS dataset dir to write (data/<split>/*.parquet, metadata/), atomically.
        overwrite: replace `out` when it exists.
        **options: EtlConfig fields: split_fractions=(train, tuning, held_out), split_seed,
            splits_file (an existing subject_splits.parquet), shard_subjects, dataset_name,
            dataset_version, tables (names for select_tables; None: every table present),
            batch_bytes (CSV block size read at a time, bytes), chunk_events (events assembled at
            a time within a shard), workers (processes working side by side, default
            auto_workers(raw): 1 under 64 MiB of raw input, else default_workers(); 1: all in
            this process; the output is the same for any number).
            Any other name is a TypeError. With workers > 1 the workers are spawned, so a script
            that calls etl() needs multiprocessing's `if __name__ == "__main__":` guard.

    Returns:
        dict with subjects, events, codes, subjects_per_split, events_per_split, tables_used,
        tables_missing, dropped_events (table -> reason -> events), tables (the per-table
        account of etl_config.json), discharge_times (how discharge times were placed),
        dropped_events_unknown_subject, dropped_events_without_time, seconds. Detail lines (every
        drop and moved time, by table) are printed before the one-line summary.

    Raises:
        UserError: a missing directory, table or column (naming the table, the missing columns and
            the file's columns), an unknown --tables name, an ed/ directory without edstays, an
            unreadable CSV, an unparseable id or time (named by file, column and count, never by
            value), an empty split, workers below 1. With workers > 1 the same error as with 1.
    """
    t0 = time.time()
    _lean_arrow_memory()
    raw = Path(raw)
    unknown = set(options) - set(EtlConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"etl() got unknown options: {sorted(unknown)}")
    cfg = EtlConfig(raw=str(raw), out=str(out), **options)
    cfg.split_fractions = tuple(float(x) for x in cfg.split_fractions)
    if not raw.is_dir():
        raise UserError(f"raw MIMIC-IV directory {raw} " + ("is a file: pass the directory holding hosp/ (and icu/)"
                                                             if raw.is_file() else "not found"))
    check_overwrite(out, overwrite, inputs=(raw,), command="etl")

    if cfg.workers is None:
        cfg.workers = auto_workers(raw)
    if isinstance(cfg.workers, bool) or not isinstance(cfg.workers, int) or cfg.workers < 1:
        raise UserError(f"workers must be a whole number of at least 1 (got {cfg.workers!r})")
    _check_options(cfg)

    wanted, present, missing, used_columns = _resolve_tables(raw, cfg)
    absent_columns = _warn_absent_optional_columns(wanted, present, used_columns)
    dictionaries = _dictionary_files(raw)
    # absent beside a table they describe: its codes keep only their ids ("lab item 50813 (mmol/L)"), said
    no_dictionary = [d for d, tables in DESCRIBES.items() if d not in dictionaries and any(present.get(t) for t in tables)]
    not_read = _warn_raw_files_not_read(raw)

    # The pool closes (its workers done) before atomic_dir removes a failed run's tmp dir.
    with atomic_dir(out, overwrite=overwrite, inputs=(raw,), command="etl") as tmp, _worker_pool(cfg.workers) as pool:
        stage = tmp / ".stage"
        stage.mkdir()
        ctx = Context(billing_at_discharge=cfg.billing_codes_at == "discharge")
        rows_in = _stage_tables([t for t in wanted if present[t.name] is not None], present, used_columns, ctx,
                                stage, cfg, pool)
        _refuse_lost_tables(rows_in, ctx, present)  # before the shards are written
        # a test can interrupt etl here: every table staged, the workers idle, no shard written yet
        fault_points.hold("etl-staged", Path(out).name)

        subjects = _subjects(stage, present["hosp/patients"])
        split_of = _split_subjects(subjects, cfg)
        counts = _write_shards(stage, tmp, split_of, cfg, ctx, pool)
        _write_codes(dictionaries, tmp, counts.pop("codes"))
        account = _account(rows_in, counts, ctx)
        _refuse_lost_tables(rows_in, ctx, present, counts["written"])
        _write_metadata(tmp, cfg, split_of, rows_in, missing, ctx.untimed, account, absent_columns, not_read, no_dictionary)
        write_json(tmp / "metadata" / ETL_METADATA, _audit_metadata(account, ctx))
        import shutil

        shutil.rmtree(stage)

    seconds = time.time() - t0
    result = _etl_result(out, split_of, counts, rows_in, missing, account, ctx, seconds)
    for line in _detail_lines(account, ctx):
        print(line, flush=True)
    summary(
        f"etl: {result['subjects']} subjects, {result['events']} events, {result['codes']} codes from "
        f"{len(rows_in)} tables ({len(missing)} absent: {', '.join(missing) or 'none'}"
        + (f"; dictionaries absent: {', '.join(no_dictionary)}, their codes described by id" if no_dictionary else "")
        + f") -> {out} in {seconds:.1f}s"
    )
    return result


# A table nearly all of whose rows are dropped lost a column in its export (a labevents whose storetime came
# out empty: every result `result_never_stored`, and with one row left the ETL, labels and audit all went on).
# No MIMIC-IV table loses that many by design: the demo's most is emar_detail's 55% (summary and not-given
# rows). Tables under LOST_TABLE_MIN_ROWS rows (hand-made subsets) are warned of, not refused.
LOST_TABLE_SHARE = 0.95
LOST_TABLE_MIN_ROWS = 100


def _refuse_lost_tables(rows_in: dict, ctx: Context, present: dict, written: dict | None = None) -> None:
    """UserError naming each table of at least LOST_TABLE_MIN_ROWS rows that lost LOST_TABLE_SHARE of its events to drops.

    Called after staging (`written` None: drops so far against rows read, so a broken export is refused
    before the shards are written) and after the shards (`written`: events per table; drops are counted in
    events, and a row can make several). Smaller tables that lost every event are warned of.
    """
    from ehrfm.io import warn

    said = []
    for name, n_rows in rows_in.items():
        drops = ctx.drops.get(name, {})
        lost = sum(drops.values())
        if not n_rows or not lost:
            continue
        made = lost + written.get(name, 0) if written is not None else max(n_rows, lost)
        if lost < LOST_TABLE_SHARE * made:
            continue
        stores = " / ".join(sorted({v["store_column"] for (t, _), v in ctx.stored.items() if t == name}))
        meaning = {"result_never_stored": f"{stores or 'store time'} empty", "unknown_subject_id": "not in hosp/patients"}
        why = ", ".join(f"{r} {n:,}" + (f" [{meaning[r]}]" if r in meaning else "") for r, n in drops.items())
        line = f"{present[name]}: {lost:,} of its {made:,} events dropped from {n_rows:,} rows ({why})"
        if n_rows >= LOST_TABLE_MIN_ROWS:
            said.append(line)
        elif lost == made and written is not None:  # said once, when the events are counted
            warn(f"etl: {line}: nothing of the table reaches the MEDS data")
    if said:
        raise UserError("; ".join(said) + f": no MIMIC-IV table loses {LOST_TABLE_SHARE:.0%} of its rows by design; "
                        "export the table again, or leave it out with --tables")


def _account(rows_in: dict, counts: dict, ctx: Context) -> dict:
    """Per table: rows read, events written, events dropped by reason, dates and midnights read.

    Drops are counted in events (one per row for every rule that drops rows); a table's rows
    can make several events (patients, admissions) or none (a death-less patient has no death).
    """
    account = {}
    for name, n in rows_in.items():
        entry = {"rows_read": int(n), "events_written": int(counts["written"].get(name, 0)),
                 "dropped": dict(sorted(ctx.drops.get(name, {}).items()))}
        dates = {c: v for (t, c), v in ctx.date_only.items() if t == name and v}
        if dates:
            entry["date_only_values"] = dates
            entry["date_only_placed_at_discharge"] = int(counts["at_discharge"].get(name, 0))
        if name == "hosp/procedures_icd" and ctx.duration_coded:
            entry["duration_coded_at_discharge"] = ctx.duration_coded
        if ctx.after_death.get(name):
            entry["events_after_death"] = int(ctx.after_death[name])
        if ctx.midnight.get(name):
            entry["midnight_times"] = dict(ctx.midnight[name])
        if ctx.unparseable.get(name):
            entry["unparseable_numbers_set_null"] = dict(ctx.unparseable[name])
        if ctx.out_of_range.get(name):
            entry["out_of_range_numbers_set_null"] = dict(ctx.out_of_range[name])
        if ctx.redacted.get(name):
            entry["redacted_numbers_set_null"] = dict(ctx.redacted[name])
        if ctx.text_values.get(name):
            entry["text_values_kept"] = dict(ctx.text_values[name])
        if ctx.line_breaks.get(name):
            entry["line_breaks_set_to_space"] = dict(ctx.line_breaks[name])
        if ctx.unicode_spaces.get(name):
            entry["unicode_spaces_set_to_space"] = dict(ctx.unicode_spaces[name])
        if ctx.controls.get(name):
            entry["control_characters_removed"] = dict(ctx.controls[name])
        if ctx.foreign_stays.get(name):
            entry["stay_ids_of_another_subject_set_null"] = dict(ctx.foreign_stays[name])
        if ctx.unknown_stays.get(name):
            entry["unknown_stay_ids_set_null"] = dict(ctx.unknown_stays[name])
        moved = {c: v["moved"] for (t, c), v in ctx.stored.items() if t == name and v["moved"]}
        if moved:
            entry["moved_to_store_time"] = moved
        account[name] = entry
    return account


# What each count of a table's account counts (written to etl_config.json as `count_units`). Per row
# read: every raw row, a row listed twice twice; its drops put each row under one reason (`duplicate`
# for the repeats of a row), so rows_read = events_written + the drops where a row makes one event (not
# patients, admissions, or OMR, whose blood pressure "120/80" makes two: SYSTOLIC and DIASTOLIC).
# Per event written: after exact duplicate rows are dropped, so a repeated row changes none of them.
COUNT_UNITS = {
    "rows read": ["rows_read", "dropped", "date_only_values", "midnight_times", "unparseable_numbers_set_null",
                  "out_of_range_numbers_set_null", "redacted_numbers_set_null", "text_values_kept",
                  "line_breaks_set_to_space", "unicode_spaces_set_to_space", "control_characters_removed"],
    "events written": ["events_written", "date_only_placed_at_discharge", "duration_coded_at_discharge",
                       "events_after_death", "moved_to_store_time", "stay_ids_of_another_subject_set_null",
                       "unknown_stay_ids_set_null"],
}

# The per-column value counts of a table's account, each printed as "<what> column n, ...".
VALUE_COUNT_LINES = (
    ("unparseable_numbers_set_null", "unparseable numbers kept as null"),
    ("out_of_range_numbers_set_null", "NaN, infinite or beyond-float32 numbers kept as null"),
    ("redacted_numbers_set_null", "de-identified (___) numbers set null (ED pain's make no event)"),
    ("text_values_kept", "free text kept as text_value (no 0-10 rating)"),
    ("line_breaks_set_to_space", "values whose tabs or line breaks became a space"),
    ("unicode_spaces_set_to_space", "values whose no-break or other Unicode spaces became a space"),
    ("control_characters_removed", "values whose control or invisible characters were removed"),
    ("stay_ids_of_another_subject_set_null", "stay ids of another subject's admission kept as null"),
    ("unknown_stay_ids_set_null", "stay ids of no admission in admissions kept as null"),
)


def _detail_lines(account: dict, ctx: Context) -> list[str]:
    """The lines printed before the one-line summary: per table rows, events, every drop and moved time."""
    lines = []
    for name, a in account.items():
        bits = []
        if a["dropped"]:
            bits.append(f"dropped {sum(a['dropped'].values())} events ("
                        + ", ".join(f"{r} {n}" for r, n in a["dropped"].items()) + ")")
        for c, n in a.get("date_only_values", {}).items():
            if ctx.billing_at_discharge and name in BILLING_TABLES:
                bits.append(f"{n} date-only {c}, every event at its stay's discharge (--billing-codes-at discharge)")
                continue
            bits.append(f"{n} date-only {c} at {END_OF_DAY_TEXT}"
                        + (f" ({a['date_only_placed_at_discharge']} of those events at the stay's discharge)"
                           if a["date_only_placed_at_discharge"] else ""))
        if a.get("duration_coded_at_discharge"):
            bits.append(f"{a['duration_coded_at_discharge']} duration-coded (ventilation hours) at the stay's discharge")
        if a.get("events_after_death"):
            bits.append(f"{a['events_after_death']} events after the subject's death (kept)")
        if a.get("midnight_times"):
            bits.append("00:00:00 times " + ", ".join(f"{c} {n}" for c, n in a["midnight_times"].items()))
        if name == "hosp/admissions" and any(ctx.discharge.values()):
            bits.append("discharges " + ", ".join(f"{k} {v}" for k, v in ctx.discharge.items() if v))
        for (t, c), v in ctx.stored.items():
            if t == name:
                bits.append(f"{v['moved']} {c} moved later to their {v['store_column']}" if v["present"] else
                            f"NO {v['store_column']} COLUMN: results left at their {c}, maybe before they were known")
        for key, what in VALUE_COUNT_LINES:
            if a.get(key):
                bits.append(f"{what} " + ", ".join(f"{c} {n}" for c, n in a[key].items()))
        # Every table gets its line: the per-table account (rows read, events written, drops).
        lines.append(f"etl:   {name}: {a['rows_read']} rows -> {a['events_written']} events"
                     + ("; " + "; ".join(bits) if bits else ""))
    return lines


def _audit_metadata(account: dict, ctx: Context) -> dict:
    """metadata/ehrfm_etl.json: where date-only events sit and what was dropped (module docstring)."""
    by_name = {t.name: t for t in TABLES}
    sources = []
    for (name, col), n in sorted(ctx.date_only.items()):
        t = by_name[name]
        if col not in t.dates and not n and not (name == "hosp/admissions" and col == "dischtime"):
            continue
        if name == "hosp/admissions" and col == "dischtime":
            n_mid = ctx.discharge.get("midnight_read_as_date", 0)
            if not (n or n_mid):
                continue
            sources.append({"table": name, "column": col, "code_prefixes": t.code_prefixes.get(col, []),
                            "schema_date": False, "date_only_values": int(n), "midnight_values_read_as_date": int(n_mid),
                            "rule": "discharge", "time_of_day": END_OF_DAY_TEXT})
            continue
        at_discharge = ctx.billing_at_discharge and name in BILLING_TABLES  # the stay's discharge, whatever the day
        sources.append({"table": name, "column": col, "code_prefixes": t.code_prefixes.get(col, []),
                        "schema_date": col in t.dates, "date_only_values": int(n),
                        "rule": "discharge" if at_discharge else "end_of_day_or_discharge" if "hadm_id" in t.columns else "end_of_day",
                        "time_of_day": END_OF_DAY_TEXT,
                        "events_at_discharge": int(account.get(name, {}).get("date_only_placed_at_discharge", 0))})
    return {
        "format": ETL_METADATA_FORMAT,
        "etl_name": ETL_NAME,
        "etl_version": ETL_VERSION,
        "end_of_day": END_OF_DAY_TEXT,
        "rules": DATE_RULES,
        "date_only_sources": sources,
        "discharge_times": dict(ctx.discharge),
        "tables": account,
        "duplicates_dropped": {k: v["dropped"]["duplicate"] for k, v in account.items() if v["dropped"].get("duplicate")},
        # Result tables: each event at the later of its time column and the row's store time, or
        # (present false: the file has no store column) left at its time column. `ehrfm audit` (e).
        "stored_time_sources": [
            {"table": t, "column": c, "store_column": v["store_column"], "code_prefixes": by_name[t].code_prefixes.get(c, []),
             "present": v["present"], "moved": v["moved"], "never_stored_dropped": ctx.drops.get(t, {}).get("result_never_stored", 0)}
            for (t, c), v in sorted(ctx.stored.items())],
    }


# ------------------------------------------------------------------------------- worker processes
@contextlib.contextmanager
def _worker_pool(workers: int):
    """A process pool of `workers` processes for etl()'s three parallel steps; None when workers is 1.

    Spawned, never forked: polars and arrow run thread pools that a forked child would inherit
    dead. Each worker's polars pool gets the usable CPUs divided among the workers (set before
    polars loads, by tokenization._worker.init), so workers x threads does not oversubscribe.
    On leaving, queued jobs are cancelled and running ones finish: nothing writes into the
    output's tmp dir after this returns.
    """
    if workers <= 1:
        yield None
        return
    import concurrent.futures as cf
    import multiprocessing as mp

    from tokenization import _worker

    threads = max(1, _usable_cpus() // workers)
    env = {"POLARS_MAX_THREADS": str(threads), "EHRFM_QUIET": "1"}  # one progress display: the parent's
    pool = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker.init,
                                  initargs=(env,))
    try:
        yield pool
    except BaseException:
        # Ctrl-C, SIGTERM or an error: stop the running jobs now instead of waiting for them
        # (minutes on a large table). The pool has no public way to do this before Python 3.14.
        for process in list((pool._processes or {}).values()):
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _submit(pool, fn, *args):
    """pool.submit(fn, *args) with SIGINT blocked, which a worker it spawns inherits for good.

    Ctrl-C reaches a terminal's whole process group: each worker would print its own
    KeyboardInterrupt traceback. Blocked there, it reaches this process only, which stops the
    workers (_worker_pool).
    """
    from ehrfm.io import sigint_blocked

    with sigint_blocked():
        return pool.submit(_job, fn, *args)


_worker_set_up = False  # in a worker: _job's first call has run


def _job(fn, *args):
    """fn(*args) in a worker; the first call sets the worker up to be stopped cleanly.

    A thread waits on the parent's sentinel (a pipe closed when the parent dies) and ends the
    worker: after a kill -9 of `ehrfm etl` (the OOM killer) it would otherwise wait for jobs for
    good, holding its memory. tqdm's lock becomes a thread lock (bars are off in workers): its
    default is a named semaphore that a worker stopped by _worker_pool leaves to the resource
    tracker, which then warns of it on the user's terminal.
    """
    global _worker_set_up
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is not None and not _worker_set_up:
        import threading

        from tqdm import tqdm

        threading.Thread(target=lambda: (parent.join(), os._exit(1)), name="exit-with-parent", daemon=True).start()
        tqdm.set_lock(threading.RLock())
        _worker_set_up = True
    return fn(*args)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _run_jobs(pool, n: int, make: Callable[[int, list], tuple], needs: list[list[int]] | None = None,
              order: list[int] | None = None, desc: str = "", unit: str = "") -> list:
    """Run jobs 0..n-1 in `pool`; return their results in job order.

    make(i, results) -> (function, *args), called when job i is submitted: after every job in
    needs[i] has finished (their results are in `results`). Jobs are submitted in `order` (default 0..n-1; e.g. the largest first). When
    jobs fail, the error raised is that of the lowest-numbered failed job, as the serial loop
    over jobs 0..n-1 would raise: jobs numbered below a failure still run, those above it are
    cancelled or not started. The worker's traceback is not chained: a UserError reads as in
    the serial path.
    """
    import concurrent.futures as cf

    needs = needs or [[] for _ in range(n)]
    pending = list(order if order is not None else range(n))
    results: list = [None] * n
    done: set[int] = set()
    errors: dict[int, BaseException] = {}
    running: dict = {}
    limit = n  # no job from the lowest failed one on is started
    bar = progress(total=n, desc=desc, unit=unit)
    try:
        while True:
            for i in [i for i in pending if i >= limit or all(d in done for d in needs[i])]:
                pending.remove(i)
                if i < limit:
                    fn, *args = make(i, results)
                    running[_submit(pool, fn, *args)] = i
            if not running:
                break
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for f in finished:
                i = running.pop(f)
                if f.cancelled():
                    continue
                if f.exception() is not None:
                    errors[i] = f.exception()
                    limit = min(limit, i)
                    for g, j in running.items():
                        if j > limit:
                            g.cancel()
                else:
                    results[i] = f.result()
                    done.add(i)
                    bar.update()
    finally:
        bar.close()
    if errors:
        e = errors[min(errors)]
        if isinstance(e, cf.process.BrokenProcessPool):
            raise UserError(f"{desc}: a worker process ended abruptly (killed, e.g. out of memory; or etl() was "
                            "called from a script without `if __name__ == '__main__':`); fewer workers use less "
                            "memory, --workers 1 runs in one process") from None
        raise e from None
    return results


def _stage_job(path: Path, name: str, columns: dict[str, str], stage: Path, cfg: EtlConfig,
               admissions: pl.DataFrame | None, ed_stays: pl.DataFrame | None) -> tuple[int, Context]:
    """_stage_table in a worker: rows read and the table's own Context (its counts; admissions/ed_stays when it made them)."""
    ctx = Context(admissions=admissions, ed_stays=ed_stays)
    n = _stage_table(path, TABLES_BY_NAME[name], columns, ctx, stage, cfg)
    if name != "hosp/admissions":
        ctx.admissions = None  # given, not made: no need to send it back
    if name != "ed/edstays":
        ctx.ed_stays = None
    return n, ctx


def _merge_context(ctx: Context, part: Context) -> None:
    """Add one table's staging counts (from _stage_job) to `ctx`, in the order the serial path adds them."""
    for table, reasons in part.drops.items():
        for reason, n in reasons.items():
            ctx.drop(reason, n, table)
    ctx.untimed.update(part.untimed)
    ctx.date_only.update(part.date_only)
    ctx.midnight.update(part.midnight)
    ctx.unparseable.update(part.unparseable)
    ctx.out_of_range.update(part.out_of_range)
    ctx.redacted.update(part.redacted)
    ctx.text_values.update(part.text_values)
    ctx.line_breaks.update(part.line_breaks)
    ctx.unicode_spaces.update(part.unicode_spaces)
    ctx.controls.update(part.controls)
    ctx.stored.update(part.stored)
    ctx.discharge.update(part.discharge)
    ctx.duration_coded += part.duration_coded
    if part.admissions is not None:
        ctx.admissions = part.admissions
    if part.ed_stays is not None:
        ctx.ed_stays = part.ed_stays


def _stage_tables(tables: list[Table], present: dict, used_columns: dict, ctx: Context, stage: Path, cfg: EtlConfig,
                  pool) -> dict[str, int]:
    """Stage every table (_stage_table); return rows read per table, in `tables` order.

    With a pool, tables are staged side by side, the largest files first and a table after those
    it needs (Table.needs: admissions, ED stays); counts are merged in table order, so `ctx`
    ends as after the serial loop.
    """
    if pool is None:
        return {t.name: _stage_table(present[t.name], t, used_columns[t.name], ctx, stage, cfg)
                for t in progress(tables, desc="etl: tables", unit="table")}
    index = {t.name: i for i, t in enumerate(tables)}
    needs = [[index[n] for n in t.needs if n in index] for t in tables]
    needed = {d for ds in needs for d in ds}
    order = sorted(range(len(tables)), key=lambda i: (i not in needed, -present[tables[i].name].stat().st_size, i))

    def make(i, results):
        t = tables[i]
        got = [results[d][1] for d in needs[i]]
        admissions = next((c.admissions for c in got if c.admissions is not None), None)
        ed_stays = next((c.ed_stays for c in got if c.ed_stays is not None), None)
        return _stage_job, present[t.name], t.name, used_columns[t.name], stage, cfg, admissions, ed_stays

    results = _run_jobs(pool, len(tables), make, needs, order, desc="etl: tables", unit="table")
    rows_in = {}
    for t, (n, part) in zip(tables, results, strict=True):
        _merge_context(ctx, part)
        rows_in[t.name] = n
    return rows_in


def _stage_table(path: Path, table: Table, columns: dict[str, str], ctx: Context, stage: Path, cfg: EtlConfig) -> int:
    """Stream one raw table into staging parquet files of MEDS events; return raw rows read."""
    import pyarrow.parquet as pq

    bad = _BadValues(path)
    bad.merged_pattern = merged_records_pattern(len(_header(path)))
    writer = None
    n_rows = 0
    ctx.table = table.name
    ctx.billing_at_discharge = cfg.billing_codes_at == "discharge"
    out_path = stage / f"{table.name.replace('/', '__')}.parquet"
    bar = progress(desc=f"etl: {table.name}", unit="rows", unit_scale=True, leave=False)

    lines = _LineCount()

    def typed_batches():
        nonlocal n_rows
        blocks = _read_batches(path, columns, cfg.batch_bytes, lines)
        if cfg.workers > 1:  # a worker process: read the next block while this one is transformed
            blocks = _prefetched(blocks)
        try:
            for batch in blocks:
                n_rows += len(batch)
                bar.update(len(batch))
                batch = _without_control_characters(batch.with_columns(_trimmed(c) for c in batch.columns), bad, ctx)
                for c in table.columns:  # optional columns absent from this file
                    if c not in batch.columns:
                        batch = batch.with_columns(pl.lit(None, pl.String).alias(c))
                for c, d in table.fallback.items():  # a DATE where the time is missing: its day (the date-only rule)
                    t, day = pl.col(c).str.strip_chars(), pl.col(d).str.strip_chars().str.slice(0, 10)
                    # A time of exactly 00:00:00 on the row's own date is that date written as a time
                    # (as for dischtime): a date, or it would precede the day's events.
                    date_as_time = (t.str.slice(0, 10) == day) & (t.str.slice(11).str.replace_all(r"[0:.]", "") == "")
                    batch = batch.with_columns(pl.when(t.is_null() | date_as_time).then(day).otherwise(pl.col(c)).alias(c))
                typed = _with_row_key(_at_stored_time(_typed(batch, table, bad, ctx), table, columns, ctx), table)
                if not bad:  # else keep counting over the whole file, write nothing
                    yield typed
        finally:  # its reader closed when a block's error leaves the loop, not when the traceback dies (_closing_reader)
            getattr(blocks, "close", lambda: None)()
        if lines.n > n_rows + 1 + bad.line_breaks and not bad:
            # Line breaks inside columns not read: free text, or a quote left open there (labevents.comments)
            # that took every following row into one value: 16,282 rows read as 20, exit 0. Those columns are read now.
            bad.merged.update(_merged_records_in_other_columns(path, list(columns.values()), cfg.batch_bytes))

    batches = typed_batches()
    if table.key is not None:  # small (one row per subject or stay): its key is checked whole
        parts = list(batches)
        batches = [_one_row_per_key(pl.concat(parts), table.key, path)] if parts else []
    if table.name == "hosp/admissions":
        # Needed whole: a discharge's placement depends on the subject's next admission, and every
        # stay-bound table needs the placed discharge.
        adm = batches[0] if batches else None
        if adm is None and not bad:  # a header-only file: 0 events, and `ehrfm labels` failed later, far from the cause
            raise UserError(f"{path}: no admissions (the table has no rows): every hospital stay, and so every clinical "
                            "label, comes from it; use the file as downloaded")
        if adm is not None:
            # Kept as written, counted: which of the two times is wrong is unknown, and dropping the stay hid a
            # readmission from the stay before it (its label turned negative). `ehrfm labels` excludes the stay
            # and any label that depends on which time is its admission.
            backwards = (pl.col("dischtime") < pl.col("admittime")).fill_null(False)
            once = adm.unique()  # per stay, not per row read
            n_backwards, n_stays = once.select(backwards.sum()).item(), once.height
            if n_backwards:
                ctx.discharge["before_admission"] = int(n_backwards)
            # A death before its own admission: kept as written (its MEDS_DEATH is the subject's death, and
            # `ehrfm labels` excludes the stay as admitted after death), counted so the audit shows it.
            if n_dead_first := once.select((pl.col("deathtime") < pl.col("admittime")).fill_null(False).sum()).item():
                ctx.discharge["death_before_admission"] = int(n_dead_first)
            if 2 * n_backwards > n_stays:  # most of them: not a few bad rows
                raise UserError(f"{path}: column 'dischtime' precedes 'admittime' in {n_backwards} "
                                f"of {n_stays} admissions: the two columns seem swapped or mislabelled; "
                                "export the table again")
            adm = _place_discharges(adm, ctx)
            ctx.admissions = adm.select("hadm_id", "subject_id", "admittime", "dischtime", "deathtime").filter(
                pl.col("hadm_id").is_not_null()).unique("hadm_id", keep="first", maintain_order=True)
        batches = [adm] if adm is not None else []
    stays = []
    try:
        for typed in batches:
            if table.name == "ed/edstays":  # small (one row per ED stay): triage and ED diagnoses are timed by it
                stays.append(typed.select("stay_id", _in=pl.col("intime"), _out=pl.col("outtime")))
            events = pl.concat([e.cast(EVENT_SCHEMA) for e in table.to_events(typed, ctx)], how="vertical")
            # Only static codes may lack a time; an event whose time is missing cannot be placed.
            # (A table timed by another gets its times in the shard step.)
            no_subject = pl.col("subject_id").is_null()
            no_time = pl.col("time").is_null() & (pl.col("_order") != ORDER_STATIC) & (table.timed_by is None)
            n_subject, n_time = events.select(no_subject.sum().alias("a"), (~no_subject & no_time).sum().alias("b")).row(0)
            ctx.drop("missing_subject_id", n_subject)
            ctx.drop("missing_time", n_time)
            ctx.untimed[table.name] = ctx.untimed.get(table.name, 0) + n_time
            events = events.filter(~no_subject & ~no_time)
            arrow = events.to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(out_path, arrow.schema, compression=SCRATCH_COMPRESSION)
            writer.write_table(arrow)
            # a test can interrupt etl here, a table partly staged (in a worker with --workers > 1)
            fault_points.hold("etl-table", table.name.replace("/", "__"))
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    bad.raise_if_any()
    if table.name == "ed/edstays":
        ctx.ed_stays = (pl.concat(stays) if stays else pl.DataFrame(
            schema={"stay_id": pl.Int64, "_in": pl.Datetime("us"), "_out": pl.Datetime("us")})).filter(
            pl.col("stay_id").is_not_null()).unique("stay_id", keep="first", maintain_order=True)
    if table.name == "hosp/admissions" and ctx.admissions is None:
        ctx.admissions = pl.DataFrame(schema={"hadm_id": pl.Int64, "subject_id": pl.Int64, "admittime": pl.Datetime("us"),
                                              "dischtime": pl.Datetime("us"), "deathtime": pl.Datetime("us")})
    return n_rows


def _trimmed(col: str) -> pl.Expr:
    """A raw text column without spaces around its values, null where nothing else is left.

    Spaces around a value carry no meaning (a fixed-width export pads CHAR(n) columns, a hand edit
    adds them), but the rules compare values: padded, a transfer's `discharge` row became an event
    of its own and 5,102 of the real demo's eMAR doses became duplicates of their first product line.
    """
    value = pl.col(col).str.strip_chars()
    return pl.when(value.str.len_bytes() > 0).then(value).alias(col)


# A NUL byte in a value means damage (a block of zeros from a failed copy, binary data in a text
# field): such a table is refused, naming the file, column and how many values, as text that is not
# UTF-8 is. It went into event codes as it was (`MEDICATION//Hepa\x00rin`).
NUL = "\x00"
# Tabs and line breaks inside a value (a quoted CSV value may hold them; an edit or a spreadsheet puts
# them there; VT, FF and NEL are line breaks to Unicode): whitespace, one space in the value with the
# whitespace next to them, counted per column.
_BREAK = "\t\n\r\x0b\x0c\x85\u2028\u2029"
LINE_BREAKS = f"[ {_BREAK}]*[{_BREAK}][ {_BREAK}]*"
# A line break inside a value followed by an id, a comma, more fields and a timestamp (every MIMIC-IV event row has one)
# is no free text: a double quote left open (a stray " in a text field) made the CSV reader take the following lines,
# other patients' rows, as one quoted value with the right number of columns, so no parse error: refused
# (_BadValues.merged), never written into a code. Free text such as "pain\n1,500 mL given, recheck" holds no timestamp.
# One physical line end, as _LineCount counts them.
LINE_ENDS = r"\r\n|\r|\n"
MERGED_RECORDS = r"[\n\r][ \t]*\"?[0-9]+\"?,[^\n\r]*,[^\n\r]*[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}"
# Other C0 controls, DEL and C1 controls: real free text holds some (cp1252 text read as Latin-1
# leaves C1 characters, as in MIMIC-IV-ED's chief complaints), so they are removed, counted per column,
# rather than refusing a whole table; no code or text written holds one.
# Invisible format characters are removed with them: a zero-width space, joiner or word joiner, a
# byte-order mark inside a value, a soft hyphen or a direction mark (text pasted from a web page or a
# word processor) made `MEDICATION//Heparin\u200b` a code of its own beside `MEDICATION//Heparin`.
_INVISIBLE = "\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
CONTROL_CHARACTERS = f"[\x01-\x08\x0e-\x1f\x7f-\x84\x86-\x9f{_INVISIBLE}]"
# No-break and other Unicode spaces (NBSP from a spreadsheet or a web page, thin, ideographic): one
# plain space with the spaces next to them, counted per column; `Metoprolol\u00a0Tartrate` was a
# code of its own beside `Metoprolol Tartrate`.
_SPACES = "\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000"
UNICODE_SPACES = f"[ {_SPACES}]*[{_SPACES}][ {_SPACES}]*"
ANY_CONTROL = f"[\x00-\x1f\x7f-\x9f\u2028\u2029{_INVISIBLE}{_SPACES}]"
# The same classes for Python's re (the dictionaries are read a row at a time: _dictionary_rows).
CONTROL_CHARACTERS_RE, LINE_BREAKS_RE, UNICODE_SPACES_RE, ANY_CONTROL_RE = (
    re.compile(p) for p in (CONTROL_CHARACTERS, LINE_BREAKS, UNICODE_SPACES, ANY_CONTROL))


def _without_control_characters(df: pl.DataFrame, bad: _BadValues, ctx: Context) -> pl.DataFrame:
    """The raw text columns df (_trimmed), line breaks and Unicode spaces made one space, other control characters removed.

    A tab or line break inside a value becomes one space with the whitespace next to it, as does a
    no-break or other Unicode space; any other control character but NUL, and any invisible format
    character (zero-width space, byte-order mark, soft hyphen, direction marks), is removed; the
    changed values are trimmed again. Values holding a NUL byte are counted in `bad` per column,
    which refuses the table once the whole file is read; line breaks are counted in ctx.line_breaks
    (`line_breaks_set_to_space`), Unicode spaces in ctx.unicode_spaces (`unicode_spaces_set_to_space`),
    the characters removed in ctx.controls (`control_characters_removed`). So no code or text written
    holds a control or invisible character, or a space other than U+0020.
    """
    cols = [c for c in df.columns if df[c].dtype == pl.String]
    if not len(df) or not cols:
        return df
    # One cheap scan (a character class, no leading repeat) finds the rare columns that hold any.
    found = df.select(pl.col(c).str.contains(ANY_CONTROL).any() for c in cols).row(0)
    cols = [c for c, f in zip(cols, found, strict=True) if f]
    if not cols:
        return df
    bad.line_breaks += sum(df.select(pl.col(c).str.count_matches(LINE_ENDS).sum() for c in cols).row(0))
    counts = df.select([pl.col(c).str.contains(NUL, literal=True).sum().alias(f"n:{c}") for c in cols]
                       + [pl.col(c).str.contains(bad.merged_pattern).sum().alias(f"m:{c}") for c in cols]
                       + [pl.col(c).str.contains(CONTROL_CHARACTERS).sum().alias(f"c:{c}") for c in cols]
                       + [pl.col(c).str.contains(LINE_BREAKS).sum().alias(f"b:{c}") for c in cols]
                       + [pl.col(c).str.contains(UNICODE_SPACES).sum().alias(f"s:{c}") for c in cols]).row(0, named=True)
    for c in cols:
        if counts[f"n:{c}"]:
            bad.control[c] = bad.control.get(c, 0) + int(counts[f"n:{c}"])
        if counts[f"m:{c}"]:
            bad.merged[c] = bad.merged.get(c, 0) + int(counts[f"m:{c}"])
        ctx.count(ctx.line_breaks, c, int(counts[f"b:{c}"] or 0))
        ctx.count(ctx.unicode_spaces, c, int(counts[f"s:{c}"] or 0))
        ctx.count(ctx.controls, c, int(counts[f"c:{c}"] or 0))
    changed = [c for c in cols if counts[f"b:{c}"] or counts[f"c:{c}"] or counts[f"s:{c}"]]
    if not changed:
        return df
    df = df.with_columns(pl.col(c).str.replace_all(CONTROL_CHARACTERS, "").str.replace_all(LINE_BREAKS, " ")
                         .str.replace_all(UNICODE_SPACES, " ") for c in changed)
    return df.with_columns(_trimmed(c) for c in changed)


def _one_row_per_key(df: pl.DataFrame, key: str, path: Path) -> pl.DataFrame:
    """df, after refusing (UserError, counts only) keys with rows that disagree.

    Exact repeats are left for the duplicate count; two different rows of one subject or stay
    (e.g. two genders, two discharge times) have no right answer to pick.
    """
    n = df.filter(pl.col(key).is_not_null()).unique().group_by(key).len().filter(pl.col("len") > 1).height
    if n:
        raise UserError(f"{path}: column {key!r}: {n} {key} value{'s appear' if n != 1 else ' appears'} in rows that disagree "
                        f"in other columns; the table must have one row per {key}")
    return df


def _subjects(stage: Path, patients_path: Path) -> np.ndarray:
    if not (stage / "hosp__patients.parquet").exists():  # a header-only file stages nothing
        raise UserError(f"{patients_path}: no patients (the table has no rows)")
    ids = pl.scan_parquet(stage / "hosp__patients.parquet").select(pl.col("subject_id").unique()).collect()
    if ids.height == 0:
        raise UserError(f"{patients_path}: no patients (the table has no rows)")
    return np.sort(ids["subject_id"].to_numpy())


def _read_splits_file(path: str) -> pl.DataFrame:
    """A subject_splits.parquet given by --splits: (subject_id Int64, split), one split per subject.

    Raises:
        UserError: unreadable or not parquet, a missing column, non-integer or null subject ids,
            split names outside SPLITS, or subjects listed in more than one split (counts, not ids).
    """
    try:
        given = pl.read_parquet(path)
    except Exception as e:  # polars raises several kinds for a file that is not parquet
        raise UserError(f"--splits {path}: not a readable parquet file ({type(e).__name__})") from None
    for c in ("subject_id", "split"):
        if c not in given.columns:
            raise UserError(f"--splits {path}: missing column {c!r} (columns: {', '.join(given.columns)})")
    if not given["subject_id"].dtype.is_integer():
        raise UserError(f"--splits {path}: column 'subject_id' is {given['subject_id'].dtype}, not an integer type")
    if given["subject_id"].null_count() or given["split"].null_count():
        raise UserError(f"--splits {path}: {given.select(pl.any_horizontal(pl.all().is_null()).sum()).item()} rows "
                        "have a null subject_id or split")
    bad = given.filter(~pl.col("split").cast(pl.String).is_in(list(SPLITS)))
    if bad.height:
        names = sorted(bad["split"].cast(pl.String).unique().to_list())
        raise UserError(f"--splits {path}: column 'split' has {bad.height} rows with split names other than "
                        f"{', '.join(SPLITS)}: {', '.join(map(repr, names[:5]))}")
    given = given.select(pl.col("subject_id").cast(pl.Int64), pl.col("split").cast(pl.String)).unique()
    several = given.group_by("subject_id").len().filter(pl.col("len") > 1).height
    if several:
        raise UserError(f"--splits {path}: {several} subjects are listed in more than one split (a leak between splits)")
    return given


def _check_options(cfg: EtlConfig) -> None:
    """Refuse bad sizes, fractions and split files before any table is read (UserError)."""
    for name in ("shard_subjects", "batch_bytes", "chunk_events"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"{name} must be a whole number of at least 1 (got {v!r})")
    seed = cfg.split_seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 1 << 63:
        # The split hash adds the seed as an unsigned 64-bit number: -1 or 2**64 ended in a traceback.
        raise UserError(f"--split-seed must be a whole number from 0 to 2**63 - 1 (got {seed!r})")
    if cfg.billing_codes_at not in BILLING_CODES_AT:
        raise UserError(f"--billing-codes-at must be one of {', '.join(BILLING_CODES_AT)} (got {cfg.billing_codes_at!r})")
    fr = cfg.split_fractions
    if cfg.splits_file is None and (len(fr) != 3 or not all(np.isfinite(fr)) or min(fr) < 0 or abs(sum(fr) - 1) > 1e-6):
        raise UserError(f"split fractions must be 3 finite numbers >= 0 summing to 1 (train, tuning, held_out); got {list(fr)}")
    if cfg.splits_file is not None:
        _read_splits_file(cfg.splits_file)


def _split_subjects(subjects: np.ndarray, cfg: EtlConfig) -> pl.DataFrame:
    if cfg.splits_file:
        given = _read_splits_file(cfg.splits_file)
        df = pl.DataFrame({"subject_id": subjects}).join(given.select("subject_id", "split"), on="subject_id", how="left")
        n_none = df["split"].null_count()
        if n_none:
            # Leaving out --splits keeps the file's subjects in their splits only when the file is ehrfm's own hash
            # split with these --split-seed and --split-fractions: said only then, else how many would move.
            try:  # --split-fractions are not checked beside --splits: fractions that are no split make no own split
                ours = assign_splits(given["subject_id"].to_numpy(), cfg.split_fractions, cfg.split_seed)
            except UserError:
                ours = None
            moved = given.height if ours is None else int((given["split"].to_numpy() != ours).sum())
            why = f"{cfg.splits_file}: {n_none} of the raw data's {df.height} subjects have no split (a newer release's subjects?): "
            if moved == 0 and given.height:
                raise UserError(why + "add them to the file, or leave out --splits: the file is ehrfm's own split (it hashes "
                                f"each subject_id; --split-seed {cfg.split_seed}, --split-fractions "
                                f"{','.join(f'{f:g}' for f in cfg.split_fractions)}), so its subjects keep their splits")
            raise UserError(why + f"add them to the file (leaving out --splits would move {moved} of its {given.height} "
                            "subjects to another split: it is not ehrfm's own split with these --split-seed and "
                            "--split-fractions)")
    else:
        df = pl.DataFrame({"subject_id": subjects, "split": assign_splits(subjects, cfg.split_fractions, cfg.split_seed)})
    for name, frac in zip(SPLITS, cfg.split_fractions, strict=False):
        if (frac > 0 or cfg.splits_file) and df.filter(pl.col("split") == name).height == 0:
            if cfg.splits_file:
                raise UserError(f"split {name!r} is empty ({len(subjects)} subjects, split file {cfg.splits_file}): "
                                f"every split needs subjects; list some of them under {name!r} in that file")
            raise UserError(f"split {name!r} is empty ({len(subjects)} subjects, fractions {list(cfg.split_fractions)}, "
                            f"--split-seed {cfg.split_seed}): use more subjects, larger --split-fractions for it, or "
                            "another --split-seed (each subject's split is a hash of its id and the seed)")
        if frac == 0 and not cfg.splits_file:  # asked for, yet the MEDS data without it went on in silence
            from ehrfm.io import warn

            warn(f"etl: split {name!r} gets no subjects (--split-fractions {','.join(f'{f:g}' for f in cfg.split_fractions)})"
                 + (": `ehrfm train` measures its validation loss on the tuning split and refuses data without one"
                    if name == "tuning" else ": the heads score on the held_out split and refuse data without one"
                    if name == "held_out" else ""))
    return df


def _write_shards(stage: Path, out: Path, split_of: pl.DataFrame, cfg: EtlConfig, ctx: Context, pool=None) -> dict:
    """Route the staged events to shard buckets, then assemble each shard; return the counts.

    With a pool, the staged tables are routed side by side (each writes its own bucket files)
    and then the shards are assembled side by side; counts are merged in table and shard order,
    so every output file and count is the serial path's.
    """
    staged = sorted(stage.glob("*.parquet"))
    names = [p.stem.replace("__", "/") for p in staged]  # staged file k holds table names[k]
    total_events = 0
    subjects_per_split, events_per_split = {}, {}
    written = dict.fromkeys(names, 0)
    code_counts: dict[str, int] = {}
    jobs, shard_of, shard_ids = [], [], []
    for name in SPLITS:
        ids = split_of.filter(pl.col("split") == name)["subject_id"].sort()
        subjects_per_split[name] = len(ids)
        events_per_split[name] = 0
        for k, start in enumerate(range(0, len(ids), cfg.shard_subjects)):
            part = ids[start:start + cfg.shard_subjects]
            shard_of.append(pl.DataFrame({"subject_id": part, "_shard": pl.Series([len(jobs)] * len(part), dtype=pl.Int32)}))
            shard_ids.append(part.to_numpy())
            jobs.append((name, k))
    shard_of = pl.concat(shard_of)
    _check_open_files(len(jobs), len(split_of))

    # One linear pass: route each staged batch's rows to their shard's bucket file.
    buckets = stage / "buckets"
    buckets.mkdir()
    if pool is None:
        for src, path in enumerate(progress(staged, desc="etl: bucketing", unit="table")):
            ctx.drop("unknown_subject_id", _route(path, src, shard_of, buckets), names[src])
    else:
        order = sorted(range(len(staged)), key=lambda i: (-staged[i].stat().st_size, i))
        dropped = _run_jobs(pool, len(staged), lambda i, _: (_route, staged[i], i, shard_of, buckets), order=order,
                            desc="etl: bucketing", unit="table")
        for src, n in enumerate(dropped):
            ctx.drop("unknown_subject_id", n, names[src])

    placed_at_discharge: dict[str, int] = {}
    by_name = {t.name: t for t in TABLES}
    for name in names:  # tables placed at another table's entry time (_at_entry_time): its store column present?
        other = by_name[name].entered_by
        if other in names:
            src = next((v for (t, _), v in ctx.stored.items() if t == other), {"store_column": "?", "present": False})
            ctx.stored[(name, by_name[name].times[0])] = {"store_column": f"{other} {src['store_column']}",
                                                          "present": src["present"], "moved": 0}
    paths = [out / "data" / name / f"{k}.parquet" for name, k in jobs]
    if pool is None:
        for j in progress(range(len(jobs)), desc="etl: shards", unit="shard"):
            n = _write_shard(buckets, j, shard_ids[j], paths[j], names, cfg.chunk_events, ctx, placed_at_discharge,
                             written, code_counts)
            events_per_split[jobs[j][0]] += n
            total_events += n
    else:
        size = [sum(f.stat().st_size for f in buckets.glob(f"{j}__*.parquet")) for j in range(len(jobs))]
        order = sorted(range(len(jobs)), key=lambda j: (-size[j], j))
        results = _run_jobs(pool, len(jobs), lambda j, _: (_shard_job, buckets, j, shard_ids[j], paths[j], names,
                                                            cfg.chunk_events, ctx.admissions),
                            order=order, desc="etl: shards", unit="shard")
        for j, r in enumerate(results):
            for table, reasons in r["drops"].items():
                for reason, n in reasons.items():
                    ctx.drop(reason, n, table)
            for table, n in r["at_discharge"].items():
                placed_at_discharge[table] = placed_at_discharge.get(table, 0) + n
            for key in ("foreign_stays", "unknown_stays"):
                for table, cols in r[key].items():
                    for col, n in cols.items():
                        ctx.count(getattr(ctx, key), col, n, table)
            for key, n in r["entered"].items():
                ctx.stored[key]["moved"] += n
            ctx.duration_coded += r["duration_coded"]
            for table, n in r["after_death"].items():
                ctx.after_death[table] = ctx.after_death.get(table, 0) + n
            for table, n in r["written"].items():
                written[table] += n
            for code, n in r["codes"].items():
                code_counts[code] = code_counts.get(code, 0) + n
            events_per_split[jobs[j][0]] += r["events"]
            total_events += r["events"]
    return dict(events=total_events, subjects_per_split=subjects_per_split, events_per_split=events_per_split,
                codes=code_counts, n_codes=len(code_counts), written=written, at_discharge=placed_at_discharge)


# Files a process holds open besides one bucket file per shard while routing (the staged file, python's and
# the libraries' own).
RESERVED_FILES = 16


def _check_open_files(n_shards: int, n_subjects: int) -> None:
    """Refuse (UserError) more shards than this process may hold files open: _route keeps one open per shard.

    Without this, small --shard-subjects on a large cohort (364k MIMIC-IV 3.1 subjects in shards of
    100: 3,650 files, against a usual `ulimit -n` of 1024) failed after every table was staged with
    "Too many open files" naming only the output dir.
    """
    try:
        import resource
    except ImportError:  # not POSIX: no limit to read
        return
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit != resource.RLIM_INFINITY and n_shards + RESERVED_FILES > limit:
        least = -(-n_subjects // max(1, limit - RESERVED_FILES - len(SPLITS)))
        raise UserError(f"{n_shards} output shards: the ETL keeps a file open per shard while it routes events and "
                        f"this process may open {limit} files (ulimit -n); use --shard-subjects {least} or more for "
                        f"{n_subjects} subjects, or raise ulimit -n")


def _route(path: Path, src: int, shard_of: pl.DataFrame, buckets: Path) -> int:
    """Append staged file `path`'s rows (source index `src`) to their shards' bucket files.

    shard_of: subject_id -> _shard. Writes buckets/{shard}__{src:03d}.parquet; returns the
    events dropped as their subject is not in patients (ENTRY_ONLY rows, already counted, aside).
    """
    import pyarrow.parquet as pq

    writers = {}
    dropped = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BUCKET_ROWS):
            df = pl.from_arrow(batch)
            n = df.height
            kept = df.join(shard_of, on="subject_id", how="inner")  # drops subjects absent from patients
            if kept.height < n:  # an ENTRY_ONLY row was counted (missing_medication) when staged: not twice
                lost = df.join(shard_of, on="subject_id", how="anti")
                dropped += lost.height - int((lost["code"] == ENTRY_ONLY).sum())
            df = kept
            for (j,), part in df.partition_by("_shard", as_dict=True, include_key=False).items():
                arrow = part.to_arrow()
                if j not in writers:
                    writers[j] = pq.ParquetWriter(buckets / f"{j}__{src:03d}.parquet", arrow.schema,
                                                  compression=SCRATCH_COMPRESSION)
                writers[j].write_table(arrow)
    finally:
        for w in writers.values():
            w.close()
    return dropped


def _shard_job(buckets: Path, j: int, ids: np.ndarray, path: Path, names: list[str], chunk_events: int,
               admissions: pl.DataFrame | None) -> dict:
    """_write_shard in a worker: its events and counts (written, codes, at_discharge, drops) to merge."""
    ctx = Context(admissions=admissions)
    placed, written, codes = {}, dict.fromkeys(names, 0), {}
    n = _write_shard(buckets, j, ids, path, names, chunk_events, ctx, placed, written, codes)
    return dict(events=n, drops=ctx.drops, at_discharge=placed, written=written, codes=codes,
                entered={k: v["moved"] for k, v in ctx.stored.items()}, duration_coded=ctx.duration_coded,
                foreign_stays=ctx.foreign_stays, unknown_stays=ctx.unknown_stays, after_death=ctx.after_death)


def _write_shard(buckets: Path, j: int, ids: np.ndarray, path: Path, names: list[str], chunk_events: int,
                 ctx: Context, placed_at_discharge: dict, written: dict, code_counts: dict) -> int:
    """Assemble shard j (subjects `ids`, sorted) from its bucket files into `path`; return its events.

    Counts go to ctx.drops, placed_at_discharge, written and code_counts; bucket files are removed.
    """
    import pyarrow.parquet as pq

    files = sorted(buckets.glob(f"{j}__*.parquet"))
    n_events = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    # Every step below is per subject, so a shard is assembled a few subjects at a time
    # (chunks of about chunk_events events) and appended: memory follows the chunk.
    chunks = np.array_split(ids, max(1, min(len(ids), -(-n_events // chunk_events))))
    path.parent.mkdir(parents=True, exist_ok=True)
    chunk_files = _split_buckets(files, chunks) if len(chunks) > 1 else [
        [(int(f.stem.split("__")[1]), f) for f in files]]
    writer = None
    total = 0
    try:
        for pieces in chunk_files:
            parts = []
            for src, f in pieces:
                part = pl.read_parquet(f)
                f.unlink()
                # Exact duplicates of a source row make identical events: keep one, count the rest.
                # A rank without a row id tells no rows apart (Table.rank): the lowest is kept.
                rank_only = TABLES_BY_NAME[names[src]].rank is not None and TABLES_BY_NAME[names[src]].row_id is None
                if rank_only:
                    part = part.sort("_key", nulls_last=True, maintain_order=True)
                unique = _unique_rows(part, ignore=("_key",) if rank_only else ())
                # An ENTRY_ONLY row was counted (missing_medication) when staged: its repeat is no second drop.
                repeats = part.height - unique.height
                if repeats and names[src] == "hosp/pharmacy":
                    repeats -= int((part["code"] == ENTRY_ONLY).sum() - (unique["code"] == ENTRY_ONLY).sum())
                ctx.drop("duplicate", repeats, names[src])
                parts.append(unique.with_columns(_src=pl.lit(src, pl.Int16)))
                del part, unique
            table = _assemble(parts, names, ctx, placed_at_discharge, written, code_counts, path)
            del parts
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            total += table.num_rows
            del table
    finally:
        if writer is not None:
            writer.close()
    return total


def _unique_rows(df: pl.DataFrame, ignore: tuple[str, ...] = ()) -> pl.DataFrame:
    """df.unique(maintain_order=True), the first of each set of identical rows kept; ~4x faster.

    Rows are compared in every column but `ignore`. Only rows whose row hash repeats can be
    duplicates (hash_rows, like unique, treats -0.0/0.0 and every NaN as equal), so only those are
    compared exactly.
    """
    columns = [c for c in df.columns if c not in ignore]
    repeated = df.select(columns).hash_rows().is_duplicated()
    if not repeated.any():
        return df
    rows = df.with_row_index("_row")
    first = rows.filter(repeated).unique(subset=columns, keep="first", maintain_order=True)["_row"]
    return rows.filter(~repeated | pl.col("_row").is_in(first.implode())).drop("_row")


def _split_buckets(files: list[Path], chunks: list[np.ndarray],
                   batch_rows: int = BUCKET_ROWS) -> list[list[tuple[int, Path]]]:
    """Split a shard's bucket files (one per source table) by subject chunk, reading each once.

    chunks: the shard's subject ids in consecutive sorted runs. Returns, per chunk, its
    (source index, file) pieces in source order; the input files are removed. A file is read
    `batch_rows` rows at a time, each batch appended to its chunks' files: a shard's bucket of a
    large table (chartevents of 10,000 MIMIC-IV subjects: ~12M rows, ~1 GiB in memory, twice while
    split) is never held whole, so memory follows the batch and the chunk, not the shard.
    """
    import pyarrow.parquet as pq

    upper = np.array([int(c[-1]) for c in chunks], dtype=np.int64)
    out: list[list[tuple[int, Path]]] = [[] for _ in chunks]
    for f in files:
        src = int(f.stem.split("__")[1])
        writers = {}
        try:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows):
                df = pl.from_arrow(batch)
                ids = df["subject_id"].to_numpy()
                df = df.with_columns(_c=pl.Series(np.searchsorted(upper, ids, side="left"), dtype=pl.Int32))
                for (c,), part in df.partition_by("_c", as_dict=True, include_key=False).items():
                    arrow = part.to_arrow()
                    if c not in writers:
                        path = f.with_name(f"{f.stem}__{c:05d}.parquet")
                        writers[c] = pq.ParquetWriter(path, arrow.schema, compression=SCRATCH_COMPRESSION)
                        out[c].append((src, path))
                    writers[c].write_table(arrow)
                del df
        finally:
            for w in writers.values():
                w.close()
        f.unlink()
    return out


def _assemble(parts: list[pl.DataFrame], names: list[str], ctx: Context, placed_at_discharge: dict, written: dict,
              code_counts: dict, path: Path):
    """One chunk of whole subjects' staged events -> a validated MEDS arrow table (sorted, placed, counted)."""
    shard = pl.concat(parts, how="vertical") if parts else pl.DataFrame(schema={**EVENT_SCHEMA, "_src": pl.Int16})
    shard = _time_from_parents(shard, names, ctx)
    shard = _at_entry_time(shard, names, ctx)
    shard = _without_foreign_stays(shard, names, ctx)
    shard = _place_dates(shard, ctx.admissions, names, placed_at_discharge)
    shard = shard.sort(_event_order(names), nulls_last=False)
    # A time no life can hold (module docstring: time_outside_lifetime), by the subject's MEDS_BIRTH.
    birth = pl.col("time").filter(pl.col("code") == "MEDS_BIRTH").min().over("subject_id")
    outside = (pl.col("time") < birth.dt.offset_by("-1y")) | (pl.col("time") >= birth.dt.offset_by(f"{MAX_ANCHOR_AGE + 1}y"))
    shard = shard.with_columns(_outside=outside.fill_null(False))
    for src, n in shard.filter(pl.col("_outside")).group_by("_src").len().iter_rows():
        ctx.drop("time_outside_lifetime", n, names[src])
    shard = shard.filter(~pl.col("_outside")).drop("_outside")
    # One death per subject: the earliest (admissions.deathtime beats patients.dod).
    is_death = pl.col("code") == "MEDS_DEATH"
    later_death = is_death & (is_death.cast(pl.Int32).cum_sum().over("subject_id") > 1)
    for src, n in shard.filter(later_death).group_by("_src").len().iter_rows():
        ctx.drop("later_death_merged", n, names[src])
    shard = shard.filter(~later_death)
    # Events after the death, kept and counted: results stored after it (a culture read days later), an ICU
    # discharge or infusion end charted minutes after it. Nothing of them is dropped: they happened, and a label
    # history ends at its prediction time, before any of them (16 of the MIMIC-IV demo's 31 deaths have some).
    death = pl.col("time").filter(is_death).min().over("subject_id")
    for src, n in shard.filter((pl.col("time") > death).fill_null(False)).group_by("_src").len().iter_rows():
        ctx.after_death[names[src]] = ctx.after_death.get(names[src], 0) + n
    for (src, n) in shard.group_by("_src").len().iter_rows():
        written[names[src]] += n
    _count_moved(shard, names, ctx)
    for code, n in shard.group_by("code").len().iter_rows():
        code_counts[code] = code_counts.get(code, 0) + n
    return _validate(shard.drop("_order", "_date_only", "_src", "_key", MOVED), path)


def _count_moved(shard: pl.DataFrame, names: list[str], ctx: Context) -> None:
    """Count the events written that were placed later than their row's time (MOVED), per table.

    Counted here, after exact duplicate rows are dropped (_write_shard), like events_written: a row
    listed twice is one event moved, not two (counted when staged, the demo with every row listed
    twice reported 212,996 lab results moved to their storetime for 106,735 written).
    """
    for src, n in shard.filter(pl.col(MOVED)).group_by("_src").len().iter_rows():
        table = TABLES_BY_NAME[names[src]]
        if table.name == "hosp/procedures_icd":
            ctx.duration_coded += n
        for c, s in table.stored_at.items():
            ctx.stored.setdefault((table.name, c), {"store_column": s, "present": True, "moved": 0})["moved"] += n


def _event_order(names: list[str]) -> list[pl.Expr]:
    """The sort key of MEDS events: subject, time, then what orders the events one time shares.

    The clinical order (_order), source table, rank (Table.rank: seq_num of ICD codes), then the
    content and the row key.

    Every column written is in it, so the order is a function of the events alone: a tie left to
    the rows' order made the events of one time (labs of one draw, a stay's diagnoses) follow the
    CSV rows, so shuffling the real demo's rows moved 196,784 of 337,343 events and the tokens with them.
    """
    ranked = [i for i, n in enumerate(names) if TABLES_BY_NAME[n].rank is not None]
    rank = pl.when(pl.col("_src").is_in(ranked)).then(pl.col("_key"))
    return [pl.col(c) for c in ("subject_id", "time", "_order", "_src")] + [rank] + [
        pl.col(c) for c in ("code", "numeric_value", "text_value", "hadm_id", "_key")]


def _time_from_parents(shard: pl.DataFrame, names: list[str], ctx: Context) -> pl.DataFrame:
    """Events of a table timed by another (emar_detail by emar) take their row's time and stay.

    shard: events of whole subjects; a child event and its parent row share (subject_id, _key)
    (emar_id is subject_id-emar_seq). A child without a parent row is counted and dropped. Of two
    parent rows of one key (a re-charted administration) the later times the child, whatever the
    rows' order (it took the first listed).
    """
    by_name = {t.name: t for t in TABLES}
    for ci, name in enumerate(names):
        parent = by_name[name].timed_by
        if parent is None or parent not in names:
            continue
        is_child = pl.col("_src") == ci
        parents = (shard.filter(pl.col("_src") == names.index(parent))
                   .select("subject_id", "_key", _t=pl.col("time"), _h=pl.col("hadm_id"), _d=pl.col("_date_only"))
                   .sort("subject_id", "_key", "_t", "_h", "_d", descending=[False, False, True, True, False], nulls_last=True)
                   .unique(["subject_id", "_key"], keep="first", maintain_order=True))
        child = (shard.filter(is_child).with_columns(_pk=pl.col("_key") // KEY_LINES)
                 .join(parents.rename({"_key": "_pk"}), on=["subject_id", "_pk"], how="left", maintain_order="left")
                 .drop("_pk"))
        ctx.drop("no_emar_row", int(child["_t"].null_count()), name)
        child = (child.filter(pl.col("_t").is_not_null())
                 .with_columns(time=pl.col("_t"), hadm_id=pl.col("_h"), _date_only=pl.col("_d"))
                 .drop("_t", "_h", "_d"))
        shard = pl.concat([shard.filter(~is_child), child], how="vertical")
    return shard


def _at_entry_time(shard: pl.DataFrame, names: list[str], ctx: Context) -> pl.DataFrame:
    """Events of a table entered by another (Table.entered_by) move to that row's time when it is later.

    A prescription and its pharmacy row share (subject_id, _key) (pharmacy_id); the pharmacy event
    sits at max(starttime, entertime) (stored_at), so the prescription is never placed before its
    order was in the record. A pharmacy row without a medication is staged as an ENTRY_ONLY row for
    this step alone (on the real demo 15 prescriptions start up to 24 h before such a row's entry)
    and removed here. Without a pharmacy row a prescription keeps its own time. Moves are counted in
    ctx.stored.
    """
    by_name = {t.name: t for t in TABLES}
    for ci, name in enumerate(names):
        other = by_name[name].entered_by
        if other is None or other not in names:
            continue
        entry = (shard.filter((pl.col("_src") == names.index(other)) & pl.col("_key").is_not_null())
                 # the latest entry; of entries at that time, a timed one (the date flag never follows the rows' order)
                 .group_by("subject_id", "_key").agg(_e=pl.col("time").max(),
                                                     _ed=pl.col("_date_only").filter(pl.col("time") == pl.col("time").max()).min()))
        rows = shard.filter(pl.col("_src") == ci).join(entry, on=["subject_id", "_key"], how="left", maintain_order="left")
        later = (pl.col("_e") > pl.col("time")).fill_null(False)
        info = ctx.stored.setdefault((name, by_name[name].times[0]), {"store_column": "", "present": True, "moved": 0})
        info["moved"] += int(rows.select(later.sum()).item())
        rows = rows.with_columns(time=pl.when(later).then(pl.col("_e")).otherwise(pl.col("time")),
                                 _date_only=pl.when(later).then(pl.col("_ed")).otherwise(pl.col("_date_only"))).drop("_e", "_ed")
        shard = pl.concat([shard.filter(pl.col("_src") != ci), rows], how="vertical")
    if "hosp/pharmacy" not in names:  # no ENTRY_ONLY rows: no pass over every event's code
        return shard
    entry_only = (pl.col("_src") == names.index("hosp/pharmacy")) & (pl.col("code") == ENTRY_ONLY)
    return shard.filter(~entry_only)  # counted as dropped (missing_medication) when staged


def _place_dates(shard: pl.DataFrame, admissions: pl.DataFrame | None, names: list[str], at_discharge: dict) -> pl.DataFrame:
    """The date-only rule's second half: move a dated event from the end of its day to its stay's discharge.

    shard: events of whole subjects with `_date_only` rows at the end of their day (set by
    _typed). Such a row moves to its stay's (placed) discharge when the discharge falls on the
    same day, before the end of it, and no timed event of the subject that day comes after the
    discharge; never a row of a table with a store or entry time (Table.stored_at: results and
    entered orders), whose date is a record time that can trail the discharge. Counts per table go
    to `at_discharge`.
    """
    if admissions is None or not shard["_date_only"].any():
        return shard
    dated = pl.col("_date_only") & pl.col("hadm_id").is_not_null()
    if not shard.select(dated.any()).item():
        return shard
    day = pl.col("time").dt.date()
    last_timed = (shard.filter(~pl.col("_date_only") & pl.col("time").is_not_null())
                  .group_by("subject_id", day.alias("_day")).agg(_last=pl.col("time").max()))
    shard = (shard.with_row_index("_i").with_columns(_day=day)
             .join(admissions.select("subject_id", "hadm_id", _disch=pl.col("dischtime")), on=["subject_id", "hadm_id"],
                   how="left")
             .join(last_timed, on=["subject_id", "_day"], how="left")
             .sort("_i"))
    # A result's store time or an order's entry time is a record time, which can trail the discharge (a culture
    # finalised that evening): a date of it stays at the end of its day, never moved before it could be known.
    record_times = [i for i, n in enumerate(names) if n in TABLES_BY_NAME and TABLES_BY_NAME[n].stored_at]
    move = (dated & ~pl.col("_src").is_in(record_times)
            & pl.col("_disch").is_not_null() & (pl.col("_disch").dt.date() == pl.col("_day"))
            & (pl.col("_disch") < pl.col("time"))
            & (pl.col("_last").is_null() | (pl.col("_last") <= pl.col("_disch"))))
    shard = shard.with_columns(_move=move)
    for src, n in shard.filter(pl.col("_move")).group_by("_src").len().iter_rows():
        at_discharge[names[src]] = at_discharge.get(names[src], 0) + n
    return shard.with_columns(time=pl.when(pl.col("_move")).then(pl.col("_disch")).otherwise(pl.col("time"))).drop(
        "_i", "_day", "_disch", "_last", "_move")


def _validate(shard: pl.DataFrame, path: Path):
    import meds
    import pyarrow as pa

    table = shard.to_arrow().cast(pa.schema([
        ("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
        ("numeric_value", pa.float32()), ("text_value", pa.large_string()), ("hadm_id", pa.int64()),
    ]))
    try:
        meds.DataSchema.validate(table)
        return table
    except Exception as e:  # a bug in this ETL, not the user's input: fail loudly
        raise RuntimeError(f"MEDS validation failed for {path.name}: {e}") from e


def _describe(code: str, dictionaries: dict) -> str:
    parts = code.split("//")
    head = parts[0]
    if head in ("LAB", "VITAL", "INFUSION", "OUTPUT", "INGREDIENT", "DATETIME") and len(parts) >= 2:
        d = dictionaries["hosp/d_labitems" if head == "LAB" else "icu/d_items"]
        label = d.get(parts[1])
        unit = f" ({parts[2]})" if len(parts) > 2 and parts[2] != "UNK" else ""
        return f"{label}{unit}" if label else f"{head.lower()} item {parts[1]}{unit}"
    if head == "PROCEDURE" and parts[1:2] == ["ITEM"] and len(parts) >= 3:
        return dictionaries["icu/d_items"].get(parts[2]) or f"ICU procedure item {parts[2]}"
    if head in ("DIAGNOSIS", "PROCEDURE", "ED_DIAGNOSIS") and len(parts) >= 4:
        d = dictionaries["hosp/d_icd_procedures" if head == "PROCEDURE" else "hosp/d_icd_diagnoses"]
        text = d.get((parts[3], parts[2])) or f"ICD-{parts[2]} {head.lower()} {parts[3]}"
        return f"ED diagnosis: {text}" if head == "ED_DIAGNOSIS" else text
    if head == "HCPCS" and len(parts) >= 2:
        return dictionaries["hosp/d_hcpcs"].get(parts[1]) or f"HCPCS {parts[1]}"
    fixed = {
        "MEDS_BIRTH": "Birth (1 January of anchor_year - anchor_age)", "MEDS_DEATH": "Death",
        "ED_REGISTRATION": "Emergency department registration", "ED_OUT": "Emergency department exit",
    }
    if code in fixed:
        return fixed[code]
    templates = {
        "GENDER": "Gender: {}", "HOSPITAL_ADMISSION": "Hospital admission: type {}, from {}",
        "HOSPITAL_DISCHARGE": "Hospital discharge to {}", "ICU_ADMISSION": "ICU admission to {}",
        "ICU_DISCHARGE": "ICU discharge from {}", "TRANSFER_TO": "Transfer ({}) to {}", "MEDICATION": "Medication: {}",
        "DRG": "DRG ({}) {}", "OMR": "Outpatient measurement: {}",
        "EMAR": "Medication administration ({}): {}", "EMAR_DOSE": "Dose given: {} ({})",
        "PHARMACY": "Pharmacy order: {}", "SERVICE": "Hospital service: {}", "POE": "Provider order: {} ({})",
        "MICROBIOLOGY": "Microbiology: {}, organism {}", "ED_ARRIVAL": "ED arrival by {}",
        "ED_DISPOSITION": "ED disposition: {}", "ED_TRIAGE": "ED triage: {}", "ED_VITAL": "ED vital sign: {}",
        "ED_MEDRECON": "ED medication reconciliation: {}", "ED_PYXIS": "ED medication dispensed: {}",
    }
    if head in templates:
        t = templates[head]
        args = (parts[1:] + ["UNK"] * 4)[: t.count("{}")]
        extra = parts[1 + t.count("{}"):]  # e.g. a microbiology result's antibiotic
        return t.format(*args) + (f", {', '.join(extra)}" if extra else "")
    return code


def _dictionary_rows(path: Path, columns: dict[str, str], keys: set[str]) -> pl.DataFrame:
    """The rows of a dictionary CSV whose first column is in `keys`, as string columns.

    Read with the csv module a row at a time: the dictionaries are small next to the event
    tables, and this keeps the ~10^5-row ICD and HCPCS tables out of memory (peak RSS).
    """
    names = list(columns)
    rows = []
    bad = _BadValues(path)
    try:
        with _open_text(path, "rt", newline="", encoding=CSV_ENCODING) as f:
            reader = csv.reader(f)
            header = next(reader, [])
            at = [header.index(columns[c]) for c in names]
            for row in reader:
                # Only the kept columns, cleaned as the event tables' values are (_without_control_characters):
                # a key with a zero-width space matched no code, a description kept its line breaks.
                kept = []
                for name, i in zip(names, at, strict=True):
                    value = row[i] if i < len(row) else ""
                    if NUL in value:
                        bad.control[columns[name]] = bad.control.get(columns[name], 0) + 1
                    value = _clean_text(value)
                    if name in ("itemid", "icd_version"):  # integer columns as _int_part writes them into codes
                        value = re.sub(WHOLE_AS_DECIMAL, r"\1", value)
                    kept.append(value or None)
                if kept[0] in keys:
                    rows.append(kept)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; {NOT_UTF8_HINT}") from None
    except (OSError, EOFError, csv.Error) as e:
        raise UserError(f"{path}: cannot be read as CSV ({type(e).__name__})") from None
    bad.raise_if_any()
    return pl.DataFrame(rows, schema={c: pl.String for c in names}, orient="row")


def _warn_repeated_keys(path: Path, d: pl.DataFrame, key: list[str]) -> None:
    """One warning line when a dictionary lists one key (an itemid, an ICD code and version) with different rows.

    Its codes' descriptions take the last row listed (as a dict does); before, an itemid listed twice with
    two labels described its code by one of them without a word. Codes and counts are named, never values.
    """
    if d.is_empty():
        return
    clash = d.unique().group_by(key).len().filter(pl.col("len") > 1).sort(key)
    if clash.height:
        from ehrfm.io import warn

        first = "//".join(str(v) for v in clash.row(0)[: len(key)])
        warn(f"{path}: {clash.height} {'/'.join(key)} value(s) are listed more than once with different rows (first: "
             f"{first}); their codes are described by the last row listed")


def _clean_text(value: str) -> str:
    """One dictionary value as _without_control_characters and _trimmed make an event table's (NUL aside)."""
    if ANY_CONTROL_RE.search(value):
        value = UNICODE_SPACES_RE.sub(" ", LINE_BREAKS_RE.sub(" ", CONTROL_CHARACTERS_RE.sub("", value)))
    return value.strip()


# The OMOP vocabulary of an ICD code, by its code's head and ICD version: the parent_codes prefix.
# ICD-9 diagnoses and procedures are two code systems: one "ICD9/" prefix made diagnosis 518.7
# (transfusion lung injury) and procedure 51.87 (a bile duct stent) one parent code, ICD9/5187.
ICD_VOCABULARIES = {("DIAGNOSIS", "9"): "ICD9CM", ("DIAGNOSIS", "10"): "ICD10CM", ("ED_DIAGNOSIS", "9"): "ICD9CM",
                    ("ED_DIAGNOSIS", "10"): "ICD10CM", ("PROCEDURE", "9"): "ICD9Proc", ("PROCEDURE", "10"): "ICD10PCS"}


def _write_codes(files: dict[str, tuple[Path, dict[str, str]]], out: Path, counts: dict[str, int]) -> None:
    """metadata/codes.parquet of the codes written, described from the dictionaries `files` (_dictionary_files)."""
    dictionaries: dict[str, dict] = {k: {} for k in DICTIONARIES}
    # Only the entries of codes in the data are kept (the ICD and HCPCS dictionaries hold ~10^5 rows).
    used = {p for c in counts for p in c.split("//")}
    for name, (path, have) in files.items():
        cols = DICTIONARIES[name]
        d = _dictionary_rows(path, have, used)
        _warn_repeated_keys(path, d, cols[:2] if name.startswith("hosp/d_icd") else cols[:1])
        if name.startswith("hosp/d_icd"):
            dictionaries[name] = {(c, v): t for c, v, t in d.select(cols).iter_rows()}
        elif name == "hosp/d_hcpcs" and "short_description" in have:
            dictionaries[name] = {c: long or short for c, long, short in d.select(cols).iter_rows()}
        elif name == "hosp/d_labitems" and "fluid" in have:
            dictionaries[name] = {i: (f"{lab} ({fl})" if fl else lab) for i, lab, fl in d.select(cols).iter_rows()}
        else:
            dictionaries[name] = {i: lab for i, lab in d.select(cols[:2]).iter_rows()}
    codes = sorted(counts)
    parents = []
    for c in codes:
        p = c.split("//")
        vocabulary = ICD_VOCABULARIES.get((p[0], p[2])) if len(p) >= 4 and p[1] == "ICD" else None
        parents.append([f"{vocabulary}/{p[3]}"] if vocabulary else None)
    df = pl.DataFrame({
        "code": codes,
        "description": [_describe(c, dictionaries) for c in codes],
        "parent_codes": pl.Series(parents, dtype=pl.List(pl.String)),
        "count": pl.Series([counts[c] for c in codes], dtype=pl.Int64),
    })
    import meds
    import pyarrow as pa

    table = df.to_arrow().cast(pa.schema([
        ("code", pa.string()), ("description", pa.string()), ("parent_codes", pa.list_(pa.string())), ("count", pa.int64()),
    ]))
    meds.CodeMetadataSchema.validate(table)
    import pyarrow.parquet as pq

    (out / "metadata").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "metadata" / "codes.parquet")


_VERSION = re.compile(r"^v?(\d+(?:\.\d+)+)$")  # 3.1, v2.2: a release's number
_NAMED_VERSION = re.compile(r"^(.+?)[-_ ]v?(\d+(?:\.\d+)+)$")  # mimic-iv-demo-2.2


def dataset_identity(raw: str | os.PathLike) -> tuple[str, str | None]:
    """(dataset_name, dataset_version or None) of a raw dir from its path, as PhysioNet lays releases out.

    `physionet.org/files/mimiciv/3.1` -> ("mimiciv", "3.1") (it was named "3.1", version unknown);
    `mimic-iv-demo-2.2` -> ("mimic-iv-demo", "2.2"); any other name is the name, version None.
    """
    path = Path(raw).resolve()
    if (m := _VERSION.match(path.name)) and path.parent.name:
        return path.parent.name, m.group(1)
    if m := _NAMED_VERSION.match(path.name):
        return m.group(1), m.group(2)
    return path.name, None


def _write_metadata(out: Path, cfg: EtlConfig, split_of: pl.DataFrame, rows_in: dict, missing: list,
                    untimed: dict, account: dict, absent_columns: dict, not_read: list[str],
                    no_dictionary: list[str] = ()) -> None:
    import meds
    import pyarrow as pa
    import pyarrow.parquet as pq

    splits = split_of.sort("subject_id").to_arrow().cast(pa.schema([("subject_id", pa.int64()), ("split", pa.string())]))
    meds.SubjectSplitSchema.validate(splits)
    pq.write_table(splits,
                   out / "metadata" / "subject_splits.parquet")
    raw_name, raw_version = dataset_identity(cfg.raw)
    write_json(out / "metadata" / "dataset.json", {
        "dataset_name": cfg.dataset_name or raw_name,
        "dataset_version": cfg.dataset_version or raw_version or "unknown",
        "etl_name": ETL_NAME,
        "etl_version": ETL_VERSION,
        "meds_version": meds.__version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "raw_source_id_columns": ["hadm_id"],
    })
    write_json(out / "metadata" / "etl_config.json", {
        **asdict(cfg), "raw": str(Path(cfg.raw).resolve()), "tables_rows": rows_in, "tables_missing": missing,
        "dropped_events_without_time": {k: v for k, v in untimed.items() if v},
        "tables_selected": cfg.tables,  # --tables as resolved (null: every table); "tables" is the account
        "optional_columns_absent": absent_columns,  # {table: [column]}: read as empty (_warn_absent_optional_columns)
        "raw_files_not_read": not_read,  # data files in raw's folders that are no table read (_warn_raw_files_not_read)
        "dictionaries_missing": list(no_dictionary),  # beside a table whose codes they describe (DESCRIBES)
        "tables": account,
        "count_units": COUNT_UNITS,
    })
