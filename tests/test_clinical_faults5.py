"""Label faults found on the real MIMIC-IV demo by a fifth clinical review (counts only, no rows).

Each test fails without its fix (checked against ehrfm/clinical/labels.py as it was before the fix).

A patient admitted straight into the ICU was a positive icu_admission label: the prediction is
made at the hospital admission, and only an ICU admission at or before it was excluded. MIMIC-IV
writes admittime to the minute (all 275 admittimes of the demo end in :00) and the ICU intime to
the second, so the one registration of a direct ICU admission gives an ICU intime a few seconds
after the admission: on the demo 20 of the 126 positive stays began their ICU stay 24-117 s after
admittime, each with its first unit (the transfers "admit" row, at the ICU intime) an ICU. The
outcome was decided when the prediction was made (at 0 s the same stay was excluded). Such stays
are now excluded (`admitted_directly_to_icu`, an ICU admission within
LabelConfig.direct_icu_minutes, default 5 min, of the admission; the next ICU stay on the demo begins 12 min
after). The synthetic data (ICU stays from 1 h after the admission) is unchanged.
"""

from __future__ import annotations

import polars as pl

from ehrfm.clinical.labels import make_labels
from tokenization.etl import etl

PATIENTS = ("subject_id,gender,anchor_age,anchor_year,dod\n"
            "1,F,60,2150,\n2,M,70,2150,\n3,F,55,2150,\n4,M,65,2150,\n5,F,80,2150,\n")
ADMISSIONS = ("subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admission_location,discharge_location\n"
              + "".join(f"{s},{s}1,2150-01-01 10:00:00,2150-01-06 14:00:00,,EW EMER.,EMERGENCY ROOM,HOME\n"
                        for s in range(1, 6)))
ICUSTAYS = ("subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los\n"
            # 1 and 2: admitted straight into the ICU, 34 s and 117 s after the (minute) admittime
            "1,11,901,Medical Intensive Care Unit (MICU),Medical Intensive Care Unit (MICU),2150-01-01 10:00:34,2150-01-03 10:00:00,1.9996\n"
            "2,21,902,Coronary Care Unit (CCU),Coronary Care Unit (CCU),2150-01-01 10:01:57,2150-01-03 10:00:00,1.9986\n"
            # 3: reaches the ICU 12 min after the admission: an outcome after the prediction time
            "3,31,903,Surgical Intensive Care Unit (SICU),Surgical Intensive Care Unit (SICU),2150-01-01 10:12:00,2150-01-03 10:00:00,1.9917\n"
            # 5: in the ICU at the admittime itself (excluded before the fix too)
            "5,51,905,Medical Intensive Care Unit (MICU),Medical Intensive Care Unit (MICU),2150-01-01 10:00:00,2150-01-03 10:00:00,2.0\n")
TRANSFERS = ("subject_id,hadm_id,transfer_id,eventtype,careunit,intime,outtime\n"
             "1,11,1,admit,Medical Intensive Care Unit (MICU),2150-01-01 10:00:34,2150-01-03 10:00:00\n"
             "2,21,2,admit,Coronary Care Unit (CCU),2150-01-01 10:01:57,2150-01-03 10:00:00\n"
             "3,31,3,admit,Medicine,2150-01-01 10:00:00,2150-01-01 10:12:00\n"
             "3,31,4,transfer,Surgical Intensive Care Unit (SICU),2150-01-01 10:12:00,2150-01-03 10:00:00\n"
             "4,41,5,admit,Medicine,2150-01-01 10:00:00,2150-01-06 14:00:00\n"
             "5,51,6,admit,Medical Intensive Care Unit (MICU),2150-01-01 10:00:00,2150-01-03 10:00:00\n")


def test_a_direct_icu_admission_is_no_icu_admission_label(tmp_path):
    """Raw MIMIC-IV tables -> ehrfm etl -> labels: the two stays admitted straight into the ICU
    (34 s and 117 s after admittime) were positive labels predicted at the admission; now they are
    excluded like the stay in the ICU at the admittime itself. An ICU stay 12 min later stays positive."""
    raw = tmp_path / "raw"
    for name, text in {"hosp/patients": PATIENTS, "hosp/admissions": ADMISSIONS, "icu/icustays": ICUSTAYS,
                       "hosp/transfers": TRANSFERS}.items():
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / f"{name}.csv").write_text(text)
    meds = tmp_path / "meds"
    etl(raw, meds, workers=1, split_fractions=(1.0, 0.0, 0.0))
    labels, info = make_labels(meds, "icu_admission")
    got = sorted((sid, value) for sid, _, value in labels.iter_rows())
    assert got == [(3, True), (4, False)]  # before: [(1, True), (2, True), (3, True), (4, False)]
    assert info["excluded"] == {"no_discharge": 0, "admitted_directly_to_icu": 2, "in_icu_at_prediction_time": 1}
    assert (info["n"], info["n_positive"], info["n"] + info["n_excluded"]) == (2, 1, info["n_stays"])


def test_no_icu_label_of_the_demo_is_a_direct_icu_admission(demo_meds):
    """On the real demo 20 of 126 positive icu_admission labels (273) were stays admitted straight
    into the ICU (intime 24-117 s after admittime); now 253 labels, 106 positive, every positive's
    first ICU admission at least 12 min after its prediction time. The other tasks are unchanged."""
    labels, info = make_labels(demo_meds, "icu_admission")
    ev = pl.read_parquet(str(demo_meds / "data" / "*" / "*.parquet"))
    adm = ev.filter(pl.col("code").str.starts_with("HOSPITAL_ADMISSION//")).select(
        "subject_id", "hadm_id", prediction_time=pl.col("time"))
    icu = ev.filter(pl.col("code").str.starts_with("ICU_ADMISSION//")).group_by("hadm_id").agg(first_icu=pl.col("time").min())
    pos = labels.filter("boolean_value").join(adm, on=["subject_id", "prediction_time"]).join(icu, on="hadm_id")
    soonest = int(pos.select((pl.col("first_icu") - pl.col("prediction_time")).dt.total_seconds().min()).item())
    # before: 273, 126, 126, 24; 253, 106, 106 before stays continued by the next within 1 h were excluded (3, 1 positive);
    # one of those 3 is excluded first as later_stay_in_history since 2026-12-04 (the next stay's rows before its admission)
    assert (info["n"], info["n_positive"], pos.height, soonest) == (250, 105, 105, 720)
    assert info["excluded"] == {"no_discharge": 0, "admitted_directly_to_icu": 20, "in_icu_at_prediction_time": 2, "transferred": 2,
                                "later_stay_in_history": 1}
    counts = {t: (i["n"], i["n_positive"]) for t, i in make_labels(demo_meds, "all")[1].items()}
    assert counts == {"in_hospital_mortality": (242, 14), "long_los": (242, 91), "icu_admission": (250, 105),
                      "readmission_30d": (255, 49)}


def test_the_synthetic_icu_labels_have_no_direct_icu_admission(synth_meds):
    """The synthetic generator puts ICU stays 1-10 h after the admission: the rule excludes none of them
    (the default demo's labels are unchanged, byte for byte on a 2,000-patient cohort)."""
    _, info = make_labels(synth_meds, "icu_admission")
    assert "admitted_directly_to_icu" not in info["excluded"] and info["n_positive"] > 0


def test_the_direct_icu_window_is_a_saved_setting(demo_meds, tmp_path):
    """The 5-minute window is `ehrfm labels --direct-icu-minutes` (LabelConfig.direct_icu_minutes), saved
    in the label file's JSON like the other windows; 0 turns the exclusion off (270 labels, 125 positive
    on the demo, as before it) and a negative window is refused in one line."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "EHRFM_QUIET": "1"}

    def labels(*flags):
        out = tmp_path / f"icu{len(list(tmp_path.iterdir()))}.parquet"
        p = subprocess.run([sys.executable, "-m", "ehrfm", "labels", str(demo_meds), "--task", "icu_admission",
                            "--out", str(out), *flags], capture_output=True, text=True, env=env)
        return p, out

    p, out = labels()
    assert p.returncode == 0, p.stderr
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["config"]["direct_icu_minutes"] == 5.0 and (side["n"], side["n_positive"]) == (250, 105)
    p, out = labels("--direct-icu-minutes", "0")
    assert p.returncode == 0, p.stderr
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["config"]["direct_icu_minutes"] == 0.0 and (side["n"], side["n_positive"]) == (270, 125)  # 273, 126 less 3 transferred (or later_stay_in_history)
    p, _ = labels("--direct-icu-minutes", "-1")
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "ehrfm labels: error: --direct-icu-minutes must be a finite number >= 0 and at most 7.8894e+07 (150 years) (got -1.0)"], p.stderr


def test_a_one_file_output_named_as_a_directory_is_refused(demo_meds, tmp_path):
    """`ehrfm labels --task icu_admission --out d/` wrote a parquet file named d (Path drops the
    slash); `ehrfm audit --out` likewise. Both now refuse it in one line and write nothing."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "EHRFM_QUIET": "1"}
    (tmp_path / "existing").mkdir()
    for out in (f"{tmp_path / 'd'}/", str(tmp_path / "existing")):
        p = subprocess.run([sys.executable, "-m", "ehrfm", "labels", str(demo_meds), "--task", "icu_admission", "--out", out],
                           capture_output=True, text=True, env=env)
        assert p.returncode == 2 and p.stderr.strip().splitlines() == [
            f"ehrfm labels: error: --out {out}: this command writes one file there, and that names a directory; "
            "give a file path (e.g. DIR/name.parquet)"], p.stderr
    assert not (tmp_path / "d").exists() and not any((tmp_path / "existing").iterdir())
    p = subprocess.run([sys.executable, "-m", "ehrfm", "audit", str(demo_meds), "--labels", str(tmp_path), "--out",
                        f"{tmp_path / 'a'}/"], capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "--out" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "a").exists()
