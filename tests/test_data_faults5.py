"""Faults of real-world MIMIC-IV exports, one test per kind (continued from test_data_faults4.py).

Small hand-made raw tables, invented values; each test fails without its fix.
"""

from __future__ import annotations

import json

import polars as pl
import pytest

from tokenization.etl import etl

pytestmark = pytest.mark.usefixtures("quiet")

PATIENTS = "subject_id,gender,anchor_age,anchor_year,dod\n1,F,60,2150,\n"
ADMISSIONS = ("subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admission_location,discharge_location\n"
              "1,11,2150-01-01 10:00:00,2150-01-05 14:00:00,,URGENT,ER,HOME\n")


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.setenv("EHRFM_QUIET", "1")


def _raw(tmp_path, tables: dict[str, str]):
    """tmp_path/raw holding PATIENTS, ADMISSIONS and `tables` ({"hosp/labevents": csv text}) as CSVs."""
    raw = tmp_path / "raw"
    for name, text in {"hosp/patients": PATIENTS, "hosp/admissions": ADMISSIONS, **tables}.items():
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / f"{name}.csv").write_text(text)
    return raw


def _etl(tmp_path, tables: dict[str, str]):
    raw = _raw(tmp_path, tables)
    meds = tmp_path / "meds"
    etl(raw, meds, split_fractions=(1.0, 0.0, 0.0))
    events = pl.concat([pl.read_parquet(p) for p in sorted((meds / "data").rglob("*.parquet"))])
    return events, json.loads((meds / "metadata/etl_config.json").read_text())["tables"]


def _n(events, code):
    return events.filter(pl.col("code") == code).height


def test_distinct_source_rows_that_give_one_event_are_not_dropped_as_duplicates(tmp_path):
    """Rows alike in every column read but with their own row id are distinct records, not duplicates.

    The real demo: one drug ordered PR and PO at one time (two pharmacy_id) lost 2,602 prescriptions;
    ingredients of distinct orders (orderid), lab results (labevent_id), culture rows
    (microevent_id) and two equal readings of one day (omr seq_num) were lost the same way.
    Only an exact repeat of a source row is still dropped and counted `duplicate`.
    """
    rx = ("subject_id,hadm_id,pharmacy_id,poe_id,starttime,drug,route\n"
          "1,11,101,1-1,2150-01-02 08:00:00,Acetaminophen,PO\n"
          "1,11,102,1-2,2150-01-02 08:00:00,Acetaminophen,PR\n"    # a second order: kept
          "1,11,102,1-2,2150-01-02 08:00:00,Acetaminophen,PR\n")   # an exact repeat: dropped
    labs = ("labevent_id,subject_id,hadm_id,itemid,charttime,storetime,value,valuenum,valueuom\n"
            "1,1,11,50912,2150-01-02 06:00:00,2150-01-02 07:00:00,1.0,1.0,mg/dL\n"
            "2,1,11,50912,2150-01-02 06:00:00,2150-01-02 07:00:00,1.0,1.0,mg/dL\n"   # another result row
            # stored together with the rows above but drawn earlier: apart by their chart time
            "3,1,11,50912,2150-01-02 05:00:00,2150-01-02 07:00:00,1.0,1.0,mg/dL\n"
            "3,1,11,50912,2150-01-02 05:00:00,2150-01-02 07:00:00,1.0,1.0,mg/dL\n")   # an exact repeat
    ingr = ("subject_id,hadm_id,stay_id,starttime,endtime,storetime,itemid,amount,amountuom,orderid\n"
            "1,11,31,2150-01-02 09:00:00,2150-01-02 09:30:00,2150-01-02 09:10:00,220490,100,ml,7\n"
            "1,11,31,2150-01-02 09:00:00,2150-01-02 09:30:00,2150-01-02 09:10:00,220490,100,ml,8\n")   # another order
    omr = ("subject_id,chartdate,seq_num,result_name,result_value\n"
           "1,2150-01-03,1,Blood Pressure,120/80\n"
           "1,2150-01-03,2,Blood Pressure,120/80\n")   # a second reading of the day
    events, tables = _etl(tmp_path, {"hosp/prescriptions": rx, "hosp/labevents": labs, "icu/ingredientevents": ingr,
                                     "hosp/omr": omr})
    assert _n(events, "MEDICATION//Acetaminophen") == 2
    assert tables["hosp/prescriptions"]["dropped"] == {"duplicate": 1}
    assert _n(events, "LAB//50912//mg/dL") == 3
    assert tables["hosp/labevents"]["dropped"] == {"duplicate": 1}
    assert _n(events, "INGREDIENT//220490//ml") == 2 and "duplicate" not in tables["icu/ingredientevents"]["dropped"]
    assert _n(events, "OMR//Blood Pressure//SYSTOLIC") == _n(events, "OMR//Blood Pressure//DIASTOLIC") == 2
    assert "duplicate" not in tables["hosp/omr"]["dropped"]


def test_without_the_row_id_column_rows_alike_in_the_columns_read_are_one_event(tmp_path):
    """A trimmed extract without the row id still converts, as before the id was read."""
    rx = ("subject_id,hadm_id,starttime,drug\n"
          "1,11,2150-01-02 08:00:00,Acetaminophen\n"
          "1,11,2150-01-02 08:00:00,Acetaminophen\n")
    labs = ("subject_id,hadm_id,itemid,charttime,storetime,value,valuenum,valueuom\n"
            "1,11,50912,2150-01-02 06:00:00,2150-01-02 07:00:00,1.0,1.0,mg/dL\n"
            "1,11,50912,2150-01-02 05:00:00,2150-01-02 07:00:00,1.0,1.0,mg/dL\n"   # apart by chart time
            "1,11,50912,2150-01-02 05:00:00,2150-01-02 07:00:00,1.0,1.0,mg/dL\n")
    events, tables = _etl(tmp_path, {"hosp/prescriptions": rx, "hosp/labevents": labs})
    assert _n(events, "MEDICATION//Acetaminophen") == 1 and tables["hosp/prescriptions"]["dropped"] == {"duplicate": 1}
    assert _n(events, "LAB//50912//mg/dL") == 2 and tables["hosp/labevents"]["dropped"] == {"duplicate": 1}


def test_only_a_blood_pressures_pair_is_split_and_each_number_must_fit_float32(tmp_path):
    """The OMR split took any "x/y" (an eye chart's 20/40 became two made-up SYSTOLIC/DIASTOLIC codes) and wrote a
    41-digit systolic as +inf (float32). Now only a blood-pressure name is split, and a number float32 cannot hold is
    null, as every other numeric value."""
    omr = ("subject_id,chartdate,seq_num,result_name,result_value\n"
           "1,2150-01-03,1,Blood Pressure Sitting,118/76\n"
           "1,2150-01-03,1,Eye Chart,20/40\n"
           "1,2150-01-04,1,Blood Pressure," + "9" * 41 + "/80\n")
    events, tables = _etl(tmp_path, {"hosp/omr": omr})
    assert _n(events, "OMR//Blood Pressure Sitting//SYSTOLIC") == 1 and _n(events, "OMR//Eye Chart") == 1
    assert not events.filter(pl.col("code").str.starts_with("OMR//Eye Chart//")).height
    eye = events.filter(pl.col("code") == "OMR//Eye Chart")
    assert eye["numeric_value"].null_count() == 1 and eye["text_value"].to_list() == ["20/40"]
    big = events.filter(pl.col("code").str.starts_with("OMR//Blood Pressure//")).sort("code")
    assert big["code"].to_list() == ["OMR//Blood Pressure//DIASTOLIC", "OMR//Blood Pressure//SYSTOLIC"]
    assert big["numeric_value"].to_list() == [80.0, None]
    assert tables["hosp/omr"]["events_written"] == 5


@pytest.mark.parametrize("workers", [1, 2])
def test_billing_codes_go_to_the_discharge_when_asked(tmp_path, workers):
    """`--billing-codes-at discharge`: a stay's ICD procedure and HCPCS codes at its discharge, as its diagnoses (a study
    of codes as the EHR holds them at prediction time); by default at the end of the procedure's day. With 1 and 2
    worker processes (the staging workers get the admissions)."""
    from datetime import datetime

    tables = {"hosp/procedures_icd": "subject_id,hadm_id,seq_num,chartdate,icd_code,icd_version\n1,11,1,2150-01-01,9604,9\n",
              "hosp/hcpcsevents": "subject_id,hadm_id,chartdate,hcpcs_cd,seq_num,short_description\n1,11,2150-01-02,99223,1,x\n"}
    times = {}
    for where in ("procedure_day", "discharge"):
        raw = _raw(tmp_path / where, tables)
        meds = tmp_path / where / "meds"
        etl(raw, meds, split_fractions=(1.0, 0.0, 0.0), billing_codes_at=where, workers=workers)
        events = pl.concat([pl.read_parquet(p) for p in sorted((meds / "data").rglob("*.parquet"))])
        times[where] = {c: events.filter(pl.col("code") == c)["time"].to_list()
                        for c in ("PROCEDURE//ICD//9//9604", "HCPCS//99223")}
        rules = {s["table"]: s["rule"] for s in json.loads((meds / "metadata/ehrfm_etl.json").read_text())["date_only_sources"]}
        assert rules["hosp/procedures_icd"] == rules["hosp/hcpcsevents"] == (
            "discharge" if where == "discharge" else "end_of_day_or_discharge")
    assert times["procedure_day"] == {"PROCEDURE//ICD//9//9604": [datetime(2150, 1, 1, 23, 59, 59)],
                                      "HCPCS//99223": [datetime(2150, 1, 2, 23, 59, 59)]}
    assert times["discharge"] == {"PROCEDURE//ICD//9//9604": [datetime(2150, 1, 5, 14)], "HCPCS//99223": [datetime(2150, 1, 5, 14)]}
    with pytest.raises(Exception, match="--billing-codes-at must be one of procedure_day, discharge"):
        etl(_raw(tmp_path / "bad", tables), tmp_path / "bad" / "meds", billing_codes_at="admission")
