"""A sixth clinical review on the real MIMIC-IV demo (counts only, no rows): what the leakage audit missed.

Each test fails without its fix (checked against the file as it was before the fix).
"""

from __future__ import annotations

import shutil

import polars as pl
from test_audit import DIS, T0, d, h, stay, write_label_file, write_meds

from ehrfm.clinical.audit import audit


def _labels(tmp_path, files: dict[str, list[tuple]]):
    lab = tmp_path / "labels"
    lab.mkdir()
    for task, rows in files.items():
        write_label_file(lab / f"{task}.parquet", task, rows)
    return lab


def test_the_audit_sees_a_stays_diagnoses_before_its_discharge(tmp_path):
    """ICD diagnoses and DRG codes are given after the discharge from the whole record. An ETL that
    dates them by the admission puts every one of them (the cause of death among them) in the stay's
    24-hour history: the audit said 0 for mortality, long stay and readmission. It now counts them
    under (b) while the stay is open, also on MEDS without any metadata; at the discharge, or from an
    earlier stay, they are known."""
    dx, drg = "DIAGNOSIS//ICD//10//J9601", "DRG//APR//720"
    events = (stay(1, 11, T0, T0 + d(5), [(1, T0, dx, 11)])                               # at its admission
              + stay(2, 21, T0, T0 + d(5), [(2, T0 + h(2), drg, 21)])                       # 2 h after it
              + stay(3, 31, T0, T0 + d(5), [(3, T0 + d(5), dx, 31), (3, T0 + d(5), drg, 31)])  # at its discharge
              + stay(4, 41, T0 - d(40), T0 - d(35), [(4, T0 - d(40), dx, 41)])               # an earlier stay's, known by now
              + stay(4, 42, T0, T0 + d(5)))
    mortality = [(s, T0 + h(24), False) for s in (1, 2, 3, 4)]
    readmission = [(s, T0 + d(5), False) for s in (1, 2, 3, 4)]
    for meta, name in (({"date_only_codes": []}, "declared"), (None, "another ETL")):
        meds = write_meds(tmp_path / name / "meds", events, meta)
        res = audit(meds, _labels(tmp_path / name, {"in_hospital_mortality": mortality, "readmission_30d": readmission}))
        assert {t: a.date_only_same_day for t, a in res.tasks.items()} == {"in_hospital_mortality": 2, "readmission_30d":
                                                                           0 if meta else None}, name
        assert not res.clean, name
    # Nothing coded after the discharge in an open stay, and no metadata: (b) stays unknown, not clean.
    meds = write_meds(tmp_path / "none" / "meds", stay(3, 31, T0, T0 + d(5), [(3, T0 + d(5), dx, 31)]))
    res = audit(meds, _labels(tmp_path / "none", {"in_hospital_mortality": [(3, T0 + h(24), False)]}))
    assert res.tasks["in_hospital_mortality"].date_only_same_day is None and res.clean


def test_the_audit_sees_the_demos_diagnoses_dated_by_their_admission(demo_meds, tmp_path):
    """On the real demo, this package's ETL puts diagnoses and DRG codes at the discharge: the audit
    is clean. The same MEDS with them moved to their stay's admission (as some ETLs date them): every
    one of the 242 mortality histories holds its own stay's diagnoses, and the audit says so."""
    from test_audit import audit_of_ehrfm_labels

    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    res = audit_of_ehrfm_labels(demo_meds, labels_dir)
    assert res.clean and res.tasks["in_hospital_mortality"].n_labels == 242

    moved = tmp_path / "moved"
    shutil.copytree(demo_meds, moved)
    coded = pl.col("code").str.starts_with("DIAGNOSIS//") | pl.col("code").str.starts_with("DRG//")
    for shard in (moved / "data").rglob("*.parquet"):
        ev = pl.read_parquet(shard)
        adm = (ev.filter(pl.col("code").str.starts_with("HOSPITAL_ADMISSION//"))
               .group_by("hadm_id").agg(pl.col("time").min().alias("admitted")))
        ev = (ev.join(adm, on="hadm_id", how="left", maintain_order="left")
              .with_columns(time=pl.when(coded & pl.col("admitted").is_not_null()).then("admitted").otherwise("time"))
              .drop("admitted").sort("subject_id", "time", nulls_last=False, maintain_order=True))
        ev.write_parquet(shard)
    tasks = audit(moved, labels_dir).tasks
    assert tasks["in_hospital_mortality"].date_only_same_day == 242
    assert tasks["long_los"].date_only_same_day == tasks["long_los"].n_labels
    assert tasks["readmission_30d"].date_only_same_day == 0  # predicted at the discharge: coded by then


def test_a_discharge_at_the_prediction_time_is_known(tmp_path):
    """The (b) rule's boundary: a diagnosis at a discharge is known at that discharge, even when
    another stay of the subject opens at the same instant (a transfer recorded as discharge + admission)."""
    dx = "DIAGNOSIS//ICD//10//I214"
    events = (stay(5, 51, T0 - d(2), T0, [(5, T0, dx, 51)])
              + [(5, T0, "HOSPITAL_ADMISSION//EW EMER.//TRANSFER FROM HOSPITAL", 52), (5, T0 + d(4), DIS, 52)])
    meds = write_meds(tmp_path / "meds", events, {"date_only_codes": []})
    res = audit(meds, _labels(tmp_path, {"in_hospital_mortality": [(5, T0 + h(24), False)],
                                         "icu_admission": [(5, T0, False)]}))
    assert {t: a.date_only_same_day for t, a in res.tasks.items()} == {"in_hospital_mortality": 0, "icu_admission": 0}


def test_a_stay_the_next_one_continues_is_labelled_by_no_task(tmp_path):
    """A discharge followed within --transfer-hours (1 h) by the next admission is a transfer: readmission
    already excluded it, but mortality, long stay and ICU admission read that discharge as the end of
    care. On the real demo an observation stay of 36 h admitted as inpatient for 160 h made two short
    stays (both long-stay labels False), and a death in the second stay left the first labelled alive.
    Now such a stay is excluded from every task as `transferred` (whatever its outcome: an exclusion
    that looked at the outcome would bias the labels); the next stay is labelled as its own."""
    from ehrfm.clinical.labels import TASKS, make_labels

    adm = "HOSPITAL_ADMISSION//EU OBSERVATION//EMERGENCY ROOM"
    handover = T0 + h(36)
    events = (stay(1, 11, T0, handover)                                       # observation, continued 15 min later
              + [(1, handover + h(0.25), adm, 12), (1, handover + d(4), "HOSPITAL_DISCHARGE//DIED", 12),
                 (1, handover + d(4), "MEDS_DEATH", 12), (1, handover + h(3), "ICU_ADMISSION//MICU", 12)]
              + stay(2, 21, T0, T0 + h(36))                                     # an ordinary short stay
              + stay(2, 22, T0 + h(38), T0 + d(9)))                             # 2 h later: a readmission, not a transfer
    meds = write_meds(tmp_path / "meds", events)
    labels, info = make_labels(meds, "all")
    got = {t: sorted((s, int((p - T0).total_seconds() // 3600), v) for s, p, v in labels[t].iter_rows()) for t in TASKS}
    assert got == {
        "in_hospital_mortality": [(1, 60, True), (2, 24, False), (2, 62, False)],   # before: also (1, 24, False)
        "long_los": [(1, 60, False), (2, 24, False), (2, 62, True)],
        "icu_admission": [(1, 36, True), (2, 0, False), (2, 38, False)],           # before: also (1, 0, False)
        "readmission_30d": [(2, 36, True), (2, 216, False)],
    }
    assert {t: info[t]["excluded"].get("transferred", 0) for t in TASKS} == dict.fromkeys(TASKS, 1)


def test_a_discharge_to_another_acute_hospital_is_no_readmission_label(tmp_path):
    """A discharge to ACUTE HOSPITAL moves the patient to acute care elsewhere: a return to this hospital
    cannot be seen, and the stay was labelled "not readmitted" (1 on the real demo). Readmission measures
    (CMS's) exclude such stays; so does `ehrfm labels` now (discharged_to_another_hospital), and its ACES
    config (checked row for row on the demo in test_ecosystem_faults). The other tasks keep the stay."""
    from ehrfm.clinical.labels import make_labels

    events = (stay(1, 11, T0, T0 + d(3))[:2] + [(1, T0 + d(3), "HOSPITAL_DISCHARGE//ACUTE HOSPITAL", 11)]
              + stay(2, 21, T0, T0 + d(3)))
    meds = write_meds(tmp_path / "meds", events)
    labels, info = make_labels(meds, "all")
    assert sorted(labels["readmission_30d"]["subject_id"].to_list()) == [2]
    assert info["readmission_30d"]["excluded"]["discharged_to_another_hospital"] == 1
    assert sorted(labels["long_los"]["subject_id"].to_list()) == [1, 2]
