"""Faults of the clinical stage found by a third break-it pass (label files of other tools, dates).

- label files: one task's labels as ACES writes them on sharded MEDS data
  (`<task>/<split>/<shard>.parquet`) were refused by every head ("a directory holding 3 parquet
  files": it even suggested passing one split's shard), by the audit ("no label parquet files")
  and, as a cohort dir of such tasks, by `sweep collect --labels`;
- labels: a MEDS_DEATH at exactly 00:00 (a date-only patients.dod, as MIMIC_IV_MEDS writes it) on
  the day of a discharge HOME made the stay an in-hospital death (a positive mortality label for a
  patient who left alive), and a readmission on the death day was dropped as "admitted after death";
- ACES configs: mortality, long stay and ICU admission labelled an admission after the death (organ
  donation) with MEDS_DEATH in its history, which `ehrfm labels` excludes;
- many labels per patient: the token heads re-checked a subject's whole timeline per label, and the
  baseline joined every label with every event of its subject at once (3 GB for 10,000 demo labels).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import polars as pl
import pytest
from test_aces import aces_cli, run_aces  # noqa: F401 (aces_cli: the es-aces venv fixture)
from test_labels import ADM, DIS, labels_of, stay, write_meds

from ehrfm.app.cli import main

T0 = datetime(2150, 1, 1, 8, 0)
DAY = timedelta(days=1)


# --- label files: one task's shards, as ACES writes them on sharded MEDS data ----------------------
def _sharded_labels(tmp_path):
    """A MEDS dataset (8 train, 4 tuning, 4 held_out subjects) and its mortality labels in ACES's sharded layout."""
    events, rows, splits = [], [], []
    for sid in range(1, 17):
        died = sid % 2 == 0
        adm = T0 + sid * DAY
        extra = [(sid, adm + timedelta(hours=3), "LAB//K" if died else "LAB//NA")]
        events += stay(sid, adm, adm + 3 * DAY, extra)
        rows.append((sid, adm + timedelta(hours=24), died))
        splits.append("train" if sid <= 8 else "tuning" if sid <= 12 else "held_out")
    meds = tmp_path / "meds"
    for split in ("train", "tuning", "held_out"):
        ids = {s for s, sp in zip(range(1, 17), splits, strict=True) if sp == split}
        write_meds(meds, [e for e in events if e[0] in ids], split)
    labels = pl.DataFrame(rows, schema={"subject_id": pl.Int64, "prediction_time": pl.Datetime("us"),
                                        "boolean_value": pl.Boolean}, orient="row")
    task = tmp_path / "cohorts" / "in_hospital_mortality"
    for split in ("train", "tuning", "held_out"):
        (task / split).mkdir(parents=True)
        part = labels.filter(pl.Series([sp == split for sp in splits]))
        # ACES's extra value columns, all null
        part.with_columns(pl.lit(None, pl.Int64).alias("integer_value"), pl.lit(None, pl.Float64).alias("float_value"),
                          pl.lit(None, pl.String).alias("categorical_value")).write_parquet(task / split / "0.parquet")
    return meds, task


def test_one_tasks_sharded_label_dir_is_read_by_heads_and_audit(tmp_path, capsys):
    meds, task = _sharded_labels(tmp_path)
    assert main(["baseline", str(meds), "--labels", str(task), "--out", str(tmp_path / "b"), "--bootstrap", "0",
                 "--min-count", "1"]) == 0
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert (m["task"], m["n_train"], m["n_tuning"], m["n"], m["n_positive"]) == ("in_hospital_mortality", 8, 4, 4, 2)
    assert m["models"]["logistic_regression"]["auroc"] == 1.0  # the lab code tells them apart
    capsys.readouterr()
    assert main(["audit", str(meds), "--labels", str(task)]) == 0
    assert "| in_hospital_mortality | 16 | 0 |" in capsys.readouterr().out
    # ACES's cohort_dir of several sharded tasks: `sweep collect --labels` and the audit take each task.
    import shutil

    from ehrfm.clinical.labels import head_labels
    from ehrfm.clinical.utility import label_files
    from ehrfm.errors import UserError

    shutil.copytree(task, task.parent / "long_los")
    assert label_files(task.parent) == {"in_hospital_mortality": task, "long_los": task.parent / "long_los"}
    capsys.readouterr()
    assert main(["audit", str(meds), "--labels", str(task.parent)]) == 0
    assert "| long_los | 16 | 0 |" in capsys.readouterr().out
    # ... but a head scores one task: a dir of several is still refused.
    with pytest.raises(UserError, match="holding 6 parquet files"):
        head_labels(task.parent)


# --- labels: a death recorded as a date (00:00) -----------------------------------------------------
def test_a_midnight_death_on_the_day_of_a_live_discharge_is_not_in_hospital(tmp_path):
    day5 = datetime(2150, 1, 5)
    events = stay(1, T0, day5 + timedelta(hours=14), [(1, day5, "MEDS_DEATH")])  # discharged HOME at 14:00, dod day 5
    # 2: dod at 00:00 of a day it is discharged to an unknown place: the death may be in hospital.
    events += [e for e in stay(2, T0, None) if e[2] != DIS] + [
        (2, day5 + timedelta(hours=14), "HOSPITAL_DISCHARGE//UNK"), (2, day5, "MEDS_DEATH")]
    got, _ = labels_of(tmp_path, events, "in_hospital_mortality")
    assert got == {(1, T0 + timedelta(hours=24)): False, (2, T0 + timedelta(hours=24)): True}


def test_a_readmission_on_the_day_of_a_midnight_death_is_a_readmission(tmp_path):
    day10 = datetime(2150, 1, 10)
    first = stay(1, T0, T0 + 2 * DAY)  # discharged day 3, readmitted day 10 at 09:00, died that day (dod 00:00)
    second = [(1, day10 + timedelta(hours=9), ADM), (1, day10 + timedelta(hours=17), "HOSPITAL_DISCHARGE//DIED"),
              (1, day10, "MEDS_DEATH")]
    got, info = labels_of(tmp_path, first + second, "readmission_30d")
    assert got == {(1, T0 + 2 * DAY): True}
    assert info["excluded"] == {"no_discharge": 0, "died_in_hospital": 1}
    mort, info = labels_of(tmp_path / "m", first + second, "in_hospital_mortality")
    # the day-10 stay: the MEDS_DEATH (00:00) precedes its prediction time, so it is excluded, counted.
    assert mort == {(1, T0 + timedelta(hours=24)): False}
    assert info["excluded"]["died_before_prediction_time"] == 1 and "admitted_after_death" not in info["excluded"]


# --- ACES configs: an admission after the death ------------------------------------------------------
def test_aces_configs_make_no_label_whose_history_holds_the_death(aces_cli, tmp_path):  # noqa: F811 (the fixture)
    # MIMIC-IV records an organ donation as an admission after the death. `ehrfm labels` excludes it
    # (admitted_after_death); the shipped ACES configs labelled it, its history holding MEDS_DEATH
    # (mortality: a negative label of a dead patient; the audit's (a)).
    from ehrfm.clinical.audit import audit

    events = []
    for sid in (1, 2, 3):  # alive: a 10-day stay with an ICU admission on day 2
        adm = T0 + sid * DAY
        events += stay(sid, adm, adm + 10 * DAY, [(sid, adm + 2 * DAY, "ICU_ADMISSION//MICU")])
    died = T0 + 5 * DAY  # 4: dies in hospital on day 5, then a 3-day organ donation admission
    events += stay(4, T0, None) + [(4, died, "HOSPITAL_DISCHARGE//DIED"), (4, died, "MEDS_DEATH"),
                                                (4, died + DAY, ADM), (4, died + 4 * DAY, DIS)]
    meds = write_meds(tmp_path / "meds", events)
    (tmp_path / "aces").mkdir()
    for task in ("in_hospital_mortality", "long_los", "icu_admission"):
        run_aces(aces_cli, meds, task, tmp_path / "aces")
        labels = pl.read_parquet(tmp_path / "aces" / f"{task}.parquet")
        assert labels.filter(pl.col("subject_id") == 4)["prediction_time"].to_list() == (
            [T0] if task == "icu_admission" else [T0 + timedelta(hours=24)]), task  # the first stay only
    res = audit(meds, tmp_path / "aces")
    assert {t: a.outcome_code_in_history for t, a in res.tasks.items()} == {
        "in_hospital_mortality": 0, "long_los": 0, "icu_admission": 0}


# --- histories: a patient with many labels ----------------------------------------------------------
def test_a_timeline_is_checked_once_however_many_labels_it_has(tmp_path, monkeypatch):
    # Hourly labels over one long stay (ACES-style rolling tasks): every label re-checked the order
    # of the subject's whole timeline, labels x timeline work (a 30,000-label file on the MIMIC-IV
    # demo took 2.3 s, 0.5 s now; quadratic in a stay's length). Counted, not timed: one check per
    # subject, and the same histories.
    import numpy as np

    from ehrfm.clinical.histories import locate_histories
    from ehrfm.tokens import TokenDir
    from tokenization.tokenize import tokenize

    labs = [(s, T0 + timedelta(hours=h), "LAB//K") for s in (1, 2) for h in range(1, 200)]
    meds = write_meds(tmp_path / "meds", stay(1, T0, T0 + 10 * DAY, labs[:199]) + stay(2, T0, T0 + 10 * DAY, labs[199:]))
    tokenize(meds, tmp_path / "tok")
    td = TokenDir(tmp_path / "tok")
    hours = [T0 + timedelta(hours=h) for h in range(0, 200)]
    labels = pl.DataFrame({"subject_id": [1] * 200 + [2] * 200, "prediction_time": hours * 2, "boolean_value": [True, False] * 200},
                          schema_overrides={"prediction_time": pl.Datetime("us")})
    calls = []
    diff = np.diff
    monkeypatch.setattr(np, "diff", lambda a, *args, **kw: calls.append(len(a)) or diff(a, *args, **kw))
    h = locate_histories(td, labels)
    assert len(calls) == 2  # one per subject (400 before)
    assert (np.diff(h.stop[:200]) > 0).all() and (h.stop[200:] - h.start[200:] == h.stop[:200] - h.start[:200]).all()


# --- baseline: a patient with many labels -------------------------------------------------------------
def test_baseline_counts_join_a_bounded_number_of_label_event_rows(tmp_path, monkeypatch):
    # Every label met every event of its subject in one join: 100 labels per patient on the MIMIC-IV
    # demo (10,000 labels) took 3.0 GB, 1.1 GB now, with the same features and AUROC. Here 2 patients
    # x 200 hourly labels x ~200 events: the joins hold at most JOIN_ROWS rows plus one subject's
    # events, and the counts are those of one whole join.
    import ehrfm.clinical.baseline as baseline

    labs = [(s, T0 + timedelta(hours=h), f"LAB//{h % 7}") for s in (1, 2) for h in range(1, 200)]
    meds = write_meds(tmp_path / "meds", stay(1, T0, T0 + 10 * DAY, labs[:199]) + stay(2, T0, T0 + 10 * DAY, labs[199:]))
    labels = pl.DataFrame({"subject_id": [1] * 200 + [2] * 200, "prediction_time": [T0 + timedelta(hours=h) for h in range(200)] * 2},
                          schema_overrides={"prediction_time": pl.Datetime("us")}).with_row_index("label_idx").with_columns(
                              pl.col("label_idx").cast(pl.Int64))
    windows = baseline.parse_windows("full,24h")
    whole, _ = baseline.count_features(meds, labels, windows)
    largest = []
    join = pl.DataFrame.join
    monkeypatch.setattr(pl.DataFrame, "join", lambda self, *a, **k: (r := join(self, *a, **k), largest.append(r.height))[0])
    monkeypatch.setattr(baseline, "JOIN_ROWS", 5_000, raising=False)
    chunked, _ = baseline.count_features(meds, labels, windows)
    assert max(largest) <= 5_000 + 205, max(largest)  # 400 x ~203 = 81,000 rows in one join before
    key = ["label_idx", "feature"]
    assert chunked.sort(key).equals(whole.sort(key))
    # label 10 of subject 1 (10 h after admission): labs of hours 1..10 (the one at the prediction time included)
    row = whole.filter((pl.col("label_idx") == 10) & pl.col("feature").str.starts_with("full/LAB"))
    assert dict(zip(row["feature"], row["count"], strict=True)) == {
        "full/LAB//1": 2, "full/LAB//2": 2, "full/LAB//3": 2, "full/LAB//4": 1, "full/LAB//5": 1, "full/LAB//6": 1, "full/LAB//0": 1}


def test_collect_labels_given_one_tasks_file_says_it_takes_the_dir(tmp_path):
    """A newcomer passed `sweep collect SWEEP --labels labels/icu_admission.parquet`: the error said the
    labels dir was "not found" and told them to write a labels dir named *.parquet."""
    from ehrfm.clinical.utility import label_files
    from ehrfm.errors import UserError

    f = tmp_path / "labels" / "icu_admission.parquet"
    f.parent.mkdir()
    f.write_bytes(b"PAR1")
    with pytest.raises(UserError, match=r"is a file: it takes the labels dir .* e\.g\. .*labels$"):
        label_files(f)
