"""`ehrfm audit`: leakage counts (a)-(d) on hand-made MEDS and labels (invented values), the
exit status, what it reports as unknown, and the real MIMIC-IV demo."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrfm.app.cli import main
from ehrfm.clinical.audit import audit, format_audit
from ehrfm.clinical.labels import TASKS, make_labels, write_labels
from ehrfm.errors import UserError

T0 = datetime(2150, 5, 1, 10, 0)
ADM = "HOSPITAL_ADMISSION//URGENT//WALK-IN"
DIS = "HOSPITAL_DISCHARGE//HOME"
PROC = "PROCEDURE//ICD//10//0BH17EZ"
h = lambda n: timedelta(hours=n)  # noqa: E731
d = lambda n: timedelta(days=n)  # noqa: E731


def write_meds(root: Path, events: list[tuple], metadata: dict | None = None, etl_config: dict | None = None) -> Path:
    """(subject_id, time | None, code, hadm_id | None) rows -> data/train/0.parquet (+ metadata)."""
    rows = sorted(events, key=lambda r: (r[0], r[1] is not None, r[1] or datetime.min))
    table = pa.table({
        "subject_id": pa.array([r[0] for r in rows], pa.int64()),
        "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
        "code": pa.array([r[2] for r in rows], pa.string()),
        "numeric_value": pa.array([None] * len(rows), pa.float32()),
        "hadm_id": pa.array([r[3] if len(r) > 3 else None for r in rows], pa.int64()),
    })
    (root / "data" / "train").mkdir(parents=True)
    pq.write_table(table, root / "data" / "train" / "0.parquet")
    (root / "metadata").mkdir()
    if metadata is not None:
        (root / "metadata" / "dataset.json").write_text(json.dumps(metadata))
    if etl_config is not None:
        (root / "metadata" / "etl_config.json").write_text(json.dumps(etl_config))
    return root


def write_label_file(path: Path, task: str, rows: list[tuple]) -> Path:
    labels = pl.DataFrame(rows, schema={"subject_id": pl.Int64, "prediction_time": pl.Datetime("us"),
                                        "boolean_value": pl.Boolean}, orient="row")
    write_labels(labels, path, {"task": task})
    return path


def stay(sid, hadm, adm, dis, extra=()):
    return [(sid, None, "GENDER//M", None), (sid, adm, ADM, hadm), (sid, dis, DIS, hadm), *extra]


def test_each_leak_is_counted_per_task(tmp_path):
    meta = {"etl_name": "hand", "date_only_codes": [{"code_prefix": "PROCEDURE//ICD//", "source": "procedures.chartdate",
                                                      "placed_at": "end_of_day"}]}
    events = (
        # 1: (a) a mortality label made at admission + 24 h with the death 10 h after admission
        stay(1, 11, T0, T0 + h(30), [(1, T0 + h(10), "MEDS_DEATH", 11)])
        # 2: (b) a procedure dated the prediction day, placed at 00:00 of that day
        + stay(2, 21, T0, T0 + d(5), [(2, datetime(2150, 5, 2), PROC, 21)])
        # 3: date-only on the prediction day but at the end of its day (after the prediction): fine
        + stay(3, 31, T0, T0 + d(5), [(3, datetime(2150, 5, 2, 23, 59, 59), PROC, 31)])
        # 4: (c) a MEDS_DEATH with a null time: in every history of subject 4
        + stay(4, 41, T0, T0 + d(5), [(4, None, "MEDS_DEATH", None)])
        # 5: (d) two stays of subject 5 that overlap in time
        + stay(5, 51, T0, T0 + d(5)) + stay(5, 52, T0 + d(3), T0 + d(8))
        # 6: clean, and a procedure at its discharge on the prediction day of readmission: fine
        + stay(6, 61, T0, T0 + d(5), [(6, T0 + d(5), PROC, 61)])
    )
    meds = write_meds(tmp_path / "meds", events, meta, {"tables_rows": {"x": 1}, "dropped_events": {"hosp/x": {"no_hadm": 2}},
                                                        "duplicates_dropped": {"hosp/labevents": 3}})
    labels = tmp_path / "labels"
    labels.mkdir()
    pred = T0 + h(24)
    write_label_file(labels / "in_hospital_mortality.parquet", "in_hospital_mortality",
                     [(s, pred, s == 1) for s in (1, 2, 3, 4, 5, 6)])
    write_label_file(labels / "readmission_30d.parquet", "readmission_30d", [(6, T0 + d(5), False)])
    res = audit(meds, labels)
    m = res.tasks["in_hospital_mortality"]
    assert (m.n_labels, m.outcome_code_in_history, m.date_only_same_day, m.not_known_before_prediction,
            m.overlapping_stays) == (6, 2, 1, 1, 1)  # (a): subject 1, and subject 4's null-time death
    r = res.tasks["readmission_30d"]
    assert (r.outcome_code_in_history, r.date_only_same_day, r.not_known_before_prediction, r.overlapping_stays) == (0, 0, 0, 0)
    assert res.date_only_codes == ["PROCEDURE//ICD//"] and res.date_only_from.endswith("dataset.json")
    assert res.etl_counts == {"dropped_events": {"hosp/x": {"no_hadm": 2}}, "duplicates_dropped": {"hosp/labevents": 3}}
    assert res.null_time_codes == {"MEDS_DEATH": 1}
    # Everything but (e) is known from this metadata, which does not say where results sit.
    assert not res.clean and len(res.unknown) == 1 and res.unknown[0].startswith("(e) result times")
    text = "\n".join(format_audit(res))
    assert "| in_hospital_mortality | 6 | 2 (33.3%) | 1 (16.7%) | 1 (16.7%) | 1 (16.7%) |" in text
    # the ETL's counts as words, not a JSON dump
    assert "ETL drop/duplicate counts (its metadata): dropped_events: hosp/x no_hadm 2; duplicates_dropped: hosp/labevents 3." in text
    assert main(["audit", str(meds), "--labels", str(labels), "--out", str(tmp_path / "audit.json")]) == 1
    saved = json.loads((tmp_path / "audit.json").read_text())
    assert saved["clean"] is False and saved["tasks"]["in_hospital_mortality"]["date_only_same_day"] == 1


def test_labels_made_by_ehrfm_pass_and_unknowns_are_reported(tmp_path, capsys):
    # A cohort with the fault-3/4 traps (death before the prediction time, an admission after
    # death): ehrfm's own labels leave no outcome in any history, so the audit exits 0.
    events = (
        stay(1, 11, T0, T0 + h(30), [(1, T0 + h(10), "MEDS_DEATH", 11)])
        + stay(2, 21, T0, T0 + d(3), [(2, T0 + d(3), "MEDS_DEATH", 21)])
        + [(2, T0 + d(3) + h(4), ADM, 22), (2, T0 + d(4), "HOSPITAL_DISCHARGE//DIED", 22)]
        + stay(3, 31, T0, T0 + d(2)) + stay(3, 32, T0 + d(20), T0 + d(29), [(3, T0 + d(21), "ICU_ADMISSION//MICU", 32)])
    )
    meds = write_meds(tmp_path / "meds", events)  # no metadata: as from another ETL
    assert main(["labels", str(meds), "--task", "all", "--out", str(tmp_path / "labels")]) == 0
    capsys.readouterr()
    assert main(["audit", str(meds), "--labels", str(tmp_path / "labels")]) == 0
    out = capsys.readouterr().out
    assert "(b) date-only sources: the MEDS metadata has no 'date_only_codes'" in out
    assert "no metadata/ehrfm_etl.json or etl_config.json" in out and "audit: 4 tasks, clean, 3 unknown" in out
    res = audit(meds, tmp_path / "labels")
    assert set(res.tasks) == set(TASKS)
    assert all(t.date_only_same_day is None and t.outcome_code_in_history == 0 for t in res.tasks.values())
    # A label file of an unknown task: (a) cannot be known and says so.
    write_label_file(tmp_path / "custom.parquet", "sepsis", [(3, T0 + d(21), True)])
    res = audit(meds, tmp_path / "custom.parquet", date_only_codes=[])
    assert res.tasks["sepsis"].outcome_code_in_history is None and res.tasks["sepsis"].date_only_same_day == 0
    assert any("task 'sepsis'" in u for u in res.unknown)
    assert res.unchecked == ["sepsis"] and not res.clean  # (a) not made: never "clean"


def test_a_label_file_of_unknown_name_is_not_clean_and_task_names_it(tmp_path, capsys):
    """Before: ICU labels made after the ICU admission, in a file named icu_v2.parquet (no sidecar), gave
    "audit: 1 tasks, clean, 1 unknown" and exit 0: the outcome check (a) was never made. Now such a
    file is NOT CHECKED (exit 1, no "clean"), and --task icu_admission audits it: LEAKAGE."""
    events = stay(3, 31, T0, T0 + d(2)) + stay(3, 32, T0 + d(20), T0 + d(29), [(3, T0 + d(21), "ICU_ADMISSION//MICU", 32)])
    meds = write_meds(tmp_path / "meds", events)
    leaky = tmp_path / "icu_v2.parquet"
    pl.DataFrame({"subject_id": [3], "prediction_time": [T0 + d(21) + h(1)], "boolean_value": [True]},
                 schema={"subject_id": pl.Int64, "prediction_time": pl.Datetime("us"), "boolean_value": pl.Boolean}
                 ).write_parquet(leaky)
    argv = ["audit", str(meds), "--labels", str(leaky), "--date-only-codes", ""]
    capsys.readouterr()
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "NOT CHECKED for its outcome: icu_v2 (pass --task)" in out and "clean" not in out.splitlines()[-1], out
    assert format_audit(audit(meds, leaky, date_only_codes=[]))[-1] == \
        "Verdict: NOT CHECKED: (a) for icu_v2 (outcome unknown; pass --task)."
    assert main([*argv, "--task", "icu_admission"]) == 1
    out = capsys.readouterr().out
    assert "LEAKAGE in icu_admission (1)" in out and "NOT CHECKED" not in out, out
    assert audit(meds, leaky, date_only_codes=[], task="icu_admission").tasks["icu_admission"].outcome_code_in_history == 1
    with pytest.raises(UserError, match="--task names the task of one label file, and labels .* holds 2 tasks"):
        write_label_file(tmp_path / "two" / "a.parquet", "long_los", [(3, T0 + d(1), False)])
        write_label_file(tmp_path / "two" / "b.parquet", "icu_admission", [(3, T0 + d(1), False)])
        audit(meds, tmp_path / "two", task="icu_admission")


def audit_of_ehrfm_labels(meds: Path, labels_dir: Path):
    """The audit of every task's labels as `ehrfm labels` makes them on `meds` (written to labels_dir)."""
    labels, info = make_labels(meds, "all")
    for task in TASKS:
        write_labels(labels[task], labels_dir / f"{task}.parquet", info[task])
    return audit(meds, labels_dir)


def test_audit_on_synthetic_cohort(synth_meds, tmp_path):
    res = audit_of_ehrfm_labels(synth_meds, tmp_path)
    for t in res.tasks.values():
        assert t.outcome_code_in_history == 0 and t.not_known_before_prediction == 0, t
        assert t.overlapping_stays == 0, t
        # (b) is knowable once the ETL declares its date-only sources, and must then be 0
        assert t.date_only_same_day == (None if res.date_only_codes is None else 0), t


def test_audit_on_real_mimic_demo(demo_meds, tmp_path):
    res = audit_of_ehrfm_labels(demo_meds, tmp_path)
    for t in res.tasks.values():
        print(t)
        assert t.outcome_code_in_history == 0 and t.not_known_before_prediction == 0, t
        assert t.overlapping_stays == 0, t  # the ETL keeps hadm_id: overlaps are knowable
        # 0 histories with a same-day date-only procedure, once the ETL declares its date-only sources
        assert t.date_only_same_day == (None if res.date_only_codes is None else 0), t


def test_demo_report_section(tmp_path):
    from ehrfm.app.demo import _audit_section

    events = stay(1, 11, T0, T0 + d(3)) + stay(2, 21, T0, T0 + d(9), [(2, T0 + h(5), "MEDS_DEATH", 21)])
    meds = write_meds(tmp_path / "meds", events, {"date_only_codes": ["PROCEDURE//ICD//"]})
    labels = tmp_path / "labels"
    labels.mkdir()
    write_label_file(labels / "long_los.parquet", "long_los", [(1, T0 + h(24), False), (2, T0 + h(24), True)])
    lines = _audit_section(meds, labels, tmp_path / "audit.json")
    assert "| long_los | 2 | 1 (50.0%) | 0 | 0 | 0 | 0 | 0 |" in lines  # subject 2's death is in its history
    assert lines[-1] == "Verdict: LEAKAGE: (a)-(c) are not all 0."
    assert json.loads((tmp_path / "audit.json").read_text())["clean"] is False
    assert _audit_section(tmp_path / "nope", labels, tmp_path / "x.json")[0].startswith("The audit failed: MEDS dataset")


def test_date_only_sources_from_ehrfm_etl_metadata(tmp_path):
    # The ETL's metadata/ehrfm_etl.json: procedures are dates in every row (schema DATE); lab
    # times are dates in some rows only, so only a lab event at 00:00 can be a placed date.
    meta = {"format": "ehrfm_etl/1", "etl_name": "ehrfm.tokenization.etl",
            "date_only_sources": [
                {"table": "hosp/procedures_icd", "column": "chartdate", "code_prefixes": ["PROCEDURE//ICD//"],
                 "schema_date": True, "rule": "end_of_day_or_discharge"},
                {"table": "hosp/labevents", "column": "charttime", "code_prefixes": ["LAB//"], "schema_date": False,
                 "rule": "end_of_day"}],
            "duplicates_dropped": {"hosp/labevents": 4},
            "tables": {"hosp/labevents": {"rows_read": 10, "dropped": {"duplicate": 4}}, "hosp/omr": {"rows_read": 2}}}
    pred_day = datetime(2150, 5, 2)
    events = (
        stay(1, 11, T0, T0 + d(4), [(1, pred_day + h(9), "LAB//51//mg/dL", 11)])  # a timed lab: fine
        + stay(2, 21, T0, T0 + d(4), [(2, pred_day, "LAB//51//mg/dL", 21)])  # a lab date at 00:00: (b)
        + stay(3, 31, T0, T0 + h(26), [(3, T0 + h(26), PROC, 31)])  # at its stay's discharge: known then
        + stay(4, 41, T0, T0 + d(4), [(4, pred_day + h(3), PROC, 41)])  # a procedure date at 03:00: (b)
    )
    meds = write_meds(tmp_path / "meds", events)
    (meds / "metadata" / "ehrfm_etl.json").write_text(json.dumps(meta))
    write_label_file(tmp_path / "los.parquet", "long_los", [(s, T0 + h(24), False) for s in (1, 2, 4)])
    write_label_file(tmp_path / "readm.parquet", "readmission_30d", [(3, T0 + h(26), False)])
    res = audit(meds, tmp_path / "los.parquet")
    assert res.date_only_codes == ["PROCEDURE//ICD//", "LAB//"] and res.date_only_partial == ["LAB//"]
    assert res.date_only_from.endswith("ehrfm_etl.json")
    assert res.tasks["long_los"].date_only_same_day == 2
    assert res.etl_counts == {"duplicates_dropped": {"hosp/labevents": 4},
                              "dropped_by_table": {"hosp/labevents": {"duplicate": 4}}}
    assert audit(meds, tmp_path / "readm.parquet").tasks["readmission_30d"].date_only_same_day == 0


def test_etl_counts_name_each_group_and_table_once():
    """The audit's ETL-count line repeated its group and table before every reason
    ("dropped_by_table: hosp/emar_detail: a 1; dropped_by_table: hosp/emar_detail: b 2; ...")."""
    from ehrfm.clinical.audit import _counts_text

    counts = {"dropped_by_table": {"hosp/emar": {"missing_medication": 1576},
                                   "hosp/emar_detail": {"administration_summary_row": 35835, "no_dose_given": 3616, "none": 0}},
              "duplicates_dropped": {"hosp/labevents": 18, "hosp/omr": 127}, "empty": {}}
    assert _counts_text(counts) == ("dropped_by_table: hosp/emar missing_medication 1,576, hosp/emar_detail "
                                    "(administration_summary_row 35,835, no_dose_given 3,616); "
                                    "duplicates_dropped: hosp/labevents 18, hosp/omr 127")


def test_an_empty_label_file_or_an_unmatched_date_only_prefix_is_never_just_clean(tmp_path, capsys):
    """An empty label file (every head refuses it) and --date-only-codes naming a prefix no code has were
    audited "clean": nothing had been checked."""
    events = stay(3, 31, T0, T0 + d(2), [(3, T0 + d(1), "PROCEDURE//ICD//9//0040", 31)])
    meds = write_meds(tmp_path / "meds", events)
    empty = write_label_file(tmp_path / "empty" / "icu_admission.parquet", "icu_admission", [])
    capsys.readouterr()
    assert main(["audit", str(meds), "--labels", str(empty), "--date-only-codes", "PROCEDURE//ICD//"]) == 0
    out = capsys.readouterr().out
    assert "audit: 1 tasks, no labels to check in icu_admission" in out and "clean" not in out.splitlines()[-1], out
    res = audit(meds, empty, date_only_codes=["procedure//icd//", "PROCEDURE//ICD//"])
    assert format_audit(res)[-1].endswith("NO LABELS in icu_admission: nothing checked there.")
    assert res.empty == ["icu_admission"] and res.to_dict()["empty"] == ["icu_admission"]
    assert [u for u in res.unknown if "--date-only-codes" in u] == [
        "(b) --date-only-codes procedure//icd//: no code of the MEDS data starts with it (codes are case-sensitive "
        "prefixes), so no such event was checked"]


def test_procedure_billing_codes_of_the_open_stay_are_a_hint_not_a_leak(tmp_path):
    """ICD procedure and HCPCS codes are dated to the procedure's day (placed at its end): the procedure was charted
    then, the code assigned after discharge. 97 of the MIMIC-IV demo's 242 24-hour mortality histories hold some of
    their own stay's (a helper); the audit said nothing. Now counted as a hint (no verdict): a study of codes as the
    EHR holds them at prediction time would leave them out."""
    events = (
        # 1: a procedure and an HCPCS code of the stay, at the end of the admission day: in the 24-hour history
        stay(1, 11, T0, T0 + d(5), [(1, datetime(2150, 5, 1, 23, 59, 59), PROC, 11),
                                    (1, datetime(2150, 5, 1, 23, 59, 59), "HCPCS//99223", 11)])
        # 2: a procedure of an earlier stay: history, not this stay's billing
        + stay(2, 20, T0 - d(60), T0 - d(55), [(2, T0 - d(58), PROC, 20)]) + stay(2, 21, T0, T0 + d(5))
        # 3: nothing billed
        + stay(3, 31, T0, T0 + d(5))
    )
    meds = write_meds(tmp_path / "meds", events, {"date_only_codes": []})
    labels = tmp_path / "in_hospital_mortality.parquet"
    write_label_file(labels, "in_hospital_mortality", [(s, T0 + h(24), False) for s in (1, 2, 3)])
    res = audit(meds, labels)
    m = res.tasks["in_hospital_mortality"]
    assert m.billing_codes_of_stay == 1 and (m.outcome_code_in_history, m.date_only_same_day) == (0, 0) and res.clean
    assert ("Hint, in_hospital_mortality: 1 labels' histories hold procedure billing codes (PROCEDURE//ICD//, HCPCS//) "
            "of their own open stay") in "\n".join(format_audit(res))
    assert res.to_dict()["tasks"]["in_hospital_mortality"]["billing_codes_of_stay"] == 1
