"""Faults of the clinical stage found by a break-it pass, one test per kind (invented values only).

- metrics: no bootstrap interval from a handful of positives (falsely narrow, not 95%);
- audit (f): labels whose subject is not in the data or whose prediction time lies outside the
  subject's timeline (the heads refuse them; the audit said "clean");
- audit (a): outcomes visible at the prediction time that the audit missed: an ICU stay begun in
  the 24 h before the hospital admission (ED boarding), a readmission already under way, a
  long-stay prediction made after the threshold has passed.
"""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import polars as pl
from bad_labels import with_ghost_subjects, with_prediction_time
from test_audit import ADM, T0, d, h, stay, write_label_file, write_meds

from ehrfm.app.cli import main
from ehrfm.clinical.audit import audit, format_audit
from ehrfm.clinical.labels import make_labels, write_labels
from ehrfm.clinical.metrics import binary_metrics, format_metrics


# --- metrics: honest intervals at small n ---------------------------------------------------------
def test_no_interval_from_too_few_positives():
    rng = np.random.default_rng(0)
    p = rng.random(51)
    y = np.zeros(51, int)
    y[0] = 1  # one positive among 50 negatives
    m = binary_metrics(y, p, "t", n_boot=200, seed=0)
    # The AUROC is the positive's rank among the negatives; no interval (it was [0.44, 0.72] for
    # an AUROC of 0.58 from one positive: a 95% interval that covered 0.5 in 16% of null draws).
    assert abs(m["auroc"] - 29 / 50) < 1e-12 and (p[1:] < p[0]).sum() == 29
    assert m["auroc_ci"] is None and m["auprc_ci"] is None and m["bootstrap"]["resamples"] == 0
    assert m["note"].startswith("1 positive and 50 negative labels: no interval or standard error with fewer than 10")
    # nor a standard error (DeLong's of 2 positives that separate perfectly was 0.0, weighting the utility law as exact)
    assert m["auroc_se"] is None and m["auroc_se_method"] is None
    sep = binary_metrics(np.r_[1, 1, np.zeros(20, int)], np.r_[0.9, 0.8, np.linspace(0, 0.5, 20)], "t", n_boot=0, seed=0)
    assert sep["auroc"] == 1.0 and sep["auroc_se"] is None and "no interval or standard error" in sep["note"]
    assert "(no interval: 1 positive and 50 negative labels, under 10 of a class)" in format_metrics(m)
    # by subject, the console names the subjects too: 10 positive labels of 6 subjects fall short, not the labels
    m = binary_metrics(np.r_[np.ones(10, int), np.zeros(41, int)], p, "t", n_boot=200, seed=0, groups=np.r_[np.arange(10) % 6, np.arange(41) + 6])
    assert "(no interval: 10 positive and 41 negative labels from 6 and 41 subjects, under 10 of a class)" in format_metrics(m)
    # Few negatives count the same way.
    m = binary_metrics(1 - y, p, "t", n_boot=200, seed=0)
    assert m["auroc_ci"] is None and m["n_positive"] == 50
    # At the threshold the interval is back, and holds the AUROC.
    k = 10  # metrics.MIN_CLASS_FOR_INTERVAL
    y = np.r_[np.ones(k, int), np.zeros(40, int)]
    p = 1 / (1 + np.exp(-np.r_[rng.normal(1, 1, k), rng.normal(0, 1, 40)]))
    m = binary_metrics(y, p, "t", n_boot=200, seed=0)
    lo, hi = m["auroc_ci"]
    assert lo < m["auroc"] < hi and "note" not in m and m["bootstrap"]["resamples"] == 200


def test_small_positive_counts_cover_chance_honestly():
    """Null scores, 200 negatives: where an interval is given, it covers AUROC 0.5 about 95% of the time."""
    rng = np.random.default_rng(1)
    for n_pos in (1, 2, 3, 5):
        cis = [binary_metrics(np.r_[np.ones(n_pos, int), np.zeros(200, int)], rng.random(200 + n_pos), "t",
                              n_boot=50, seed=s)["auroc_ci"] for s in range(5)]
        assert cis == [None] * 5, n_pos


# --- audit (f): labels outside the data ------------------------------------------------------------
def test_audit_reports_labels_outside_the_data(tmp_path, capsys):
    events = stay(1, 11, T0, T0 + d(5)) + stay(2, 21, T0, T0 + d(6)) + stay(3, 31, T0, T0 + d(3))
    meds = write_meds(tmp_path / "meds", events, {"date_only_codes": []})
    good = write_label_file(tmp_path / "good.parquet", "in_hospital_mortality",
                            [(1, T0 + h(24), False), (2, T0 + h(24), True), (3, T0 + h(24), False)])
    assert audit(meds, good).tasks["in_hospital_mortality"].outside_data == 0
    task = "in_hospital_mortality"
    for name in ("ghosts", "early", "late"):
        (tmp_path / name).mkdir()
    ghosts = with_ghost_subjects(good, tmp_path / "ghosts" / f"{task}.parquet", 2, 1000)  # subjects 1001, 1002
    early = with_prediction_time(good, tmp_path / "early" / f"{task}.parquet", 1, datetime(2100, 1, 1))  # before any event
    late = with_prediction_time(good, tmp_path / "late" / f"{task}.parquet", 2, datetime(2199, 1, 1))  # after every event
    # (The late labels also have the stays' discharges in their histories: (a) for mortality.)
    for f, want, a in ((ghosts, (2, 0, 0), "0"), (early, (0, 1, 0), "0"), (late, (0, 0, 2), "2 (66.7%)")):
        res = audit(meds, f)
        t = res.tasks[task]
        assert (t.subject_not_in_data, t.before_first_event, t.after_last_event) == want, f
        assert not res.clean and res.to_dict()["tasks"][task]["outside_data"] == sum(want)
        text = format_audit(res)
        assert f"| {task} | {t.n_labels} | {a} | 0 | 0 | 0 | 0 | {sum(want)} ({sum(want) / t.n_labels:.1%}) |" in text
        leak = "LEAKAGE: (a)-(c) are not all 0. " if a != "0" else ""
        assert text[-1] == f"Verdict: {leak}UNSCORABLE: {sum(want)} labels outside the data (f).", text[-1]
    capsys.readouterr()
    assert main(["audit", str(meds), "--labels", str(ghosts)]) == 1
    out = capsys.readouterr().out
    assert f"audit: 1 tasks, labels outside the data (heads refuse them) in {task} (2)" in out
    assert f"(f) {task}: 2 labels of subjects not in the MEDS data (or without a timed event), 0 before the subject's first event, 0 after its last" in out
    assert "1001" not in out and "1002" not in out  # counts, never the subjects


# --- audit (a): outcomes the audit missed ----------------------------------------------------------
ICU = "ICU_ADMISSION//MICU"


def test_audit_sees_an_icu_stay_begun_before_the_hospital_admission(tmp_path):
    # Subject 1 boarded in the ICU from the ED 3 h before admittime (in the ICU when the stay
    # opens); subject 2 reached the ICU 30 h before admission (an earlier episode); subject 3
    # reaches it after the prediction. `ehrfm labels` excludes subject 1's stay
    # (in_icu_at_prediction_time); a label file from another tool that keeps it leaks.
    events = (stay(1, 11, T0, T0 + d(4), [(1, T0 - h(3), ICU, None)])
              + stay(2, 21, T0, T0 + d(4), [(2, T0 - h(30), ICU, None)])
              + stay(3, 31, T0, T0 + d(4), [(3, T0 + h(5), ICU, 31)]))
    meds = write_meds(tmp_path / "meds", events, {"date_only_codes": []})
    ours, info = make_labels(meds, "icu_admission")
    assert info["excluded"]["in_icu_at_prediction_time"] == 1 and sorted(ours["subject_id"].to_list()) == [2, 3]
    write_labels(ours, tmp_path / "ours" / "icu_admission.parquet", info)
    assert audit(meds, tmp_path / "ours").tasks["icu_admission"].outcome_code_in_history == 0
    other = write_label_file(tmp_path / "icu_admission.parquet", "icu_admission",
                             [(1, T0, True), (2, T0, False), (3, T0, True)])
    assert audit(meds, other).tasks["icu_admission"].outcome_code_in_history == 1  # subject 1 only


def test_audit_sees_a_readmission_already_under_way(tmp_path):
    # Subject 1: discharged at day 5, readmitted at day 12; a label predicting at day 13 (the
    # first stay's readmission is already in the history), and one at the discharge (fine).
    # Subject 2: discharge and next admission at the same time (a transfer): outcome at pred.
    events = (stay(1, 11, T0, T0 + d(5)) + stay(1, 12, T0 + d(12), T0 + d(20))
              + stay(2, 21, T0, T0 + d(5)) + stay(2, 22, T0 + d(5), T0 + d(9)))
    meds = write_meds(tmp_path / "meds", events, {"date_only_codes": []})
    f = write_label_file(tmp_path / "readmission_30d.parquet", "readmission_30d",
                         [(1, T0 + d(5), True), (1, T0 + d(13), True), (2, T0 + d(5), True)])
    t = audit(meds, f).tasks["readmission_30d"]
    assert (t.n_labels, t.outcome_code_in_history) == (3, 2)
    # ehrfm's own readmission labels stay clean (the transfer is excluded, the day-20 and day-9
    # discharges have no later admission).
    ours, info = make_labels(meds, "readmission_30d")
    assert ours.height == 3 and info["excluded"]["transferred"] == 1
    write_labels(ours, tmp_path / "ours" / "readmission_30d.parquet", info)
    assert audit(meds, tmp_path / "ours").tasks["readmission_30d"].outcome_code_in_history == 0


def test_audit_sees_a_long_stay_prediction_after_the_threshold(tmp_path):
    # Stays of 10 and 12 days; predictions at day 8 (the stay has passed 7 days: known long) and
    # at day 1 (fine); with a 9-day threshold recorded in the sidecar, day 8 is fine.
    events = stay(1, 11, T0, T0 + d(10)) + stay(2, 21, T0, T0 + d(12))
    meds = write_meds(tmp_path / "meds", events, {"date_only_codes": []})
    rows = [(1, T0 + d(8), True), (2, T0 + h(24), True)]
    f = write_label_file(tmp_path / "long_los.parquet", "long_los", rows)
    assert audit(meds, f).tasks["long_los"].outcome_code_in_history == 1
    labels = pl.DataFrame(rows, schema={"subject_id": pl.Int64, "prediction_time": pl.Datetime("us"),
                                        "boolean_value": pl.Boolean}, orient="row")
    info = {"task": "long_los", "config": {"meds_dir": str(meds), "long_los_days": 9.0}}
    write_labels(labels, tmp_path / "nine" / "long_los.parquet", info)
    assert audit(meds, tmp_path / "nine").tasks["long_los"].outcome_code_in_history == 0
    assert json.loads((tmp_path / "nine" / "long_los.json").read_text())["config"]["long_los_days"] == 9.0


def test_audit_of_the_real_mimic_demo_finds_boarded_icu_stays(demo_meds, tmp_path):
    # ICU labels made naively at every admission (no boarding exclusion): the audit must find the
    # stays that `ehrfm labels` excludes as in_icu_at_prediction_time, and no others.
    ours, info = make_labels(demo_meds, "icu_admission")
    boarded = info["excluded"]["in_icu_at_prediction_time"]
    assert boarded >= 1
    events = pl.read_parquet(demo_meds / "data" / "**" / "*.parquet")
    adm = events.filter(pl.col("code").str.starts_with("HOSPITAL_ADMISSION//")).select("subject_id", "time").unique()
    naive = adm.rename({"time": "prediction_time"}).with_columns(pl.lit(True).alias("boolean_value"))
    write_labels(naive, tmp_path / "naive" / "icu_admission.parquet", {"task": "icu_admission"})
    # ... and one more since the audit counts rows of a stay admitted after the prediction time: a 5 h stay admitted
    # 1 h into the next stay's ED visit (its ED registration is in the naive label's history; `ehrfm labels`
    # excludes that stay as transferred, the next stay admitted at its discharge).
    assert audit(demo_meds, tmp_path / "naive").tasks["icu_admission"].outcome_code_in_history == boarded + 1


# --- label files: wrong types named by column -------------------------------------------------------
def test_label_columns_the_schema_cannot_hold_are_named(tmp_path):
    import pytest

    from ehrfm.clinical.labels import read_labels
    from ehrfm.errors import UserError

    t = [datetime(2150, 1, 1, 10), datetime(2150, 1, 2, 10), datetime(2150, 1, 3, 10)]
    text_bool = tmp_path / "text_bool.parquet"
    pl.DataFrame({"subject_id": [1, 2, 3], "prediction_time": t, "boolean_value": ["True", "False", "true"]}).write_parquet(text_bool)
    with pytest.raises(UserError) as e:
        read_labels(text_bool)
    assert str(e.value) == (f"label file {text_bool}: column boolean_value is String, not a boolean (or numbers 0/1) "
                            "(the MEDS 0.4 LabelSchema); convert it where the labels are made")
    big_id = tmp_path / "big_id.parquet"
    pl.DataFrame({"subject_id": [1, 2**63 + 5, 2**64 - 1], "prediction_time": t, "boolean_value": [True, False, True]},
                 schema_overrides={"subject_id": pl.UInt64}).write_parquet(big_id)
    with pytest.raises(UserError) as e:
        read_labels(big_id)
    assert str(e.value) == (f"label file {big_id}: column subject_id (UInt64) has 2 of 3 rows that Int64 "
                            "(the MEDS 0.4 LabelSchema) cannot hold")
    # What the schema can hold still reads: uint64 ids in range, 0/1 integers, nanosecond times.
    ok = tmp_path / "ok.parquet"
    pl.DataFrame({"subject_id": [1, 2, 3], "prediction_time": t, "boolean_value": [1, 0, 1]},
                 schema_overrides={"subject_id": pl.UInt64}).with_columns(
        pl.col("prediction_time").cast(pl.Datetime("ns"))).write_parquet(ok)
    lab = read_labels(ok)
    assert lab["boolean_value"].to_list() == [True, False, True] and lab["prediction_time"].to_list() == t


# --- heads: too few labels to choose C --------------------------------------------------------------
def test_one_train_positive_without_a_usable_tuning_split_is_a_clear_error():
    import pytest

    from ehrfm.clinical.common import fit_logistic
    from ehrfm.errors import UserError

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)), np.zeros(20, int)
    y[0] = 1
    for n_tuning in (0, 5):  # no tuning labels, or only negatives: C must come from train's CV
        with pytest.raises(UserError) as e:  # was sklearn's ValueError from a fold's one-class fit
            fit_logistic(x, y, rng.normal(size=(n_tuning, 3)), np.zeros(n_tuning, int), 0, "icu_admission")
        assert str(e.value) == (f"task icu_admission: the tuning split's {n_tuning} labels lack a class, and train's 20 "
                                "labels (1 positive) are too few to choose the L2 strength by cross-validation "
                                "(needs 2 of each class): give more labels")
    y[1] = 1  # two positives: 2-fold CV works
    _, record = fit_logistic(x, y, x[:0], y[:0], 0, "icu_admission")
    assert record["selected_on"] == "train 5-fold CV" and len(record["auroc_by_C"]) == 7


def test_icu_stay_of_this_admission_begun_long_before_it_is_excluded(tmp_path):
    # ICU rows carry the stay id (hadm_id): subject 1's ICU stay of hadm 11 began 30 h before the
    # hospital admission (boarded from the ED, past the 24 h window): the patient is in the ICU
    # when the stay opens. Subject 2's ICU admission 30 h before belongs to no stay of its id
    # (another, earlier episode): its stay is labelled (negative, no ICU during it).
    events = (stay(1, 11, T0, T0 + d(4), [(1, T0 - h(30), ICU, 11)])
              + stay(2, 21, T0, T0 + d(4), [(2, T0 - h(30), ICU, 20)]))
    meds = write_meds(tmp_path / "meds", events, {"date_only_codes": []})
    labels, info = make_labels(meds, "icu_admission")
    assert labels.rows() == [(2, T0, False)] and info["excluded"]["in_icu_at_prediction_time"] == 1
    # The audit applies the same rule to a label file from another tool that keeps both stays.
    other = write_label_file(tmp_path / "icu_admission.parquet", "icu_admission", [(1, T0, True), (2, T0, False)])
    assert audit(meds, other).tasks["icu_admission"].outcome_code_in_history == 1


def test_intervals_resample_subjects_not_their_stays():
    # 40 subjects, each with 10 stays that share the subject's label and score (the extreme of
    # within-patient correlation): there are 40 independent observations, not 400. The interval
    # must be as wide as that of the 40 alone; resampling the 400 stays one by one made it about
    # sqrt(10) ~ 3x too narrow.
    rng = np.random.default_rng(3)
    y1 = np.r_[np.ones(20, int), np.zeros(20, int)]
    p1 = 1 / (1 + np.exp(-(y1 + rng.normal(0, 1.5, 40))))
    y, p, subjects = np.repeat(y1, 10), np.repeat(p1, 10), np.repeat(np.arange(40) * 7 + 100, 10)
    alone = binary_metrics(y1, p1, "t", n_boot=200, seed=0)
    stays = binary_metrics(y, p, "t", n_boot=200, seed=0, groups=subjects)
    naive = binary_metrics(y, p, "t", n_boot=200, seed=0)
    width = lambda m: m["auroc_ci"][1] - m["auroc_ci"][0]  # noqa: E731
    assert stays["auroc"] == alone["auroc"] and stays["bootstrap"]["unit"] == "subject"
    assert abs(width(stays) / width(alone) - 1) < 0.2, (width(stays), width(alone))
    assert width(naive) < 0.5 * width(stays) and naive["bootstrap"]["unit"] == "label"
    # One label per subject: the same resamples as without subjects (existing figures unchanged).
    once = binary_metrics(y1, p1, "t", n_boot=200, seed=0, groups=np.arange(40))
    assert once["auroc_ci"] == alone["auroc_ci"] and once["auprc_ci"] == alone["auprc_ci"]


def test_a_gap_as_long_as_the_long_stay_threshold_is_refused(tmp_path, capsys):
    # --gap-hours 168 with the 7-day threshold: a stay still open at the prediction time has lasted
    # 7 days, so every long_los label was positive (4 of 4 here) and known when predicted.
    events = stay(1, 11, T0, T0 + d(9)) + stay(2, 21, T0, T0 + d(12)) + stay(3, 31, T0, T0 + d(2))
    meds = write_meds(tmp_path / "meds", events, {"date_only_codes": []})
    for args in (["--task", "long_los", "--gap-hours", "168"], ["--task", "all", "--gap-hours", "200"],
                 ["--task", "long_los", "--long-los-days", "1"]):
        capsys.readouterr()
        assert main(["labels", str(meds), *args, "--out", str(tmp_path / "out")]) == 2, args
        err = capsys.readouterr().err
        assert "is not shorter than --long-los-days" in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "out").exists()
    # Mortality alone may predict late; long stay with a gap under the threshold is fine.
    labels, info = make_labels(meds, "in_hospital_mortality", gap_hours=168.0)
    assert labels.height == 2 and info["excluded"]["ended_before_prediction_time"] == 1
    labels, _ = make_labels(meds, "long_los", gap_hours=48.0, long_los_days=10.0)
    assert labels["boolean_value"].to_list() == [False, True]


def test_a_readmission_minutes_after_discharge_is_a_transfer(tmp_path, capsys):
    from datetime import timedelta

    m = lambda n: timedelta(minutes=n)  # noqa: E731
    # Subject 1: discharged, admitted again 15 minutes later (a transfer, as on the MIMIC-IV demo);
    # subject 2: 1 minute later (an observation stay admitted as inpatient); subject 3: back 5 h
    # later (a real bounce-back readmission); subject 4: exactly 1 h later (the window's edge).
    events = (stay(1, 11, T0, T0 + d(4)) + stay(1, 12, T0 + d(4) + m(15), T0 + d(9))
              + stay(2, 21, T0, T0 + h(5)) + stay(2, 22, T0 + h(5) + m(1), T0 + d(3))
              + stay(3, 31, T0, T0 + d(2)) + stay(3, 32, T0 + d(2) + h(5), T0 + d(6))
              + stay(4, 41, T0, T0 + d(2)) + stay(4, 42, T0 + d(2) + h(1), T0 + d(6)))
    meds = write_meds(tmp_path / "meds", events, {"date_only_codes": []})
    labels, info = make_labels(meds, "readmission_30d")
    # Before: 4 positive readmissions of 8 labels (the transfers counted as readmissions).
    assert labels.filter(pl.col("boolean_value")).rows() == [(3, T0 + d(2), True)]
    assert labels.height == 5 and info["excluded"]["transferred"] == 3 and info["config"]["transfer_hours"] == 1.0
    # --transfer-hours 0 keeps only same-timestamp transfers out (the rule before).
    labels, info = make_labels(meds, "readmission_30d", transfer_hours=0.0)
    assert int(labels["boolean_value"].sum()) == 4 and "transferred" not in info["excluded"]
    capsys.readouterr()
    assert main(["labels", str(meds), "--task", "readmission_30d", "--transfer-hours", "720",
                 "--out", str(tmp_path / "r.parquet")]) == 2
    assert "--transfer-hours 720 is not shorter than --readmission-days 30" in capsys.readouterr().err
    assert not (tmp_path / "r.parquet").exists()


def test_baseline_intervals_on_the_mimic_demo_resample_patients(demo_meds, tmp_path):
    # ICU admission on the real demo: held_out patients have several stays each; metrics.json's
    # intervals are the subject bootstrap of exactly the stored predictions.
    from ehrfm.clinical.baseline import BaselineConfig, baseline

    labels, info = make_labels(demo_meds, "icu_admission")
    write_labels(labels, tmp_path / "icu_admission.parquet", info)
    m = baseline(BaselineConfig(str(demo_meds), str(tmp_path / "icu_admission.parquet"), bootstrap=100), tmp_path / "out")
    pred = pl.read_parquet(tmp_path / "out" / "logistic_regression" / "predictions.parquet")
    assert pred["subject_id"].n_unique() < pred.height == m["n"]  # several stays per held_out patient
    lr = m["models"]["logistic_regression"]
    again = binary_metrics(pred["boolean_value"].to_numpy().astype(int), pred["predicted_boolean_probability"].to_numpy(),
                           "icu_admission", n_boot=100, seed=0, groups=pred["subject_id"].to_numpy())
    assert lr["bootstrap"]["unit"] == "subject" and lr["auroc_ci"] == again["auroc_ci"] and lr["auroc"] == again["auroc"]


def test_a_death_after_a_live_discharge_that_day_is_not_in_hospital(tmp_path):
    # Discharged at 14:00 on day 4; a day-resolved death (patients.dod, placed at 23:59:59) the
    # same day. To HOSPICE or HOME: the patient left alive (an out-of-hospital death). With an
    # unknown location (UNK), the day-resolved death may be the stay's own: in hospital, as before.
    dis = T0 + d(4) + h(4)
    eod = datetime(dis.year, dis.month, dis.day, 23, 59, 59)

    def one(sid, location):
        return [(sid, None, "GENDER//F", None), (sid, T0, "HOSPITAL_ADMISSION//URGENT//WALK-IN", sid * 10),
                (sid, dis, f"HOSPITAL_DISCHARGE//{location}", sid * 10), (sid, eod, "MEDS_DEATH", None)]

    events = one(1, "HOSPICE") + one(2, "HOME") + one(3, "UNK") + one(4, "DIED")
    meds = write_meds(tmp_path / "meds", events, {"date_only_codes": []})
    mort, _ = make_labels(meds, "in_hospital_mortality")
    assert dict(zip(mort["subject_id"].to_list(), mort["boolean_value"].to_list(), strict=True)) == {
        1: False, 2: False, 3: True, 4: True}  # was True for all four
    readm, info = make_labels(meds, "readmission_30d")
    # The live discharges are labelled (no readmission: negative); the deaths in hospital are excluded.
    assert readm.rows() == [(1, dis, False), (2, dis, False)] and info["excluded"]["died_in_hospital"] == 2
    # The same by time order (no stay id column).
    meds2 = tmp_path / "meds2"
    from test_labels import write_meds as write_plain

    write_plain(meds2, [(s, t, c) for s, t, c, _ in events])
    mort2, _ = make_labels(meds2, "in_hospital_mortality")
    assert mort2["boolean_value"].to_list() == [False, False, True, True]


def test_audit_sees_a_mortality_or_icu_prediction_after_the_stay_ended(tmp_path):
    # A mortality label predicting 1 h after a live discharge (the survival is in the history), an
    # ICU label predicting after the discharge; and the same stays predicted in time (fine).
    events = stay(1, 11, T0, T0 + d(3)) + stay(2, 21, T0, T0 + d(3))
    meds = write_meds(tmp_path / "meds", events, {"date_only_codes": []})
    late = write_label_file(tmp_path / "in_hospital_mortality.parquet", "in_hospital_mortality",
                            [(1, T0 + d(3) + h(1), False), (2, T0 + h(24), False)])
    assert audit(meds, late).tasks["in_hospital_mortality"].outcome_code_in_history == 1
    icu = write_label_file(tmp_path / "icu_admission.parquet", "icu_admission", [(1, T0 + d(3), False), (2, T0, False)])
    assert audit(meds, icu).tasks["icu_admission"].outcome_code_in_history == 1


def test_a_discharge_while_another_stay_is_open_is_no_readmission_label(tmp_path):
    # Stay 71 (days 0-4) overlaps stay 72 (days 2-11, its own id): at stay 71's discharge the
    # patient is still in hospital under stay 72. Before: labelled negative (stay 72 began before
    # the discharge, so it was no "next admission"). Subject 8 is an ordinary readmission (day 10).
    events = (stay(7, 71, T0, T0 + d(4)) + stay(7, 72, T0 + d(2), T0 + d(11))
              + stay(8, 81, T0, T0 + d(3)) + stay(8, 82, T0 + d(10), T0 + d(12)))
    meds = write_meds(tmp_path / "meds", events, {"date_only_codes": []})
    labels, info = make_labels(meds, "readmission_30d")
    assert labels.rows() == [(7, T0 + d(11), False), (8, T0 + d(3), True), (8, T0 + d(12), False)]
    assert info["excluded"]["in_another_stay_at_discharge"] == 1 and info["n"] + info["n_excluded"] == info["n_stays"] == 4



def test_a_stay_nested_in_another_gets_no_label_of_any_task(tmp_path):
    # Subject 7: stay 71 (days 0-9) ends in death; stay 72 (days 2-4, its own id, discharged HOME) lies inside it, so
    # the patient never left. Before: stay 72 was labelled a survivor (mortality False) and a short stay while the
    # patient died in hospital 5 days later; only readmission excluded it. Subject 8: one ordinary stay.
    died = [(7, T0 + d(9), "HOSPITAL_DISCHARGE//DIED", 71), (7, T0 + d(9), "MEDS_DEATH", None)]
    events = ([(7, None, "GENDER//M", None), (7, T0, ADM, 71), *died] + stay(7, 72, T0 + d(2), T0 + d(4))[1:]
              + stay(8, 81, T0, T0 + d(3)))
    meds = write_meds(tmp_path / "meds", events, {"date_only_codes": []})
    expected = {"in_hospital_mortality": [(7, T0 + h(24), True), (8, T0 + h(24), False)],
                "long_los": [(7, T0 + h(24), True), (8, T0 + h(24), False)],
                "icu_admission": [(7, T0, False), (8, T0, False)],
                "readmission_30d": [(8, T0 + d(3), False)]}  # stay 71 died in hospital
    for task, rows in expected.items():
        labels, info = make_labels(meds, task)
        assert labels.rows() == rows, task
        assert info["excluded"]["in_another_stay_at_discharge"] == 1 and info["n"] + info["n_excluded"] == info["n_stays"] == 3

def test_readmission_negatives_say_what_they_rest_on(tmp_path):
    # Subject 1: readmitted on day 10 (positive), then its last stay (negative: no later admission
    # in the data, follow-up assumed). Subject 2: discharged home, dies 12 days later without a
    # readmission (negative by the competing death). Subject 3: dies 60 days later (no later
    # admission; outside the window).
    events = (stay(1, 11, T0, T0 + d(3)) + stay(1, 12, T0 + d(10), T0 + d(12))
              + stay(2, 21, T0, T0 + d(3), [(2, T0 + d(15), "MEDS_DEATH", None)])
              + stay(3, 31, T0, T0 + d(3), [(3, T0 + d(63), "MEDS_DEATH", None)]))
    meds = write_meds(tmp_path / "meds", events, {"date_only_codes": []})
    labels, info = make_labels(meds, "readmission_30d")
    assert (labels.height, int(labels["boolean_value"].sum())) == (4, 1)
    assert info["negatives"] == {"negative_no_later_admission": 3, "negative_died_within_window": 1}
    assert "negatives" not in make_labels(meds, "long_los")[1]
    assert main(["labels", str(meds), "--task", "all", "--out", str(tmp_path / "labels")]) == 0
    saved = json.loads((tmp_path / "labels" / "labels.json").read_text())
    assert saved["readmission_30d"]["negatives"] == info["negatives"]


def test_shared_bootstrap_replicates_resample_subjects():
    from ehrfm.clinical.metrics import shared_bootstrap_auroc

    # The 40-subjects-x-10-identical-stays cohort above: the utility law's paired replicates must
    # spread like those of the 40 subjects alone, not ~sqrt(10) less.
    rng = np.random.default_rng(3)
    y1 = np.r_[np.ones(20, int), np.zeros(20, int)]
    p1 = 1 / (1 + np.exp(-(y1 + rng.normal(0, 1.5, 40))))
    y, p, subjects = np.repeat(y1, 10), np.repeat(p1, 10), np.repeat(np.arange(40) * 7 + 100, 10)
    alone = shared_bootstrap_auroc(y1, p1, 400, 0)
    stays = shared_bootstrap_auroc(y, p, 400, 0, subjects)
    naive = shared_bootstrap_auroc(y, p, 400, 0)
    assert abs(np.nanstd(stays) / np.nanstd(alone) - 1) < 0.2, (np.nanstd(stays), np.nanstd(alone))
    assert np.nanstd(naive) < 0.5 * np.nanstd(stays)
    # Deterministic: the same labels, subjects and seed give the same replicates (shared by every run).
    assert np.array_equal(stays, shared_bootstrap_auroc(y, p, 400, 0, subjects))
    # One label per subject: exactly the label replicates (existing sweeps' figures unchanged).
    assert np.array_equal(shared_bootstrap_auroc(y1, p1, 400, 0, np.arange(40)), alone, equal_nan=True)
