"""Issue 12: every event table of MIMIC-IV 2.2/3.x and MIMIC-IV-ED, --tables, 3.1-shaped headers.

Small hand-made raw tables (invented values) in MIMIC-IV's layout, each converted by the real ETL.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from ehrfm.errors import UserError
from tokenization.etl import etl, select_tables

PATIENTS = "subject_id,gender,anchor_age,anchor_year,dod\n1,F,60,2150,\n2,M,70,2150,\n"
ADMISSIONS = ("subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admission_location,discharge_location\n"
              "1,11,2150-01-01 10:00:00,2150-01-05 14:00:00,,URGENT,ER,HOME\n"
              "2,21,2150-02-01 09:00:00,2150-02-03 12:00:00,,URGENT,ER,HOME\n")
NEW_TABLES = {
    # emar: every charted action is an event; emar_detail's dose rows take their emar row's time.
    "hosp/emar": ("subject_id,hadm_id,emar_id,emar_seq,poe_id,charttime,medication,event_txt\n"
                  "1,11,1-5,5,1-9,2150-01-02 08:00:00,Heparin,Administered\n"
                  "1,11,1-6,6,1-9,2150-01-02 20:00:00,Heparin,Not Given\n"
                  "1,11,1-7,7,1-9,2150-01-03 08:00:00,,Administered\n"),   # no medication: dropped
    "hosp/emar_detail": ("subject_id,emar_id,emar_seq,parent_field_ordinal,dose_given,dose_given_unit,product_description\n"
                         "1,1-5,5,,,,\n"                                  # the administration's summary row
                         "1,1-5,5,1.1,5000,UNIT,Heparin 5000 Units\n"
                         "1,1-5,5,1.2,5000,UNIT,Heparin 5000 Units\n"     # a second product line: kept
                         "1,1-6,6,1.1,,UNIT,Heparin 5000 Units\n"          # no dose given
                         "1,1-7,7,1.1,2,mg,Other\n"),                     # its emar row was dropped
    "hosp/pharmacy": ("subject_id,hadm_id,pharmacy_id,starttime,medication\n"
                      "1,11,101,2150-01-02 07:00:00,Heparin\n1,11,102,2150-01-02 07:00:00,Heparin\n"  # two orders
                      "2,21,201,2150-02-02,Furosemide\n"),  # a date without a time: end of its day
    "hosp/poe": ("poe_id,poe_seq,subject_id,hadm_id,ordertime,order_type,order_subtype\n"
                 "1-1,1,1,11,2150-01-01 11:00:00,Lab,\n1-2,2,1,11,2150-01-01 11:00:00,Lab,\n"
                 "1-3,3,1,11,2150-01-01 11:05:00,ADT orders,Discharge\n"),
    # chartdate written as a timestamp, as in MIMIC-IV's files; charttime empty on the second row.
    "hosp/microbiologyevents": ("subject_id,hadm_id,chartdate,charttime,test_name,org_name,ab_name,dilution_value,"
                                "interpretation\n"
                                "1,11,2150-01-02 00:00:00,2150-01-02 09:30:00,BLOOD CULTURE,E. COLI,CEFTRIAXONE,1,S\n"
                                "1,11,2150-01-02 00:00:00,2150-01-02 09:30:00,BLOOD CULTURE,E. COLI,,,\n"
                                "2,21,2150-02-03 00:00:00,,URINE CULTURE,,,,\n"
                                "1,11,2150-01-02 00:00:00,2150-01-02 00:00:00,SPUTUM CULTURE,,,,\n"),
    "hosp/hcpcsevents": ("subject_id,hadm_id,chartdate,hcpcs_cd,seq_num,short_description\n"
                         "1,11,2150-01-03,99218,1,Hospital observation\n"),
    "hosp/services": "subject_id,hadm_id,transfertime,prev_service,curr_service\n1,11,2150-01-01 10:05:00,,MED\n",
    "icu/datetimeevents": ("subject_id,hadm_id,stay_id,charttime,itemid,value,valueuom\n"
                           "1,11,31,2150-01-02 10:00:00,225754,2150-01-02 09:00:00,Date\n"),
    "icu/ingredientevents": ("subject_id,hadm_id,stay_id,starttime,endtime,itemid,amount,amountuom\n"
                             "1,11,31,2150-01-02 11:00:00,2150-01-02 12:00:00,220490,200,mL\n"),
}
ED = {
    "ed/edstays": ("subject_id,hadm_id,stay_id,intime,outtime,gender,race,arrival_transport,disposition\n"
                   "1,11,301,2150-01-01 06:00:00,2150-01-01 10:00:00,F,WHITE,AMBULANCE,ADMITTED\n"
                   "2,,302,2150-03-01 12:00:00,2150-03-01 15:00:00,M,WHITE,WALK IN,HOME\n"),
    "ed/triage": ("subject_id,stay_id,temperature,heartrate,resprate,o2sat,sbp,dbp,pain,acuity,chiefcomplaint\n"
                  "1,301,98.6,110,22,94,100,60,unable,2,Chest pain\n"    # pain not a number: null, counted
                  "2,399,98.0,80,16,99,120,80,0,4,Cough\n"),            # no such ED stay: dropped
    "ed/vitalsign": ("subject_id,stay_id,charttime,temperature,heartrate,resprate,o2sat,sbp,dbp,rhythm,pain\n"
                     "1,301,2150-01-01 07:00:00,99.1,105,,,,,Sinus,\n"),
    "ed/diagnosis": "subject_id,stay_id,seq_num,icd_code,icd_version,icd_title\n1,301,1,R079,10,CHEST PAIN\n",
    "ed/medrecon": "subject_id,stay_id,charttime,name,gsn,ndc\n1,301,2150-01-01 06:30:00,aspirin,1,2\n",
    "ed/pyxis": "subject_id,stay_id,charttime,med_rn,name,gsn_rn,gsn\n1,301,2150-01-01 07:30:00,1,Morphine,1,3\n",
}


def _raw(tmp_path, tables):
    raw = tmp_path / "raw"
    for name, text in {"hosp/patients": PATIENTS, "hosp/admissions": ADMISSIONS, **tables}.items():
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / f"{name}.csv").write_text(text)
    return raw


def _events(meds_dir):
    return pl.concat([pl.read_parquet(p) for p in sorted((meds_dir / "data").rglob("*.parquet"))])


def _at(df, code):
    rows = df.filter(pl.col("code") == code).sort("time", "numeric_value")
    return [(str(t), v) for t, v in rows.select("time", "numeric_value").iter_rows()]


def _cli(args, repo_root):
    return subprocess.run([sys.executable, "-m", "ehrfm", "etl", *map(str, args)], capture_output=True, text=True,
                          cwd=repo_root, env={**os.environ, "EHRFM_QUIET": "1"})


def test_every_event_table_of_mimic_iv_becomes_events_with_a_per_table_account(tmp_path, repo_root):
    raw = _raw(tmp_path, NEW_TABLES)
    p = _cli([raw, "--out", tmp_path / "meds", "--split-fractions", "1,0,0"], repo_root)
    assert p.returncode == 0, p.stderr
    *details, last = p.stdout.strip().splitlines()
    assert re.match(r"etl: 2 subjects, \d+ events, \d+ codes from 11 tables \(", last)
    df = _events(tmp_path / "meds")
    assert _at(df, "EMAR//Administered//Heparin") == [("2150-01-02 08:00:00", None)]
    assert _at(df, "EMAR//Not Given//Heparin") == [("2150-01-02 20:00:00", None)]
    # Both product lines of the administration, at its charted time and stay; values never in the code.
    dose = df.filter(pl.col("code") == "EMAR_DOSE//Heparin 5000 Units//UNIT")
    assert dose["time"].cast(pl.String).to_list() == ["2150-01-02 08:00:00.000000"] * 2
    assert dose["numeric_value"].to_list() == [5000.0, 5000.0] and dose["hadm_id"].to_list() == [11, 11]
    assert _at(df, "PHARMACY//Heparin") == [("2150-01-02 07:00:00", None)] * 2  # two orders, not duplicates
    assert _at(df, "PHARMACY//Furosemide") == [("2150-02-02 23:59:59", None)]
    assert _at(df, "POE//Lab//UNK") == [("2150-01-01 11:00:00", None)] * 2
    assert _at(df, "POE//ADT orders//Discharge") == [("2150-01-01 11:05:00", None)]
    ab = df.filter(pl.col("code") == "MICROBIOLOGY//BLOOD CULTURE//E. COLI//CEFTRIAXONE")
    assert ab.select("numeric_value", "text_value").rows() == [(1.0, "S")]
    assert _at(df, "MICROBIOLOGY//BLOOD CULTURE//E. COLI") == [("2150-01-02 09:30:00", None)]
    # No charttime: its chartdate is a date, at the end of its day; a result's date is never moved to its
    # stay's discharge that day (12:00), as a procedure's is: it can be known only after the patient left.
    assert _at(df, "MICROBIOLOGY//URINE CULTURE//NONE") == [("2150-02-03 23:59:59", None)]
    # charttime exactly its chartdate's 00:00:00: a date written as a time, placed as a date.
    assert _at(df, "MICROBIOLOGY//SPUTUM CULTURE//NONE") == [("2150-01-02 23:59:59", None)]
    assert _at(df, "HCPCS//99218") == [("2150-01-03 23:59:59", None)]
    assert _at(df, "SERVICE//MED") == [("2150-01-01 10:05:00", None)]
    assert _at(df, "DATETIME//225754") == [("2150-01-02 10:00:00", None)]
    # an infusion's amount is what ran until its endtime: known then, not at its start (11:00)
    assert _at(df, "INGREDIENT//220490//mL") == [("2150-01-02 12:00:00", 200.0)]

    tables = json.loads((tmp_path / "meds/metadata/etl_config.json").read_text())["tables"]
    assert tables["hosp/emar"] == {"rows_read": 3, "events_written": 2, "dropped": {"missing_medication": 1}}
    assert tables["hosp/emar_detail"] == {"rows_read": 5, "events_written": 2, "dropped": {
        "administration_summary_row": 1, "no_dose_given": 1, "no_emar_row": 1}}
    assert tables["hosp/microbiologyevents"]["date_only_values"] == {"charttime": 2}
    assert tables["hosp/microbiologyevents"]["date_only_placed_at_discharge"] == 0
    for name in NEW_TABLES:  # one event per row: each row is written or counted as a drop
        a = tables[name]
        assert a["events_written"] + sum(a["dropped"].values()) == a["rows_read"], name
    detail = {line.split(":")[1].strip(): line for line in details}
    assert "administration_summary_row 1" in detail["hosp/emar_detail"]
    meta = json.loads((tmp_path / "meds/metadata/ehrfm_etl.json").read_text())
    src = {(s["table"], s["column"]): s for s in meta["date_only_sources"]}
    assert src[("hosp/hcpcsevents", "chartdate")]["schema_date"] is True
    assert src[("hosp/hcpcsevents", "chartdate")]["code_prefixes"] == ["HCPCS//"]
    assert src[("hosp/microbiologyevents", "charttime")]["rule"] == "end_of_day_or_discharge"
    assert src[("hosp/pharmacy", "starttime")]["date_only_values"] == 1
    codes = pl.read_parquet(tmp_path / "meds/metadata/codes.parquet")
    desc = dict(codes.select("code", "description").iter_rows())
    assert desc["EMAR//Not Given//Heparin"] == "Medication administration (Not Given): Heparin"


def test_mimic_iv_ed_module_is_read_when_its_directory_is_there(tmp_path):
    res = etl(_raw(tmp_path, ED), tmp_path / "meds", split_fractions=(1.0, 0.0, 0.0))
    df = _events(tmp_path / "meds")
    assert _at(df, "ED_ARRIVAL//AMBULANCE") == [("2150-01-01 06:00:00", None)]
    assert _at(df, "ED_DISPOSITION//HOME") == [("2150-03-01 15:00:00", None)]
    assert _at(df, "ED_TRIAGE//heartrate") == [("2150-01-01 06:00:00", 110.0)]  # at arrival
    assert _at(df, "ED_TRIAGE//acuity") == [("2150-01-01 06:00:00", 2.0)]
    pain = df.filter(pl.col("code") == "ED_TRIAGE//pain")  # "unable": no rating, its text kept
    assert pain.select("time", "numeric_value", "text_value").rows() == [(dt.datetime(2150, 1, 1, 6), None, "unable")]
    assert _at(df, "ED_VITAL//heartrate") == [("2150-01-01 07:00:00", 105.0)]
    assert _at(df, "ED_DIAGNOSIS//ICD//10//R079") == [("2150-01-01 10:00:00", None)]  # at the ED stay's end
    assert _at(df, "ED_MEDRECON//aspirin") == [("2150-01-01 06:30:00", None)]
    assert _at(df, "ED_PYXIS//Morphine") == [("2150-01-01 07:30:00", None)]
    assert not df["code"].str.contains("Chest pain").any()  # free text is never read
    t = res["tables"]
    assert t["ed/triage"]["dropped"] == {"unknown_stay_id": 1}
    assert "unparseable_numbers_set_null" not in t["ed/triage"] and t["ed/triage"]["text_values_kept"] == {"pain": 1}
    assert {n for n in res["tables_used"] if n.startswith("ed/")} == set(ED)
    assert not [n for n in res["tables_missing"] if n.startswith("ed/")]


def test_ed_directory_without_edstays_is_refused_naming_it(tmp_path, repo_root):
    raw = _raw(tmp_path, {k: v for k, v in ED.items() if k != "ed/edstays"})
    p = _cli([raw, "--out", tmp_path / "meds"], repo_root)
    assert p.returncode == 2 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and str(raw / "ed") in lines[0] and "edstays" in lines[0]
    assert not (tmp_path / "meds").exists() and not list(tmp_path.glob("meds.tmp*"))
    # Without the ED tables selected, the same directory converts.
    assert _cli([raw, "--out", tmp_path / "meds", "--tables", "admissions", "--split-fractions", "1,0,0"],
                repo_root).returncode == 0


def test_tables_flag_chooses_the_tables(tmp_path, repo_root):
    raw = _raw(tmp_path, {**NEW_TABLES, **ED})
    p = _cli([raw, "--out", tmp_path / "meds", "--tables", "emar_detail,icu/datetimeevents,ed/triage",
              "--split-fractions", "1,0,0"], repo_root)
    assert p.returncode == 0, p.stderr
    used = ["hosp/patients", "hosp/admissions", "hosp/emar", "hosp/emar_detail", "icu/datetimeevents",
            "ed/edstays", "ed/triage"]
    cfg = json.loads((tmp_path / "meds/metadata/etl_config.json").read_text())
    assert list(cfg["tables"]) == used == cfg["tables_selected"] and cfg["tables_missing"] == []
    # (its hand-made icu/ has no d_items: said since 2026-12-07, its ICU codes described by their ids)
    assert re.search(r"from 7 tables \(0 absent: none; dictionaries absent: icu/d_items, their codes described by id\)",
                     p.stdout.strip().splitlines()[-1])
    heads = set(_events(tmp_path / "meds")["code"].str.split("//").list.first())
    assert heads == {"GENDER", "MEDS_BIRTH", "HOSPITAL_ADMISSION", "HOSPITAL_DISCHARGE", "EMAR", "EMAR_DOSE",
                     "DATETIME", "ED_ARRIVAL", "ED_DISPOSITION", "ED_TRIAGE"}
    bad = _cli([raw, "--out", tmp_path / "m2", "--tables", "labevents,chartevnts"], repo_root)
    assert bad.returncode == 2 and "chartevnts" in bad.stderr and "icu/chartevents" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert "ed/pyxis" in select_tables(None)
    # Nothing named (an unset shell variable) converted every table; a table named but absent converted none of it.
    for tables, says in (("", "--tables: no table named"), (" , ", "--tables: no table named"),
                         ("emar,chartevents", "--tables names icu/chartevents, which")):
        refused = _cli([raw, "--out", tmp_path / "m3", "--tables", tables], repo_root)
        assert refused.returncode == 2 and says in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr


def test_mimic_iv_3_1_shaped_tables_convert_like_2_2(tmp_path):
    """3.1 writes procedureevents' ORIGINALAMOUNT/ORIGINALRATE in lower case (2.2: upper case) and adds no
    column the ETL needs elsewhere; database exports may upper-case every header. Names match in any case."""
    proc22 = ("subject_id,hadm_id,stay_id,caregiver_id,starttime,endtime,storetime,itemid,value,valueuom,location,"
              "locationcategory,orderid,linkorderid,ordercategoryname,ordercategorydescription,patientweight,isopenbag,"
              "continueinnextdept,statusdescription,ORIGINALAMOUNT,ORIGINALRATE\n"
              "1,11,31,7,2150-01-02 10:00:00,2150-01-02 11:00:00,2150-01-02 11:00:00,225966,1,,,,1,1,Procedures,Task,"
              "60,0,0,FinishedRunning,1,0\n")
    header, row = proc22.splitlines()
    proc31 = header.replace("ORIGINALAMOUNT,ORIGINALRATE", "originalamount,originalrate") + "\n" + row + "\n"
    labs_upper = ("SUBJECT_ID,HADM_ID,ITEMID,CHARTTIME,VALUE,VALUENUM,VALUEUOM\n"
                  "1,11,50912,2150-01-02 08:00:00,1.0,1.0,mg/dL\n")
    out = {}
    for name, proc in (("v22", proc22), ("v31", proc31)):
        root = tmp_path / name
        root.mkdir()
        etl(_raw(root, {"icu/procedureevents": proc, "hosp/labevents": labs_upper}), root / "meds",
            split_fractions=(1.0, 0.0, 0.0))
        out[name] = _events(root / "meds")
    assert out["v22"].equals(out["v31"])
    # Placed when it was stored (storetime 11:00), not at its start (10:00): see test_results_sit_at_their_store_time.
    assert _at(out["v31"], "PROCEDURE//ITEM//225966") == [("2150-01-02 11:00:00", None)]
    assert _at(out["v31"], "LAB//50912//mg/dL") == [("2150-01-02 08:00:00", 1.0)]


def _refusal(tmp_path: Path, tables: dict[str, str]) -> str:
    """The one UserError message of an ETL of these raw tables, which writes nothing."""
    with pytest.raises(UserError) as e:
        etl(_raw(tmp_path, tables), tmp_path / "meds")
    assert not (tmp_path / "meds").exists()
    return str(e.value)


def test_unexpected_column_set_names_the_table_and_every_missing_column(tmp_path):
    micro = "subject_id,hadm_id,chart_date,chart_time,test_name,org_name\n1,11,2150-01-02,2150-01-02 09:30:00,X,Y\n"
    msg = _refusal(tmp_path, {"hosp/microbiologyevents": micro})
    assert "microbiologyevents.csv: missing column 'chartdate' (and 1 more: 'charttime')" in msg
    assert "table hosp/microbiologyevents" in msg and "chart_date, chart_time" in msg
    assert "2150" not in msg


def test_shards_assembled_in_small_chunks_equal_whole_shards(synth_raw, synth_meds, tmp_path):
    """Chunks of a few subjects (the memory bound) give byte-for-byte the same events and account."""
    etl(synth_raw, tmp_path / "chunked", chunk_events=500)
    for split in ("train", "tuning", "held_out"):
        whole = sorted((synth_meds / "data" / split).glob("*.parquet"))
        parts = sorted((tmp_path / "chunked/data" / split).glob("*.parquet"))
        assert [p.name for p in whole] == [p.name for p in parts]
        for a, b in zip(whole, parts, strict=True):
            assert pl.read_parquet(a).equals(pl.read_parquet(b)), (split, a.name)
    acc = [json.loads((d / "metadata/etl_config.json").read_text())["tables"] for d in (synth_meds, tmp_path / "chunked")]
    assert acc[0] == acc[1]


def test_a_table_without_its_header_line_is_refused_without_its_first_rows_values(tmp_path):
    """A table exported without its header line: its first data row was printed as the "column set"
    (a subject's id, gender, age and year). Now the error says the header is missing and shows no value."""
    for table, text in (("hosp/patients", PATIENTS), ("hosp/admissions", ADMISSIONS)):
        msg = _refusal(tmp_path / table.replace("/", "_"), {table: text.split("\n", 1)[1]})
        assert f"{table.split('/')[1]}.csv: the first line is not a header" in msg and "(values not shown)" in msg, msg
        first = text.split("\n")[1].split(",")
        assert not [v for v in first if v and v in msg.split(": ", 1)[1]], msg  # neither the id, nor F, nor the times


def test_admission_times_without_a_time_of_day_are_refused(tmp_path):
    """admittime written as dates (an export that dropped the times) was placed at each day's end: a
    discharge and the next admission of one day tied, and `ehrfm labels` wrote labels whose histories
    held their outcome (the audit: leakage in all four tasks). Now refused, naming the column and count."""
    one = ADMISSIONS.replace("2150-02-01 09:00:00", "2150-02-01")
    msg = _refusal(tmp_path / "one", {"hosp/admissions": one})
    assert "admissions.csv: column 'admittime' has 1 value written as a date without a time of day" in msg, msg
    both = one.replace("2150-01-01 10:00:00", "2150-01-01")
    assert "column 'admittime' has 2 values written as a date" in _refusal(tmp_path / "both", {"hosp/admissions": both})
    header_only = ADMISSIONS.split("\n", 1)[0] + "\n"  # required like patients, refused like them
    assert "admissions.csv: no admissions (the table has no rows)" in _refusal(tmp_path / "none", {"hosp/admissions": header_only})
    # A midnight is a time (planned admissions): kept, as are dates in other time columns (the date-only rule).
    midnight = ADMISSIONS.replace("2150-02-01 09:00:00", "2150-02-01 00:00:00").replace("2150-02-03 12:00:00", "2150-02-03")
    etl(_raw(tmp_path / "m", {"hosp/admissions": midnight}), tmp_path / "m/meds", split_fractions=(1.0, 0.0, 0.0))
    admitted = _events(tmp_path / "m/meds").filter(pl.col("code").str.starts_with("HOSPITAL_ADMISSION//"))
    assert sorted(str(t) for t in admitted["time"]) == ["2150-01-01 10:00:00", "2150-02-01 00:00:00"]


def test_a_renamed_optional_column_is_refused_not_read_as_missing(tmp_path, capsys):
    """A 3.x-style rename (valueuom -> unit) would silently make every lab unit UNK: refused instead."""
    labs = "subject_id,hadm_id,itemid,charttime,value,valuenum,unit\n1,11,50912,2150-01-02 08:00:00,1.0,1.0,mg/dL\n"
    msg = _refusal(tmp_path, {"hosp/labevents": labs})
    assert "labevents.csv: table hosp/labevents has an unexpected column set" in msg
    assert "no 'storetime', 'valueuom' but 'unit'" in msg and "mg/dL" not in msg
    # A trimmed extract (the column simply absent) still converts, units read as UNK; and it says so,
    # once per table, with what follows (it used to say nothing: labs at charttime, every unit UNK).
    trimmed = "subject_id,hadm_id,itemid,charttime,value,valuenum\n1,11,50912,2150-01-02 08:00:00,1.0,1.0\n"
    etl(_raw(tmp_path / "t", {"hosp/labevents": trimmed}), tmp_path / "t/meds", split_fractions=(1.0, 0.0, 0.0))
    assert _at(_events(tmp_path / "t/meds"), "LAB//50912//UNK") == [("2150-01-02 08:00:00", 1.0)]
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "labevents.csv lacks optional column" in line]
    assert len(said) == 1 and "labevents.csv lacks optional column(s) storetime, valueuom, read as empty" in said[0], err
    assert "codes carry no unit (//UNK)" in said[0] and "not when stored" in said[0]
    config = json.loads((tmp_path / "t/meds/metadata/etl_config.json").read_text())
    assert config["optional_columns_absent"]["hosp/labevents"] == ["storetime", "valueuom"]


def test_raw_files_that_are_no_table_read_are_named_not_left_out_silently(tmp_path, capsys, mimic_demo_dir):
    """A table the ETL does not know (half of labevents split off by hand, a note/ module, a file of
    one's own) was left out without a word: its events were simply missing from the MEDS output."""
    labs = "subject_id,hadm_id,itemid,charttime,storetime,value,valuenum,valueuom\n"
    raw = _raw(tmp_path, {"hosp/labevents": labs + "1,11,50912,2150-01-02 08:00:00,2150-01-02 09:00:00,1.0,1.0,mg/dL\n",
                          "hosp/labevents_part2": labs + "2,21,50912,2150-02-01 10:00:00,2150-02-01 11:00:00,0.9,0.9,mg/dL\n",
                          "note/discharge": "note_id,subject_id,text\n1-DS-1,1,invented\n",
                          "hosp/provider": "provider_id\nP1\n"})  # a MIMIC-IV table that holds no events: not named
    (raw / "hosp" / "index.html").write_text("<html></html>")  # a wget mirror's folder listing: not data
    (raw / "LICENSE.txt").write_text("ODbL")
    (raw / "demo_subject_id.csv").write_text("subject_id\n1\n")  # files in raw itself are not tables
    etl(raw, tmp_path / "meds", split_fractions=(1.0, 0.0, 0.0))
    said = [line for line in capsys.readouterr().err.splitlines() if "left out" in line]
    assert len(said) == 1, said
    assert "2 file(s)" in said[0] and "hosp/labevents_part2.csv, note/discharge.csv" in said[0], said
    assert "invented" not in said[0] and "provider" not in said[0] and "index.html" not in said[0]
    config = json.loads((tmp_path / "meds/metadata/etl_config.json").read_text())
    assert config["raw_files_not_read"] == ["hosp/labevents_part2.csv", "note/discharge.csv"]
    assert _at(_events(tmp_path / "meds"), "LAB//50912//mg/dL") == [("2150-01-02 09:00:00", 1.0)]  # what was read

    # Every MIMIC-IV file, read or not (dictionaries, provider, caregiver, poe_detail), is no stray: nothing said.
    from tokenization.etl import _warn_raw_files_not_read

    assert _warn_raw_files_not_read(mimic_demo_dir) == []
    assert "left out" not in capsys.readouterr().err


def test_results_sit_at_their_store_time_and_the_audit_flags_tables_without_one(tmp_path):
    """A lab value or culture result is known when it is stored (MIMIC-IV's storetime), not when
    the specimen was drawn: on the real demo a median 65 min later for labs and 3 days for cultures,
    so a result at its charttime leaked into 24-hour mortality histories."""
    from datetime import datetime

    from ehrfm.clinical.audit import audit

    labs = ("subject_id,hadm_id,itemid,charttime,storetime,value,valuenum,valueuom\n"
            "1,11,50912,2150-01-02 08:00:00,2150-01-02 09:10:00,1.0,1.0,mg/dL\n"   # stored 70 min later
            "1,11,50912,2150-01-02 12:00:00,2150-01-02 11:59:00,1.1,1.1,mg/dL\n"   # stored before its charttime: kept
            "1,11,50912,2150-01-02 13:00:00,,,,mg/dL\n"                             # never stored: dropped, counted
            "2,21,50912,2150-02-01 10:00:00,2150-02-01 11:00:00,0.9,0.9,mg/dL\n"
            "2,21,50912,2150-02-01 10:30:00,2150-02-01 11:00:00,0.9,0.9,mg/dL\n")  # stored with the one before: 2 events
    micro = ("subject_id,hadm_id,chartdate,charttime,storedate,storetime,test_name,org_name,ab_name,dilution_value,"
             "interpretation\n"
             "1,11,2150-01-02 00:00:00,2150-01-02 09:30:00,2150-01-05 00:00:00,2150-01-05 07:45:00,BLOOD CULTURE,"
             "E. COLI,CEFTRIAXONE,1,S\n"
             "2,21,2150-02-01 00:00:00,2150-02-01 10:00:00,2150-02-03 00:00:00,,URINE CULTURE,,,,\n")  # a storedate only
    root = tmp_path / "stored"
    root.mkdir()
    etl(_raw(root, {"hosp/labevents": labs, "hosp/microbiologyevents": micro}), root / "meds",
        split_fractions=(1.0, 0.0, 0.0))
    ev = _events(root / "meds")
    assert _at(ev, "LAB//50912//mg/dL") == [("2150-01-02 09:10:00", 1.0), ("2150-01-02 12:00:00", 1.100000023841858),
                                            ("2150-02-01 11:00:00", 0.8999999761581421),
                                            ("2150-02-01 11:00:00", 0.8999999761581421)]
    assert _at(ev, "MICROBIOLOGY//BLOOD CULTURE//E. COLI//CEFTRIAXONE") == [("2150-01-05 07:45:00", 1.0)]
    # A storedate without a time is a date: placed at 23:59:59 of its day, never at the day's start or the
    # specimen's time, and not at its stay's discharge that day (12:00), as a procedure's date is: a result
    # can be stored after the patient left (it sat in the readmission history at the discharge).
    assert _at(ev, "MICROBIOLOGY//URINE CULTURE//NONE") == [("2150-02-03 23:59:59", None)]
    cfg = json.loads((root / "meds/metadata/etl_config.json").read_text())["tables"]
    assert cfg["hosp/labevents"]["dropped"] == {"result_never_stored": 1}
    assert cfg["hosp/labevents"]["moved_to_store_time"] == {"charttime": 3}
    meta = json.loads((root / "meds/metadata/ehrfm_etl.json").read_text())["stored_time_sources"]
    assert {(m["table"], m["present"]) for m in meta} == {("hosp/labevents", True), ("hosp/microbiologyevents", True)}

    # An extract without storetime keeps its results at charttime, says so, and fails the audit (e).
    bare = tmp_path / "bare"
    bare.mkdir()
    no_store = "\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != 4) for line in labs.splitlines()) + "\n"
    etl(_raw(bare, {"hosp/labevents": no_store}), bare / "meds", split_fractions=(1.0, 0.0, 0.0))
    assert _at(_events(bare / "meds"), "LAB//50912//mg/dL")[0] == ("2150-01-02 08:00:00", 1.0)
    labels = bare / "labels.parquet"
    pl.DataFrame({"subject_id": [1], "prediction_time": [datetime(2150, 1, 2, 10)], "boolean_value": [False]},
                 schema={"subject_id": pl.Int64, "prediction_time": pl.Datetime("us"), "boolean_value": pl.Boolean}
                 ).write_parquet(labels)
    for meds, clean, chart in ((root / "meds", True, []), (bare / "meds", False, ["hosp/labevents"])):
        a = audit(meds, labels, task="in_hospital_mortality")  # a known task: its (a) is made too
        assert a.result_times["at_chart_time"] == chart and a.clean is clean


def test_rows_that_contradict_their_key_are_refused_and_impossible_intervals_counted(tmp_path):
    """A subject with two genders or a stay with two discharge times has no right row to pick:
    refused, by count. A discharge before its admission, an ICU stay ending before it starts and
    an impossible age are dropped under their own reasons (a tester found them all accepted)."""
    def run(name, tables):
        root = tmp_path / name
        root.mkdir()
        raw = root / "raw"
        for table, text in tables.items():
            (raw / table).parent.mkdir(parents=True, exist_ok=True)
            (raw / f"{table}.csv").write_text(text)
        return etl(raw, root / "meds", split_fractions=(1.0, 0.0, 0.0))

    with pytest.raises(UserError, match=r"patients.csv: column 'subject_id': 1 subject_id value appears"):
        run("gender", {"hosp/patients": PATIENTS + "1,M,60,2150,\n", "hosp/admissions": ADMISSIONS})
    twice = ADMISSIONS + "2,21,2150-02-01 09:00:00,2150-02-04 12:00:00,,URGENT,ER,HOME\n"
    with pytest.raises(UserError, match=r"admissions.csv: column 'hadm_id': 1 hadm_id value appears"):
        run("stay", {"hosp/patients": PATIENTS, "hosp/admissions": twice})
    exact_repeat = ADMISSIONS + ADMISSIONS.splitlines()[1] + "\n"  # an exact repeat is a counted duplicate, not a conflict
    run("repeat", {"hosp/patients": PATIENTS, "hosp/admissions": exact_repeat})

    backwards = ADMISSIONS.replace("2,21,2150-02-01 09:00:00,2150-02-03 12:00:00", "2,21,2150-02-03 12:00:00,2150-02-01 09:00:00")
    icu = ("subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los\n"
           "1,11,31,MICU,MICU,2150-01-02 10:00:00,2150-01-02 08:00:00,0\n")
    old = PATIENTS.replace("2,M,70,2150,", "2,M,-40,2150,")
    res = run("intervals", {"hosp/patients": old, "hosp/admissions": backwards, "icu/icustays": icu})
    dropped = res["dropped_events"]
    # A discharge before its admission is kept as written and counted (dropping it hid a readmission from the stay
    # before it); `ehrfm labels` excludes the stay (test_clinical_faults9).
    assert "hosp/admissions" not in dropped and res["discharge_times"]["before_admission"] == 1
    assert dropped["icu/icustays"] == {"icu_outtime_before_intime": 1}
    assert dropped["hosp/patients"] == {"birth_of_implausible_anchor_age": 1}
    ev = _events(tmp_path / "intervals" / "meds")
    assert ev.filter(pl.col("subject_id") == 2)["code"].str.starts_with("HOSPITAL_").sum() == 2
    swapped = backwards.replace("1,11,2150-01-01 10:00:00,2150-01-05 14:00:00", "1,11,2150-01-05 14:00:00,2150-01-01 10:00:00")
    with pytest.raises(UserError, match=r"column 'dischtime' precedes 'admittime' in \d+ of \d+ admissions"):
        run("swapped", {"hosp/patients": PATIENTS, "hosp/admissions": swapped})
    assert ev.filter(pl.col("code") == "MEDS_BIRTH")["subject_id"].to_list() == [1]


@pytest.mark.parametrize("table", ["ed/edstays", "ed/triage", "icu/icustays"])
def test_a_stay_listed_twice_with_other_values_is_refused_and_an_exact_repeat_counted(tmp_path, table):
    """MIMIC-IV has one row per stay_id in icustays, edstays and ED triage. Before 2026-12-03 a second,
    different row of a stay was kept (two arrivals, two triage readings, two ICU admissions) or
    silently lost (the first ED stay's times timed its triage): now refused like a patient with two
    genders, naming file, column and count; an exact repeat is a counted duplicate."""
    icu = ("subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los\n"
           "1,11,31,MICU,MICU,2150-01-02 10:00:00,2150-01-03 08:00:00,1\n")
    tables = {**ED, "icu/icustays": icu}
    first = tables[table].splitlines()[1]
    other = {"ed/edstays": first.replace("2150-01-01 10:00:00", "2150-01-01 11:00:00"),
             "ed/triage": first.replace(",110,", ",111,"),
             "icu/icustays": first.replace("2150-01-03 08:00:00", "2150-01-03 09:00:00")}[table]
    assert other != first
    raw = _raw(tmp_path / "conflict", {**tables, table: tables[table] + other + "\n"})
    with pytest.raises(UserError) as e:
        etl(raw, tmp_path / "conflict" / "meds", split_fractions=(1.0, 0.0, 0.0))
    path = raw / f"{table}.csv"
    assert str(e.value) == (f"{path}: column 'stay_id': 1 stay_id value appears in rows that disagree in other "
                            "columns; the table must have one row per stay_id")
    assert not (tmp_path / "conflict" / "meds").exists() and not list((tmp_path / "conflict").glob("meds.tmp*"))

    clean = etl(_raw(tmp_path / "clean", tables), tmp_path / "clean" / "meds", split_fractions=(1.0, 0.0, 0.0))
    res = etl(_raw(tmp_path / "repeat", {**tables, table: tables[table] + first + "\n"}), tmp_path / "repeat" / "meds",
              split_fractions=(1.0, 0.0, 0.0))
    made = clean["tables"][table]["events_written"]
    assert res["tables"][table]["events_written"] == made
    assert res["tables"][table]["dropped"].get("duplicate") == {"ed/edstays": 2, "ed/triage": 8, "icu/icustays": 2}[table]
    assert _events(tmp_path / "repeat" / "meds").equals(_events(tmp_path / "clean" / "meds"))


def test_ed_pain_is_a_0_10_rating_where_it_states_one_and_its_text_otherwise(tmp_path, repo_root):
    """MIMIC-IV-ED's pain is typed free text. Before 2026-12-03 it was read as a number: "10/10" and
    "unable" alike became unparseable numbers (counted as faults) and made no event at all. Now a
    value stating one 0-10 rating is that number; a range, an off-scale number or words are kept
    as text_value (no number) and counted as `text_values_kept`, never as unparseable."""
    values = ["7", " 10/10 ", "8/10", "+3", "7.5", "0", "unable", "UTA", "sleeping", "3-4", "13", "5/5", ""]
    rated = [7.0, 10.0, 8.0, 3.0, 7.5, 0.0] + [None] * 6
    texts = [None] * 6 + ["unable", "UTA", "sleeping", "3-4", "13", "5/5"]
    stays = "subject_id,hadm_id,stay_id,intime,outtime,gender,race,arrival_transport,disposition\n" + "".join(
        f"1,,{400 + i},2150-01-{1 + i:02d} 06:00:00,2150-01-{1 + i:02d} 10:00:00,F,WHITE,WALK IN,HOME\n"
        for i in range(len(values)))
    triage = "subject_id,stay_id,temperature,heartrate,resprate,o2sat,sbp,dbp,pain,acuity,chiefcomplaint\n" + "".join(
        f'1,{400 + i},,,,,,,"{v}",,\n' for i, v in enumerate(values))
    vitals = "subject_id,stay_id,charttime,temperature,heartrate,resprate,o2sat,sbp,dbp,rhythm,pain\n" + "".join(
        f'1,{400 + i},2150-01-{1 + i:02d} 07:00:00,,,,,,,,"{v}"\n' for i, v in enumerate(values))
    raw = _raw(tmp_path, {"ed/edstays": stays, "ed/triage": triage, "ed/vitalsign": vitals})
    p = _cli([raw, "--out", tmp_path / "meds", "--split-fractions", "1,0,0"], repo_root)
    assert p.returncode == 0, p.stderr
    df = _events(tmp_path / "meds")
    for code, hour in (("ED_TRIAGE//pain", 6), ("ED_VITAL//pain", 7)):
        got = df.filter(pl.col("code") == code).sort("time").select("time", "numeric_value", "text_value").rows()
        assert got == [(dt.datetime(2150, 1, 1 + i, hour), r, t) for i, (r, t) in enumerate(zip(rated, texts, strict=True))]
    config = json.loads((tmp_path / "meds/metadata/etl_config.json").read_text(encoding="utf-8"))
    for table in ("ed/triage", "ed/vitalsign"):
        account = config["tables"][table]
        assert account["text_values_kept"] == {"pain": 6} and "unparseable_numbers_set_null" not in account
        assert account["events_written"] == 12 and account["dropped"] == {}
    assert "free text kept as text_value (no 0-10 rating) pain 6" in p.stdout + p.stderr


def test_ed_pain_deidentified_placeholder_is_counted_as_redacted_not_kept_as_text(tmp_path):
    """MIMIC-IV's de-identification placeholder ___ is a value removed, not a pain text the nurse
    typed. When pain became a text column (a49c308) it fell out of the number columns' redacted
    rule and was kept as an ED pain event with text_value "___", counted as text_values_kept."""
    stays = ("subject_id,hadm_id,stay_id,intime,outtime,gender,race,arrival_transport,disposition\n"
             "1,,401,2150-01-01 06:00:00,2150-01-01 10:00:00,F,WHITE,WALK IN,HOME\n"
             "1,,402,2150-01-02 06:00:00,2150-01-02 10:00:00,F,WHITE,WALK IN,HOME\n")
    triage = ("subject_id,stay_id,temperature,heartrate,resprate,o2sat,sbp,dbp,pain,acuity,chiefcomplaint\n"
              "1,401,,,,,,,___,,\n1,402,,,,,,, ___ ,,\n")
    vitals = ("subject_id,stay_id,charttime,temperature,heartrate,resprate,o2sat,sbp,dbp,rhythm,pain\n"
              "1,401,2150-01-01 07:00:00,,,,,,,,___\n1,402,2150-01-02 07:00:00,,,,,,,,unable\n")
    raw = _raw(tmp_path, {"ed/edstays": stays, "ed/triage": triage, "ed/vitalsign": vitals})
    res = etl(raw, tmp_path / "meds", split_fractions=(1.0, 0.0, 0.0))
    pain = _events(tmp_path / "meds").filter(pl.col("code").str.ends_with("//pain"))
    assert pain.select("code", "numeric_value", "text_value").rows() == [("ED_VITAL//pain", None, "unable")]
    assert res["tables"]["ed/triage"]["redacted_numbers_set_null"] == {"pain": 2}
    assert "text_values_kept" not in res["tables"]["ed/triage"]
    assert res["tables"]["ed/vitalsign"]["redacted_numbers_set_null"] == {"pain": 1}
    assert res["tables"]["ed/vitalsign"]["text_values_kept"] == {"pain": 1}


def _labs(n: int, emptied: str, kept: int = 0) -> str:
    """labevents of n rows (subjects 1 and 2) whose `emptied` column is empty but in the first `kept` rows."""
    rows = []
    for i in range(n):
        s, h = (1, 11) if i % 2 == 0 else (2, 21)
        chart = f"2150-0{s}-02 {8 + i % 10:02d}:{i % 60:02d}:00"
        store = f"2150-0{s}-02 {9 + i % 10:02d}:{i % 60:02d}:00"
        chart, store = (chart, "") if emptied == "storetime" and i >= kept else ("", store) if i >= kept else (chart, store)
        rows.append(f"{s},{h},50912,{chart},{store},1.0,1.0,mg/dL\n")
    return "subject_id,hadm_id,itemid,charttime,storetime,value,valuenum,valueuom\n" + "".join(rows)


@pytest.mark.parametrize("emptied", ["storetime", "charttime"])
def test_a_table_nearly_all_of_whose_rows_are_dropped_is_refused_naming_it(tmp_path, emptied, capsys):
    # A labevents export with its storetime column empty lost every lab (all result_never_stored) and the ETL went
    # on, saying so only in its per-table line; with one row left so did labels and the audit ("clean"). Any
    # reason that drops 95% of a table of 100+ rows is refused, before the shards are written; none half-written.
    reason = r"result_never_stored 199 \[storetime empty\]" if emptied == "storetime" else "missing_time 199"
    with pytest.raises(UserError, match=rf"labevents.csv: 199 of its 200 events dropped from 200 rows \({reason}\): no "
                                        r"MIMIC-IV table loses 95% of its rows by design; export the table again, or leave "
                                        r"it out with --tables"):
        etl(_raw(tmp_path, {"hosp/labevents": _labs(200, emptied, kept=1)}), tmp_path / "meds", split_fractions=(1.0, 0.0, 0.0))
    assert not (tmp_path / "meds").exists()
    # 11 of 200 rows kept (94.5% dropped): converted, its drops counted as before
    res = etl(_raw(tmp_path / "some", {"hosp/labevents": _labs(200, emptied, kept=11)}), tmp_path / "some" / "meds",
              split_fractions=(1.0, 0.0, 0.0))
    assert res["tables"]["hosp/labevents"]["events_written"] == 11, res["tables"]["hosp/labevents"]
    # a hand-made table of 3 rows, all dropped: warned, not refused
    capsys.readouterr()
    res = etl(_raw(tmp_path / "tiny", {"hosp/labevents": _labs(3, emptied)}), tmp_path / "tiny" / "meds",
              split_fractions=(1.0, 0.0, 0.0))
    assert res["tables"]["hosp/labevents"]["events_written"] == 0
    assert capsys.readouterr().err.count("labevents.csv: 3 of its 3 events dropped from 3 rows") == 1


def test_a_death_before_its_own_admission_is_kept_and_counted(tmp_path):
    adm = ADMISSIONS.replace("2150-02-03 12:00:00,,URGENT", "2150-02-03 12:00:00,2150-01-31 08:00:00,URGENT")
    raw = _raw(tmp_path, {})
    (raw / "hosp/admissions.csv").write_text(adm)
    etl(raw, tmp_path / "meds", split_fractions=(1.0, 0.0, 0.0))
    meta = json.loads((tmp_path / "meds/metadata/ehrfm_etl.json").read_text())
    assert meta["discharge_times"].get("death_before_admission") == 1, meta["discharge_times"]
    assert _at(_events(tmp_path / "meds"), "MEDS_DEATH") == [("2150-01-31 08:00:00", None)]
