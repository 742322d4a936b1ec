"""Label definitions on hand-built MEDS timelines, and on the real MIMIC-IV demo."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrfm.clinical.labels import TASKS, make_labels, read_labels, write_labels
from ehrfm.errors import UserError

T0 = datetime(2150, 1, 1, 8, 0)
ADM = "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM"
DIS = "HOSPITAL_DISCHARGE//HOME"


def write_meds(root: Path, events: list[tuple], split: str = "train") -> Path:
    """A real MEDS dataset dir from (subject_id, time or None, code[, numeric_value]) tuples."""
    from meds import DataSchema

    rows = [(e[0], e[1], e[2], e[3] if len(e) > 3 else None) for e in events]
    rows.sort(key=lambda r: (r[0], r[1] is not None, r[1] or datetime.min))
    table = pa.table(
        {
            "subject_id": pa.array([r[0] for r in rows], pa.int64()),
            "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
            "code": pa.array([r[2] for r in rows], pa.string()),
            "numeric_value": pa.array([r[3] for r in rows], pa.float32()),
        }
    )
    DataSchema.validate(table)
    (root / "data" / split).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / "data" / split / "0.parquet")
    return root


def stay(sid, adm: datetime, dis: datetime | None, extra=()):
    """A stay's events; a death at its discharge makes that discharge DIED, as MIMIC-IV writes an in-hospital
    death (a death at a HOME discharge contradicts it: death_contradicted)."""
    ev = [(sid, None, "GENDER//F"), (sid, datetime(2100, 1, 1), "MEDS_BIRTH"), (sid, adm, ADM)]
    if dis is not None:
        died = any(code == "MEDS_DEATH" and t == dis for _, t, code in extra)
        ev.append((sid, dis, "HOSPITAL_DISCHARGE//DIED" if died else DIS))
    ev.extend(extra)
    return ev


def labels_of(tmp_path, events, task):
    meds = write_meds(tmp_path / "meds", events)
    labels, info = make_labels(meds, task)
    return {(r["subject_id"], r["prediction_time"]): r["boolean_value"] for r in labels.iter_rows(named=True)}, info


h = lambda n: timedelta(hours=n)  # noqa: E731
d = lambda n: timedelta(days=n)  # noqa: E731


def test_mortality_edge_cases(tmp_path):
    events = (
        # 1: dies on day 3 (MEDS_DEATH at the discharge time) -> positive
        stay(1, T0, T0 + d(3), [(1, T0 + d(3), "MEDS_DEATH")])
        # 2: dies within 24 h -> excluded (outcome before prediction time)
        + stay(2, T0, T0 + h(10), [(2, T0 + h(10), "MEDS_DEATH")])
        # 3: same-day discharge home -> excluded
        + stay(3, T0, T0 + h(6))
        # 4: ICU transfer mid-stay, discharged alive on day 5 -> one stay, negative
        + stay(4, T0, T0 + d(5), [(4, T0 + d(1), "ICU_ADMISSION//MICU"), (4, T0 + d(2), "ICU_DISCHARGE//MICU")])
        # 5: admission without discharge -> excluded
        + stay(5, T0, None, [(5, T0 + d(2), "LAB//1//mg")])
        # 6: day-resolved death date at midnight of the discharge day, discharge DIED later that day
        + [(6, T0, ADM), (6, T0 + d(4), "HOSPITAL_DISCHARGE//DIED"), (6, datetime(2150, 1, 5), "MEDS_DEATH")]
        # 7: death a year after a survived stay -> negative
        + stay(7, T0, T0 + d(2), [(7, T0 + d(365), "MEDS_DEATH")])
    )
    labels, info = labels_of(tmp_path, events, "in_hospital_mortality")
    assert labels == {
        (1, T0 + h(24)): True,
        (4, T0 + h(24)): False,
        (6, T0 + h(24)): True,
        (7, T0 + h(24)): False,
    }
    assert info["excluded"] == {"no_discharge": 1, "died_before_prediction_time": 1, "ended_before_prediction_time": 1}
    assert info["n"] == 4 and info["n_positive"] == 2 and info["prevalence"] == 0.5


def test_long_los_threshold_and_deaths(tmp_path):
    events = (
        stay(1, T0, T0 + d(7))  # exactly 7 days -> not > 7 d
        + stay(2, T0, T0 + d(7) + h(1))  # just over -> positive
        + stay(3, T0, T0 + d(10), [(3, T0 + d(10), "MEDS_DEATH")])  # death on day 10: by length of stay
        + stay(4, T0, T0 + h(20))  # same-day discharge: excluded
    )
    labels, info = labels_of(tmp_path, events, "long_los")
    assert labels == {(1, T0 + h(24)): False, (2, T0 + h(24)): True, (3, T0 + h(24)): True}
    assert info["excluded"]["ended_before_prediction_time"] == 1


def test_icu_admission_edge_cases(tmp_path):
    events = (
        stay(1, T0, T0 + d(5), [(1, T0 + d(1), "ICU_ADMISSION//MICU")])  # ICU on day 1 -> positive
        + stay(2, T0, T0 + d(5), [(2, T0, "ICU_ADMISSION//MICU")])  # direct ICU admission: excluded
        + stay(3, T0, T0 + h(5))  # same-day discharge, no ICU -> negative (predicted at admission)
        + stay(4, T0, T0 + d(3), [(4, T0 + d(20), "ICU_ADMISSION//SICU")])  # ICU in a later stay only
        + stay(4, T0 + d(19), T0 + d(25))  # the later stay: ICU on its day 1 -> positive
        + stay(5, T0, None, [(5, T0 + d(1), "ICU_ADMISSION//MICU")])  # no discharge: excluded
        + stay(6, T0, T0 + d(4), [(6, T0 - h(3), "ICU_ADMISSION//MICU")])  # in ICU from the ED: excluded
        + stay(7, T0, T0 + d(4), [(7, T0 - d(30), "ICU_ADMISSION//MICU")])  # ICU a month earlier: negative
    )
    labels, info = labels_of(tmp_path, events, "icu_admission")
    assert labels == {
        (1, T0): True,
        (3, T0): False,
        (4, T0): False,
        (4, T0 + d(19)): True,
        (7, T0): False,
    }
    assert info["excluded"] == {"no_discharge": 1, "in_icu_at_prediction_time": 2}


def test_readmission_day_30_and_31(tmp_path):
    events = (
        stay(1, T0, T0 + d(2)) + stay(1, T0 + d(32), T0 + d(34))  # readmitted exactly 30 d later
        + stay(2, T0, T0 + d(2)) + stay(2, T0 + d(33), T0 + d(35))  # 31 d later -> negative
        + stay(3, T0, T0 + d(2), [(3, T0 + d(2), "MEDS_DEATH")])  # in-hospital death -> excluded
        + stay(4, T0, T0 + d(2)) + stay(4, T0 + d(2), T0 + d(6))  # transfer: same-timestamp readmission
        + stay(5, T0, None) + stay(5, T0 + d(3), T0 + d(4))  # first admission never discharged
    )
    labels, info = labels_of(tmp_path, events, "readmission_30d")
    assert labels == {
        (1, T0 + d(2)): True,
        (1, T0 + d(34)): False,
        (2, T0 + d(2)): False,
        (2, T0 + d(35)): False,
        (4, T0 + d(6)): False,
        (5, T0 + d(4)): False,
    }
    assert info["excluded"] == {"no_discharge": 1, "died_in_hospital": 1, "transferred": 1}


def test_label_file_roundtrip_validates_schema(tmp_path):
    from meds import LabelSchema

    events = stay(1, T0, T0 + d(3), [(1, T0 + d(3), "MEDS_DEATH")]) + stay(2, T0, T0 + d(9))
    meds = write_meds(tmp_path / "meds", events)
    labels, info = make_labels(meds, "all")
    assert set(labels) == set(TASKS)
    out = write_labels(labels["in_hospital_mortality"], tmp_path / "mort.parquet", info["in_hospital_mortality"])
    LabelSchema.validate(pq.read_table(out))
    assert (tmp_path / "mort.json").is_file()
    back = read_labels(out)
    assert back.equals(labels["in_hospital_mortality"])


def test_read_labels_accepts_aces_style_and_refuses_bad(tmp_path):
    # ACES writes int32/ns-typed columns plus null optional columns: accepted, cast to the schema.
    aces = pa.table(
        {
            "subject_id": pa.array([1, 2], pa.int32()),
            "prediction_time": pa.array([T0, T0], pa.timestamp("ns")),
            "boolean_value": [True, False],
            "integer_value": pa.array([None, None], pa.int64()),
        }
    )
    pq.write_table(aces, tmp_path / "aces.parquet")
    assert read_labels(tmp_path / "aces.parquet").height == 2
    pq.write_table(aces.drop(["boolean_value"]), tmp_path / "nolabel.parquet")
    with pytest.raises(UserError, match="lacks column 'boolean_value'"):
        read_labels(tmp_path / "nolabel.parquet")
    nulls = aces.set_column(2, "boolean_value", pa.array([None, True], pa.bool_()))
    pq.write_table(nulls, tmp_path / "nulls.parquet")
    with pytest.raises(UserError, match="boolean_value has 1 null rows"):
        read_labels(tmp_path / "nulls.parquet")


def test_labels_cli_all_tasks(tmp_path):
    from ehrfm.app.cli import main

    events = stay(1, T0, T0 + d(3), [(1, T0 + d(3), "MEDS_DEATH")]) + stay(2, T0, T0 + d(9))
    meds = write_meds(tmp_path / "meds", events)
    assert main(["labels", str(meds), "--task", "all", "--out", str(tmp_path / "labels")]) == 0
    assert sorted(p.name for p in (tmp_path / "labels").glob("*.parquet")) == sorted(f"{t}.parquet" for t in TASKS)
    assert main(["labels", str(meds), "--task", "long_los", "--out", str(tmp_path / "los.parquet")]) == 0
    assert pl.read_parquet(tmp_path / "los.parquet")["boolean_value"].to_list() == [False, True]
    # bad input: a dir that is not MEDS -> exit 2, no output
    assert main(["labels", str(tmp_path / "nope"), "--task", "all", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    # MEDS without a single stay (an empty admissions table): refused, not four empty label files
    no_stays = write_meds(tmp_path / "no_stays", [(1, T0, "LAB//1//mg/dL"), (1, T0 + d(1), "LAB//1//mg/dL")])
    with pytest.raises(UserError, match="no hospital stays"):
        make_labels(no_stays, "all")
    assert main(["labels", str(no_stays), "--task", "all", "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "y").exists()


def test_labels_on_real_mimic_demo(demo_meds):
    labels, info = make_labels(demo_meds, "all")
    for task in TASKS:
        n, pos = info[task]["n"], info[task]["n_positive"]
        print(task, n, pos, info[task]["excluded"])
        assert n > 0 and 0 < pos < n
    # The demo has 275 admissions of 100 patients; eligible stays are most of them.
    assert 150 <= info["icu_admission"]["n"] <= 275
    assert 150 <= info["readmission_30d"]["n"] <= 275
    assert info["in_hospital_mortality"]["prevalence"] < 0.3


def test_death_before_prediction_time_gets_no_label(tmp_path):
    # Fault 3: admitted 10:00, died 20:00, discharge paperwork 30 h after admission. At
    # admission + 24 h the death is in the history: no mortality or long-stay label.
    adm = datetime(2150, 3, 1, 10, 0)
    events = (
        stay(1, adm, None, [(1, adm + h(10), "MEDS_DEATH"), (1, adm + h(30), "HOSPITAL_DISCHARGE//DIED")])
        # dies on day 2: a real positive (discharged DIED: a discharge HOME days after the death contradicts it)
        + stay(2, adm, None, [(2, adm + d(2), "MEDS_DEATH"), (2, adm + d(9), "HOSPITAL_DISCHARGE//DIED")])
        + stay(3, adm, adm + d(3))  # survives: negative
    )
    meds = write_meds(tmp_path / "meds", events)
    labels, info = make_labels(meds, "all")
    mort = {r["subject_id"]: r["boolean_value"] for r in labels["in_hospital_mortality"].iter_rows(named=True)}
    assert mort == {2: True, 3: False}
    assert info["in_hospital_mortality"]["excluded"] == {"no_discharge": 0, "died_before_prediction_time": 1}
    assert info["in_hospital_mortality"]["prevalence"] == 0.5
    assert labels["long_los"]["subject_id"].to_list() == [2, 3]
    assert info["long_los"]["excluded"]["died_before_prediction_time"] == 1
    for task in TASKS:  # every stay is either labelled or excluded under a reason
        assert info[task]["n"] + info[task]["n_excluded"] == info[task]["n_stays"] == 3


def test_admission_after_death_and_second_death_are_excluded_and_counted(tmp_path):
    # Fault 4: an organ-donation admission opened 4 h after the death of the first stay.
    died = T0 + d(3)
    events = (
        stay(1, T0, died, [(1, died, "MEDS_DEATH"), (1, died + h(4), "ICU_ADMISSION//SICU")])
        + [(1, died + h(4), ADM), (1, died + d(2), "HOSPITAL_DISCHARGE//DIED"),
           (1, died + d(2), "MEDS_DEATH")]  # a second recorded death, two days later
        + stay(2, T0, T0 + d(2))  # an ordinary survivor, never readmitted
    )
    meds = write_meds(tmp_path / "meds", events)
    labels, info = make_labels(meds, "all")
    for task in TASKS:
        assert info[task]["excluded"]["admitted_after_death"] == 1, task
        assert info[task]["n"] + info[task]["n_excluded"] == info[task]["n_stays"] == 3
        # no label of subject 1 after its death
        after = labels[task].filter((pl.col("subject_id") == 1) & (pl.col("prediction_time") > died))
        assert after.height == 0, task
    mort = {(r["subject_id"], r["prediction_time"]): r["boolean_value"] for r in labels["in_hospital_mortality"].iter_rows(named=True)}
    assert mort == {(1, T0 + h(24)): True, (2, T0 + h(24)): False}
    # the ICU admission of the post-death stay is no outcome of the first stay (predicted at admission)
    assert dict(labels["icu_admission"].select("subject_id", "boolean_value").iter_rows()) == {1: False, 2: False}
    deaths = info["in_hospital_mortality"]["deaths"]
    assert deaths["subjects_with_death"] == 1 and deaths["extra_death_records"] == 1
    assert deaths["subjects_with_deaths_on_different_days"] == 1


def test_readmission_never_counts_an_admission_after_death(tmp_path):
    # Discharged home, died at home 5 days later, then an organ-donation admission: the stay's
    # readmission label is negative, not a readmission, and the post-death stay gets no label.
    events = stay(1, T0, T0 + d(2), [(1, T0 + d(7), "MEDS_DEATH")]) + stay(1, T0 + d(7) + h(2), None) + [
        (1, T0 + d(8), "HOSPITAL_DISCHARGE//DIED")]  # the donor's stay ends DIED (a HOME discharge would contradict the death)
    meds = write_meds(tmp_path / "meds", events)
    labels, info = make_labels(meds, "readmission_30d")
    assert labels.rows() == [(1, T0 + d(2), False)]
    assert info["excluded"]["admitted_after_death"] == 1


def test_overlapping_stays_keep_their_own_ends_and_facts_by_stay_id(tmp_path):
    # Two stays of one subject overlap (ids 71 and 72). Paired by time, stay 72 would end at
    # stay 71's discharge (2 days, not long) and stay 71 would be lost; by id stay 72 keeps its own
    # discharge. Stay 71 is discharged while stay 72 is open: the patient never left, so its death, length
    # of stay and ICU bed are not its own (since 2026-12-07 no task labels it; readmission did not before).
    rows = [
        (7, None, "GENDER//F", None), (7, T0, ADM, 71), (7, T0 + d(2), ADM, 72),
        (7, T0 + d(3), "ICU_ADMISSION//MICU", 72), (7, T0 + d(4), DIS, 71), (7, T0 + d(11), DIS, 72),
    ]
    rows.sort(key=lambda r: (r[1] is not None, r[1] or datetime.min))
    table = pa.table({
        "subject_id": pa.array([r[0] for r in rows], pa.int64()),
        "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
        "code": pa.array([r[2] for r in rows], pa.string()),
        "numeric_value": pa.array([None] * len(rows), pa.float32()),
        "hadm_id": pa.array([r[3] for r in rows], pa.int64()),
    })
    (tmp_path / "meds" / "data" / "train").mkdir(parents=True)
    pq.write_table(table, tmp_path / "meds" / "data" / "train" / "0.parquet")
    labels, info = make_labels(tmp_path / "meds", "all")
    assert labels["long_los"].rows() == [(7, T0 + d(2) + h(24), True)]
    assert labels["icu_admission"].rows() == [(7, T0 + d(2), True)]
    assert info["long_los"]["stay_pairing"] == "by hadm_id"
    assert info["long_los"]["excluded"] == {"no_discharge": 0, "in_another_stay_at_discharge": 1}


def test_read_labels_keeps_one_row_per_pair_and_refuses_guessed_types(tmp_path, capsys):
    # Before: repeated (subject, time) rows were trained and scored twice, silently; dates predicted
    # at midnight, epoch numbers in 1970, and boolean_value 0.5 or 2 became True.
    lab = pl.DataFrame({"subject_id": [1, 2, 3, 4], "prediction_time": [T0, T0, T0 + h(1), T0],
                        "boolean_value": [True, False, True, False]})
    path = tmp_path / "l.parquet"

    def refused(frame: pl.DataFrame, match: str) -> str:
        frame.write_parquet(path)
        with pytest.raises(UserError, match=match) as e:
            read_labels(path)
        return str(e.value)

    # exact repeats: one row of each pair kept (make_labels' duplicate_prediction_time rule), counted on stderr
    pl.concat([lab, lab.head(2), lab.head(1)]).write_parquet(path)
    capsys.readouterr()
    assert read_labels(path).equals(lab)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("l.parquet: 2 (subject_id, prediction_time) pairs have more than one row, each with one "
                              "value (3 repeated rows dropped)") in err[0], err
    # read again (a head reads its label file more than once: the probe said it 3 times): said once per process
    assert read_labels(path).equals(lab) and capsys.readouterr().err == ""
    # a pair with both values: the first row's said which, so the label and the AUROC followed the file's row order
    msg = refused(pl.concat([lab.head(1).with_columns(~pl.col("boolean_value")), lab, lab.head(2)]),
                  r"column boolean_value: 1 \(subject_id, prediction_time\) pairs have rows with both true and false")
    assert "subject" not in msg.split("pairs")[1]
    refused(lab.with_columns(pl.col("prediction_time").cast(pl.Date)), "column prediction_time is Date, not a timestamp")
    refused(lab.with_columns(pl.col("prediction_time").dt.epoch("ms")), "column prediction_time is Int64, not a timestamp")
    refused(lab.with_columns(pl.col("subject_id").cast(pl.String)), "column subject_id is String, not an integer")
    msg = refused(lab.with_columns(pl.Series("boolean_value", [0.5, 0.0, 2.0, 1.0])), "boolean_value has 2 of 4 rows that are neither 0 nor 1")
    assert "0.5" not in msg and "2.0" not in msg
    # accepted as is: 0/1 numbers, int32 ids
    ok = lab.with_columns(pl.col("boolean_value").cast(pl.Int8), pl.col("subject_id").cast(pl.Int32))
    ok.write_parquet(path)
    assert read_labels(path).equals(lab)


def test_read_labels_reads_a_zoned_prediction_time_as_a_utc_instant(tmp_path, capsys):
    # Zoned MEDS times are read as naive UTC (meds_io.scan_shard); a zoned label time is the same
    # instant on the same clock, so 08:00 America/New_York (EST) is 13:00 naive, with one warning
    # that names the file, column and zone, never a time. (It used to be refused.)
    from ehrfm import io

    lab = pl.DataFrame({"subject_id": [1, 2, 3], "prediction_time": [T0, T0 + h(1), T0 + h(2)],
                        "boolean_value": [True, False, True]})
    path = tmp_path / "zoned.parquet"
    io._WARNED_ONCE.discard(("label zone", "America/New_York"))
    lab.with_columns(pl.col("prediction_time").dt.replace_time_zone("America/New_York")).write_parquet(path)
    got = read_labels(path)
    assert got["prediction_time"].dtype == pl.Datetime("us")
    assert (got["prediction_time"] - lab["prediction_time"]).dt.total_hours().to_list() == [5, 5, 5]
    err = capsys.readouterr().err
    assert f"label file {path}: column prediction_time has time zone America/New_York" in err
    assert err.count("warning") == 1 and "2150" not in err
    lab.with_columns(pl.col("prediction_time").dt.replace_time_zone("UTC")).write_parquet(path)
    assert read_labels(path).equals(lab)  # UTC: the same wall clock, no warning
    assert "time zone" not in capsys.readouterr().err
    lab.write_parquet(path)
    assert read_labels(path).equals(lab)  # naive times: as they are


@pytest.mark.parametrize("flag,value", [("gap_hours", -5), ("long_los_days", 0), ("readmission_days", -1), ("gap_hours", float("nan"))])
def test_label_windows_that_cannot_define_a_task_are_refused(tmp_path, flag, value):
    # a negative gap predicts before the admission; a zero-day window labels nothing: refused before any data is read
    from ehrfm.clinical.labels import make_labels

    with pytest.raises(UserError, match=f"--{flag.replace('_', '-')} must be a finite number"):
        make_labels(tmp_path / "not_read", "all", **{flag: value})
