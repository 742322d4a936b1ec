"""Look-ahead found on the real MIMIC-IV demo by a fourth clinical review (counts only, no rows).

Each test fails without its fix (checked against the file as it was before the fix).
"""

from __future__ import annotations

import json

import polars as pl

from tokenization.etl import etl

PATIENTS = "subject_id,gender,anchor_age,anchor_year,dod\n1,F,60,2150,\n"
ADMISSIONS = ("subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admission_location,discharge_location\n"
              "1,11,2150-01-01 10:00:00,2150-01-05 14:00:00,,URGENT,ER,HOME\n")


def _raw(tmp_path, tables: dict[str, str]):
    raw = tmp_path / "raw"
    for name, text in {"hosp/patients": PATIENTS, "hosp/admissions": ADMISSIONS, **tables}.items():
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / f"{name}.csv").write_text(text)
    return raw


def _times(meds, prefix: str) -> list[str]:
    ev = pl.read_parquet(str(meds / "data" / "*" / "*.parquet"))
    return sorted(ev.filter(pl.col("code").str.starts_with(prefix))["time"].dt.strftime("%m-%d %H:%M").to_list())


def test_a_medication_order_is_placed_when_it_was_entered(tmp_path):
    """pharmacy.starttime can precede the order's entry (entertime): a start set back to a verbal
    order or a dose given before the order was typed. On the real demo 1,274 of 15,306 pharmacy rows
    and 1,404 of 18,087 prescriptions (same pharmacy_id) started before they were entered (median
    0.8 h, up to 4 days), so 48 of 273 ICU-admission histories (cut at the admission) and 14 of 245
    mortality histories held an order nobody had entered yet. Both now sit at the later time."""
    pharmacy = ("subject_id,hadm_id,pharmacy_id,poe_id,starttime,stoptime,medication,entertime,verifiedtime\n"
                "1,11,101,1-1,2150-01-01 10:00:00,,Heparin,2150-01-01 13:00:00,2150-01-01 13:30:00\n"  # entered 3 h later
                "1,11,102,1-2,2150-01-02 08:00:00,,Aspirin,2150-01-02 07:30:00,2150-01-02 07:40:00\n"  # entered first
                # no medication (1,013 such rows on the real demo): no event, but its entry still places its prescription
                "1,11,103,1-4,2150-01-04 06:00:00,,,2150-01-04 09:00:00,2150-01-04 09:10:00\n"
                "1,11,103,1-4,2150-01-04 06:00:00,,,2150-01-04 09:00:00,2150-01-04 09:10:00\n"  # an exact repeat of it
                "9,91,104,9-1,2150-01-04 06:00:00,,,2150-01-04 09:00:00,2150-01-04 09:10:00\n")  # subject 9 not in patients
    rx = ("subject_id,hadm_id,pharmacy_id,poe_id,starttime,drug,route\n"
          "1,11,101,1-1,2150-01-01 10:00:00,Heparin,SC\n"
          "1,11,102,1-2,2150-01-02 08:00:00,Aspirin,PO\n"
          "1,11,,1-3,2150-01-03 09:00:00,Senna,PO\n"  # no pharmacy row: its own start
          "1,11,103,1-4,2150-01-04 06:00:00,Insulin,SC\n")
    out = tmp_path / "meds"
    etl(_raw(tmp_path, {"hosp/pharmacy": pharmacy, "hosp/prescriptions": rx}), out, workers=1, split_fractions=(1.0, 0.0, 0.0))
    assert _times(out, "PHARMACY//") == ["01-01 13:00", "01-02 08:00"]
    assert _times(out, "MEDICATION//") == ["01-01 13:00", "01-02 08:00", "01-03 09:00", "01-04 09:00"]
    ev = pl.read_parquet(str(out / "data" / "*" / "*.parquet"))
    assert not ev["code"].str.contains("\x00").any()  # the entry-only rows are gone from the output
    meta = json.loads((out / "metadata" / "ehrfm_etl.json").read_text())
    stored = {s["table"]: (s["present"], s["moved"]) for s in meta["stored_time_sources"]}
    # events written that moved (as events_written: not the medication-less rows, nor a repeat); prescriptions 101 and 103
    assert stored["hosp/pharmacy"] == (True, 1) and stored["hosp/prescriptions"] == (True, 2)
    pharmacy_account = meta["tables"]["hosp/pharmacy"]
    assert (pharmacy_account["rows_read"], pharmacy_account["events_written"]) == (5, 2)
    # each row counted once: the repeat too, and the unknown subject's (not also as unknown_subject_id)
    assert pharmacy_account["dropped"] == {"missing_medication": 3}


def test_the_demos_orders_sit_at_their_entry_time(demo_meds, mimic_demo_dir):
    """On the real demo every PHARMACY// event is at max(starttime, entertime) of a pharmacy row and
    every MEDICATION// event at max(starttime, its pharmacy row's entertime) (1,274 and 1,404 were at
    their earlier starttime before; 15 of the 1,404 by a pharmacy row without a medication, which
    makes no event of its own)."""
    def rd(name):
        return pl.read_csv(mimic_demo_dir / "hosp" / f"{name}.csv.gz", infer_schema_length=0).with_columns(
            pl.col("subject_id").cast(pl.Int64), pl.col("starttime").str.to_datetime().alias("s"))

    ph = rd("pharmacy").with_columns(pl.col("entertime").str.to_datetime().alias("e"))
    rx = rd("prescriptions").join(ph.select("pharmacy_id", "e"), on="pharmacy_id", how="left")
    ev = pl.read_parquet(str(demo_meds / "data" / "*" / "*.parquet"))

    def excess(prefix: str, raw: pl.DataFrame) -> int:
        """Events of `prefix` at a (subject, time) with more events than raw rows placed there."""
        got = ev.filter(pl.col("code").str.starts_with(prefix)).group_by("subject_id", "time").agg(pl.len().alias("n"))
        want = raw.select("subject_id", time=pl.max_horizontal("s", "e")).group_by("subject_id", "time").agg(
            pl.len().alias("m"))
        j = got.join(want, on=["subject_id", "time"], how="left").with_columns(pl.col("m").fill_null(0))
        return int((j["n"] - j["m"]).clip(lower_bound=0).sum())

    # Counted first: an assertion on the call would print the frames (patient rows) when it fails.
    early_pharmacy = excess("PHARMACY//", ph.filter(pl.col("medication").is_not_null()))
    early_prescriptions = excess("MEDICATION//", rx)
    assert (early_pharmacy, early_prescriptions) == (0, 0)
    meta = json.loads((demo_meds / "metadata" / "ehrfm_etl.json").read_text())
    moved = {s["table"]: s["moved"] for s in meta["stored_time_sources"]}
    # Events written that moved (1,274 rows, 56 of them pharmacy rows without a medication: no event).
    assert moved["hosp/pharmacy"] == 1218 and moved["hosp/prescriptions"] == 1404


def test_the_demos_infusion_amounts_sit_at_their_endtime(demo_meds, mimic_demo_dir):
    """An ICU infusion's amount (inputevents, ingredientevents) is what ran from starttime to endtime:
    at its starttime (or its storetime, stored before the end in 12,867 of 20,404 and 16,498 of 25,728
    rows) it told a history about the hours after its prediction time. Every INFUSION// and
    INGREDIENT// event of the real demo now sits at max(endtime, storetime) of one of its rows."""
    ev = pl.read_parquet(str(demo_meds / "data" / "*" / "*.parquet"))
    for table, prefix in (("inputevents", "INFUSION//"), ("ingredientevents", "INGREDIENT//")):
        raw = pl.read_csv(mimic_demo_dir / "icu" / f"{table}.csv.gz", infer_schema_length=0).filter(
            pl.col("amount").is_not_null() & pl.col("storetime").is_not_null()).select(
            pl.col("subject_id").cast(pl.Int64),
            time=pl.max_horizontal(pl.col("endtime").str.to_datetime(), pl.col("storetime").str.to_datetime()))
        got = ev.filter(pl.col("code").str.starts_with(prefix)).group_by("subject_id", "time").agg(pl.len().alias("n"))
        want = raw.group_by("subject_id", "time").agg(pl.len().alias("m"))
        j = got.join(want, on=["subject_id", "time"], how="left").with_columns(pl.col("m").fill_null(0))
        early = int((j["n"] - j["m"]).clip(lower_bound=0).sum())  # counted first: a failing assert prints no rows
        assert (table, got["n"].sum(), early) == (table, raw.height, 0)


def test_a_procedure_code_that_states_its_duration_waits_for_the_discharge(tmp_path):
    """ICD-10-PCS 5A1955Z "ventilation > 96 consecutive hours" (and 5A1935Z/5A1945Z, ICD-9 96.70-96.72)
    is dated by the ventilation's start, but it states how long it will last: at the end of its start
    day it told 24-hour histories the stay's future. It now sits at the stay's discharge, as
    diagnoses do; a procedure without a duration keeps the date-only rule (end of its day)."""
    procedures = ("subject_id,hadm_id,seq_num,chartdate,icd_code,icd_version\n"
                  "1,11,1,2150-01-01,5A1955Z,10\n"   # ventilated > 96 h from day 1
                  "1,11,2,2150-01-01,0BH17EZ,10\n"   # intubation on day 1: a fact of that day
                  "1,11,3,2150-01-02,9672,9\n")      # ICD-9 96.72: >= 96 h
    admissions = ("subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admission_location,discharge_location\n"
                  "1,11,2150-01-01 10:00:00,2150-01-09 14:00:00,,URGENT,ER,HOME\n")
    raw = _raw(tmp_path, {"hosp/procedures_icd": procedures})
    (raw / "hosp/admissions.csv").write_text(admissions)
    out = tmp_path / "meds"
    etl(raw, out, workers=1, split_fractions=(1.0, 0.0, 0.0))
    ev = pl.read_parquet(str(out / "data" / "*" / "*.parquet"))
    at = dict(ev.filter(pl.col("code").str.starts_with("PROCEDURE//ICD//"))
              .select("code", pl.col("time").dt.strftime("%m-%d %H:%M")).iter_rows())
    assert at == {"PROCEDURE//ICD//10//5A1955Z": "01-09 14:00", "PROCEDURE//ICD//10//0BH17EZ": "01-01 23:59",
                  "PROCEDURE//ICD//9//9672": "01-09 14:00"}
    tables = json.loads((out / "metadata" / "etl_config.json").read_text())["tables"]
    assert tables["hosp/procedures_icd"]["duration_coded_at_discharge"] == 2


def test_no_24h_history_of_the_demo_holds_its_stays_ventilation_duration(demo_meds):
    """On the real demo 22 of 245 long-stay (and mortality) histories at admission + 24 h held a
    ventilation code of their own stay that states its duration (15 of them long stays); now none.
    The 42 such codes sit at their stay's discharge."""
    from ehrfm.clinical.labels import make_labels

    duration_coded = r"^(?:10//5A[01]9[345]5|9//967[0-2]$)"  # tokenization.etl.DURATION_CODED_PROCEDURES

    labels, _ = make_labels(demo_meds, "long_los")
    ev = pl.read_parquet(str(demo_meds / "data" / "*" / "*.parquet"))
    adm = ev.filter(pl.col("code").str.starts_with("HOSPITAL_ADMISSION//")).select(
        "subject_id", "hadm_id", prediction_time=pl.col("time") + pl.duration(hours=24))
    dur = ev.filter(pl.col("code").str.strip_prefix("PROCEDURE//ICD//").str.contains(duration_coded)
                    & pl.col("code").str.starts_with("PROCEDURE//ICD//"))
    own = (labels.join(adm, on=["subject_id", "prediction_time"])
           .join(dur.select("subject_id", "hadm_id", "time"), on=["subject_id", "hadm_id"])
           .filter(pl.col("time") <= pl.col("prediction_time")))
    n_histories = own.select(pl.struct("subject_id", "prediction_time").n_unique()).item() if own.height else 0
    dis = ev.filter(pl.col("code").str.starts_with("HOSPITAL_DISCHARGE//")).select("hadm_id", dis=pl.col("time"))
    at_discharge = int(dur.join(dis, on="hadm_id").select((pl.col("time") == pl.col("dis")).sum()).item())
    assert (labels.height, n_histories, dur.height, at_discharge) == (242, 0, 42, 42)  # 245 before transfers were excluded, 243 before later_stay_in_history


def test_the_audit_sees_a_duration_coded_procedure_before_its_stay_ended(tmp_path):
    """MEDS made by an ETL that keeps procedures at their chartdate (this one before the fix, or
    MIMIC_IV_MEDS) puts "ventilation > 96 h" on its start day: on the real demo 22 of 245 mortality
    and long-stay histories held one of their own stay. The audit counts it under (b) while the stay
    is open, and not once the stay has ended (readmission, predicted at the discharge)."""
    from test_audit import T0, d, h, stay, write_label_file, write_meds

    from ehrfm.clinical.audit import audit

    vent = "PROCEDURE//ICD//10//5A1955Z"
    events = (stay(1, 11, T0, T0 + d(9), [(1, T0 + h(13.9), vent, 11)])  # 23:54 of its start day
              + stay(2, 21, T0, T0 + d(3), [(2, T0 + d(3), vent, 21)]))  # at its stay's discharge
    meds = write_meds(tmp_path / "meds", events, {"date_only_codes": []})
    lab = tmp_path / "labels"
    lab.mkdir()
    write_label_file(lab / "long_los.parquet", "long_los", [(1, T0 + h(24), True), (2, T0 + h(24), False)])
    write_label_file(lab / "readmission_30d.parquet", "readmission_30d", [(1, T0 + d(9), False), (2, T0 + d(3), False)])
    res = audit(meds, lab)
    assert {t: (a.n_labels, a.date_only_same_day) for t, a in res.tasks.items()} == {
        "long_los": (2, 1), "readmission_30d": (2, 0)}
    assert not res.clean
