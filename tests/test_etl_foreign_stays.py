"""A hadm_id that names another subject's admission (an export's join gone wrong) never pairs an event with that stay."""

from __future__ import annotations

import json

import polars as pl
import pytest
from test_etl import ADM_COLS, _all_events, _raw, _times

from tokenization.etl import etl

ADMISSIONS = ADM_COLS + ("1,11,2150-01-01 10:00:00,2150-01-05 14:00:00,,URGENT,ER,HOME\n"
                         "2,21,2150-02-01 09:00:00,2150-02-03 12:00:00,,URGENT,ER,HOME\n")


@pytest.mark.parametrize("workers", [1, 2])  # with 2, staging workers get the admissions only for tables that need them
def test_another_subjects_hadm_id_is_dropped_from_stay_timed_codes_and_cleared_elsewhere(tmp_path, workers):
    dx = ("subject_id,hadm_id,seq_num,icd_code,icd_version\n1,11,1,I10,10\n"
          "1,21,1,E119,10\n")  # subject 2's stay: would be timed at its discharge, 2150-02-03 12:00
    procs = ("subject_id,hadm_id,seq_num,chartdate,icd_code,icd_version\n"
             "1,21,1,2150-02-03,3995,9\n")  # a date on the day stay 21 ends: would move to its 12:00 discharge
    labs = ("subject_id,hadm_id,itemid,charttime,value,valuenum,valueuom\n"
            "1,11,50912,2150-01-02 08:00:00,1.0,1.0,mg/dL\n"
            "1,21,50971,2150-01-02 08:00:00,4.0,4.0,mEq/L\n")  # its own time, another subject's stay id
    icu = ("subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime\n"
           "1,21,301,MICU,MICU,2150-01-02 12:00:00,2150-01-03 12:00:00\n")  # 2 events (in, out) under subject 2's stay
    raw = _raw(tmp_path, {"hosp/admissions": ADMISSIONS, "hosp/diagnoses_icd": dx, "hosp/procedures_icd": procs,
                          "hosp/labevents": labs, "icu/icustays": icu})
    etl(raw, tmp_path / "meds", split_fractions=(1.0, 0.0, 0.0), workers=workers)
    df = _all_events(tmp_path / "meds")
    assert _times(df, 1, "DIAGNOSIS//ICD//") == ["2150-01-05 14:00:00"]  # I10 at its own stay's discharge; E119 dropped
    assert _times(df, 1, "PROCEDURE//ICD//") == ["2150-02-03 23:59:59"]  # at its day's end, not subject 2's discharge
    lab = df.filter((pl.col("subject_id") == 1) & pl.col("code").str.starts_with("LAB//")).sort("code")
    assert lab["code"].to_list() == ["LAB//50912//mg/dL", "LAB//50971//mEq/L"]
    assert lab["hadm_id"].to_list() == [11, None]  # kept at its time, its stay id cleared
    assert df.filter(pl.col("subject_id") == 1)["hadm_id"].drop_nulls().unique().to_list() == [11]
    tables = json.loads((tmp_path / "meds/metadata/etl_config.json").read_text())["tables"]
    assert tables["hosp/diagnoses_icd"]["dropped"] == {"hadm_id_of_another_subject": 1}
    assert tables["hosp/labevents"]["stay_ids_of_another_subject_set_null"] == {"hadm_id": 1}
    assert tables["hosp/procedures_icd"]["stay_ids_of_another_subject_set_null"] == {"hadm_id": 1}
    assert tables["icu/icustays"]["stay_ids_of_another_subject_set_null"] == {"hadm_id": 2}  # events written, not rows
    icu_rows = df.filter(pl.col("code").str.starts_with("ICU_"))
    assert icu_rows.height == 2 and icu_rows["hadm_id"].null_count() == 2
    assert "stay_ids_of_another_subject_set_null" not in tables["hosp/admissions"]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_hadm_id_of_no_admission_is_cleared_and_a_stay_without_discharge_is_named(tmp_path, workers):
    """A lab's hadm_id that admissions does not hold was written dangling and counted nowhere; it is set null and
    counted (`unknown_stay_ids_set_null`). Diagnoses of a stay whose dischtime is missing were dropped as
    `unknown_hadm_id` although admissions holds the stay: `stay_without_dischtime` now."""
    admissions = ADMISSIONS + "2,22,2150-03-01 09:00:00,,,URGENT,ER,HOME\n"  # stay 22: no dischtime
    dx = ("subject_id,hadm_id,seq_num,icd_code,icd_version\n1,11,1,I10,10\n"
          "2,22,1,E119,10\n2,22,2,I10,10\n"  # of the stay without discharge
          "1,99,1,N179,10\n")                # of no stay at all
    labs = ("subject_id,hadm_id,itemid,charttime,value,valuenum,valueuom\n"
            "1,11,50912,2150-01-02 08:00:00,1.0,1.0,mg/dL\n"
            "1,99,50971,2150-01-02 09:00:00,4.0,4.0,mEq/L\n"   # no such admission
            "1,98,50971,2150-01-02 10:00:00,4.1,4.1,mEq/L\n")  # nor this one
    raw = _raw(tmp_path, {"hosp/admissions": admissions, "hosp/diagnoses_icd": dx, "hosp/labevents": labs})
    etl(raw, tmp_path / "meds", split_fractions=(1.0, 0.0, 0.0), workers=workers)
    df = _all_events(tmp_path / "meds")
    lab = df.filter(pl.col("code").str.starts_with("LAB//")).sort("time")
    assert lab["hadm_id"].to_list() == [11, None, None]  # kept at their own times, the dangling ids cleared
    assert set(df["hadm_id"].drop_nulls().unique().to_list()) <= {11, 21, 22}
    tables = json.loads((tmp_path / "meds/metadata/etl_config.json").read_text())["tables"]
    assert tables["hosp/labevents"]["unknown_stay_ids_set_null"] == {"hadm_id": 2}
    assert tables["hosp/diagnoses_icd"]["dropped"] == {"stay_without_dischtime": 2, "unknown_hadm_id": 1}
    assert "unknown_stay_ids_set_null" not in tables["hosp/diagnoses_icd"]
