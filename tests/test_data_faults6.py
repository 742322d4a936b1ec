"""Faults of real-world MIMIC-IV exports, one test per kind (continued from test_data_faults5.py).

Small hand-made raw tables, invented values; each test fails without its fix.
"""

from __future__ import annotations

import polars as pl
import pytest
from test_data_faults5 import ADMISSIONS, PATIENTS, _etl

from ehrfm.errors import UserError
from tokenization.etl import etl

pytestmark = pytest.mark.usefixtures("quiet")


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.setenv("EHRFM_QUIET", "1")


def test_integer_code_columns_written_as_decimals_make_the_same_codes(tmp_path):
    """An export that wrote itemid as 50912.0 and icd_version as 9.0 (pandas does so for an integer
    column holding a null) made LAB//50912.0//mg/dL and DIAGNOSIS//ICD//9.0//4019: new codes, without
    their dictionary's description, outside every ICD vocabulary, and silently so. Text code columns
    (icd_code) keep every character."""
    labs = ("labevent_id,subject_id,hadm_id,itemid,charttime,storetime,value,valuenum,valueuom\n"
            "1,1,11,50912,2150-01-02 06:00:00,2150-01-02 07:00:00,1.0,1.0,mg/dL\n"
            "2,1,11,50912.0,2150-01-03 06:00:00,2150-01-03 07:00:00,1.1,1.1,mg/dL\n")
    dx = ("subject_id,hadm_id,seq_num,icd_code,icd_version\n"
          "1,11,1,4019,9.0\n"
          "1,11,2,0389,9\n")
    d_labitems = "itemid,label,fluid,category\n50912.0,Creatinine,Blood,Chemistry\n"
    d_icd = "icd_code,icd_version,long_title\n4019,9.0,Hypertension NOS\n"
    events, _ = _etl(tmp_path, {"hosp/labevents": labs, "hosp/diagnoses_icd": dx, "hosp/d_labitems": d_labitems,
                                "hosp/d_icd_diagnoses": d_icd})
    codes = events.group_by("code").len()
    assert dict(codes.filter(pl.col("code").str.contains("//")).filter(
        pl.col("code").str.starts_with("LAB") | pl.col("code").str.starts_with("DIAG")).iter_rows()) == {
        "LAB//50912//mg/dL": 2, "DIAGNOSIS//ICD//9//4019": 1, "DIAGNOSIS//ICD//9//0389": 1}
    meta = pl.read_parquet(tmp_path / "meds" / "metadata" / "codes.parquet")
    described = dict(meta.select("code", "description").iter_rows())
    assert described["LAB//50912//mg/dL"] == "Creatinine (Blood) (mg/dL)"
    assert described["DIAGNOSIS//ICD//9//4019"] == "Hypertension NOS"
    parents = dict(meta.select("code", "parent_codes").iter_rows())
    assert parents["DIAGNOSIS//ICD//9//4019"] == ["ICD9CM/4019"]


def test_numbers_with_spaces_or_a_plus_sign_keep_their_value(tmp_path):
    """A fixed-width export pads numbers (" 7.5 "), some write a sign (+7.5): polars' cast refuses
    both, so nearly every lab value of such a file became an event without a number (counted as
    unparseable, but lost). Integer columns take the same text."""
    labs = ("labevent_id,subject_id,hadm_id,itemid,charttime,storetime,value,valuenum,valueuom\n"
            "1,1,11,50912,2150-01-02 06:00:00,2150-01-02 07:00:00,7.5, 7.5 ,mg/dL\n"
            "2,1,+11,50912,2150-01-03 06:00:00,2150-01-03 07:00:00,7.5,+7.5,mg/dL\n"
            "3,1,11,50912,2150-01-04 06:00:00,2150-01-04 07:00:00,high,7.5 mg,mg/dL\n")  # still not a number
    events, tables = _etl(tmp_path, {"hosp/labevents": labs})
    lab = events.filter(pl.col("code") == "LAB//50912//mg/dL").sort("time")
    assert lab["numeric_value"].to_list() == [7.5, 7.5, None]
    assert lab["hadm_id"].to_list() == [11, 11, 11]
    assert tables["hosp/labevents"]["unparseable_numbers_set_null"] == {"valuenum": 1}


@pytest.mark.parametrize("year", ["300000", "-300000", "0", "50"])  # 50: a birth year before 1 (age 50)
def test_an_anchor_year_no_date_can_hold_is_one_clear_error(tmp_path, year):
    """anchor_year 300000 made a polars traceback quoting the patient's birth year; 0 dropped every
    event of the subject as outside its lifetime; 50 (a birth year before 1) failed later the same way.
    A year must leave room for the oldest plausible age (MAX_ANCHOR_AGE, 130) after year 1. Now one line names the file, the column and the
    count, quotes no value, and nothing is written."""
    raw = tmp_path / "raw"
    (raw / "hosp").mkdir(parents=True)
    (raw / "hosp" / "patients.csv").write_text(PATIENTS + f"2,M,50,{year},\n")
    (raw / "hosp" / "admissions.csv").write_text(ADMISSIONS)
    with pytest.raises(UserError) as e:
        etl(raw, tmp_path / "meds", split_fractions=(1.0, 0.0, 0.0))
    assert str(e.value) == f"{raw / 'hosp' / 'patients.csv'}: column 'anchor_year' has 1 value outside 131-9999"
    # the value is not quoted (the file's path is left out: pytest's tmp dirs carry digits)
    assert year not in str(e.value).removeprefix(str(raw / "hosp" / "patients.csv")).replace("9999", "").replace("131", "")
    assert not (tmp_path / "meds").exists()
