"""Clinical label boundaries found by a metamorphic/boundary review (real MEDS parquet, no mocks)."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
from test_labels import T0, d, h, labels_of, stay

from ehrfm.clinical.audit import audit
from ehrfm.clinical.labels import make_labels, write_label_dir, write_labels


def test_an_icu_stay_begun_long_before_the_admission_and_still_open_is_in_the_icu(tmp_path):
    # No stay id: ICU stay begun 30 h before the admission (outside the 24 h boarding window),
    # ended 2 days into the stay: the patient is in the ICU when the prediction is made.
    events = (stay(1, T0, T0 + d(5), [(1, T0 - h(30), "ICU_ADMISSION//MICU"), (1, T0 + d(2), "ICU_DISCHARGE//MICU")])
              # ended before the admission (30 h before it began): not in the ICU; ICU on day 2 -> positive
              + stay(2, T0, T0 + d(5), [(2, T0 - h(40), "ICU_ADMISSION//MICU"), (2, T0 - h(30), "ICU_DISCHARGE//MICU"),
                                        (2, T0 + d(2), "ICU_ADMISSION//SICU")])
              # no ICU discharge recorded at all: nothing says the patient is still there -> negative
              + stay(3, T0, T0 + d(5), [(3, T0 - d(30), "ICU_ADMISSION//MICU")])
              # no discharge of the old ICU stay; the ICU discharge after the admission is a later ICU stay's
              + stay(4, T0, T0 + d(5), [(4, T0 - d(30), "ICU_ADMISSION//MICU"), (4, T0 + d(2), "ICU_ADMISSION//SICU"),
                                        (4, T0 + d(4), "ICU_DISCHARGE//SICU")]))
    labels, info = labels_of(tmp_path, events, "icu_admission")
    assert labels == {(2, T0): True, (3, T0): False, (4, T0): True}
    assert info["excluded"]["in_icu_at_prediction_time"] == 1

    # The audit sees a label made at such a time: the outcome (the ICU bed) is already there.
    meds = tmp_path / "meds"
    write_labels(pl.DataFrame({"subject_id": [1, 2, 3, 4], "prediction_time": [T0] * 4, "boolean_value": [False, True, False, True]}),
                 tmp_path / "icu_admission.parquet")
    res = audit(meds, tmp_path / "icu_admission.parquet")
    assert res.tasks["icu_admission"].outcome_code_in_history == 1


def test_the_window_boundaries_are_those_the_readme_states(tmp_path):
    # README: readmission <= 30 x 24 h after the discharge time (a clock, not calendar days);
    # direct ICU admission less than --direct-icu-minutes after the admission; transfer within
    # --transfer-hours including its end.
    us = timedelta(microseconds=1)
    readm = (stay(1, T0, T0 + d(2)) + stay(1, T0 + d(32), T0 + d(33))  # exactly 30 d: positive
             + stay(2, T0, T0 + d(2)) + stay(2, T0 + d(32) + us, T0 + d(33))  # 1 us more: negative
             + stay(3, T0, T0 + d(2)) + stay(3, T0 + d(32) + h(5), T0 + d(33))  # day 30, later in the day: negative
             + stay(4, T0, T0 + d(2)) + stay(4, T0 + d(2) + h(1), T0 + d(5))  # exactly 1 h: a transfer
             + stay(5, T0, T0 + d(2)) + stay(5, T0 + d(2) + h(1) + us, T0 + d(5)))  # 1 us more: a readmission
    labels, info = labels_of(tmp_path / "r", readm, "readmission_30d")
    first = {s: v for (s, t), v in labels.items() if t == T0 + d(2)}
    assert first == {1: True, 2: False, 3: False, 5: True} and info["excluded"]["transferred"] == 1
    icu = (stay(1, T0, T0 + d(5), [(1, T0 + timedelta(minutes=5), "ICU_ADMISSION//MICU")])  # exactly 5 min: a label
           + stay(2, T0, T0 + d(5), [(2, T0 + timedelta(minutes=5) - us, "ICU_ADMISSION//MICU")]))  # less: direct
    labels, info = labels_of(tmp_path / "i", icu, "icu_admission")
    assert labels == {(1, T0): True} and info["excluded"]["admitted_directly_to_icu"] == 1


def _shard(path, rows, with_stay_id: bool):
    """One MEDS shard from (subject_id, time, code, hadm_id) rows; the hadm_id column only when asked."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {"subject_id": pa.array([r[0] for r in rows], pa.int64()), "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
            "code": pa.array([r[2] for r in rows], pa.string()), "numeric_value": pa.array([None] * len(rows), pa.float32())}
    if with_stay_id:
        cols["hadm_id"] = pa.array([r[3] for r in rows], pa.int64())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)


def test_a_shard_without_the_stay_id_column_does_not_unpair_the_other_shards_stays(tmp_path):
    # Subject 7's two stays overlap (ids 71, 72): paired by id, each keeps its own discharge. Another
    # subject's shard written without the (optional) hadm_id column made every subject fall back to
    # pairing by time order (stay 72 ended at 71's discharge; 71 lost), and the audit's (d) unknown.
    from test_labels import ADM, DIS

    s7 = [(7, T0, ADM, 71), (7, T0 + d(2), ADM, 72), (7, T0 + d(3), "ICU_ADMISSION//MICU", 72),
          (7, T0 + d(4), DIS, 71), (7, T0 + d(11), DIS, 72)]
    s8 = [(8, T0, ADM, None), (8, T0 + d(3), DIS, None)]
    results = {}
    for name, layout in (("one", [("0", s7 + s8, True)]), ("two", [("0", s7, True), ("1", s8, False)])):
        meds = tmp_path / name
        for stem, rows, with_id in layout:
            _shard(meds / "data" / "train" / f"{stem}.parquet", rows, with_id)
        labels, info = make_labels(meds, "all")
        write_label_dir(labels, info, tmp_path / f"labels_{name}")
        res = audit(meds, tmp_path / f"labels_{name}")
        results[name] = ({t: f.rows() for t, f in labels.items()}, {t: a.overlapping_stays for t, a in res.tasks.items()})
    assert results["two"] == results["one"]
    # stay 71 is discharged inside stay 72: no label of any task since 2026-12-07 (test_labels.py)
    assert results["one"][0]["long_los"] == [(7, T0 + d(2) + h(24), True), (8, T0 + h(24), False)]
    assert results["one"][1]["long_los"] == 1


def test_a_shard_whose_stay_id_column_holds_no_value_is_named_as_lacking_it(tmp_path, capsys):
    # A shard whose hadm_id column is all null (parquet's null type, as polars and pandas write a column of no
    # values, or int64 with every row null) was read as having the column: its subjects were paired by time
    # without the warning or the audit's "unknown" line that a shard without the column gets.
    import pyarrow as pa
    import pyarrow.parquet as pq
    from test_labels import ADM, DIS

    from ehrfm.meds_io import open_meds

    s7 = [(7, T0, ADM, 71), (7, T0 + d(4), DIS, 71)]
    s8 = [(8, T0, ADM, None), (8, T0 + d(3), DIS, None)]
    for kind in ("null", "int64"):
        meds = tmp_path / kind
        _shard(meds / "data" / "train" / "0.parquet", s7, True)
        _shard(meds / "data" / "train" / "1.parquet", s8, False)
        one = meds / "data" / "train" / "1.parquet"
        t = pq.read_table(one)
        pq.write_table(t.append_column("hadm_id", pa.nulls(t.num_rows, pa.null() if kind == "null" else pa.int64())), one)
        # a shard whose one subject has no hospital stay (~40% of MIMIC-IV's patients): no id is lacking there
        _shard(meds / "data" / "train" / "2.parquet", [(9, T0, "LAB//50912//mg/dL", None)], True)
        labels, info = make_labels(meds, "all")
        assert "1 of the shard files with rows lack the stay id column hadm_id (first: " + str(one) in capsys.readouterr().err
        write_label_dir(labels, info, tmp_path / f"labels_{kind}")
        res = audit(meds, tmp_path / f"labels_{kind}")
        assert [u for u in res.unknown if u.startswith("(d)")] == [
            f"(d) overlapping stays: 1 of the 3 shard files with rows lack the stay id column (hadm_id; first: {one}): "
            "their subjects' stays are not checked"], res.unknown
    # a struct column holding a field named hadm_id (null) before the real one: the real column is read
    meds = tmp_path / "struct"
    _shard(meds / "data" / "train" / "0.parquet", s7, True)
    path = meds / "data" / "train" / "0.parquet"
    t = pq.read_table(path)
    extra = pa.StructArray.from_arrays([pa.nulls(t.num_rows, pa.int64())], names=["hadm_id"])
    pq.write_table(pa.table({"x": extra, **{c: t[c] for c in t.column_names}}), path)
    assert open_meds(meds).files_without("hadm_id") == []


def test_a_discharge_before_its_admission_is_excluded_under_its_own_reason(tmp_path):
    # Bad data (stay 91 discharged 3 h before it was admitted): no usable end. It was counted as
    # no_discharge, as if the stay were still open; now under its own reason, and never paired.
    from test_labels import ADM, DIS

    rows = [(9, T0, ADM, 91), (9, T0 - h(3), DIS, 91), (9, T0 + d(10), ADM, 92), (9, T0 + d(12), DIS, 92)]
    _shard(tmp_path / "meds" / "data" / "train" / "0.parquet", sorted(rows, key=lambda r: r[1]), True)
    labels, info = make_labels(tmp_path / "meds", "all")
    for task in labels:
        assert info[task]["excluded"]["discharge_before_admission"] == 1, task
        assert info[task]["excluded"]["no_discharge"] == 0, task
        assert info[task]["n"] + info[task]["n_excluded"] == info[task]["n_stays"] == 2, task
    assert labels["readmission_30d"].rows() == [(9, T0 + d(12), False)]


def test_a_date_only_death_on_the_day_of_a_date_only_live_discharge_is_not_in_hospital(tmp_path):
    # The ETL places a date (patients.dod; a dischtime with no time) at 23:59:59. A home discharge and a
    # death both dated day 5 were one timestamp, read as a death at the discharge: in hospital. The
    # same facts with the discharge at 14:00 were not. Both are a death after a live discharge that day.
    from datetime import datetime

    from test_labels import ADM, DIS, write_meds

    a, eod = datetime(2150, 1, 1, 8), datetime(2150, 1, 5, 23, 59, 59)
    events = [(1, a, ADM), (1, eod, DIS), (1, eod, "MEDS_DEATH"),
              (2, a, ADM), (2, datetime(2150, 1, 5, 14), DIS), (2, eod, "MEDS_DEATH"),
              (3, a, ADM), (3, eod, "HOSPITAL_DISCHARGE//DIED"), (3, eod, "MEDS_DEATH")]  # DIED: in hospital
    labels, _ = make_labels(write_meds(tmp_path / "meds", events), "in_hospital_mortality")
    assert labels.rows() == [(1, a + h(24), False), (2, a + h(24), False), (3, a + h(24), True)]


def test_the_audit_does_not_depend_on_the_order_of_rows_at_one_timestamp(tmp_path):
    # Two stays of one subject admitted at one time (ids 10 and 11; duplicated source rows), an ICU
    # stay begun 30 h before under id 11 (boarded for it). The labels keep one label at T0 whichever
    # way the rows are listed; the audit took the stay id of whichever admission row came first, so
    # the same data was clean listed one way and a leak the other.
    from test_labels import ADM, DIS

    rows = [(1, T0 - h(30), "ICU_ADMISSION//MICU", 11), (1, T0, ADM, 10), (1, T0, ADM, 11),
            (1, T0 + d(3), DIS, 11), (1, T0 + d(5), DIS, 10)]
    swapped = [rows[0], rows[2], rows[1], *rows[3:]]
    found = []
    for name, order in (("a", rows), ("b", swapped)):
        _shard(tmp_path / name / "data" / "train" / "0.parquet", order, True)
        labels, info = make_labels(tmp_path / name, "icu_admission")
        (tmp_path / f"labels_{name}").mkdir()
        write_labels(labels, tmp_path / f"labels_{name}" / "icu_admission.parquet")
        found.append((labels.rows(), audit(tmp_path / name, tmp_path / f"labels_{name}").tasks["icu_admission"].n_labels))
    # Both stays share the history that holds the boarding: neither is labelled, however listed.
    assert found[0][0] == found[1][0] == []
    # A label made at T0 anyway is a leak to the audit, however the rows are listed.
    lab = pl.DataFrame({"subject_id": [1], "prediction_time": [T0], "boolean_value": [False]})
    for name in ("a", "b"):
        write_labels(lab, tmp_path / f"labels_{name}" / "icu_admission.parquet")
        assert audit(tmp_path / name, tmp_path / f"labels_{name}").tasks["icu_admission"].outcome_code_in_history == 1


def test_demo_labels_and_audit_do_not_depend_on_sharding_or_row_order(demo_meds, tmp_path):
    # Metamorphic: the MIMIC-IV demo resharded (3 shards a split, under other names), subjects in
    # reverse order, and the rows of each (subject, time) listed in another (seeded) order.
    import dataclasses
    import shutil

    from ehrfm.clinical.labels import TASKS

    other = tmp_path / "meds"
    shutil.copytree(demo_meds / "metadata", other / "metadata")
    for split in sorted(p for p in (demo_meds / "data").iterdir() if p.is_dir()):
        df = pl.concat([pl.read_parquet(f) for f in sorted(split.glob("*.parquet"))], how="vertical_relaxed")
        df = (df.with_columns(pl.int_range(pl.len()).shuffle(seed=7).alias("_r"))
              .sort(["subject_id", "time", "_r"], descending=[True, False, False], nulls_last=False).drop("_r"))
        subjects = df["subject_id"].unique(maintain_order=True).to_list()
        (other / "data" / split.name).mkdir(parents=True)
        for k in range(3):
            df.filter(pl.col("subject_id").is_in(subjects[k::3])).write_parquet(other / "data" / split.name / f"part-{9 - k}.parquet")
    results = []
    for meds, out in ((demo_meds, tmp_path / "l0"), (other, tmp_path / "l1")):
        labels, info = make_labels(meds, "all")
        write_label_dir(labels, info, out)
        res = audit(meds, out)
        results.append(({t: labels[t].rows() for t in TASKS}, {t: info[t]["excluded"] for t in TASKS},
                        {t: dataclasses.asdict(a) for t, a in res.tasks.items()}, res.clean))
    assert results[0] == results[1]
    assert results[0][3]


def test_a_nested_stays_discharge_is_not_the_outcome_of_the_open_stay(tmp_path):
    # Stay 10 (10 days) holds stay 11 (admitted 2 h later, discharged at 20 h). Stay 10's mortality and
    # long-stay labels at 24 h are valid (it is open); the audit took the last admission (11) as the
    # label's stay and its discharge as the outcome in the history: a leak, exit 1. Subject 2's stay
    # really ended before its label, which stays a leak.
    from test_labels import ADM, DIS

    rows = [(1, T0, ADM, 10), (1, T0 + h(2), ADM, 11), (1, T0 + h(20), DIS, 11), (1, T0 + d(10), DIS, 10),
            (2, T0, ADM, 20), (2, T0 + h(20), DIS, 20), (2, T0 + d(2), "LAB//1//mg", None)]
    _shard(tmp_path / "meds" / "data" / "train" / "0.parquet", rows, True)
    labels, info = make_labels(tmp_path / "meds", "all")
    assert labels["in_hospital_mortality"].rows() == [(1, T0 + h(24), False)]
    out = tmp_path / "labels"
    write_label_dir(labels, info, out)
    res = audit(tmp_path / "meds", out)
    assert res.tasks["in_hospital_mortality"].outcome_code_in_history == 0
    assert res.tasks["long_los"].outcome_code_in_history == 0
    bad = pl.DataFrame({"subject_id": [1, 2], "prediction_time": [T0 + h(24)] * 2, "boolean_value": [False, False]})
    (tmp_path / "bad").mkdir()
    write_labels(bad, tmp_path / "bad" / "in_hospital_mortality.parquet")
    assert audit(tmp_path / "meds", tmp_path / "bad").tasks["in_hospital_mortality"].outcome_code_in_history == 1


def test_discharge_rows_no_stay_ends_with_are_counted(tmp_path):
    # Paired by time (no stay ids), a discharge before any admission ended no stay and was dropped
    # without a word; the discharge-before-admission stay's row (ids) likewise.
    from datetime import datetime

    from test_labels import ADM, DIS, write_meds

    events = [(1, T0 - h(3), DIS), (1, T0, ADM), (1, T0 + d(3), DIS), (2, T0, ADM), (2, T0 + d(3), DIS)]
    _, info = make_labels(write_meds(tmp_path / "a", events), "long_los")
    assert info["discharges_not_paired"] == 1 and info["n"] == 2
    rows = [(9, T0, ADM, 91), (9, T0 - h(3), DIS, 91), (9, T0 + d(10), ADM, 92), (9, T0 + d(12), DIS, 92)]
    _shard(tmp_path / "b" / "data" / "train" / "0.parquet", sorted(rows, key=lambda r: r[1] or datetime.min), True)
    _, info = make_labels(tmp_path / "b", "long_los")
    assert info["discharges_not_paired"] == 1


def test_a_label_with_a_later_stays_row_in_its_history_or_a_backwards_next_stay_is_not_made(tmp_path):
    # (1) On the real MIMIC-IV demo one readmission's ED registration (under its hadm_id) is 6 h 40 min before the
    # previous stay's discharge; with its admittime 3 h after that discharge, the previous stay's readmission label
    # was positive with the next stay's ED_REGISTRATION and orders in its history, and the audit said clean. A
    # label whose history holds a row of a stay admitted after its prediction time is now left out (the audit's rule).
    # A stray row of that stay long before (a lab dated years off) leaves the labels between them out too.
    # (2) The ETL dropped a stay whose dischtime precedes its admittime, turning the stay before it negative; now it
    # keeps it, and a label that depends on which of its two times is the admission is excluded.
    from test_labels import ADM, DIS

    ed = "ED_REGISTRATION"
    s1 = [(1, T0, ADM, 11), (1, T0 + d(5), DIS, 11), (1, T0 + d(5) - h(7), ed, 12), (1, T0 + d(5) + h(3), ADM, 12),
          (1, T0 + d(9), DIS, 12)]
    # Subject 2: its next stay written backwards, spanning day 20 to day 40 after the discharge (label unknown);
    # subject 3: backwards too, but both of its times within 30 days (positive either way).
    s2 = [(2, T0, ADM, 21), (2, T0 + d(5), DIS, 21), (2, T0 + d(45), ADM, 22), (2, T0 + d(25), DIS, 22)]
    s3 = [(3, T0, ADM, 31), (3, T0 + d(5), DIS, 31), (3, T0 + d(20), ADM, 32), (3, T0 + d(10), DIS, 32)]
    # Subject 4: stay 42's only early row is a stray lab 100 days before stay 41, whose discharge it follows by 2 h.
    s4 = [(4, T0 - d(100), "LAB//1", 42), (4, T0, ADM, 41), (4, T0 + d(5), DIS, 41), (4, T0 + d(5) + h(2), ADM, 42),
          (4, T0 + d(8), DIS, 42)]
    meds = tmp_path / "meds"
    _shard(meds / "data" / "train" / "0.parquet", sorted(s1 + s2 + s3 + s4, key=lambda r: (r[0], r[1])), True)
    labels, info = make_labels(meds, "all")
    readmission = info["readmission_30d"]["excluded"]
    assert labels["readmission_30d"].rows() == [(1, T0 + d(9), False), (3, T0 + d(5), True), (4, T0 + d(8), False)]
    assert readmission["later_stay_in_history"] == 2 and readmission["next_admission_time_unknown"] == 1
    assert readmission["discharge_before_admission"] == 2
    # Stay 11's first 24 h and admission hold no row of stay 12: labelled; stay 41's hold the stray lab: not.
    assert [r[0] for r in labels["long_los"].rows() if r[1] == T0 + h(24)] == [1, 2, 3]
    assert [r[0] for r in labels["icu_admission"].rows() if r[1] == T0] == [1, 2, 3]
    for task in labels:
        assert info[task]["n"] + info[task]["n_excluded"] == info[task]["n_stays"] == 8, task
    write_label_dir(labels, info, tmp_path / "labels")
    assert audit(meds, tmp_path / "labels").clean
    # The label made before: its history holds the ED registration of stay 12, admitted after it. The audit said clean.
    leaky = tmp_path / "leaky" / "readmission_30d.parquet"
    leaky.parent.mkdir()
    pl.DataFrame({"subject_id": [1], "prediction_time": [T0 + d(5)], "boolean_value": [True]}).write_parquet(leaky)
    res = audit(meds, leaky.parent)
    assert res.tasks["readmission_30d"].outcome_code_in_history == 1 and not res.clean


def test_a_clean_audit_says_how_many_labels_have_overlapping_stays(tmp_path):
    # (d) is for review, not a fault; the verdict said "clean" with 36% of histories in overlapping stays.
    from test_labels import ADM, DIS

    from ehrfm.clinical.audit import format_audit

    s7 = [(7, T0, ADM, 71), (7, T0 + d(2), ADM, 72), (7, T0 + d(4), DIS, 71), (7, T0 + d(11), DIS, 72)]
    _shard(tmp_path / "meds" / "data" / "train" / "0.parquet", s7, True)
    labels, info = make_labels(tmp_path / "meds", "all")
    write_label_dir(labels, info, tmp_path / "labels")
    res = audit(tmp_path / "meds", tmp_path / "labels")
    assert res.clean and res.tasks["long_los"].overlapping_stays == 1  # stay 72's label (stay 71 has none)
    verdict = format_audit(res)[-1]
    assert verdict.startswith("Verdict: no leak in (a) and (c)") and "REVIEW (d)" in verdict and "long_los (1)" in verdict, verdict


def test_a_death_its_subjects_later_home_discharge_contradicts_labels_nothing(tmp_path, capsys):
    # A patients.dod set on day 3 of a stay that went on to a home discharge on day 8 and a later admission: the stay
    # became an in-hospital death and the later stay was "admitted after death", silently. Now every stay of such a
    # subject is excluded and the count said; a death after the last live discharge still counts.
    from test_labels import ADM, DIS

    home = DIS  # a discharge HOME
    s1 = [(1, T0, ADM, 11), (1, T0 + d(3) - h(8), "MEDS_DEATH", None), (1, T0 + d(8), home, 11),
          (1, T0 + d(20), ADM, 12), (1, T0 + d(22), home, 12)]
    s2 = [(2, T0, ADM, 21), (2, T0 + d(6), "MEDS_DEATH", None), (2, T0 + d(6), "HOSPITAL_DISCHARGE//DIED", 21),
          # an organ donation's admission after the death may name any destination: no contradiction
          (2, T0 + d(6) + h(8), ADM, 22), (2, T0 + d(6) + h(16), "HOSPITAL_DISCHARGE//OTHER FACILITY", 22)]
    _shard(tmp_path / "meds" / "data" / "train" / "0.parquet", sorted(s1 + s2, key=lambda r: (r[0], r[1])), True)
    capsys.readouterr()
    labels, info = make_labels(tmp_path / "meds", "all")
    assert "1 subject(s)" in capsys.readouterr().err
    for task, frame in labels.items():
        assert 1 not in frame["subject_id"].to_list(), task
        assert info[task]["excluded"]["death_contradicted"] == 2, task
        assert info[task]["deaths"]["subjects_with_death_before_a_live_discharge"] == 1
    assert labels["in_hospital_mortality"].rows() == [(2, T0 + h(24), True)]
    assert info["in_hospital_mortality"]["excluded"]["admitted_after_death"] == 1


def test_a_stay_or_icu_stay_whose_admission_has_no_time_leaves_the_labels_it_decides_out(tmp_path):
    """The ETL drops an admission row without admittime (missing_time) and keeps the stay's discharge and events;
    one icustays row without intime keeps its ICU_DISCHARGE. On the real MIMIC-IV demo so changed, the previous
    stay's readmission label turned negative (a later stay 23 days on) and an ICU-admission label negative, the
    audit clean. Both are excluded now; by stay id and by time order alike."""
    from test_labels import ADM, DIS

    icu_in, icu_out = "ICU_ADMISSION//MICU", "ICU_DISCHARGE//MICU"
    # 1: stay 12 (no admission row) is discharged 40 days after stay 11: its admission may lie within 30 days
    s1 = [(1, T0, ADM, 11), (1, T0 + d(5), DIS, 11), (1, T0 + d(45), DIS, 12)]
    # 2: a known stay 22 admitted 10 days after stay 21: positive whatever stay 23 was; stay 22's own (23 ends 42 days
    # after it) is unknown
    s2 = [(2, T0, ADM, 21), (2, T0 + d(5), DIS, 21), (2, T0 + d(15), ADM, 22), (2, T0 + d(18), DIS, 22),
          (2, T0 + d(60), DIS, 23)]
    # 3: an ICU stay whose ICU_ADMISSION is gone: in the ICU at admission or later, unknown
    s3 = [(3, T0, ADM, 31), (3, T0 + d(2), icu_out, 31), (3, T0 + d(6), DIS, 31)]
    # 4: a complete ICU stay (admission, then discharge): a positive, as before
    s4 = [(4, T0, ADM, 41), (4, T0 + d(1), icu_in, 41), (4, T0 + d(2), icu_out, 41), (4, T0 + d(6), DIS, 41)]
    rows = sorted(s1 + s2 + s3 + s4, key=lambda r: (r[0], r[1]))
    for with_ids in (True, False):
        meds = tmp_path / f"meds{with_ids}"
        _shard(meds / "data" / "train" / "0.parquet", rows, with_ids)
        labels, info = make_labels(meds, "all")
        assert labels["readmission_30d"].filter(pl.col("subject_id") <= 2).rows() == [(2, T0 + d(5), True)]
        assert info["readmission_30d"]["excluded"]["next_admission_time_unknown"] == 2
        assert labels["icu_admission"].rows() == [(1, T0, False), (2, T0, False), (2, T0 + d(15), False), (4, T0, True)]
        assert info["icu_admission"]["excluded"]["icu_admission_time_unknown"] == 1
