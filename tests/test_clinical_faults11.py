"""An eleventh clinical review (a helper's edits of the MIMIC-IV demo): deaths at a live discharge.

Each test fails without its fix: a stay's own deathtime an hour after a HOME discharge (the ETL
moves such a discharge to the death) or at the very minute of it was labelled an in-hospital
death, silently, while a death a day before the same discharge was excluded as contradicted.
"""

from __future__ import annotations

from datetime import datetime

from ehrfm.clinical.labels import make_labels
from tokenization.etl import etl

PATIENTS = "subject_id,gender,anchor_age,anchor_year,dod\n1,F,60,2150,2150-01-05\n2,M,70,2150,2150-02-03\n" \
           "3,F,65,2150,2150-03-04\n4,M,55,2150,\n5,F,75,2150,2150-05-02\n"
ADMISSIONS = ("subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admission_location,discharge_location\n"
              "1,11,2150-01-01 10:00:00,2150-01-05 14:00:00,2150-01-05 15:00:00,URGENT,ER,HOME\n"   # death 1 h after
              "2,21,2150-02-01 09:00:00,2150-02-03 12:00:00,2150-02-03 12:00:00,URGENT,ER,HOME\n"   # death at it
              "3,31,2150-03-01 09:00:00,2150-03-04 10:00:00,2150-03-04 10:30:00,URGENT,ER,DIED\n"   # an in-hospital death
              "4,41,2150-04-01 09:00:00,2150-04-04 10:00:00,,URGENT,ER,HOME\n"
              "5,51,2150-05-01 09:00:00,2150-05-04 10:00:00,,URGENT,ER,HOME\n")  # dod a day before a HOME discharge


def test_a_stays_own_death_at_or_after_its_live_discharge_is_contradicted_not_an_in_hospital_death(tmp_path, capsys):
    raw = tmp_path / "raw"
    (raw / "hosp").mkdir(parents=True)
    (raw / "hosp/patients.csv").write_text(PATIENTS)
    (raw / "hosp/admissions.csv").write_text(ADMISSIONS)
    etl(raw, tmp_path / "meds", split_fractions=(1.0, 0.0, 0.0))
    capsys.readouterr()
    labels, info = make_labels(tmp_path / "meds", "all")
    assert "3 subject(s)" in capsys.readouterr().err  # 1 and 2 as 5 (the day-before death) always was
    mortality = labels["in_hospital_mortality"]
    assert mortality.select("subject_id", "boolean_value").rows() == [(3, True), (4, False)]
    assert mortality["prediction_time"].to_list() == [datetime(2150, 3, 2, 9), datetime(2150, 4, 2, 9)]
    for task, frame in labels.items():
        assert not {1, 2, 5} & set(frame["subject_id"].to_list()), task
        assert info[task]["excluded"]["death_contradicted"] == 3, task


def test_the_audit_opens_a_readmission_window_predicted_at_no_discharge_at_the_discharge_before(demo_meds, tmp_path):
    """The real demo's readmission labels, each predicted 30 days after its discharge (an ACES file
    predicting at the window's end): every positive's history holds its readmission. (a) counted 18
    of the 49: once the readmission stay was discharged too, the last discharge before the
    prediction was the readmission's own, and its admission preceded it."""
    from datetime import timedelta

    import polars as pl

    from ehrfm.clinical.audit import audit, format_audit
    from ehrfm.clinical.labels import write_labels

    labels, _ = make_labels(demo_meds, "readmission_30d")
    at_discharge = audit(demo_meds, _written(labels, tmp_path / "at", write_labels), task="readmission_30d").tasks["readmission_30d"]
    assert (at_discharge.outcome_code_in_history, at_discharge.not_at_discharge) == (0, 0)  # as `ehrfm labels` made them
    late = labels.with_columns(pl.col("prediction_time") + timedelta(days=30))
    res = audit(demo_meds, _written(late, tmp_path / "late", write_labels), task="readmission_30d")
    t = res.tasks["readmission_30d"]
    positives = int(labels["boolean_value"].sum())
    assert positives == 49 and t.not_at_discharge == labels.height
    assert t.outcome_code_in_history >= positives and not res.clean
    assert any(f"{labels.height} labels predicted at no discharge" in line for line in format_audit(res))


def _written(labels, path, write_labels):
    path.mkdir()
    write_labels(labels, path / "readmission_30d.parquet")
    return path / "readmission_30d.parquet"


def test_an_icu_stay_filed_under_a_later_stays_id_is_paired_by_time(tmp_path, capsys):
    """An icustays row whose hadm_id names the subject's stay admitted ~110 days later, its times inside
    the first stay: taken on trust, the first stay's ICU label went from True to False and the later stay
    was excluded as boarded in the ICU, silently. Now the id is taken as wrong (said) and the row paired
    by time; an ICU stay boarded 30 h before its own stay, inside no other, keeps its id."""
    from ehrfm.clinical.audit import audit
    from ehrfm.clinical.labels import write_label_dir

    raw = tmp_path / "raw"
    (raw / "hosp").mkdir(parents=True)
    (raw / "icu").mkdir()
    (raw / "hosp/patients.csv").write_text("subject_id,gender,anchor_age,anchor_year,dod\n1,F,60,2150,\n2,M,70,2150,\n")
    (raw / "hosp/admissions.csv").write_text(
        "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admission_location,discharge_location\n"
        "1,11,2150-01-01 10:00:00,2150-01-10 14:00:00,,URGENT,ER,HOME\n"
        "1,12,2150-04-20 09:00:00,2150-04-25 12:00:00,,URGENT,ER,HOME\n"
        "2,21,2150-06-02 16:00:00,2150-06-09 12:00:00,,URGENT,ER,HOME\n")
    (raw / "icu/icustays.csv").write_text(
        "subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime\n"
        "1,12,901,MICU,MICU,2150-01-03 08:00:00,2150-01-05 08:00:00\n"    # inside stay 11, filed under 12
        "2,21,902,MICU,MICU,2150-06-01 10:00:00,2150-06-03 10:00:00\n")   # boarded 30 h before its own stay
    etl(raw, tmp_path / "meds", split_fractions=(1.0, 0.0, 0.0))
    capsys.readouterr()
    labels, info = make_labels(tmp_path / "meds", "all")
    said = [line for line in capsys.readouterr().err.splitlines() if "ICU admission row" in line]
    assert len(said) == 1 and "1 ICU admission row(s)" in said[0] and "paired with stays by time" in said[0], said
    icu = labels["icu_admission"]
    assert icu.select("subject_id", "prediction_time", "boolean_value").rows() == [
        (1, datetime(2150, 1, 1, 10), True), (1, datetime(2150, 4, 20, 9), False)]
    assert info["icu_admission"]["excluded"]["in_icu_at_prediction_time"] == 1  # subject 2, boarded: kept its id
    write_label_dir(labels, info, tmp_path / "labels")
    assert audit(tmp_path / "meds", tmp_path / "labels").tasks["icu_admission"].outcome_code_in_history == 0
