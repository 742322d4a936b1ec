"""MIMIC-IV -> MEDS: valid MEDS on synthetic and real data, and one clear error for each bad input."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys

import meds
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from ehrfm.errors import UserError
from ehrfm.io import output_command
from tokenization import etl as etl_module
from tokenization.etl import assign_splits, etl
from tokenization.synth import synthesize

PART = r"(?:(?!//).)+"  # one code component: anything without "//"
CODE_PATTERNS = [
    r"GENDER//[FM]", r"MEDS_BIRTH", r"MEDS_DEATH", r"ED_REGISTRATION", r"ED_OUT",
    rf"HOSPITAL_ADMISSION//{PART}//{PART}", rf"HOSPITAL_DISCHARGE//{PART}", r"TRANSFER_TO//\w+//.+",
    r"ICU_ADMISSION//.+", r"ICU_DISCHARGE//.+", r"DIAGNOSIS//ICD//(9|10)//\w+", r"PROCEDURE//ICD//(9|10)//\w+",
    r"PROCEDURE//ITEM//\d+", r"DRG//\w+//\w+", r"LAB//\d+//.+", r"MEDICATION//.+", r"OMR//.+", r"VITAL//\d+//.+",
    r"INFUSION//\d+//.+", r"OUTPUT//\d+//.+",
    # issue 12: every event table and MIMIC-IV-ED
    rf"EMAR//{PART}//{PART}", rf"EMAR_DOSE//{PART}//{PART}", rf"PHARMACY//{PART}", rf"POE//{PART}//{PART}",
    rf"MICROBIOLOGY//{PART}//{PART}(//{PART})?", r"HCPCS//\w+", rf"SERVICE//{PART}", r"DATETIME//\d+",
    r"INGREDIENT//\d+//.+", rf"ED_ARRIVAL//{PART}", rf"ED_DISPOSITION//{PART}", r"ED_TRIAGE//\w+", r"ED_VITAL//\w+",
    r"ED_DIAGNOSIS//ICD//(9|10)//\w+", rf"ED_MEDRECON//{PART}", rf"ED_PYXIS//{PART}",
]


def _all_events(meds_dir):
    parts = []
    for split in ("train", "tuning", "held_out"):
        for p in sorted((meds_dir / "data" / split).glob("*.parquet")):
            parts.append(pl.read_parquet(p).with_columns(split=pl.lit(split)))
    return pl.concat(parts)


def _check_meds_dataset(meds_dir):
    shards = sorted((meds_dir / "data").rglob("*.parquet"))
    assert shards
    for p in shards:
        meds.DataSchema.validate(pq.read_table(p))  # raises on any schema violation
    df = _all_events(meds_dir)
    # Each subject in exactly one split; the splits file agrees with the shards.
    per_subject = df.group_by("subject_id").agg(pl.col("split").n_unique())
    assert (per_subject["split"] == 1).all()
    splits = pl.read_parquet(meds_dir / "metadata/subject_splits.parquet")
    assert splits.columns == ["subject_id", "split"] and splits["subject_id"].is_unique().all()
    got = df.select("subject_id", "split").unique().sort("subject_id")
    assert got.equals(splits.sort("subject_id").select("subject_id", "split").filter(
        pl.col("subject_id").is_in(got["subject_id"].implode())))
    # Sorted by (subject_id, time), static rows (null time) first, times non-decreasing per subject.
    for p in shards:
        s = pl.read_parquet(p).with_columns(t=pl.col("time").dt.epoch("us").fill_null(-(2**62)))
        assert s["subject_id"].is_sorted()
        assert s.select((pl.col("t").diff().over("subject_id").fill_null(0) >= 0).all()).item()
    # Codes follow the documented formats; numeric values never leak into codes.
    codes = df["code"].unique().to_list()
    bad = [c for c in codes if not any(re.fullmatch(p, c) for p in CODE_PATTERNS)]
    assert not bad, bad[:5]
    # codes.parquet: every code of the data, each with a description.
    cm = pl.read_parquet(meds_dir / "metadata/codes.parquet")
    meds.CodeMetadataSchema.validate(pq.read_table(meds_dir / "metadata/codes.parquet"))
    assert set(cm["code"]) == set(codes)
    assert cm["description"].null_count() == 0 and (cm["description"].str.len_chars() > 0).all()
    info = json.loads((meds_dir / "metadata/dataset.json").read_text())
    for k in ("dataset_name", "dataset_version", "etl_name", "etl_version", "meds_version", "created_at"):
        assert info[k], k
    return df, cm


def test_etl_synthetic_is_valid_meds(synth_meds, synth_raw):
    df, cm = _check_meds_dataset(synth_meds)
    raw_pat = pl.read_csv(synth_raw / "hosp/patients.csv.gz")
    assert df["subject_id"].n_unique() == raw_pat.height == 400
    # One birth and one gender row per subject; deaths at most once per subject.
    per = df.group_by("subject_id").agg(
        birth=(pl.col("code") == "MEDS_BIRTH").sum(), gender=pl.col("code").str.starts_with("GENDER//").sum(),
        death=(pl.col("code") == "MEDS_DEATH").sum())
    assert (per["birth"] == 1).all() and (per["gender"] == 1).all() and per["death"].max() == 1
    gender = df.filter(pl.col("code").str.starts_with("GENDER//"))
    assert gender["time"].null_count() == gender.height  # static
    # Every raw admission became one admission and one discharge event, with the raw hadm_id.
    raw_adm = pl.read_csv(synth_raw / "hosp/admissions.csv.gz")
    assert df.filter(pl.col("code").str.starts_with("HOSPITAL_ADMISSION//")).height == raw_adm.height
    dis = df.filter(pl.col("code").str.starts_with("HOSPITAL_DISCHARGE//"))
    assert set(dis["hadm_id"]) == set(raw_adm["hadm_id"])
    # An in-hospital death: MEDS_DEATH at the deathtime, before the discharge event of that time.
    died = raw_adm.filter(pl.col("hospital_expire_flag") == 1)["subject_id"][0]
    s = df.filter(pl.col("subject_id") == died)["code"].to_list()
    assert s.index("MEDS_DEATH") == s.index("HOSPITAL_DISCHARGE//DIED") - 1 or \
        s.index("MEDS_DEATH") < s.index("HOSPITAL_DISCHARGE//DIED")
    # Lab values are in numeric_value and descriptions come from d_labitems.
    creat = df.filter(pl.col("code") == "LAB//50912//mg/dL")
    assert creat.height > 0 and creat["numeric_value"].null_count() == 0
    assert cm.filter(pl.col("code") == "LAB//50912//mg/dL")["description"].item() == "Creatinine (Blood) (mg/dL)"
    dx = cm.filter(pl.col("code") == "DIAGNOSIS//ICD//10//I5022")
    assert dx["description"].item().startswith("Chronic systolic") and dx["parent_codes"].item().to_list() == ["ICD10CM/I5022"]
    cfg = json.loads((synth_meds / "metadata/etl_config.json").read_text())
    assert "hosp/drgcodes" in cfg["tables_missing"] and cfg["split_fractions"] == [0.8, 0.1, 0.1]


def test_etl_real_mimic_iv_demo_is_valid_meds(demo_meds, mimic_demo_dir):
    df, cm = _check_meds_dataset(demo_meds)
    assert df["subject_id"].n_unique() == 100
    raw_adm = pl.read_csv(mimic_demo_dir / "hosp/admissions.csv.gz")
    assert df.filter(pl.col("code").str.starts_with("HOSPITAL_ADMISSION//")).height == raw_adm.height
    raw_labs = pl.read_csv(mimic_demo_dir / "hosp/labevents.csv.gz", infer_schema_length=0)
    # One event per stored lab row: the 992 rows never stored (no storetime: no result known) are
    # counted. The demo holds no exact repeat of a row; 18 rows alike in the other columns read are
    # distinct results (their own labevent_id), so they stay events (they were dropped as duplicates).
    read = ["subject_id", "hadm_id", "itemid", "charttime", "storetime", "value", "valuenum", "valueuom"]
    n_labs = df.filter(pl.col("code").str.starts_with("LAB//")).height
    stored = raw_labs.filter(pl.col("storetime").is_not_null())
    assert n_labs == stored.select([*read, "labevent_id"]).unique().height == raw_labs.height - 992
    assert stored.select(read).unique().height == n_labs - 18
    # Every table of the demo is used; chartevents (absent from the demo) is reported missing.
    cfg = json.loads((demo_meds / "metadata/etl_config.json").read_text())
    labs = cfg["tables"]["hosp/labevents"]
    assert labs == {"rows_read": raw_labs.height, "events_written": n_labs,
                    "dropped": {"result_never_stored": 992},
                    "midnight_times": {"charttime": 3403, "storetime": 46}, "moved_to_store_time": {"charttime": 106498},
                    "events_after_death": 3}
    dups = {t: a["dropped"].get("duplicate", 0) for t, a in cfg["tables"].items()}
    # No exact duplicate row in the demo's raw files: none dropped. (3,183 were before rows were keyed by
    # their row id, Table.row_id: prescriptions 2,602, ingredientevents 344, omr 127, microbiologyevents
    # 60, inputevents 19, labevents 18, procedureevents 12, hcpcsevents 1.)
    assert sum(dups.values()) == 0
    assert cfg["tables_missing"] == ["icu/chartevents"]
    for prefix in ("INFUSION//", "OUTPUT//", "PROCEDURE//ITEM//", "DRG//", "OMR//", "MEDICATION//", "ICU_ADMISSION//"):
        assert df["code"].str.starts_with(prefix).any(), prefix
    # issue 12: every event table of the demo (22 of 23; no chartevents) writes events; poe_detail is
    # an attribute table of poe, the d_* tables dictionaries, provider and caregiver id lists.
    written = {t: a["events_written"] for t, a in cfg["tables"].items()}
    assert len(written) == 22 and min(written.values()) > 0
    assert written["hosp/poe"] == 45154 and written["hosp/emar_detail"] == 32411 and written["hosp/services"] == 319
    # emar_detail: 87 of its 88 doses de-identified as ___ are events without a value since 2026-12-06 (one has no emar row)
    assert written["hosp/prescriptions"] == 18087  # every raw row: one drug ordered PR and PO at once is two orders
    # 334,160 before distinct rows alike in the columns read were kept (3,183 more: see dups above).
    # 337,430 before 2026-12-07, when each OMR blood pressure "120/80" (866 + 6 rows) became two numeric events
    assert df.height == sum(written.values()) == 338302
    omr = df.filter(pl.col("code").str.starts_with("OMR//Blood Pressure//"))
    assert omr.height == 2 * 866 and omr["numeric_value"].null_count() == 0 and omr["text_value"].null_count() == omr.height
    assert set(omr["code"]) == {"OMR//Blood Pressure//SYSTOLIC", "OMR//Blood Pressure//DIASTOLIC"}
    hcpcs = cm.filter(pl.col("code").str.starts_with("HCPCS//"))["description"]
    assert hcpcs.len() > 0 and (~hcpcs.str.starts_with("HCPCS ")).all()  # from d_hcpcs
    # Descriptions from the real dictionaries.
    lab_desc = cm.filter(pl.col("code").str.starts_with("LAB//50912//"))["description"]
    assert lab_desc.len() >= 1 and lab_desc[0].startswith("Creatinine")
    n_icd = cm.filter(pl.col("code").str.starts_with("DIAGNOSIS//ICD//"))
    assert (~n_icd["description"].str.starts_with("ICD-")).mean() > 0.95


def test_splits_are_a_stable_hash_of_subject_id():
    ids = np.arange(10_000, 30_000)
    a = assign_splits(ids, (0.8, 0.1, 0.1), seed=0)
    assert (a == assign_splits(ids[::-1], (0.8, 0.1, 0.1), seed=0)[::-1]).all()  # order-free
    frac = {s: (a == s).mean() for s in ("train", "tuning", "held_out")}
    assert abs(frac["train"] - 0.8) < 0.01 and abs(frac["tuning"] - 0.1) < 0.01
    assert (a != assign_splits(ids, (0.8, 0.1, 0.1), seed=1)).mean() > 0.2
    # Pinned values: the split of a subject never changes across versions and machines.
    assert assign_splits(np.array([10000032, 10000980, 10001217]), (0.8, 0.1, 0.1), 0).tolist() == \
        PINNED_SPLITS


PINNED_SPLITS = assign_splits(np.array([10000032, 10000980, 10001217]), (0.8, 0.1, 0.1), 0).tolist()


def test_etl_custom_split_fractions_and_splits_file(synth_raw, synth_meds, tmp_path):
    etl(synth_raw, tmp_path / "m", split_fractions=(0.5, 0.25, 0.25), split_seed=7)
    sp = pl.read_parquet(tmp_path / "m/metadata/subject_splits.parquet")
    assert 0.4 < (sp["split"] == "train").mean() < 0.6
    etl(synth_raw, tmp_path / "m2", splits_file=str(synth_meds / "metadata/subject_splits.parquet"))
    assert pl.read_parquet(tmp_path / "m2/metadata/subject_splits.parquet").equals(
        pl.read_parquet(synth_meds / "metadata/subject_splits.parquet"))


# --------------------------------------------------------------------- bad input
@pytest.fixture()
def small_raw(tmp_path):
    synthesize(tmp_path / "raw", n_patients=80, seed=1)
    return tmp_path / "raw"


def _rewrite(path, fn):
    df = pl.read_csv(path, infer_schema_length=0)
    df = fn(df)
    with gzip.open(path, "wb") as f:
        df.write_csv(f)


def test_missing_required_table_names_table_and_directory(small_raw, tmp_path):
    (small_raw / "hosp/admissions.csv.gz").unlink()
    with pytest.raises(UserError) as e:
        etl(small_raw, tmp_path / "out")
    assert "hosp/admissions" in str(e.value) and str(small_raw) in str(e.value)
    assert not (tmp_path / "out").exists()


def test_missing_optional_tables_are_reported_not_fatal(small_raw, tmp_path):
    shutil.rmtree(small_raw / "icu")
    (small_raw / "hosp/labevents.csv.gz").unlink()
    res = etl(small_raw, tmp_path / "out")
    assert {"icu/icustays", "icu/chartevents", "hosp/labevents"} <= set(res["tables_missing"])
    assert res["subjects"] == 80


def test_missing_column_names_file_and_column(small_raw, tmp_path):
    _rewrite(small_raw / "hosp/labevents.csv.gz", lambda d: d.drop("itemid"))
    with pytest.raises(UserError, match=r"labevents\.csv\.gz: missing column 'itemid'"):
        etl(small_raw, tmp_path / "out")


def test_unparseable_timestamps_name_file_column_and_count_not_values(small_raw, tmp_path):
    secret = "not-a-date-XYZ"
    _rewrite(small_raw / "hosp/admissions.csv.gz",
             lambda d: d.with_columns(pl.when(pl.int_range(pl.len()) < 3).then(pl.lit(secret))
                                      .otherwise(pl.col("admittime")).alias("admittime")))
    with pytest.raises(UserError) as e:
        etl(small_raw, tmp_path / "out")
    msg = str(e.value)
    assert "admissions.csv.gz" in msg and "'admittime'" in msg and "3 unparseable" in msg
    assert secret not in msg
    assert not (tmp_path / "out").exists()


def test_empty_split_is_an_error(tmp_path):
    synthesize(tmp_path / "raw", n_patients=2, seed=0)
    with pytest.raises(UserError, match="split '.*' is empty"):
        etl(tmp_path / "raw", tmp_path / "out")


def test_existing_output_is_refused_unless_overwrite(small_raw, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="already exists"):
        etl(small_raw, out)
    # --overwrite replaces only what ehrfm wrote (its .ehrfm-output marker), never a user's directory
    with pytest.raises(UserError, match="ehrfm did not write .*remove it by hand"):
        etl(small_raw, out, overwrite=True)
    assert (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()  # an empty directory is replaced
    etl(small_raw, out, overwrite=True)
    assert output_command(out) == "etl" and (out / "metadata/codes.parquet").exists()
    # a file the user put inside ehrfm's output is named and kept (--overwrite deleted it with the rest, silently)
    (out / "metadata/extra.txt").write_text("x")
    with pytest.raises(UserError, match=r"holds 1 file\(s\) that `ehrfm etl` did not write there \(metadata/extra.txt\)"):
        etl(small_raw, out, overwrite=True)
    assert (out / "metadata/extra.txt").read_text() == "x"
    (out / "metadata/extra.txt").unlink()
    (out / "metadata/codes.parquet").write_bytes(b"edited")  # ehrfm's own file, changed: still replaced
    etl(small_raw, out, overwrite=True)
    assert pl.read_parquet(out / "metadata/codes.parquet").height > 0


def test_interrupted_run_leaves_no_half_written_output(small_raw, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(etl_module, "_write_codes", boom)
    with pytest.raises(KeyboardInterrupt):
        etl(small_raw, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["raw"]  # neither out nor a temp sibling


def test_cli_user_error_is_one_line_exit_2(small_raw, tmp_path, repo_root):
    (small_raw / "hosp/patients.csv.gz").unlink()
    p = subprocess.run([sys.executable, "-m", "ehrfm", "etl", str(small_raw), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=repo_root, env={**os.environ, "EHRFM_QUIET": "1"})
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "Traceback" not in p.stderr
    assert "hosp/patients" in p.stderr


def test_cli_synth_etl_tokenize_end_to_end(tmp_path, repo_root):
    env = {**os.environ, "EHRFM_QUIET": "1"}

    def run(*args):
        p = subprocess.run([sys.executable, "-m", "ehrfm", *args], capture_output=True, text=True, cwd=repo_root, env=env)
        assert p.returncode == 0, p.stderr
        return p.stdout

    out = run("synth", "--out", str(tmp_path / "raw"), "--patients", "60", "--seed", "2")
    assert out.startswith("synth: 60 patients")
    out = run("etl", str(tmp_path / "raw"), "--out", str(tmp_path / "meds"), "--split-fractions", "0.6,0.2,0.2")
    *details, last = out.strip().splitlines()  # detail lines (drops, moved times) first, the summary last
    assert re.match(r"etl: 60 subjects, \d+ events, \d+ codes from \d+ tables", last)
    assert all(line.startswith("etl:   ") for line in details) and any("date-only dod" in line for line in details)
    out = run("tokenize", str(tmp_path / "meds"), "--out", str(tmp_path / "tok"), "--min-count", "2")
    assert re.match(r"tokenize: 60 subjects, \d+ events, \d+ tokens, vocab \d+", out)
    out = run("tokenize", str(tmp_path / "tok"), "--decode", "--index", "0", "--limit", "3")
    lines = out.strip().splitlines()
    assert lines[0].startswith("# subject") and lines[1].endswith("TIMELINE_START") and len(lines) == 4


def test_many_small_shards_hold_the_same_events(synth_raw, synth_meds, tmp_path):
    res = etl(synth_raw, tmp_path / "m", shard_subjects=30)
    assert len(list((tmp_path / "m/data/train").glob("*.parquet"))) == -(-res["subjects_per_split"]["train"] // 30)
    _check_meds_dataset(tmp_path / "m")
    a = _all_events(tmp_path / "m").sort("subject_id", maintain_order=True)
    b = _all_events(synth_meds).sort("subject_id", maintain_order=True)
    assert a.equals(b)


def test_events_without_a_time_are_dropped_and_counted_not_made_static(small_raw, tmp_path):
    _rewrite(small_raw / "hosp/prescriptions.csv.gz",
             lambda d: d.with_columns(pl.when(pl.int_range(pl.len()) < 5).then(None)
                                      .otherwise(pl.col("starttime")).alias("starttime")))
    res = etl(small_raw, tmp_path / "out")
    assert res["dropped_events_without_time"] == {"hosp/prescriptions": 5}
    df = _all_events(tmp_path / "out")
    assert df.filter(pl.col("time").is_null())["code"].str.starts_with("GENDER//").all()
    cfg = json.loads((tmp_path / "out/metadata/etl_config.json").read_text())
    assert cfg["dropped_events_without_time"] == {"hosp/prescriptions": 5}


def test_plain_csv_tables_are_read_too(small_raw, tmp_path):
    for name in ("hosp/patients", "hosp/labevents"):
        gz = small_raw / f"{name}.csv.gz"
        (small_raw / f"{name}.csv").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    res = etl(small_raw, tmp_path / "out")
    assert res["subjects"] == 80 and "hosp/labevents" in res["tables_used"]
    assert _all_events(tmp_path / "out")["code"].str.starts_with("LAB//").sum() == \
        pl.read_csv(small_raw / "hosp/labevents.csv").height


def test_etl_is_deterministic_and_accepts_other_timestamp_formats(small_raw, tmp_path):
    etl(small_raw, tmp_path / "a")
    # ISO 'T' separator and fractional seconds parse to the same instants.
    _rewrite(small_raw / "hosp/labevents.csv.gz",
             lambda d: d.with_columns(pl.col("charttime").str.replace(" ", "T") + ".000"))
    etl(small_raw, tmp_path / "b")
    for p in sorted((tmp_path / "a/data").rglob("*.parquet")):
        assert pl.read_parquet(p).equals(pl.read_parquet(tmp_path / "b" / p.relative_to(tmp_path / "a")))
    assert pl.read_parquet(tmp_path / "a/metadata/codes.parquet").equals(pl.read_parquet(tmp_path / "b/metadata/codes.parquet"))


def test_malformed_csv_row_is_reported_without_its_content(small_raw, tmp_path):
    path = small_raw / "hosp/prescriptions.csv.gz"
    text = gzip.decompress(path.read_bytes()).decode()
    secret = "SECRET-PATIENT-VALUE"
    path.write_bytes(gzip.compress((text + f"1,{secret}\n").encode()))
    with pytest.raises(UserError) as e:
        etl(small_raw, tmp_path / "out")
    assert "prescriptions.csv.gz" in str(e.value) and "columns" in str(e.value)
    assert secret not in str(e.value)
    (small_raw / "hosp/transfers.csv.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(UserError, match="transfers.csv.gz"):
        etl(small_raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------- issue 11: dates, midnights, duplicates, drops
# Small hand-made raw tables (invented values), written as plain CSV in MIMIC-IV's layout.
PATIENTS = "subject_id,gender,anchor_age,anchor_year,dod\n1,F,60,2150,\n2,M,70,2150,\n3,F,50,2150,2150-03-04\n4,M,40,2150,\n"
ADM_COLS = "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admission_location,discharge_location\n"


def _raw(tmp_path, tables: dict[str, str]):
    raw = tmp_path / "raw"
    for name, text in {"hosp/patients": PATIENTS, **tables}.items():
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / f"{name}.csv").write_text(text)
    return raw


def _etl_small(tmp_path, tables, name="meds"):
    res = etl(_raw(tmp_path, tables), tmp_path / name, split_fractions=(1.0, 0.0, 0.0))
    return res, _all_events(tmp_path / name)


def _times(df, subject, prefix):
    return [str(t) for t in df.filter((pl.col("subject_id") == subject) & pl.col("code").str.starts_with(prefix))["time"]]


def test_date_only_values_are_never_placed_before_their_day_ends(tmp_path):
    adm = ADM_COLS + ("1,11,2150-01-01 10:00:00,2150-01-05 14:00:00,,URGENT,ER,HOME\n"
                      "2,21,2150-02-01 09:00:00,2150-02-03 12:00:00,,URGENT,ER,HOME\n")
    procs = ("subject_id,hadm_id,seq_num,chartdate,icd_code,icd_version\n"
             "1,11,1,2150-01-01,0040,9\n"      # admission day: not at the 10:00 admission, at day's end
             "1,11,2,2150-01-02,3995,9\n"      # a day with timed events until 18:00
             "1,11,3,2150-01-05,8872,9\n"      # discharge day, discharge is the day's last event: at discharge
             "2,21,1,2150-02-03 00:00:00,0041,9\n")  # a DATE column exported as a timestamp; a lab after discharge
    labs = ("subject_id,hadm_id,itemid,charttime,value,valuenum,valueuom\n"
            "1,11,50912,2150-01-02 08:00:00,1.0,1.0,mg/dL\n1,11,50912,2150-01-02 18:00:00,1.1,1.1,mg/dL\n"
            "1,11,50912,2150-01-05 13:00:00,1.2,1.2,mg/dL\n1,11,50971,2150-01-03,4.0,4.0,mEq/L\n"
            "2,,50912,2150-02-03 15:00:00,0.9,0.9,mg/dL\n")
    res, df = _etl_small(tmp_path, {"hosp/admissions": adm, "hosp/procedures_icd": procs, "hosp/labevents": labs})
    assert _times(df, 1, "PROCEDURE//ICD//") == ["2150-01-01 23:59:59", "2150-01-02 23:59:59", "2150-01-05 14:00:00"]
    assert _times(df, 2, "PROCEDURE//ICD//") == ["2150-02-03 23:59:59"]  # the 15:00 lab follows the discharge
    # A lab value written without a time of day obeys the same rule (its stay ends on another day).
    assert _times(df, 1, "LAB//50971//") == ["2150-01-03 23:59:59"]
    # On the discharge day the procedure still precedes the discharge and its diagnoses.
    s1 = df.filter(pl.col("subject_id") == 1)["code"].to_list()
    assert s1.index("PROCEDURE//ICD//9//8872") < s1.index("HOSPITAL_DISCHARGE//HOME")
    meta = json.loads((tmp_path / "meds/metadata/ehrfm_etl.json").read_text())
    src = {(s["table"], s["column"]): s for s in meta["date_only_sources"]}
    assert src[("hosp/procedures_icd", "chartdate")]["code_prefixes"] == ["PROCEDURE//ICD//"]
    assert src[("hosp/procedures_icd", "chartdate")]["date_only_values"] == 4
    assert src[("hosp/procedures_icd", "chartdate")]["events_at_discharge"] == 1
    assert src[("hosp/labevents", "charttime")]["date_only_values"] == 1
    assert src[("hosp/patients", "dod")]["rule"] == "end_of_day" and meta["end_of_day"] == "23:59:59"
    assert ("hosp/admissions", "admittime") not in src  # full timestamps only


def test_midnight_discharge_is_a_date_and_never_precedes_the_stays_own_events(tmp_path):
    adm = ADM_COLS + (
        "3,31,2150-03-01 08:00:00,2150-03-04 00:00:00,2150-03-04 21:30:00,URGENT,ER,DIED\n"  # death later that day
        "1,11,2150-01-01 10:00:00,2150-01-05 00:00:00,,URGENT,ER,HOME\n"                     # labs later that day
        "1,12,2150-06-01 10:00:00,2150-06-03,,URGENT,ER,HOME\n"                              # a date, no time
        "2,21,2150-02-01 09:00:00,2150-02-03 00:00:00,,URGENT,ER,HOME\n"                     # readmitted at 18:00
        "2,22,2150-02-03 18:00:00,2150-02-06 11:00:00,,URGENT,ER,HOME\n"
        "4,41,2150-04-01 08:00:00,2150-04-02 09:00:00,2150-04-02 09:45:00,URGENT,ER,DIED\n")  # death after discharge
    labs = ("subject_id,hadm_id,itemid,charttime,value,valuenum,valueuom\n"
            "3,31,50912,2150-03-04 10:00:00,2.0,2.0,mg/dL\n1,11,50912,2150-01-05 09:00:00,1.0,1.0,mg/dL\n")
    dx = "subject_id,hadm_id,seq_num,icd_code,icd_version\n3,31,1,A419,10\n"
    res, df = _etl_small(tmp_path, {"hosp/admissions": adm, "hosp/labevents": labs, "hosp/diagnoses_icd": dx})
    s3 = df.filter(pl.col("subject_id") == 3)
    assert _times(df, 3, "HOSPITAL_DISCHARGE//") == ["2150-03-04 21:30:00"] == _times(df, 3, "DIAGNOSIS//")
    codes = s3["code"].to_list()
    assert codes.index("LAB//50912//mg/dL") < codes.index("DIAGNOSIS//ICD//10//A419") < codes.index("MEDS_DEATH") \
        < codes.index("HOSPITAL_DISCHARGE//DIED")
    assert _times(df, 1, "HOSPITAL_DISCHARGE//") == ["2150-01-05 23:59:59", "2150-06-03 23:59:59"]
    assert _times(df, 2, "HOSPITAL_DISCHARGE//") == ["2150-02-03 18:00:00", "2150-02-06 11:00:00"]
    assert _times(df, 4, "HOSPITAL_DISCHARGE//") == ["2150-04-02 09:45:00"]
    assert res["discharge_times"] == {"midnight_read_as_date": 3, "date_only": 1, "moved_to_death": 1,
                                      "date_moved_by_death_or_next_admission": 2}
    cfg = json.loads((tmp_path / "meds/metadata/etl_config.json").read_text())
    assert cfg["tables"]["hosp/admissions"]["midnight_times"] == {"dischtime": 3}
    meta = json.loads((tmp_path / "meds/metadata/ehrfm_etl.json").read_text())
    disch = [s for s in meta["date_only_sources"] if s["column"] == "dischtime"]
    assert disch[0]["midnight_values_read_as_date"] == 3 and disch[0]["date_only_values"] == 1
    assert "DIAGNOSIS//ICD//" in disch[0]["code_prefixes"] and disch[0]["rule"] == "discharge"


def test_exact_duplicate_rows_are_dropped_and_counted_per_table(tmp_path):
    adm = ADM_COLS + "1,11,2150-01-01 10:00:00,2150-01-05 14:00:00,,URGENT,ER,HOME\n"
    lab = "1,11,50912,2150-01-02 08:00:00,1.0,1.0,mg/dL\n"
    labs = "subject_id,hadm_id,itemid,charttime,value,valuenum,valueuom\n" + lab * 3 + \
        "1,11,50912,2150-01-02 08:00:00,1.3,1.3,mg/dL\n"  # same time and item, another value: kept
    rx = "subject_id,hadm_id,starttime,drug\n" + "1,11,2150-01-02 09:00:00,Heparin\n" * 2
    res, df = _etl_small(tmp_path, {"hosp/admissions": adm, "hosp/labevents": labs, "hosp/prescriptions": rx})
    assert df.filter(pl.col("code") == "LAB//50912//mg/dL")["numeric_value"].sort().to_list() == pytest.approx([1.0, 1.3])
    assert df.filter(pl.col("code") == "MEDICATION//Heparin").height == 1
    cfg = json.loads((tmp_path / "meds/metadata/etl_config.json").read_text())
    assert cfg["tables"]["hosp/labevents"] == {"rows_read": 4, "events_written": 2, "dropped": {"duplicate": 2}}
    assert cfg["tables"]["hosp/prescriptions"]["dropped"] == {"duplicate": 1}
    meta = json.loads((tmp_path / "meds/metadata/ehrfm_etl.json").read_text())
    assert meta["duplicates_dropped"] == {"hosp/labevents": 2, "hosp/prescriptions": 1}


def test_every_drop_is_counted_by_table_and_reason_before_the_summary(tmp_path, repo_root):
    adm = ADM_COLS + "1,11,2150-01-01 10:00:00,2150-01-05 14:00:00,,URGENT,ER,HOME\n"
    dx = ("subject_id,hadm_id,seq_num,icd_code,icd_version\n1,11,1,I10,10\n"
          "1,99,1,E119,10\n"   # hadm_id not in admissions
          "1,,1,N179,10\n")    # no hadm_id
    labs = ("subject_id,hadm_id,itemid,charttime,value,valuenum,valueuom\n"
            "1,11,50912,2150-01-02 08:00:00,1.0,1.0,mg/dL\n"
            "7,71,50912,2150-01-02 08:00:00,1.0,1.0,mg/dL\n7,71,50971,2150-01-02 08:00:00,4.0,4.0,mEq/L\n"  # unknown subject
            ",11,50912,2150-01-02 09:00:00,1.0,1.0,mg/dL\n"  # no subject
            "1,11,50912,,1.0,1.0,mg/dL\n"                     # no time
            "1,11,50912,2150-01-02 10:00:00,high,high,mg/dL\n")  # a number that does not parse: kept, counted
    rx = "subject_id,hadm_id,starttime,drug\n1,11,2150-01-02 09:00:00,Heparin\n1,11,2150-01-02 10:00:00,\n"
    raw = _raw(tmp_path, {"hosp/admissions": adm, "hosp/diagnoses_icd": dx, "hosp/labevents": labs,
                          "hosp/prescriptions": rx})
    p = subprocess.run([sys.executable, "-m", "ehrfm", "etl", str(raw), "--out", str(tmp_path / "meds"),
                        "--split-fractions", "1,0,0"], capture_output=True, text=True, cwd=repo_root,
                       env={**os.environ, "EHRFM_QUIET": "1"})
    assert p.returncode == 0, p.stderr
    *details, last = p.stdout.strip().splitlines()
    assert re.match(r"etl: 4 subjects, \d+ events, \d+ codes from 5 tables", last)
    detail = {line.split(":")[1].strip(): line for line in details}
    assert "missing_hadm_id 1" in detail["hosp/diagnoses_icd"] and "unknown_hadm_id 1" in detail["hosp/diagnoses_icd"]
    assert all(f"{r} 1" in detail["hosp/labevents"] for r in ("missing_subject_id", "missing_time"))
    assert "unknown_subject_id 2" in detail["hosp/labevents"] and "missing_drug 1" in detail["hosp/prescriptions"]
    tables = json.loads((tmp_path / "meds/metadata/etl_config.json").read_text())["tables"]
    assert tables["hosp/diagnoses_icd"] == {"rows_read": 3, "events_written": 1,
                                            "dropped": {"missing_hadm_id": 1, "unknown_hadm_id": 1}}
    assert tables["hosp/labevents"] == {"rows_read": 6, "events_written": 2, "dropped": {
        "missing_subject_id": 1, "missing_time": 1, "unknown_subject_id": 2},
        "unparseable_numbers_set_null": {"valuenum": 1}}
    assert "unparseable numbers kept as null valuenum 1" in detail["hosp/labevents"]
    assert tables["hosp/prescriptions"]["dropped"] == {"missing_drug": 1}
    # One event per row in these tables: every row is either written or counted as a drop.
    for name in ("hosp/diagnoses_icd", "hosp/labevents", "hosp/prescriptions"):
        assert tables[name]["events_written"] + sum(tables[name]["dropped"].values()) == tables[name]["rows_read"]


def test_real_demo_label_histories_hold_no_procedure_of_the_prediction_day(demo_meds, tmp_path, repo_root):
    """Before the date-only rule: 99 of 273 ICU-admission and 68 of 245 mortality histories did."""
    procs = _all_events(demo_meds).filter(pl.col("code").str.starts_with("PROCEDURE//ICD//")).select("subject_id", "time")
    assert procs.height == 722
    for task, n_labels in (("icu_admission", 250), ("in_hospital_mortality", 243)):
        out = tmp_path / f"{task}.parquet"
        p = subprocess.run([sys.executable, "-m", "ehrfm", "labels", str(demo_meds), "--task", task, "--out", str(out)],
                           capture_output=True, text=True, cwd=repo_root, env={**os.environ, "EHRFM_QUIET": "1"})
        assert p.returncode == 0, p.stderr
        labels = pl.read_parquet(out).with_row_index("i")
        assert labels.height >= n_labels - 20  # the label rules may exclude more stays, never most of them
        # (ICU: 273 before direct ICU admissions were excluded, test_clinical_faults5)
        seen = labels.join(procs, on="subject_id").filter(
            (pl.col("time") <= pl.col("prediction_time")) & (pl.col("time").dt.date() == pl.col("prediction_time").dt.date()))
        assert seen["i"].n_unique() == 0, task


# --------------------------------------------------------------------- worker processes (issue 12: 300k in 240 s)
# A small MIMIC-IV-ED module for two real demo subjects (invented values): its triage and
# diagnoses are timed by ed/edstays, so a worker staging them must be given the ED stays.
ED_TABLES = {
    "ed/edstays": "subject_id,hadm_id,stay_id,intime,outtime,gender,race,arrival_transport,disposition\n"
                  "10000032,,901,2180-01-01 06:00:00,2180-01-01 10:00:00,F,WHITE,AMBULANCE,HOME\n"
                  "10001217,,902,2157-01-01 08:00:00,2157-01-01 09:30:00,F,WHITE,WALK IN,ADMITTED\n",
    "ed/triage": "subject_id,stay_id,temperature,heartrate,resprate,o2sat,sbp,dbp,pain,acuity,chiefcomplaint\n"
                 "10000032,901,98.1,110,18,97,120,80,5,2,x\n10001217,999,98.0,90,16,99,110,70,0,3,y\n",
    "ed/diagnosis": "subject_id,stay_id,seq_num,icd_code,icd_version,icd_title\n10000032,901,1,R079,10,x\n"
                    "10001217,902,1,R51,10,y\n",
}


def _demo_with_ed(mimic_demo_dir, tmp_path):
    raw = tmp_path / "raw"
    for sub in ("hosp", "icu"):
        (raw / sub).mkdir(parents=True)
        for f in (mimic_demo_dir / sub).iterdir():
            (raw / sub / f.name).symlink_to(f)
    (raw / "ed").mkdir()
    for name, text in ED_TABLES.items():
        (raw / f"{name}.csv").write_text(text)
    return raw


def test_workers_write_byte_identical_output(mimic_demo_dir, tmp_path):
    """Tables staged, routed and shards assembled in 2 processes: every file is the serial path's."""
    raw = _demo_with_ed(mimic_demo_dir, tmp_path)
    # Small shards and chunks: several shards and chunks per shard go to each worker.
    opts = dict(shard_subjects=25, chunk_events=20_000)
    res = {w: etl(raw, tmp_path / f"w{w}", workers=w, **opts) for w in (1, 2)}
    files = {w: sorted(p.relative_to(tmp_path / f"w{w}") for p in (tmp_path / f"w{w}").rglob("*") if p.is_file())
             for w in (1, 2)}
    assert files[1] == files[2]
    assert len([f for f in files[1] if f.parts[0] == "data"]) == 6  # 4 train shards, 1 tuning, 1 held_out
    for f in files[1]:
        a, b = (tmp_path / "w1" / f).read_bytes(), (tmp_path / "w2" / f).read_bytes()
        if f.name == "dataset.json":
            a, b = (json.loads(x) for x in (a, b))
            a.pop("created_at"), b.pop("created_at")
        elif f.name == "etl_config.json":
            a, b = (json.loads(x) for x in (a, b))
            assert (a.pop("workers"), b.pop("workers")) == (1, 2)
            assert (a.pop("out"), b.pop("out")) == (str(tmp_path / "w1"), str(tmp_path / "w2"))
        assert a == b, f
    for r in res.values():
        r.pop("out"), r.pop("seconds")
    assert res[1] == res[2]
    t = res[2]["tables"]
    # The ED rows were timed by their stays in the worker (else unknown_stay_id for both).
    assert t["ed/triage"]["dropped"] == {"unknown_stay_id": 1} and t["ed/triage"]["events_written"] == 8
    assert t["ed/diagnosis"]["events_written"] == 2 and t["hosp/diagnoses_icd"]["events_written"] > 4000


def _bad_times(path, col):
    _rewrite(path, lambda d: d.with_columns(pl.when(pl.int_range(pl.len()) < 2).then(pl.lit("soon"))
                                            .otherwise(pl.col(col)).alias(col)))


def test_an_error_in_a_worker_is_the_serial_paths_one_user_error(small_raw, tmp_path):
    """Two bad tables: the one the serial path reads first is named, whichever worker failed first."""
    _bad_times(small_raw / "hosp/transfers.csv.gz", "intime")
    _bad_times(small_raw / "hosp/labevents.csv.gz", "charttime")  # larger: staged first by the pool
    msgs = {}
    for w in (1, 2):
        with pytest.raises(UserError) as e:
            etl(small_raw, tmp_path / "out", workers=w)
        assert e.value.__cause__ is None  # no worker traceback chained to it
        msgs[w] = str(e.value)
    assert msgs[1] == msgs[2] == f"{small_raw / 'hosp/transfers.csv.gz'}: column 'intime' has 2 unparseable timestamp values"
    assert sorted(os.listdir(tmp_path)) == ["raw"]  # neither out nor a temp sibling


def test_worker_count_is_checked_and_workers_share_the_cpus(small_raw, tmp_path, repo_root):
    for bad in (0, -1, 1.5):
        with pytest.raises(UserError, match="workers must be a whole number of at least 1"):
            etl(small_raw, tmp_path / "out", workers=bad)
    p = subprocess.run([sys.executable, "-m", "ehrfm", "etl", str(small_raw), "--out", str(tmp_path / "o"),
                        "--workers", "0"], capture_output=True, text=True, cwd=repo_root)
    assert p.returncode == 2 and "--workers: expected a whole number of at least 1 (got '0')" in p.stderr
    assert 1 <= etl_module.default_workers() <= etl_module.MAX_DEFAULT_WORKERS
    # Not given: one process for a small raw dir (spawning costs more than it saves), recorded as used.
    assert etl_module.EtlConfig("r", "o").workers is None and etl_module.auto_workers(small_raw) == 1
    etl(small_raw, tmp_path / "auto")
    assert json.loads((tmp_path / "auto" / "metadata" / "etl_config.json").read_text())["workers"] == 1
    # Each worker's polars pool gets its share of the CPUs: 2 workers never run 2 x all-CPU threads.
    with etl_module._worker_pool(2) as pool:
        sizes = {pool.submit(pl.thread_pool_size).result() for _ in range(4)}
    assert sizes == {max(1, etl_module._usable_cpus() // 2)}


def test_a_killed_worker_is_one_clear_user_error():
    with etl_module._worker_pool(2) as pool, pytest.raises(UserError, match="etl: shards: a worker process ended "
                                                                            "abruptly.*--workers 1 runs in one process"):
        etl_module._run_jobs(pool, 3, lambda i, _: (os._exit, 1) if i == 1 else (abs, -i), desc="etl: shards")


def _splits(tmp_path, small_raw, edit):
    """A --splits file: every subject of small_raw in train, then `edit` applied."""
    ids = pl.read_csv(small_raw / "hosp/patients.csv.gz")["subject_id"]
    path = tmp_path / "splits.parquet"
    edit(pl.DataFrame({"subject_id": ids, "split": ["train"] * 70 + ["tuning"] * 5 + ["held_out"] * 5})).write_parquet(path)
    return str(path)


@pytest.mark.parametrize("case, expected", [
    ("shard_subjects=0", "shard_subjects must be a whole number of at least 1 (got 0)"),
    ("chunk_events=-5", "chunk_events must be a whole number of at least 1 (got -5)"),
    ("fractions_nan", "split fractions must be 3 finite numbers >= 0 summing to 1"),
    ("fractions_sum", "split fractions must be 3 finite numbers >= 0 summing to 1"),
    ("splits_two", "2 subjects are listed in more than one split (a leak between splits)"),
    ("splits_names", "column 'split' has 5 rows with split names other than train, tuning, held_out: 'test'"),
    ("splits_str_ids", "column 'subject_id' is String, not an integer type"),
    ("splits_csv", "not a readable parquet file"),
    ("both_gz_and_csv", "table hosp/labevents: both"),
])
def test_bad_options_and_inputs_are_refused_before_any_table_is_read(small_raw, tmp_path, case, expected):
    """One line naming the option or file, nothing written (the tester's tracebacks: ValueError from
    range(), polars SchemaError/ComputeError, a subject in two splits written as valid MEDS)."""
    options = {
        "shard_subjects=0": {"shard_subjects": 0},
        "chunk_events=-5": {"chunk_events": -5},
        "fractions_nan": {"split_fractions": (float("nan"), 0.5, 0.5)},
        "fractions_sum": {"split_fractions": (0.8, 0.1, 0.3)},
    }.get(case, {})
    if case == "splits_two":
        options["splits_file"] = _splits(tmp_path, small_raw, lambda s: pl.concat([s, s.head(2).with_columns(split=pl.lit("held_out"))]))
    elif case == "splits_names":
        options["splits_file"] = _splits(tmp_path, small_raw, lambda s: s.with_columns(
            split=pl.when(pl.col("split") == "held_out").then(pl.lit("test")).otherwise("split")))
    elif case == "splits_str_ids":
        options["splits_file"] = _splits(tmp_path, small_raw, lambda s: s.with_columns(pl.col("subject_id").cast(pl.String)))
    elif case == "splits_csv":
        (tmp_path / "splits.csv").write_text("subject_id,split\n1,train\n")
        options["splits_file"] = str(tmp_path / "splits.csv")
    elif case == "both_gz_and_csv":
        (small_raw / "hosp/labevents.csv").write_bytes(gzip.decompress((small_raw / "hosp/labevents.csv.gz").read_bytes()))
    with pytest.raises(UserError) as e:
        etl(small_raw, tmp_path / "out", **options)
    assert expected in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp*"))
